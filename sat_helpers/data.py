"""The datasets a DataLoader reads: a prepared split's images or features with its captions.

``ensure_dataset(profile)`` gives the profile's prepared folder (drawn or downloaded, then
prepared once: :mod:`sat_helpers.prepare`); :class:`CaptionDataset` serves its images,
``features.FeatureDataset`` the cached annotation vectors, both through one
:class:`SplitDataset` base (the split's captions, lengths and meta; a lazily opened memmap).
The names of :mod:`captions`, :mod:`images`, :mod:`prepare` and :mod:`captions_csv` are
importable from here too, as ``sat_helpers.data.X``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from .captions import (  # noqa: F401 - re-exported
    KARPATHY_SPLITS,
    SPECIALS,
    SPLITS,
    DatasetError,
    Vocab,
    caption_of,
    encode_caption,
    load_karpathy_json,
    tokenize,
)
from .captions_csv import (  # noqa: F401 - re-exported
    captions_to_karpathy,
    custom_json_path,
    make_custom_dataset,
    read_captions_file,
)
from .config import DATA_FIELDS, Profile, data_root, variant_name
from .images import ORIENTATION, load_image, to_rgb  # noqa: F401 - re-exported
from .prepare import FORMAT_VERSION, PrepareReport, prepare_dataset  # noqa: F401 - re-exported
from .shapes import JSON_NAME, make_shapes_dataset

# ---------------------------------------------------------------- serving

class SplitDataset(torch.utils.data.Dataset):
    """A prepared split's captions with one array row per image (its pixels or its features).

    Train: item k = (row of image k // captions_per_image, caption k, length); val/test:
    item j = (row j, its first caption, length, all its captions). The array (a ``.npy``)
    is memory-mapped lazily in each process (none is pickled), so DataLoader
    ``num_workers > 0`` works. Subclasses say how a row becomes a tensor (:meth:`row`).
    """

    def __init__(self, dataset_dir: str | Path, split: str, array_path: str | Path):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {', '.join(SPLITS)}.")
        self.dataset_dir, self.split, self.array_path = Path(dataset_dir), split, Path(array_path)
        manifest = self.dataset_dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.dataset_dir} is not a prepared dataset (no "
                                    "manifest.json); build it with ensure_dataset(profile) or "
                                    "prepare_dataset.")
        self.captions_per_image = json.loads(manifest.read_text())["params"]["captions_per_image"]
        self.vocab = Vocab.load(self.dataset_dir / "vocab.json")
        self.meta = json.loads((self.dataset_dir / f"{split}_meta.json").read_text())
        self.captions = torch.from_numpy(np.load(self.dataset_dir / f"{split}_captions.npy"))
        self.lengths = torch.from_numpy(np.load(self.dataset_dir / f"{split}_lengths.npy"))
        self._array = None

    @property
    def array(self) -> np.ndarray:
        """The split's per-image array (N, ...), memory-mapped on first use."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        n = len(self.meta)
        return n * self.captions_per_image if self.split == "train" else n

    def row(self, j: int) -> torch.Tensor:
        """Image j's row of the array as the tensor an item holds."""
        raise NotImplementedError

    def __getitem__(self, k: int):
        cpi = self.captions_per_image
        if self.split == "train":  # clones: a view would ship the whole storage to a worker
            return self.row(k // cpi), self.captions[k].clone(), int(self.lengths[k])
        captions = self.captions[k * cpi:(k + 1) * cpi].clone()
        return self.row(k), captions[0], int(self.lengths[k * cpi]), captions


class CaptionDataset(SplitDataset):
    """A prepared split's images, uint8 (3, H, W), with their captions (``SplitDataset``)."""

    def __init__(self, out_dir: str | Path, split: str):
        super().__init__(out_dir, split, Path(out_dir) / f"{split}_images.npy")
        self.out_dir = self.dataset_dir

    @property
    def images(self) -> np.ndarray:
        """The split's images (N, H, W, 3) uint8, memory-mapped on first use."""
        return self.array

    def image(self, j: int) -> torch.Tensor:
        """Image j as a uint8 tensor (3, H, W)."""
        return torch.from_numpy(np.ascontiguousarray(self.images[j].transpose(2, 0, 1)))

    def row(self, j: int) -> torch.Tensor:
        return self.image(j)


def dataset_hash(dataset_dir: str | Path) -> str:
    """sha256 of a prepared dataset's manifest.json: it changes whenever the dataset is rebuilt."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {dataset_dir} is not a prepared dataset. "
                                "Build it with sat_helpers.data.ensure_dataset(profile).")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def caption_collate(batch: list[tuple]) -> tuple:
    """Stack a list of dataset items: (images, captions, lengths[, all_captions])."""
    columns = list(zip(*batch, strict=True))
    out = [torch.stack(columns[0]), torch.stack(columns[1]), torch.tensor(columns[2])]
    if len(columns) > 3:
        out.append(torch.stack(columns[3]))
    return tuple(out)


# ---------------------------------------------------------------- profiles

def shapes_dir(profile: Profile) -> Path:
    """Where the profile's Shapes images and JSON live under data_root()/raw/."""
    return data_root() / "raw" / (
        f"shapes-{profile.shapes_images}-{profile.image_size}-{profile.shapes_seed}"
        f"-{profile.shapes_val_fraction:g}-{profile.shapes_test_fraction:g}")


def ensure_raw_dataset(profile: Profile) -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) of the profile's data: Shapes drawn or real data downloaded."""
    if profile.dataset == "custom":
        return _custom_dataset()
    if profile.dataset != "shapes":
        return _download(profile.dataset, data_root() / "raw")
    raw = shapes_dir(profile)
    if not (raw / JSON_NAME).exists():  # the JSON appears last, with the complete folder
        t0 = time.perf_counter()
        make_shapes_dataset(raw, profile.shapes_images, profile.image_size, profile.shapes_seed,
                            profile.shapes_val_fraction, profile.shapes_test_fraction)
        print(f"Drew {profile.shapes_images} Shapes images in {time.perf_counter() - t0:.0f} s.")
    return raw / JSON_NAME, raw / "images"


def prepared_dir(profile: Profile) -> Path:
    """Where the profile's prepared dataset lives: data_root()/prepared/<variant name>.

    The name is the profile's for the course's values of ``DATA_FIELDS``, plus a hash of
    the changed ones for a variant (``config.variant_name``): a variant builds beside it.
    """
    return data_root() / "prepared" / variant_name(profile, DATA_FIELDS)


def ensure_dataset(profile: Profile) -> Path:
    """The profile's prepared dataset folder, built (or reused) from ``ensure_raw_dataset``."""
    karpathy_json, image_dir = ensure_raw_dataset(profile)
    return prepare_dataset(karpathy_json, image_dir, prepared_dir(profile),
                           profile.image_size, profile.min_word_freq, profile.max_len,
                           profile.captions_per_image, profile.data_seed,
                           on_bad_image="error" if profile.dataset == "shapes" else "skip",
                           resize=profile.resize)


def _download(dataset: str, root: Path) -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) of a real dataset, downloaded if needed."""
    from . import download

    getter = {"flickr8k": download.download_flickr8k, "flickr30k": download.download_flickr30k,
              "coco": download.download_coco2014}[dataset]
    files = getter(root)
    return Path(files.karpathy_json), Path(files.image_dir)


def _custom_dataset() -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) written by ``make_custom_dataset``."""
    path = custom_json_path()
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: the 'custom' profile trains on your own photos. Make it first "
            "with `sat data --captions FILE --images DIR` (a CSV or TSV of image file, caption "
            "rows) or sat_helpers.data.make_custom_dataset(FILE, DIR).")
    return path, Path(json.loads(path.read_text())["image_dir"])

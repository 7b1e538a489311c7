"""Dataset preparation: tokens, the vocabulary, resized images and encoded captions on disk.

One code path for every dataset: a Karpathy-format JSON (Shapes, Flickr8k/30k, COCO) and a
folder of images go in; ``prepare_dataset`` writes, per split, the images as a memory-mapped
uint8 ``.npy``, the encoded captions with their lengths, and every reference caption, plus
``vocab.json`` and a ``manifest.json``. ``CaptionDataset`` serves them to a DataLoader.

Policies (each counted in the manifest's ``report``, never silent):
- captions are ``tokenize(raw)`` (``tokens`` when a sentence has no ``raw``); empty ones are
  dropped;
- a caption longer than ``max_len`` tokens is not a training target (cutting it would teach
  the model to stop mid-sentence) but stays among the image's references for evaluation;
- an image with more than ``captions_per_image`` usable captions keeps a seeded random
  choice of them as targets; one with fewer repeats some (seeded sampling with
  replacement); one with none is dropped;
- the vocabulary counts the train split only (Karpathy ``restval`` counts as train), so val
  and test words the training data never saw become ``<unk>``;
- images are resized to ``image_size`` x ``image_size`` without keeping the aspect ratio
  (as Xu et al. do), after EXIF rotation; any mode becomes RGB (transparency over white,
  16-bit scaled to 8 bits).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .config import DATA_FIELDS, Profile, data_root, variant_name
from .download import check_free_space
from .shapes import JSON_NAME, make_shapes_dataset

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
FORMAT_VERSION = 1
ORIENTATION = 0x0112  # the EXIF orientation tag
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class DatasetError(ValueError):
    """A dataset input (JSON, caption or image) is wrong; the message says where and what to do."""


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters and digits, with inner apostrophes); punctuation is dropped."""
    return _TOKEN.findall(text.lower())


class Vocab:
    """Word <-> id: the four specials (<pad>=0, <start>, <end>, <unk>) first, then ``words``."""

    def __init__(self, words: list[str]):
        words = list(words)
        clash = set(words) & set(SPECIALS)
        if clash or len(set(words)) != len(words):
            raise ValueError(f"Vocab words must be unique and not specials; got {sorted(clash)} "
                             "or duplicates.")
        self.words = words
        self.itos = list(SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.start_id, self.end_id, self.unk_id = range(4)

    @classmethod
    def build(cls, captions: list[list[str]], min_word_freq: int = 1) -> Vocab:
        """The words seen at least ``min_word_freq`` times, most frequent first (ties: a-z)."""
        counts = Counter(w for tokens in captions for w in tokens)
        kept = [w for w, c in counts.items() if c >= min_word_freq]
        return cls(sorted(kept, key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of the tokens (unknown words -> <unk>); no specials are added."""
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids) -> list[str]:
        """Words of the ids, stopping at <end> and skipping <pad> and <start>."""
        words = []
        for i in (int(i) for i in ids):
            if i == self.end_id:
                break
            if i not in (self.pad_id, self.start_id):
                words.append(self.itos[i])
        return words

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (the specials, then the words)."""
        Path(path).write_text(json.dumps({"specials": list(SPECIALS), "words": self.words}))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if data.get("specials") != list(SPECIALS):
            raise DatasetError(f"{path}: not a vocabulary of this course (specials differ).")
        return cls(data["words"])

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries: {self.itos[:8]}...)"


def encode_caption(tokens: list[str], vocab: Vocab, max_len: int) -> list[int]:
    """One row of ``{split}_captions.npy``: <start> ids <end>, padded to max_len + 2 ids."""
    if len(tokens) > max_len:
        raise ValueError(f"a caption of {len(tokens)} tokens is longer than max_len = {max_len}")
    ids = [vocab.start_id, *vocab.encode(tokens), vocab.end_id]
    return ids + [vocab.pad_id] * (max_len + 2 - len(ids))


def load_karpathy_json(path: str | Path) -> dict:
    """Read a Karpathy-format dataset JSON and check it; errors name the image index and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e}). Re-download or regenerate it.") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected an object with an 'images' list (Karpathy format).")
    for i, image in enumerate(data["images"]):
        _check_image(path, i, image)
    return data


def _check_image(path: Path, i: int, image) -> None:
    """Raise a DatasetError naming ``images[i]`` and the field if the record is malformed."""
    def fail(what: str):
        raise DatasetError(f"{path}: images[{i}] {what}")

    if not isinstance(image, dict):
        fail("is not an object.")
    for key, kind in (("filename", str), ("split", str), ("sentences", list)):
        if key not in image:
            fail(f"has no field {key!r}.")
        if not isinstance(image[key], kind):
            fail(f"field {key!r} should be a {kind.__name__}, not {type(image[key]).__name__}.")
    if image["split"] not in KARPATHY_SPLITS:
        fail(f"field 'split' is {image['split']!r}; expected one of {', '.join(KARPATHY_SPLITS)}.")
    for k, sentence in enumerate(image["sentences"]):
        raw, tokens = (sentence.get(f) if isinstance(sentence, dict) else None
                       for f in ("raw", "tokens"))
        if not isinstance(raw, str) and not (
                isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            fail(f"field 'sentences[{k}]' needs 'raw' text or a 'tokens' list of strings.")


def caption_of(sentence: dict) -> list[str]:
    """The tokens of one Karpathy sentence: tokenize(raw), else its lower-cased tokens."""
    if isinstance(sentence.get("raw"), str):
        return tokenize(sentence["raw"])
    return tokenize(" ".join(sentence["tokens"]))


# ---------------------------------------------------------------- images

def load_image(path: str | Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 RGB array (S, S, 3), (width, height) after EXIF rotation) of one image file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
                if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
                    size = size[::-1]  # EXIF says: displayed turned by 90 degrees
                if image.format == "JPEG":  # decode at a reduced scale: much faster
                    image.draft("RGB", (image_size, image_size))
                rgb = to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(
            f"{path}: image larger than Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {e}. If you trust the file, "
            "raise that limit before preparing; else remove the file.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{path}: cannot read this image ({type(e).__name__}: {e}); it is missing, empty, "
            "truncated or not an image. Replace or remove it, or pass on_bad_image='skip'.") from e
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8), size


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency over white, 16/32-bit values scaled to 0-255."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values * 255.0 / top + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------- preparation

@dataclass
class PrepareReport:
    """What ``prepare_dataset`` kept and dropped (stored in the manifest as ``report``)."""

    images: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 0
    captions_used: int = 0
    empty_captions: int = 0
    long_captions: int = 0
    images_without_captions: int = 0
    images_padded: int = 0
    bad_images: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, out_dir: str | Path) -> PrepareReport:
        """The report of a prepared dataset."""
        return cls(**json.loads((Path(out_dir) / "manifest.json").read_text())["report"])

    def summary(self) -> str:
        """One line a learner can read."""
        return (f"images {self.images}, vocabulary {self.vocab_size}, captions dropped: "
                f"{self.empty_captions} empty, {self.long_captions} too long for training "
                f"(kept as references); images dropped: {self.images_without_captions} "
                f"without captions, {len(self.bad_images)} unreadable; "
                f"{self.images_padded} images repeat captions to fill captions_per_image")


def _image_path(image_dir: Path, image: dict) -> Path:
    return image_dir / image.get("filepath", "") / image["filename"]


def _inputs_digest(karpathy_json: Path, image_dir: Path, images: list[dict]) -> dict:
    """Hashes of the JSON bytes and of every listed image's name, size and mtime (not pixels)."""
    listing = hashlib.sha256()
    for image in images:
        path = _image_path(image_dir, image)
        try:
            st = path.stat()
            listing.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            listing.update(f"{path.name}\tmissing\n".encode())
    return {"karpathy_json_sha256": _sha256(karpathy_json),
            "image_files_sha256": listing.hexdigest()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_current(out_dir: Path, params: dict, karpathy_json: Path, image_dir: Path) -> bool:
    """Whether ``out_dir`` holds a complete build of these parameters, JSON and image files."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    inputs = manifest.get("inputs", {})
    if (manifest.get("format_version") != FORMAT_VERSION or manifest.get("params") != params
            or inputs.get("karpathy_json_sha256") != _sha256(karpathy_json)
            or not all((out_dir / f).exists() for f in manifest.get("files", []))):
        return False
    images = json.loads(karpathy_json.read_bytes())["images"]  # the bytes it was built from
    return _inputs_digest(karpathy_json, image_dir, images) == inputs


def prepare_dataset(karpathy_json: str | Path, image_dir: str | Path, out_dir: str | Path,
                    image_size: int, min_word_freq: int, max_len: int, captions_per_image: int,
                    seed: int = 0, on_bad_image: str = "error") -> Path:
    """Write the resized images, encoded captions, references and vocabulary into ``out_dir``.

    A no-op (seconds) when ``out_dir`` already holds this build: same parameters, same JSON
    bytes, same image files (names, sizes, mtimes). Otherwise it builds into a temporary
    sibling folder and renames it into place at the end, so an interrupted run leaves nothing
    a later run trusts. ``on_bad_image="skip"`` skips unreadable images (and counts them)
    instead of raising. See the module docstring for the caption policies.
    """
    karpathy_json, image_dir, out_dir = Path(karpathy_json), Path(image_dir), Path(out_dir)
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r}; use 'error' or 'skip'.")
    params = {"image_size": image_size, "min_word_freq": min_word_freq, "max_len": max_len,
              "captions_per_image": captions_per_image, "seed": seed,
              "on_bad_image": on_bad_image}
    if _is_current(out_dir, params, karpathy_json, image_dir):
        return out_dir
    data = load_karpathy_json(karpathy_json)
    inputs = _inputs_digest(karpathy_json, image_dir, data["images"])
    check_free_space(out_dir.parent, len(data["images"]) * image_size ** 2 * 3,
                     f"the prepared {image_size}-px image arrays of {karpathy_json.name}")
    for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp-*"),
                  *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):  # left by a killed run, not a live one
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        report = _build(data, image_dir, tmp, params)
        manifest = {"format_version": FORMAT_VERSION, "params": params, "inputs": inputs,
                    "source": {"karpathy_json": str(karpathy_json), "image_dir": str(image_dir)},
                    "files": sorted(p.name for p in tmp.iterdir()), "report": asdict(report)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report.empty_captions or report.long_captions or report.images_without_captions \
            or report.bad_images:
        print(f"prepare_dataset({out_dir.name}): {report.summary()}")
    return out_dir


def _pid_alive(pid: str) -> bool:
    """True when ``pid`` names a running process (another build may be writing its folder)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``tmp`` folder (two renames, then delete the old)."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _build(data: dict, image_dir: Path, out: Path, params: dict) -> PrepareReport:
    """Tokenise, build the train vocabulary, pick targets and write every split into ``out``."""
    report = PrepareReport()
    max_len, cpi = params["max_len"], params["captions_per_image"]
    rng = np.random.default_rng(params["seed"])
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for index, image in enumerate(data["images"]):
        refs = [caption_of(s) for s in image["sentences"]]
        report.empty_captions += sum(not r for r in refs)
        refs = [r for r in refs if r]
        targets = [r for r in refs if len(r) <= max_len]
        report.long_captions += len(refs) - len(targets)
        if not targets:
            report.images_without_captions += 1
            continue
        report.images_padded += len(targets) < cpi
        pick = rng.choice(len(targets), size=cpi, replace=len(targets) < cpi)
        records[KARPATHY_SPLITS[image["split"]]].append(
            {"image": image, "index": index, "references": refs,
             "targets": [targets[i] for i in pick]})
    vocab = Vocab.build([r for rec in records["train"] for r in rec["references"]],
                        params["min_word_freq"])
    vocab.save(out / "vocab.json")
    report.vocab_size = len(vocab)
    for split in SPLITS:
        _write_split(split, records[split], vocab, image_dir, out, params, report)
    report.captions_used = sum(report.images.values()) * cpi
    return report


def _write_split(split: str, records: list[dict], vocab: Vocab, image_dir: Path, out: Path,
                 params: dict, report: PrepareReport) -> None:
    """Images into a memmapped .npy (one at a time), captions, lengths and meta of one split."""
    size, max_len = params["image_size"], params["max_len"]
    path = out / f"{split}_images.npy"
    images = open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3))
    kept: list[dict] = []
    for rec in tqdm(records, desc=f"Preparing {split}", unit="img", leave=False,
                    disable=len(records) < 200):
        file = _image_path(image_dir, rec["image"])
        try:
            pixels, (width, height) = load_image(file, size)
        except DatasetError:
            if params["on_bad_image"] == "error":
                raise
            report.bad_images.append(str(file))
            continue
        images[len(kept)] = pixels
        kept.append({**rec, "width": width, "height": height})
    images.flush()
    del images
    if len(kept) < len(records):
        _shrink(path, len(kept))
    captions = np.full((len(kept) * params["captions_per_image"], max_len + 2), vocab.pad_id,
                       dtype=np.int64)
    lengths = np.zeros(len(captions), dtype=np.int64)
    row = 0
    for rec in kept:
        for tokens in rec["targets"]:
            captions[row] = encode_caption(tokens, vocab, max_len)
            lengths[row] = len(tokens) + 2
            row += 1
    np.save(out / f"{split}_captions.npy", captions)
    np.save(out / f"{split}_lengths.npy", lengths)
    meta = [{"id": rec["image"].get("imgid", rec["index"]), "filename": rec["image"]["filename"],
             "width": rec["width"], "height": rec["height"], "references": rec["references"],
             **({"objects": rec["image"]["objects"]} if "objects" in rec["image"] else {})}
            for rec in kept]
    (out / f"{split}_meta.json").write_text(json.dumps(meta))
    report.images[split] = len(kept)


def _shrink(path: Path, n: int, chunk: int = 256) -> None:
    """Keep only the first ``n`` images of a .npy file (copied in chunks, never all in RAM)."""
    src = np.load(path, mmap_mode="r")
    small = path.with_name("shrink-" + path.name)
    dst = open_memmap(small, mode="w+", dtype=src.dtype, shape=(n, *src.shape[1:]))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        dst[start:stop] = src[start:stop]
    dst.flush()
    del src, dst
    os.replace(small, path)


# ---------------------------------------------------------------- serving

class CaptionDataset(torch.utils.data.Dataset):
    """A prepared split. Train: item k = (image, caption k, length); val/test: item j =
    (image j, its first caption, length, all its captions). Images are uint8 (3, H, W).

    The image memmap opens lazily in each process (none is pickled), so DataLoader
    ``num_workers > 0`` works.
    """

    def __init__(self, out_dir: str | Path, split: str):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {', '.join(SPLITS)}.")
        self.out_dir, self.split = Path(out_dir), split
        if not (self.out_dir / "manifest.json").exists():
            raise FileNotFoundError(f"{self.out_dir} is not a prepared dataset (no manifest.json);"
                                    " build it with ensure_dataset(profile) or prepare_dataset.")
        manifest = json.loads((self.out_dir / "manifest.json").read_text())
        self.captions_per_image = manifest["params"]["captions_per_image"]
        self.vocab = Vocab.load(self.out_dir / "vocab.json")
        self.meta = json.loads((self.out_dir / f"{split}_meta.json").read_text())
        self.captions = torch.from_numpy(np.load(self.out_dir / f"{split}_captions.npy"))
        self.lengths = torch.from_numpy(np.load(self.out_dir / f"{split}_lengths.npy"))
        self._images = None

    @property
    def images(self) -> np.ndarray:
        """The split's images (N, H, W, 3) uint8, memory-mapped on first use."""
        if self._images is None:
            self._images = np.load(self.out_dir / f"{self.split}_images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        n = len(self.meta)
        return n * self.captions_per_image if self.split == "train" else n

    def image(self, j: int) -> torch.Tensor:
        """Image j as a uint8 tensor (3, H, W)."""
        return torch.from_numpy(np.ascontiguousarray(self.images[j].transpose(2, 0, 1)))

    def __getitem__(self, k: int):
        if self.split == "train":
            caption = self.captions[k].clone()  # a clone: a view would ship the whole storage
            return self.image(k // self.captions_per_image), caption, int(self.lengths[k])
        first = k * self.captions_per_image
        captions = self.captions[first: first + self.captions_per_image].clone()
        return self.image(k), captions[0], int(self.lengths[first]), captions


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
                           on_bad_image="error" if profile.dataset == "shapes" else "skip")


def _download(dataset: str, root: Path) -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) of a real dataset, downloaded if needed."""
    from . import download

    getter = {"flickr8k": download.download_flickr8k, "flickr30k": download.download_flickr30k,
              "coco": download.download_coco2014}[dataset]
    files = getter(root)
    return Path(files.karpathy_json), Path(files.image_dir)


# ---------------------------------------------------------------- your own photos and captions

IMAGE_COLUMNS = ("image", "images", "image_file", "image_name", "image_path", "filename",
                 "file_name", "file", "path", "img", "photo")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "description", "comment", "raw")
CUSTOM_JSON = "dataset_custom.json"


def custom_json_path() -> Path:
    """Where ``make_custom_dataset`` writes the Karpathy JSON of your own captions."""
    return data_root() / "raw" / "custom" / CUSTOM_JSON


def make_custom_dataset(captions_file: str | Path, image_dir: str | Path, seed: int = 0,
                        val_fraction: float = 0.1, test_fraction: float = 0.1) -> Path:
    """Your photos and captions as the ``custom`` profile's dataset: ``custom_json_path()``.

    Then ``ensure_dataset(get_profile("custom"))`` prepares it like any other dataset.
    """
    return captions_to_karpathy(captions_file, image_dir, custom_json_path(), seed,
                                val_fraction, test_fraction)


def _custom_dataset() -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) written by ``make_custom_dataset``."""
    path = custom_json_path()
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: the 'custom' profile trains on your own photos. Make it first "
            "with `sat data --captions FILE --images DIR` (a CSV or TSV of image file, caption "
            "rows) or sat_helpers.data.make_custom_dataset(FILE, DIR).")
    return path, Path(json.loads(path.read_text())["image_dir"])


def captions_to_karpathy(captions_file: str | Path, image_dir: str | Path, out_json: str | Path,
                         seed: int = 0, val_fraction: float = 0.1,
                         test_fraction: float = 0.1) -> Path:
    """Turn a CSV or TSV of (image file, caption) rows into a Karpathy JSON with a seeded split.

    An image may have any number of rows (one caption each); its path is relative to
    ``image_dir``. Images, not captions, are split: ``val_fraction`` and ``test_fraction``
    of them (at least one each), chosen by ``seed``. Every bad row is reported at once, by
    file and line, in a DatasetError; the JSON is written atomically.
    """
    captions_file, image_dir, out_json = Path(captions_file), Path(image_dir), Path(out_json)
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: no such folder of images (--images).")
    captions: dict[str, list[str]] = {}
    for name, caption in read_captions_file(captions_file, image_dir):
        captions.setdefault(name, []).append(caption)
    names = list(captions)
    if len(names) < 3:
        raise DatasetError(f"{captions_file}: {len(names)} image(s); a train, val and test "
                           "split need at least 3 (a few hundred to learn anything).")
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = max(1, round(test_fraction * len(names)))
    n_val = max(1, round(val_fraction * len(names)))
    split_of = {names[i]: "test" if rank < n_test else "val" if rank < n_test + n_val
                else "train" for rank, i in enumerate(order)}
    images, sentid = [], 0
    for imgid, name in enumerate(names):
        sentences = [{"raw": raw, "tokens": tokenize(raw), "imgid": imgid, "sentid": sentid + k}
                     for k, raw in enumerate(captions[name])]
        images.append({"filename": name, "imgid": imgid, "split": split_of[name],
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        sentid += len(sentences)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_name(f".{out_json.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"dataset": "custom", "source": str(captions_file.resolve()),
                               "image_dir": str(image_dir.resolve()), "split_seed": seed,
                               "images": images}))
    os.replace(tmp, out_json)
    return out_json


def read_captions_file(path: str | Path, image_dir: str | Path) -> list[tuple[str, str]]:
    """The (image file, caption) rows of a CSV or TSV, checked; errors name file and line.

    A tab in the first line makes it a TSV, else it is a CSV (quote captions with commas). A
    first row naming the columns (image/filename/file/path..., caption/text/sentence...; any
    case) is a header, and the columns may then come in any order; without one, each row is
    exactly: image file, caption. Flickr8k's ``name.jpg#0`` form is understood.
    """
    path, image_dir = Path(path), Path(image_dir)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the captions file ({e}).") from e
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte {e.start}); save the file as "
                           "UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet).") from e
    first_line = text.lstrip().split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first_line else ",")
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{path}: no rows; expected lines of: image file, caption.")
    columns, rows = _header(path, rows)
    errors, kept, checked = [], [], {}
    for line, row in rows:
        if len(row) != columns["count"]:
            errors.append(f"{path}:{line}: {len(row)} column(s), expected {columns['count']} "
                          f"({'as the header' if columns['header'] else 'image file, caption'})"
                          "; quote a caption that holds the separator")
            continue
        name, caption = row[columns["image"]].strip(), row[columns["caption"]].strip()
        problem = _row_problem(image_dir, name, caption, checked)
        if isinstance(problem, str):
            errors.append(f"{path}:{line}: {problem}")
        else:
            kept.append((problem.relative_to(image_dir).as_posix() if problem.is_relative_to(
                image_dir) else str(problem), caption))
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DatasetError(f"{path}: {len(errors)} bad row(s) of {len(rows)}:\n  {shown}{more}\n"
                           "Fix or delete them and run again.")
    return kept


def _header(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[dict, list]:
    """Which columns hold the image and the caption, and the data rows (header removed)."""
    cells = [c.strip().lower().replace(" ", "_").replace("-", "_") for c in rows[0][1]]
    image = next((i for i, c in enumerate(cells) if c in IMAGE_COLUMNS), None)
    caption = next((i for i, c in enumerate(cells) if c in CAPTION_COLUMNS), None)
    if image is None and caption is None:
        return {"header": False, "count": 2, "image": 0, "caption": 1}, rows
    if image is None or caption is None:
        missing, names = (("image", IMAGE_COLUMNS) if image is None
                          else ("caption", CAPTION_COLUMNS))
        raise DatasetError(f"{path}:{rows[0][0]}: the header {rows[0][1]} names no {missing} "
                           f"column; call it one of {', '.join(names)}.")
    return {"header": True, "count": len(cells), "image": image, "caption": caption}, rows[1:]


def _row_problem(image_dir: Path, name: str, caption: str, checked: dict) -> Path | str:
    """The image path of one row, or what is wrong with it (``checked`` caches image checks)."""
    if not name:
        return "no image file name"
    if not tokenize(caption):
        return f"empty caption for {name!r}" if not caption else \
            f"caption {caption!r} of {name!r} has no words"
    file = image_dir / name
    if not file.is_file() and re.search(r"#\d+$", name):  # Flickr8k.token.txt: name.jpg#0
        file = image_dir / re.sub(r"#\d+$", "", name)
    if file not in checked:
        checked[file] = _unreadable(file)
    return file if checked[file] is None else f"{name!r}: {checked[file]}"


def _unreadable(file: Path) -> str | None:
    """Why an image file cannot be used, or None when Pillow can read it."""
    if not file.is_file():
        return f"no such image file {file}"
    try:
        with Image.open(file) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{file} is not a readable image ({type(e).__name__}: {e})"
    return None

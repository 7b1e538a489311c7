"""Notebook 02's checks: cutting a classifier down to its feature map, and annotation vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..encoder import Encoder, annotations, get_spec
from .machinery import Answer, exercise, fail, matches, same_tensor

_TRUNK = get_spec("resnet18").trunk


def _cut(model: nn.Module) -> nn.Module:
    return nn.Sequential(*(m for _, m in _TRUNK(model)))


@exercise("cut_classifier", blocked=(get_spec, _TRUNK, Encoder.__init__, Encoder.feature_map),
          stand_in=_cut, code_hint="nn.Sequential(*list(model.children())[:-2]): every child "
                                   "but the last two (avgpool, fc), the same objects.",
          write_from="the model's own children (model.children()), as the task says")
def cut_classifier(answer: Answer) -> int:
    """fn(resnet18) -> the module up to its last feature map, as the package's resnet18 trunk."""
    import torchvision

    name = "cut_classifier"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    reference = _cut(model).eval()
    inputs = "torchvision's resnet18 (random weights) on 2 images of 3×64×64"
    own = {id(p) for p in model.parameters()}
    cut = answer(model, inputs=inputs)
    if not isinstance(cut, nn.Module):
        fail(name, f"returned a {type(cut).__name__}, expected an nn.Module.",
             "wrap the layers you keep in one module (nn.Sequential keeps their order).")
    foreign = [n for n, p in cut.named_parameters() if id(p) not in own]
    if foreign:
        fail(name, f"{len(foreign)} of the module's parameters (first: {foreign[0]}) are not the "
             "model's own: new layers or copies (copy.deepcopy).", "reuse the model's layers "
             "themselves: the encoder must carry the pretrained weights, and fine-tuning must "
             "train the model's own.")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = answer.run(cut.eval(), x, inputs=inputs)
        want = reference(x)
    concept = "keep the stem and the four residual stages; drop the pooling and the classifier."
    if isinstance(got, Tensor):
        if got.dim() == 2:
            concept = (f"the output {tuple(got.shape)} is one vector per image: the classifier "
                       "(avgpool, fc) is still there. Drop both; keep the feature map.")
        elif got.shape[-2:] == (1, 1):
            concept = ("the output is pooled to 1×1: the global average pooling is still there, "
                       "and with it every position. Drop avgpool too.")
        elif got.dim() == 4 and got.shape[1] != want.shape[1]:
            concept = (f"{got.shape[1]} channels at {tuple(got.shape[-2:])}: the cut is at "
                       "another block; the last residual stage, layer4, gives 512 channels at "
                       "stride 32.")
        elif got.shape == want.shape:
            concept = "the right shape but other numbers: keep the layers in the model's order."
    same_tensor(name, "the feature map", got, want, concept, inputs, atol=1e-4)
    return 1


def _annotations(fmap: Tensor) -> Tensor:
    return annotations(fmap)


@exercise("to_annotations", blocked=(annotations, Encoder.forward), stand_in=_annotations,
          code_hint="fmap.permute(0, 2, 3, 1) gives (B, H, W, D); .reshape(B, H * W, D) then "
                    "reads the cells row by row.",
          write_from="tensor operations on the feature map (permute, reshape)")
def to_annotations(answer: Answer) -> int:
    """fn(feature_map (B, D, H, W)) -> (B, H·W, D), cells row by row (``encoder.annotations``)."""
    name = "to_annotations"
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 3, 4), (1, 7, 2, 2), (3, 4, 4, 3)]
    for shape in shapes:
        fmap = torch.randn(*shape, generator=g)
        inputs = f"a feature map of shape {shape}"
        got = answer(fmap.clone(), inputs=inputs)
        want = annotations(fmap)
        b, d, h, w = shape
        concept = f"(B, H·W, D) = ({b}, {h * w}, {d}): one D-vector per cell of the H×W grid."
        if matches(got, fmap.reshape(b, -1, d)) and not matches(got, want):
            concept = ("you reshaped without moving the channels last, so each 'vector' mixes "
                       "several cells of one channel: put D last first, then flatten the grid.")
        elif matches(got, fmap.permute(0, 3, 2, 1).reshape(b, -1, d)) and not matches(got, want):
            concept = ("the cells come column by column: annotation i·W + j must be the cell "
                       "(row i, column j).")
        same_tensor(name, "the annotations", got, want, concept, inputs)
    return len(shapes)

"""The one way an image is opened, and how it becomes the encoder's input.

Every image, a dataset's file being prepared, a file given to ``sat caption`` or a photo
uploaded to the explorer, goes through :func:`open_image`: Pillow's decompression-bomb limit
as an error, the EXIF orientation applied (a phone stores a portrait photo sideways, with a
tag that says how to turn it), and any mode made 8-bit RGB (transparency over white, 16-bit
values scaled). :func:`square` then makes it S x S in one of :data:`RESIZE_MODES` (the
profile's ``resize``), so :func:`image_tensor` of a file equals the prepared dataset's copy of
it, and :func:`annotation_vectors` turns a batch into what the decoder attends over, as in
training.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .captions import DatasetError

ORIENTATION = 0x0112  # the EXIF orientation tag
ImageSource = str | Path | bytes | Image.Image


def _decode(source: ImageSource, draft: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright RGB image, its (width, height) as displayed) of a path, bytes or PIL image."""
    if isinstance(source, Image.Image):  # the caller's image: read, never closed here
        return _upright(source, None)  # no draft: it would change the caller's image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return _upright(image, draft)


def _upright(image: Image.Image, draft: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The image turned as its EXIF orientation says, in RGB; its displayed (width, height)."""
    size = image.size
    if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
        size = size[::-1]  # EXIF says: displayed turned by 90 degrees
    if draft and image.format == "JPEG":  # decode at a reduced scale: much faster
        image.draft("RGB", (draft, draft))
    return to_rgb(ImageOps.exif_transpose(image)), size


def open_image(source: ImageSource, *, name: str | None = None,
               draft: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(the upright 8-bit RGB image, its displayed (width, height)) of a file, bytes or image.

    ``draft`` lets a JPEG decode at a reduced scale no smaller than ``draft`` pixels (what a
    resize to that size would keep). Raises a DatasetError naming the file (``name`` for bytes).
    """
    name = name or (str(source) if isinstance(source, str | Path) else "the image")
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise DatasetError(f"{name}: no such image file")
    try:
        return _decode(source, draft)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(
            f"{name}: image larger than Pillow's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {e}. If you trust the "
            "file, raise that limit first; else remove the file.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{name}: cannot read it as an image ({type(e).__name__}: {e}); it is empty, "
            "truncated or not an image: pass a JPEG or PNG file.") from e


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


RESIZE_MODES = ("squash", "shorter_side_crop")
"""How an image becomes S x S (``profile.resize``): ``"squash"`` resizes the whole image to
S x S, aspect ratio not kept (the course's Shapes are square, so nothing is lost there);
``"shorter_side_crop"`` resizes the shorter side to S and keeps the centred S x S, the
preprocessing the paper's first author describes for VGG features (the ``paper`` profile)."""


def check_resize(resize: str) -> None:
    """Raise a ValueError naming the valid modes unless ``resize`` is one of RESIZE_MODES."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: use one of {list(RESIZE_MODES)} "
                         "(the profile's resize field).")


def model_view(image: Image.Image, resize: str = "squash") -> Image.Image:
    """The part of an image the model sees: all of it, or its centred square (side: the shorter).

    Resizing that part to S x S is resizing the shorter side to S and cropping the centre
    (only the resampling filter's reach across the cut edges differs), so an attention map
    drawn over it covers exactly what the model attended over.
    """
    check_resize(resize)
    if resize == "squash":
        return image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def square(image: Image.Image, size: int, resize: str = "squash") -> np.ndarray:
    """An RGB image as uint8 (size, size, 3), as the datasets store every image (``resize``)."""
    image = model_view(image, resize)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | Path, image_size: int,
               resize: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 RGB array (S, S, 3), (width, height) after EXIF rotation) of one image file."""
    image, size = open_image(path, draft=image_size)
    return square(image, image_size, resize), size


def image_tensor(image: ImageSource | np.ndarray | torch.Tensor, size: int,
                 resize: str = "squash") -> torch.Tensor:
    """Any image as uint8 (3, H, W): a file, bytes or PIL image opened and made size x size.

    A (3, H, W) tensor or (H, W, 3) array is taken as it is (a dataset's image already is).
    """
    if isinstance(image, torch.Tensor):
        return image if image.shape[0] == 3 else image.permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    pixels = square(open_image(image, draft=size)[0], size, resize)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def normalise(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, size, size): resized if needed, then (x - mean) / std."""
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def image_to_input(image: Image.Image, size: int, mean: tuple, std: tuple,
                   resize: str = "squash") -> torch.Tensor:
    """PIL image -> float (3, size, size) normalised: what ``Encoder.transform`` does."""
    return normalise(image_tensor(image, size, resize)[None], size, mean, std)[0]


def annotation_vectors(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> the encoder's annotation vectors (B, P, C), as in training.

    A frozen encoder's (no ``trainable_blocks``) are rounded to float16 and back, as the
    feature cache holds them, so a file captions exactly as its cached copy does.
    """
    features = encoder(encoder.preprocess(images))
    return features if encoder.trainable_blocks else features.half().float()


def check_readable(file: Path) -> str | None:
    """Why an image file cannot be used, or None when Pillow can read it (header only)."""
    if not file.is_file():
        return f"no such image file {file}"
    try:
        with Image.open(file) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{file} is not a readable image ({type(e).__name__}: {e})"
    return None

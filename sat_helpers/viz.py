"""Where the model looked: attention over the image word by word, and an interactive explorer.

:func:`plot_attention` draws the paper's figure (Xu et al. 2015, Fig. 2-3): one panel per
word, the image lit where the model attended and dark elsewhere. :func:`explore` wraps
captioning in ipywidgets (pick a test image or upload your own, a beam-size slider, a slider
over the caption's words); it works in JupyterLab, Jupyter Notebook and on Colab, with
ipywidgets 7 or 8.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .captions import DatasetError
from .images import annotation_vectors, image_tensor, model_view, open_image, to_rgb
from .pointing import upsample_attention
from .search import Caption, beam_search


def image_array(image) -> np.ndarray:
    """A PIL image, (H, W, 3) array or (3, H, W) tensor as float (H, W, 3) RGB in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.permute(1, 2, 0) if image.shape[0] in (1, 3) else image).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"image must be PIL, (H, W, 3) or (3, H, W); got shape {array.shape}")
    array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
    scale = 255.0 if array.dtype == np.uint8 or array.max() > 1.0 else 1.0
    return (array.astype(np.float32) / scale).clip(0.0, 1.0)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) maps, edges padded by reflection."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    pad = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    kernel = kernel[radius - pad : radius + pad + 1]
    maps = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(maps, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))


def attention_maps(alphas, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Attention (T, P) on a square grid -> (T, H, W) maps over the image, each max-scaled to 1.

    Bilinear upsampling (torch), then with ``smooth`` a Gaussian blur with σ of half a grid
    cell, as the paper's figures do; each map is divided by its maximum for display.
    """
    alphas = torch.as_tensor(alphas).detach().cpu().float()
    alphas = alphas.unsqueeze(0) if alphas.dim() == 1 else alphas
    grid = math.isqrt(alphas.shape[-1])
    if grid * grid != alphas.shape[-1]:
        raise ValueError(f"attention has {alphas.shape[-1]} positions, not a square grid")
    maps = torch.from_numpy(upsample_attention(alphas, grid, tuple(size))).float().unsqueeze(1)
    if smooth:
        maps = _gaussian_blur(maps, sigma=0.5 * max(size) / grid)
    maps = maps.squeeze(1)
    return (maps / maps.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """The image lit by a (H, W) map in [0, 1]: full where attended, ``floor`` elsewhere."""
    return image * (floor + (1.0 - floor) * heat[..., None])


def plot_attention(image, words: Sequence[str], alphas, smooth: bool = True, columns: int = 5,
                   title: str | None = None):
    """Paper-style figure: the image, then one panel per word with its attention map over it.

    ``alphas`` (T, P), one map per word; a map more than the words (the caption's <end>)
    gets the panel "<end>". Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    img = image_array(image)
    words = list(words)
    alphas = torch.as_tensor(alphas)
    if alphas.shape[0] not in (len(words), len(words) + 1):
        raise ValueError(f"{len(words)} words but {alphas.shape[0]} attention maps; pass "
                         "caption.words and caption.alphas of the same Caption")
    words += ["<end>"] * (alphas.shape[0] - len(words))
    maps = attention_maps(alphas, img.shape[:2], smooth)
    n = len(words) + 1
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(img)
    axes.flat[0].set_title("image")
    for ax, word, heat in zip(axes.flat[1:], words, maps, strict=False):
        ax.imshow(overlay(img, heat))
        ax.set_title(word)
    fig.suptitle(title or " ".join(w for w in words if w != "<end>"))
    fig.tight_layout()
    return fig


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, content) of FileUpload's value, in ipywidgets 8 (tuple of dicts) or 7 (dict) form."""
    if isinstance(value, Mapping):  # ipywidgets 7: {name: {"metadata": {...}, "content": b""}}
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]  # ipywidgets 8


def _png(array: np.ndarray, width: int) -> bytes:
    """A float (H, W, 3) image in [0, 1] as PNG bytes, resized to ``width`` pixels wide."""
    image = Image.fromarray((array * 255).round().astype(np.uint8))
    height = max(1, round(image.height * width / image.width))
    buffer = io.BytesIO()
    image.resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer:
    """The attention explorer's widgets and state; display it in a notebook cell.

    ``choose`` (image), ``upload`` (FileUpload), ``beam`` and ``word`` (sliders), ``picture``
    (the lit image), ``text`` (the caption, current word in bold), ``status`` (errors);
    ``caption`` is the current :class:`Caption`.
    """

    def __init__(self, decoder, vocab, encoder, images, max_len: int, beam_size: int,
                 length_penalty: float, smooth: bool, width: int):
        import ipywidgets as widgets

        self.decoder, self.vocab, self.encoder = decoder, vocab, encoder
        self.max_len, self.length_penalty, self.smooth, self.width = (
            max_len, length_penalty, smooth, width)
        self.images: dict[str, Image.Image | np.ndarray | torch.Tensor] = dict(images)
        self._features: dict[str, torch.Tensor] = {}
        self.caption: Caption | None = None
        self.choose = widgets.Dropdown(options=list(self.images), description="image")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False,
                                         description="your image")
        self.beam = widgets.IntSlider(value=beam_size, min=1, max=10, description="beam size")
        self.word = widgets.IntSlider(value=0, min=0, max=0, description="word")
        # drawn `width` pixels wide, shown at that size (not stretched to the output's width)
        self.picture = widgets.Image(format="png", width=width,
                                     layout=widgets.Layout(width=f"{width}px"))
        self.text = widgets.HTML()
        self.status = widgets.HTML()
        self.ui = widgets.VBox([widgets.HBox([self.choose, self.upload]), self.beam, self.word,
                                self.text, self.picture, self.status])
        self.choose.observe(lambda _: self.recaption(), names="value")
        self.beam.observe(lambda _: self.recaption(), names="value")
        self.word.observe(lambda _: self.redraw(), names="value")
        self.upload.observe(lambda change: self.add_uploads(change["new"]), names="value")
        if self.images:
            self.recaption()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)

    def features(self, name: str) -> torch.Tensor:
        """The annotation vectors (1, P, C) of one image, computed once."""
        if name not in self._features:  # the image as the datasets hold it, encoded as in training
            param, image = next(self.decoder.parameters()), self.images[name]
            if isinstance(image, np.ndarray) and image.dtype != np.uint8:
                image = (image_array(image) * 255).round().astype(np.uint8)
            pixels = image_tensor(image, self.encoder.input_size, self.encoder.resize)
            with torch.no_grad():
                features = annotation_vectors(self.encoder.eval(), pixels[None].to(param.device))
            self._features[name] = features.to(param.dtype)
        return self._features[name]

    def recaption(self) -> None:
        """Caption the chosen image with the slider's beam size; reset the word slider."""
        name = self.choose.value
        if name is None:
            return
        self.caption = beam_search(self.decoder, self.features(name), self.beam.value,
                                   self.max_len, vocab=self.vocab,
                                   length_penalty=self.length_penalty)[0]
        n_maps = self.caption.alphas.shape[0]
        self.word.max = max(0, n_maps - 1)
        self.word.value = min(self.word.value, self.word.max)
        self.redraw()

    def redraw(self) -> None:
        """Show the attention map of the slider's word and the caption with that word in bold."""
        if self.caption is None:
            return
        words = self.caption.words + ["&lt;end&gt;"] * self.caption.ended
        i = self.word.value
        shown = [f"<b><u>{w}</u></b>" if j == i else w for j, w in enumerate(words)]
        self.text.value = (f"<p style='font-size:1.2em'>{' '.join(shown)}</p>"
                           f"<small>beam {self.beam.value}, log p = {self.caption.score:.2f}"
                           "</small>")
        img = self.images[self.choose.value]
        if isinstance(img, Image.Image):  # a file's image: the part the model attended over
            img = model_view(img, self.encoder.resize)
        img = image_array(img)
        heat = attention_maps(self.caption.alphas[i], img.shape[:2], self.smooth)[0]
        self.picture.value = _png(overlay(img, heat), self.width)

    def add_uploads(self, value) -> None:
        """Add uploaded images to the choices and select the last; report unreadable files."""
        errors = []
        for name, content in uploaded_files(value):
            try:
                image, _ = open_image(content, name=name)  # EXIF orientation applied
            except DatasetError as err:
                errors.append(str(err))
                continue
            self.images[name] = image
            self.choose.options = list(self.images)
            self.choose.value = name
        self.status.value = "<br>".join(f"<span style='color:#b00'>{e}</span>" for e in errors)


def explore(decoder, vocab, encoder, images: Mapping | Sequence = (), *, max_len: int = 20,
            beam_size: int = 3, length_penalty: float = 0.0, smooth: bool = True,
            width: int = 320) -> Explorer:
    """An ipywidgets attention explorer: choose or upload an image, set the beam, slide over words.

    ``images``: a mapping name -> image, or a sequence of images (PIL, (H, W, 3) arrays or
    uint8 (3, H, W) tensors); ``encoder``, the run's (``checkpoint.load_encoder``), turns each,
    made square at its ``input_size`` as the datasets are (its ``resize``), into annotation
    vectors. Put the
    returned Explorer last in a cell.
    """
    if not isinstance(images, Mapping):
        images = {f"image {i}": image for i, image in enumerate(images)}
    return Explorer(decoder, vocab, encoder, images, max_len, beam_size, length_penalty,
                    smooth, width)

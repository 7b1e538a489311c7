"""The book's pages: each executed notebook made ready for the web, and the landing page.

A chapter is the executed notebook with both editions' Colab links in its title cell, its
widgets as static HTML (widgets.py) and its figures scaled to the page's width. The landing
page says what the course is, maps it, says how to run it and shows the run's headline results.
"""

from __future__ import annotations

import base64
import copy
import io
import re
from collections.abc import Mapping, Sequence

from PIL import Image

from sat_helpers.config import GITHUB_REPO
from sat_helpers.editions import COLAB

from .widgets import STATE, VIEW, static_output, widget_models

FIGURE_WIDTH = 1000
"""Widest figure kept, in pixels: the page's column is narrower, so wider ones are scaled."""
EDITIONS = (("teacher edition", "notebooks"), ("student edition", "student"))
REPO_FILES = f"https://github.com/{GITHUB_REPO}/blob/main/"
"""Where a notebook's links to the repository's other files (docs/, benchmarks/) point."""
_REPO_LINK = re.compile(r"\]\(\.\./((?:[\w.-]+/)*[\w.-]+\.(?!ipynb\b)\w+(?:#[\w-]*)?)\)")


def repo_links(text: str) -> str:
    """Markdown links from a notebook to a repository file (`../docs/speed.md`) made absolute:
    the book holds the notebooks only, so they point at the file on GitHub."""
    return _REPO_LINK.sub(lambda m: f"]({REPO_FILES}{m.group(1)})", text)


def colab_links(name: str) -> str:
    """Markdown: the notebook's Colab links, both editions (the links editions.py defines)."""
    links = " · ".join(f"[{label}]({COLAB.format(folder=folder, name=name)})"
                       for label, folder in EDITIONS)
    return f"**Open in Colab**: {links}"


def _text(value: str | Sequence[str]) -> str:
    """A notebook string field, which nbformat may store as a list of lines."""
    return value if isinstance(value, str) else "".join(value)


def with_colab_links(title: str, name: str) -> str:
    """The title cell with its one Colab link replaced by the links of both editions."""
    link = f"[Open in Colab]({COLAB.format(folder='notebooks', name=name)})"
    if link not in title:
        raise ValueError(f"{name}: the title cell has no Colab link {link}; the book puts "
                         "both editions' links in its place")
    return title.replace(link, colab_links(name))


def fit_png(data: str, width: int = FIGURE_WIDTH) -> str:
    """A base64 PNG scaled down to `width` pixels when wider (aspect kept, an alpha channel
    that is opaque everywhere dropped), else as it was."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.width <= width:
        return data
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    height = round(image.height * width / image.width)
    out = io.BytesIO()
    image.resize((width, height), Image.Resampling.LANCZOS).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _web_outputs(outputs: Sequence[dict], models: Mapping[str, dict]) -> list[dict]:
    kept = []
    for output in outputs:
        data = output.get("data", {})
        if VIEW in data:
            output = static_output(output, models)
            if output is None:
                continue
        elif "image/png" in data:
            output = {**output, "data": {**data, "image/png": fit_png(_text(data["image/png"]))}}
        kept.append(output)
    return kept


def chapter(nb: Mapping, name: str) -> dict:
    """The executed notebook `name` as the book shows it (the input is left unchanged)."""
    page = copy.deepcopy(dict(nb))
    models = widget_models(page)
    page.get("metadata", {}).get("widgets", {}).pop(STATE, None)
    title = page["cells"][0]
    title["source"] = with_colab_links(_text(title["source"]), name)
    for cell in page["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = _web_outputs(cell.get("outputs", []), models)
        elif cell["cell_type"] == "markdown":
            cell["source"] = repo_links(_text(cell["source"]))
    return page


def title_and_summary(nb: Mapping) -> tuple[str, str]:
    """The notebook's title (its first heading) and its "You will learn" paragraph."""
    text = _text(nb["cells"][0]["source"])
    title = re.search(r"^#\s+(.+)$", text, re.M)
    learn = re.search(r"\*\*You will learn\*\*\s+(.+?)(?:\n\s*\n|\n\*\*|\Z)", text, re.S)
    return (title.group(1).strip() if title else "",
            " ".join(learn.group(1).split()) if learn else "")


def jupyter_anchor(title: str) -> str:
    """A heading's anchor as Jupyter makes it (spaces to hyphens, case kept): the notebooks'
    links between them (`03_attention.ipynb#Notation`) resolve in the book as in Jupyter."""
    return title.strip().replace(" ", "-")

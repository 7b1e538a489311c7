"""The embedded Shapes dataset: coloured shapes on a noisy background, five captions each.

Every image holds 1-3 non-overlapping objects (a shape, a colour, a size and a box) and
comes with five different English captions built from templates ("a small green triangle
to the left of a large red circle", "two circles and a star", ...). Everything is drawn from
a seed, so the same call always writes the same JSON bytes and the same pixels. The output
is a Karpathy-format JSON (as for Flickr8k/30k and COCO) plus an ``objects`` field with the
ground-truth box of every object, so the course can measure where the model looks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
SIZES = ("small", "large")
SIZE_RANGE = {"small": (0.14, 0.18), "large": (0.27, 0.35)}
"""Side of an object's box as a fraction of the image side (small >= 31 px at 224 px)."""

SHAPE_WORDS = {s: (s,) for s in SHAPES} | {"square": ("square", "box")}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
PLURAL = {"cross": "crosses", "box": "boxes"}

OBJECT_WORDS: dict[str, tuple[str, str]] = {
    **{w: ("shape", s) for s, ws in SHAPE_WORDS.items() for w in ws},
    **{PLURAL.get(w, w + "s"): ("shape", s) for s, ws in SHAPE_WORDS.items() for w in ws},
    **{c: ("colour", c) for c in COLOURS},
    **{w: ("size", s) for s, ws in SIZE_WORDS.items() for w in ws},
}
"""Every caption word that names an object's attribute -> (attribute, value), e.g.
``"boxes" -> ("shape", "square")``: what the pointing game needs to find the named object."""

JSON_NAME = "dataset_shapes.json"
GAP = 4  # minimum pixels between two objects' boxes
JPEG_QUALITY = 90  # JPEG like the real datasets: PNG (zlib) is ~30x slower to write here
COUNTS = ("no", "one", "two", "three")
CAPTIONS = 5  # per image, each from a different template

_POLYGONS = {
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "cross": [(1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
              (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)],
}


def _star() -> list[tuple[float, float]]:
    """A five-pointed star's ten vertices, stretched to fill the unit square."""
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    x, y = radius * np.cos(angles), -radius * np.sin(angles)
    x, y = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    return list(zip(x.tolist(), y.tolist(), strict=True))


_POLYGONS["star"] = _star()


def sample_scene(rng: np.random.Generator, image_size: int) -> list[dict]:
    """1-3 objects with shape, colour, size and a box [x0, y0, x1, y1) that overlaps no other."""
    n_objects = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    while True:
        objects: list[dict] = []
        for _ in range(n_objects):
            obj = _place(rng, image_size, objects)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n_objects:
            return objects


def _place(rng: np.random.Generator, image_size: int, others: list[dict]) -> dict | None:
    """One random object whose box keeps GAP pixels from every box in ``others`` (or None)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = SIZES[rng.integers(len(SIZES))]
    side = int(round(rng.uniform(*SIZE_RANGE[size]) * image_size))
    for _ in range(50):
        x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
        box = [x0, y0, x0 + side, y0 + side]
        if all(_apart(box, o["box"]) for o in others):
            return {"shape": shape, "colour": colour, "size": size, "box": box}
    return None


def _apart(a: list[int], b: list[int]) -> bool:
    """Whether boxes a and b are at least GAP pixels apart along some axis."""
    return (a[2] + GAP <= b[0] or b[2] + GAP <= a[0]
            or a[3] + GAP <= b[1] or b[3] + GAP <= a[1])


def render(objects: list[dict], rng: np.random.Generator, image_size: int) -> Image.Image:
    """Draw the objects on a smooth, tinted, noisy background (RGB, image_size square)."""
    coarse = rng.integers(60, 150, size=(4, 4, 1)) + rng.integers(-20, 21, size=(4, 4, 3))
    coarse = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    image = coarse.resize((image_size, image_size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        colour = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
        elif obj["shape"] == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        else:
            w, h = x1 - 1 - x0, y1 - 1 - y0
            draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _POLYGONS[obj["shape"]]],
                         fill=colour)
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-24, 25, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def relation(a: dict, b: dict) -> str:
    """Where object a is seen from b: 'to the left of', 'to the right of', 'above' or 'below'."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    gaps = {"to the left of": bx0 - ax1, "to the right of": ax0 - bx1,
            "above": by0 - ay1, "below": ay0 - by1}
    return max(gaps, key=gaps.get)


def location(obj: dict, image_size: int) -> str:
    """Where the object's centre lies in a 3x3 grid of the frame, e.g. 'in the top left corner'."""
    x0, y0, x1, y1 = obj["box"]
    col = min(2, int(3 * (x0 + x1) / 2 / image_size))
    row = min(2, int(3 * (y0 + y1) / 2 / image_size))
    names = [["in the top left corner", "at the top", "in the top right corner"],
             ["on the left", "in the middle", "on the right"],
             ["in the bottom left corner", "at the bottom", "in the bottom right corner"]]
    return names[row][col]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: dict, rng: np.random.Generator, size: bool = True, colour: bool = True) -> str:
    """'a large red circle' (with random synonyms; size and colour optional)."""
    words = [_pick(rng, SIZE_WORDS[obj["size"]])] if size else []
    words += [obj["colour"]] if colour else []
    return _article(" ".join(words + [_pick(rng, SHAPE_WORDS[obj["shape"]])]))


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _counted(objects: list[dict], rng: np.random.Generator) -> str:
    """'two red circles and one star': objects grouped by shape, the colour when all agree."""
    groups: dict[str, list[dict]] = {}
    for obj in objects:
        groups.setdefault(obj["shape"], []).append(obj)
    parts = []
    for shape, group in groups.items():
        word = _pick(rng, SHAPE_WORDS[shape])
        colours = {o["colour"] for o in group}
        colour = [colours.pop()] if len(colours) == 1 else []
        noun = word if len(group) == 1 else PLURAL.get(word, word + "s")
        parts.append(" ".join([COUNTS[len(group)], *colour, noun]))
    return _listing(parts)


def describe(objects: list[dict], rng: np.random.Generator, image_size: int) -> list[str]:
    """Five different captions (raw text) of a scene, each from a different template."""
    order = [objects[i] for i in rng.permutation(len(objects))]
    nouns = [_noun(o, rng) for o in order]
    n = len(objects)
    templates = {
        "list": _listing(nouns),
        "there": ("there is " + nouns[0] if n == 1 else
                  f"there are {COUNTS[n]} shapes , " + _listing([_noun(o, rng) for o in order])),
        "count": _counted(order, rng),
        "picture": _pick(rng, ("a picture of ", "an image of ", "a drawing of "))
        + _listing([_noun(o, rng, size=False) for o in order]),
        "where": f"{_noun(order[0], rng)} {location(order[0], image_size)}"
        + ("" if n == 1 else f" and {_counted(order[1:], rng)}"),
    }
    if n >= 2:
        a, b = order[0], order[1]
        tail = f" and {_noun(order[2], rng)}" if n == 3 else ""
        templates["relation"] = f"{nouns[0]} {relation(a, b)} {_noun(b, rng)}{tail}"
        templates["relation_is"] = f"{_noun(b, rng)} is {relation(b, a)} {_noun(a, rng)}"
    names = list(templates)
    chosen = ["relation"] if n >= 2 else []
    rest = [k for k in names if k not in chosen]
    chosen += [rest[i] for i in rng.permutation(len(rest))[: CAPTIONS - len(chosen)]]
    captions = [templates[k] for k in chosen]
    return [_sentence(captions[i]) for i in rng.permutation(len(captions))]


def _sentence(text: str) -> str:
    """'a red circle , a star and ...' -> 'A red circle, a star and ....' (Flickr-like raw)."""
    return text[0].upper() + text[1:].replace(" ,", ",") + "."


def caption_tokens(raw: str) -> list[str]:
    """The tokens of a raw Shapes caption: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z]+", raw.lower())


def make_image(index: int, seed: int, image_size: int) -> tuple[list[dict], list[str], Image.Image]:
    """Image ``index`` of the dataset with this seed: (objects, raw captions, picture)."""
    rng = np.random.default_rng([seed, index])
    objects = sample_scene(rng, image_size)
    captions = describe(objects, rng, image_size)
    return objects, captions, render(objects, rng, image_size)


def _write_one(job: tuple[int, int, int, str, str]) -> dict:
    """Make image ``index``, save it as JPEG and return its Karpathy record (split left out)."""
    index, seed, image_size, image_dir, filename = job
    objects, captions, image = make_image(index, seed, image_size)
    image.save(Path(image_dir) / filename, quality=JPEG_QUALITY)
    sentences = [{"tokens": caption_tokens(raw), "raw": raw, "imgid": index,
                  "sentid": index * len(captions) + k} for k, raw in enumerate(captions)]
    return {"filename": filename, "imgid": index,
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
            "objects": objects}


def split_sizes(n_images: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many images go to train, val and test (val and test rounded, train the rest)."""
    n_val, n_test = round(n_images * val_fraction), round(n_images * test_fraction)
    if n_val + n_test >= n_images:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} leave "
                         f"no training images out of {n_images}; lower them.")
    return {"train": n_images - n_val - n_test, "val": n_val, "test": n_test}


def _usable_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroups where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_shapes_dataset(root: str | Path, n_images: int, image_size: int = 224, seed: int = 0,
                        val_fraction: float = 0.1, test_fraction: float = 0.1,
                        workers: int | None = None) -> Path:
    """Draw the Shapes dataset into ``root`` (images/*.jpg, the Karpathy JSON); return the JSON.

    The dataset is built in a temporary sibling folder and renamed into place at the end, so
    ``root`` either holds a complete dataset or nothing (an existing ``root`` is replaced).
    Images are the first train, then val, then test. ``workers`` processes draw the images
    (default: up to 4 CPUs for 500 images or more, else 1); the result does not depend on it.
    """
    root = Path(root)
    sizes = split_sizes(n_images, val_fraction, test_fraction)
    if image_size < 64:
        raise ValueError(f"image_size={image_size} is too small for Shapes; use 64 or more.")
    workers = workers or (min(4, _usable_cpus()) if n_images >= 500 else 1)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        width = max(5, len(str(n_images - 1)))
        jobs = [(i, seed, image_size, str(tmp / "images"), f"{i:0{width}d}.jpg")
                for i in range(n_images)]
        bar = dict(total=n_images, desc="Drawing Shapes", unit="img")
        if workers > 1:
            chunk = max(1, min(32, n_images // (4 * workers)))
            with multiprocessing.get_context().Pool(workers) as pool:
                records = list(tqdm(pool.imap(_write_one, jobs, chunksize=chunk), **bar))
        else:
            records = [_write_one(job) for job in tqdm(jobs, **bar)]
        splits = [s for s, k in sizes.items() for _ in range(k)]
        images = [{"filename": r["filename"], "imgid": r["imgid"], "split": split,
                   **{k: r[k] for k in ("sentids", "sentences", "objects")}}
                  for r, split in zip(records, splits, strict=True)]
        generator = {"n_images": n_images, "image_size": image_size, "seed": seed,
                     "val_fraction": val_fraction, "test_fraction": test_fraction}
        (tmp / JSON_NAME).write_text(json.dumps(
            {"dataset": "shapes", "generator": generator, "images": images}))
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            root.rename(old)
            shutil.rmtree(old)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / JSON_NAME

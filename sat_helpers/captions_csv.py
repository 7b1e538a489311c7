"""Your own photos and captions: a CSV or TSV of (image file, caption) rows as a Karpathy JSON.

``captions_to_karpathy`` checks every row (file, line, what is wrong, all at once) and writes
the JSON with a seeded split; ``make_custom_dataset`` puts it where the ``custom`` profile
looks, so ``ensure_dataset(get_profile("custom"))`` prepares it like any other dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from .captions import DatasetError, tokenize
from .config import data_root
from .images import check_readable

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
        checked[file] = check_readable(file)
    return file if checked[file] is None else f"{name!r}: {checked[file]}"

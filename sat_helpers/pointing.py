"""The pointing game: does the attention look at the object a caption names?

For every object a generated caption names (a shape word, with the colour and size words in
front of it: its noun phrase), the words' attention maps are upsampled to the image and the
game asks whether their peak lies inside the object's box (the Shapes dataset knows every
box). Baselines: the image's centre, and a uniform map. ``pointing_game`` scores one
caption; ``pointing_summary`` a whole test split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sat_helpers.shapes import OBJECT_WORDS

WORD_CLASSES = ("shape", "colour", "size")
"""The attributes a caption word can name (from ``sat_helpers.shapes.OBJECT_WORDS``)."""


@dataclass
class Mention:
    """A shape word of a caption and the colour/size words right before it (its noun phrase)."""

    index: int
    words: dict[str, str] = field(default_factory=dict)  # class -> the caption's word
    values: dict[str, str] = field(default_factory=dict)  # class -> canonical value
    positions: dict[str, int] = field(default_factory=dict)  # class -> index in the caption

    @property
    def phrase(self) -> str:
        """The noun phrase as written, e.g. 'small red circle'."""
        order = sorted(self.positions, key=self.positions.get)
        return " ".join(self.words[c] for c in order)


def find_mentions(words: Sequence[str]) -> list[Mention]:
    """Every shape word of a caption with the colour and size words in front of it."""
    mentions = []
    for i, word in enumerate(words):
        kind = OBJECT_WORDS.get(word.lower())
        if kind is None or kind[0] != "shape":
            continue
        mention = Mention(i, {"shape": word}, {"shape": kind[1]}, {"shape": i})
        j = i - 1
        while j >= 0 and (prev := OBJECT_WORDS.get(words[j].lower())) is not None:
            if prev[0] in mention.values:  # "circle circle", "red blue circle": stop
                break
            mention.words[prev[0]], mention.values[prev[0]], mention.positions[prev[0]] = (
                words[j], prev[1], j)
            j -= 1
        mentions.append(mention)
    return mentions


def _agrees(obj: dict, mention: Mention) -> bool:
    """Whether the object has every attribute the mention's phrase gives."""
    return all(obj.get(cls) == value for cls, value in mention.values.items())


def match_mentions(mentions: list[Mention], objects: list[dict]) -> list[list[int]]:
    """For each mention, the indices of the objects it names ([] when none is left for it).

    A mention names the objects that agree with its phrase. First, every mention that
    agrees with exactly one object claims it; then each other mention takes the agreeing
    objects no mention has claimed yet (several for "two circles": pointing into any counts).
    A mention whose objects were all claimed before it repeats them and gets none.
    """
    agree = [[k for k, o in enumerate(objects) if _agrees(o, m)] for m in mentions]
    targets: list[list[int]] = [[] for _ in mentions]
    claimed: set[int] = set()
    for i, cands in enumerate(agree):
        if len(cands) == 1 and cands[0] not in claimed:
            targets[i] = cands
            claimed.add(cands[0])
    for i, cands in enumerate(agree):
        if len(cands) > 1:
            targets[i] = [k for k in cands if k not in claimed]
            claimed.update(targets[i])
    return targets


def _as_numpy(x: object) -> np.ndarray:
    """A CPU float64 numpy copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a side or a (height, width) pair."""
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def upsample_attention(alphas: object, grid: int, image_size: int | tuple[int, int]) -> np.ndarray:
    """Attention maps (..., grid*grid) -> (..., H, W) by bilinear upsampling to the image."""
    a = _as_numpy(alphas)
    if a.shape[-1] != grid * grid:
        raise ValueError(f"Attention maps have {a.shape[-1]} positions but grid={grid} needs "
                         f"{grid * grid}; pass the encoder's grid.")
    maps = torch.from_numpy(a.reshape(-1, 1, grid, grid))
    up = F.interpolate(maps, size=_hw(image_size), mode="bilinear", align_corners=False)
    return up.reshape(*a.shape[:-1], *_hw(image_size)).numpy()


def box_mask(boxes: Iterable[Sequence[float]], image_size: int | tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie in any box [x0, y0, x1, y1)."""
    h, w = _hw(image_size)
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask


def pointing_hit(attention_map: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum lies in the mask, else 0; a tie scores the tied pixels' share."""
    top = attention_map >= attention_map.max() - 1e-6 * abs(attention_map.max())
    return float(mask[top].mean())


def mass_in_box(attention_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's attention mass that falls in the mask."""
    total = attention_map.sum()
    return float(attention_map[mask].sum() / total) if total > 0 else float("nan")


def scale_objects(objects: list[dict], width: float, height: float,
                  image_size: int | tuple[int, int]) -> list[dict]:
    """Objects with boxes moved from the original (width, height) image to the prepared one."""
    h, w = _hw(image_size)
    sx, sy = w / width, h / height
    return [{**o, "box": [o["box"][0] * sx, o["box"][1] * sy, o["box"][2] * sx,
                          o["box"][3] * sy]} for o in objects]


def _score_mention(mention: Mention, maps: np.ndarray, mask: np.ndarray) -> dict:
    """Hits and mass in the box for the phrase and for each of its word classes."""
    phrase_map = sum(maps[i] for i in mention.positions.values())
    scores = {"hit_phrase": pointing_hit(phrase_map, mask),
              "mass_phrase": mass_in_box(phrase_map, mask)}
    for cls in WORD_CLASSES:
        i = mention.positions.get(cls)
        scores[f"hit_{cls}"] = pointing_hit(maps[i], mask) if i is not None else float("nan")
        scores[f"mass_{cls}"] = mass_in_box(maps[i], mask) if i is not None else float("nan")
    return scores


def _shared(objects: list[dict], cls: str) -> str | None:
    """The objects' common value of an attribute, None when they differ."""
    values = {o.get(cls) for o in objects}
    return values.pop() if len(values) == 1 else None


def pointing_game(alphas: object, words: Sequence[str], objects: list[dict], grid: int,
                  image_size: int | tuple[int, int], *, image_id: object = None) -> list[dict]:
    """Score one caption's attention against the image's object boxes: one record per object.

    ``alphas`` (T, grid*grid): the attention map of each generated word, in order (a search
    ``Caption``'s alphas; an extra last row for ``<end>`` is ignored); ``words``: the T
    generated words; ``objects``: dicts with "shape", "colour", "size" and "box" [x0, y0, x1,
    y1) in the pixels of the image the model saw (see :func:`scale_objects`). Statuses:
    "named" (scored), "no_such_object" (a shape word, with its colour/size, that matches no
    object: left out), "repeated" (names only objects named before: left out), "unnamed"
    (an object no word names: left out). Aggregate many images with :func:`pointing_summary`.
    """
    a = _as_numpy(alphas)
    if a.ndim != 2 or a.shape[0] < len(words):
        raise ValueError(f"alphas must be (T, grid*grid) with one row per word: got shape "
                         f"{a.shape} for {len(words)} words.")
    maps = upsample_attention(a[: len(words)], grid, image_size)
    mentions = find_mentions(words)
    targets = match_mentions(mentions, objects)
    named = {k for t in targets for k in t}
    centre = tuple(s // 2 for s in _hw(image_size))
    records = []
    for mention, target in zip(mentions, targets, strict=True):
        record = {"image_id": image_id, "word_index": mention.index, "phrase": mention.phrase,
                  "objects": tuple(target)}
        if target:
            mask = box_mask([objects[k]["box"] for k in target], image_size)
            record.update(status="named", **{c: _shared([objects[k] for k in target], c)
                                             for c in WORD_CLASSES})
            record.update(_score_mention(mention, maps, mask), baseline_uniform=float(mask.mean()),
                          baseline_centre=float(mask[centre]))
        else:
            agreeing = any(_agrees(o, mention) for o in objects)
            record.update(status="repeated" if agreeing else "no_such_object",
                          **{c: mention.values.get(c) for c in WORD_CLASSES})
        records.append(record)
    for k, obj in enumerate(objects):
        if k not in named:
            records.append({"image_id": image_id, "word_index": None, "phrase": None,
                            "objects": (k,), "status": "unnamed",
                            **{c: obj.get(c) for c in WORD_CLASSES}})
    return records


def pointing_summary(records: Iterable[dict] | pd.DataFrame) -> dict[str, float]:
    """Aggregate pointing-game records of many images: hit rates, mass, baselines, counts."""
    df = pd.DataFrame(records)
    if "status" not in df:
        df = pd.DataFrame(columns=["status"])
    named = df[df["status"] == "named"].reindex(
        columns=["hit_phrase", "mass_phrase", "baseline_uniform", "baseline_centre",
                 *(f"{m}_{c}" for c in WORD_CLASSES for m in ("hit", "mass"))])

    def mean(column: str) -> float:
        return float(named[column].astype(float).mean()) if len(named) else float("nan")

    summary = {"pointing_phrase": mean("hit_phrase"),
               **{f"pointing_{c}": mean(f"hit_{c}") for c in WORD_CLASSES},
               "mass_in_box": mean("mass_phrase"),
               **{f"mass_in_box_{c}": mean(f"mass_{c}") for c in WORD_CLASSES},
               "baseline_uniform": mean("baseline_uniform"),
               "baseline_centre": mean("baseline_centre"),
               "named_objects": len(named)}
    counts = df["status"].value_counts()
    summary.update(unmatched_words=int(counts.get("no_such_object", 0)),
                   repeated_words=int(counts.get("repeated", 0)),
                   unnamed_objects=int(counts.get("unnamed", 0)))
    return summary

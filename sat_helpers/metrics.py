"""Scoring captions: corpus BLEU (nltk), the COCO caption toolkit, and the pointing game.

BLEU here is the one the COCO caption toolkit (coco-caption, ``pycocoevalcap``) computes:
corpus-level, modified (clipped) n-gram precisions combined by a geometric mean, no smoothing,
times the brevity penalty from the reference length closest to each hypothesis. Xu et al.
(2015, Table 1) report BLEU without a brevity penalty, so their numbers are upper bounds of
this one's; ``bleu_scores(..., with_brevity_penalty=False)`` computes theirs. ``bleu_scores``
needs only nltk; ``coco_scores`` adds METEOR, ROUGE-L and CIDEr through ``pycocoevalcap`` (the
``coco`` extra, which needs Java).

The pointing game asks, for every object a generated caption names, whether the attention of
the words naming it peaks inside the object's box (the Shapes dataset knows every box).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from nltk.translate.bleu_score import brevity_penalty, closest_ref_length, modified_precision

from sat_helpers.shapes import OBJECT_WORDS

Tokens = Sequence[str]

COCO_INSTALL_HINT = (
    'Install the COCO caption toolkit with `pip install "show-attend-tell-course[coco]"` '
    "(or `pip install pycocoevalcap`)"
)
JAVA_INSTALL_HINT = (
    "pycocoevalcap runs Java for its tokeniser and METEOR, and no `java` is on PATH. Install a "
    "Java runtime (JRE 8 or newer: `sudo apt-get install default-jre`, `brew install openjdk`, "
    "or https://adoptium.net), then restart the kernel. On Colab the setup cell installs it"
)
WORD_CLASSES = ("shape", "colour", "size")
"""The attributes a caption word can name (from ``sat_helpers.shapes.OBJECT_WORDS``)."""


class CocoToolkitMissing(ImportError):
    """pycocoevalcap or the Java it runs is not available; the message says how to get it."""


# ---------------------------------------------------------------------------------- BLEU


def _check_corpus(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> None:
    """Raise a clear error unless there is one non-empty reference list per hypothesis."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference lists but {len(hypotheses)} hypotheses: "
                         "give one list of reference token lists per hypothesis.")
    if not hypotheses:
        raise ValueError("The corpus is empty: give at least one hypothesis.")
    for i, (refs, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        if not refs:
            raise ValueError(f"Image {i} has no reference captions.")
        if isinstance(hyp, str) or any(isinstance(r, str) for r in refs):
            raise TypeError(f"Image {i}: captions must be token lists (e.g. 'a red circle'.split()"
                            "), not strings; references are a list of token lists per image.")


def bleu_counts(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
                max_n: int = 4) -> dict[str, object]:
    """Corpus totals for BLEU: clipped n-gram matches, n-gram counts, lengths (nltk's helpers)."""
    _check_corpus(references, hypotheses)
    matches, totals, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for refs, hyp in zip(references, hypotheses, strict=True):
        refs, hyp = [list(r) for r in refs], list(hyp)
        for n in range(1, max_n + 1):
            matches[n - 1] += modified_precision(refs, hyp, n).numerator
            totals[n - 1] += max(0, len(hyp) - n + 1)
        hyp_len += len(hyp)
        ref_len += closest_ref_length(refs, len(hyp))
    return {"matches": matches, "totals": totals, "hyp_len": hyp_len, "ref_len": ref_len}


def bleu_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], *,
                with_brevity_penalty: bool = True) -> dict[str, float]:
    """Corpus BLEU-1..4 on token lists, as the COCO toolkit computes it (no smoothing).

    BLEU-n = BP · (p_1 ··· p_n)^(1/n), p_k = clipped k-gram matches / k-grams over the corpus,
    BP = min(1, exp(1 - r/c)) with r the sum of the reference lengths closest to each
    hypothesis and c the hypotheses' length. Unlike nltk's ``corpus_bleu``, a hypothesis
    shorter than k adds no k-grams (nltk counts one, which lowers BLEU-3/4 of short captions).
    ``with_brevity_penalty=False`` leaves BP out (BP = 1), as the paper's Table 1 does.
    """
    counts = bleu_counts(references, hypotheses)
    bp = brevity_penalty(counts["ref_len"], counts["hyp_len"]) if with_brevity_penalty else 1.0
    scores, log_sum = {}, 0.0
    pairs = zip(counts["matches"], counts["totals"], strict=True)
    for n, (match, total) in enumerate(pairs, start=1):
        log_sum += math.log(match / total) if match > 0 else -math.inf
        scores[f"BLEU-{n}"] = bp * math.exp(log_sum / n) if log_sum > -math.inf else 0.0
    return scores


# ------------------------------------------------------------------------ COCO toolkit


def _coco_toolkit() -> dict:
    """The pycocoevalcap scorers, or CocoToolkitMissing saying how to get what is missing."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:
        raise CocoToolkitMissing(f"coco_scores needs the COCO caption toolkit ({err}). "
                                 f"{COCO_INSTALL_HINT}. bleu_scores works without it.") from err
    if shutil.which("java") is None:
        raise CocoToolkitMissing(f"{JAVA_INSTALL_HINT}. bleu_scores works without it.")
    return {"Bleu": Bleu, "Meteor": Meteor, "Rouge": Rouge, "Cider": Cider,
            "PTBTokenizer": PTBTokenizer}


@contextlib.contextmanager
def _child_stderr_held() -> Iterator[None]:
    """Hold what child processes write to fd 2 (Java's "PTBTokenizer tokenized ..." line, a
    red box in a notebook); pass it on only when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def ptb_tokenize(captions: dict[object, list[str]], tokenizer_class: type) -> dict:
    """Captions re-tokenised by the toolkit's PTB tokeniser in one Java call; '' stays ''."""
    non_empty = {k: [{"caption": c} for c in cs if c.strip()] for k, cs in captions.items()}
    with _child_stderr_held():
        tokens = tokenizer_class().tokenize({k: v for k, v in non_empty.items() if v})
    return {k: tokens.get(k, []) + [""] * (len(cs) - len(non_empty[k]))
            for k, cs in captions.items()}


def coco_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], *,
                meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr as the COCO caption toolkit computes them.

    Each token list is joined with spaces and re-tokenised by the toolkit's Stanford PTB
    tokeniser (lower-cased, punctuation dropped), as in the papers. Needs pycocoevalcap and
    Java. METEOR loads a 60 MB paraphrase table in Java first (tens of seconds, minutes on
    a busy 2-core CPU); ``meteor=False`` leaves it out.
    """
    _check_corpus(references, hypotheses)
    kit = _coco_toolkit()
    captions = {("ref", i): [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    captions |= {("hyp", i): [" ".join(h)] for i, h in enumerate(hypotheses)}
    tokens = ptb_tokenize(captions, kit["PTBTokenizer"])
    gts = {i: tokens["ref", i] for i in range(len(references))}
    res = {i: tokens["hyp", i] for i in range(len(hypotheses))}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its counts
        bleu, _ = kit["Bleu"](4).compute_score(gts, res)
    scores = {f"BLEU-{n}": float(b) for n, b in enumerate(bleu, start=1)}
    if meteor:
        scorer = kit["Meteor"]()
        try:
            scores["METEOR"] = float(scorer.compute_score(gts, res)[0])
        finally:
            _close_meteor(scorer)
    scores["ROUGE-L"] = float(kit["Rouge"]().compute_score(gts, res)[0])
    scores["CIDEr"] = float(kit["Cider"]().compute_score(gts, res)[0])
    return scores


def _close_meteor(meteor: object) -> None:
    """End METEOR's Java process now rather than at garbage collection."""
    with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


# --------------------------------------------------------------------- pointing game


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

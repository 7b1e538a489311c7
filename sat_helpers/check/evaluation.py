"""Notebook 06's checks: BLEU's clipped n-gram precision, its brevity penalty, a pointing hit."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from nltk.translate import bleu_score

from .. import metrics, pointing
from .machinery import Answer, exercise, fail

_BLEU = (metrics.bleu_scores, metrics.bleu_counts, bleu_score.modified_precision,
         bleu_score.corpus_bleu, bleu_score.sentence_bleu)


def _grams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _clipped(references: list[list[str]], hypothesis: list[str], n: int) -> tuple[int, int]:
    matches = bleu_score.modified_precision(references, hypothesis, n).numerator
    return int(matches), max(0, len(hypothesis) - n + 1)


def _clipped_mistakes(references, hypothesis, n) -> dict[str, tuple[int, int]]:
    grams, total = _grams(hypothesis, n), max(0, len(hypothesis) - n + 1)
    summed = sum((_grams(r, n) for r in references), Counter())
    anywhere = set().union(*(_grams(r, n) for r in references))
    return {
        "an n-gram counts at most as often as it appears in the reference that has it most "
        "(clipping): you counted every occurrence in the hypothesis":
            (sum(c for g, c in grams.items() if g in anywhere), total),
        "clip by the count in the single reference that has the n-gram most, not by the sum "
        "over the references": (sum(min(c, summed[g]) for g, c in grams.items()), total),
        "count every n-gram of the hypothesis, repeats included: you counted distinct n-grams":
            (sum(1 for g in grams if g in anywhere), len(grams)),
    }


_REFS = [["a", "small", "red", "circle", "to", "the", "left", "of", "a", "blue", "star"],
         ["a", "red", "circle", "and", "a", "blue", "star"]]
_CLIP_CASES = [([["two", "green", "squares"], ["there", "are", "two", "green", "squares"]],
                ["green", "green", "green", "squares"], 1),
               ([["a", "red", "a", "red"], ["a", "red", "circle"]],
                ["a", "red", "a", "red", "a", "red"], 2),
               (_REFS, ["a", "red", "circle", "to", "the", "left", "of", "a", "blue", "star"], 1),
               (_REFS, ["a", "red", "circle", "to", "the", "left", "of", "a", "blue", "star"], 4),
               (_REFS, ["a", "star"], 3)]


@exercise("clipped_precision", blocked=_BLEU, stand_in=_clipped,
          code_hint="counts = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)); "
                    "most = the largest count of each n-gram over the references (Counter's | "
                    "keeps the larger); matches = sum(min(c, most[g]) for g, c in counts.items()).",
          write_from="the definition of clipping, with collections.Counter")
def clipped_precision(answer: Answer) -> int:
    """fn(references, hypothesis, n) -> (clipped matches, n-grams of the hypothesis)."""
    name = "clipped_precision"
    for references, hypothesis, n in _CLIP_CASES:
        inputs = f"references {references}, hypothesis {hypothesis}, n={n}"
        got = answer([list(r) for r in references], list(hypothesis), n, inputs=inputs)
        want = _clipped(references, hypothesis, n)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"returned {got!r}, expected a pair (matches, n-grams) ({inputs}).",
                 "return the clipped matches and the number of n-grams of the hypothesis.")
        got = tuple(int(x) if isinstance(x, (int, np.integer)) else x for x in got)
        if got == want:
            continue
        mistake = next((m for m, v in _clipped_mistakes(references, hypothesis, n).items()
                        if v == got), None)
        if mistake is None and got[1] != want[1]:
            mistake = (f"a hypothesis of {len(hypothesis)} words has {want[1]} {n}-grams: one "
                       f"starts at every word but the last {n - 1}")
        fail(name, f"got {got}, expected {want} ({inputs}).", (mistake or
             "a hypothesis n-gram matches when some reference has it, at most as often as the "
             "reference that has it most") + ".")
    return len(_CLIP_CASES)


def _brevity(references: list[list[list[str]]], hypotheses: list[list[str]]) -> float:
    c = sum(len(h) for h in hypotheses)
    r = sum(bleu_score.closest_ref_length(refs, len(h))
            for refs, h in zip(references, hypotheses, strict=True))
    return bleu_score.brevity_penalty(r, c)


def _bp(r: float, c: float) -> float:
    return 1.0 if c > r else math.exp(1 - r / c)


def _brevity_mistakes(references, hypotheses) -> dict[str, float]:
    c = sum(len(h) for h in hypotheses)
    closest_long = sum(min((abs(len(r) - len(h)), -len(r)) for r in refs)[1] * -1
                       for refs, h in zip(references, hypotheses, strict=True))
    shortest = sum(min(len(r) for r in refs) for refs in references)
    mean = sum(sum(len(r) for r in refs) / len(refs) for refs in references)
    r = sum(bleu_score.closest_ref_length(refs, len(h))
            for refs, h in zip(references, hypotheses, strict=True))
    per_image = np.mean([_brevity([refs], [h]) for refs, h in zip(references, hypotheses,
                                                                    strict=True)])
    return {
        "on a tie the shorter of the two closest references counts; you took the longer":
            _bp(closest_long, c),
        "r is the reference length *closest* to each hypothesis, not the shortest":
            _bp(shortest, c),
        "r is the reference length closest to each hypothesis, not the mean": _bp(mean, c),
        "r and c are swapped: BP = e^(1 − r/c) for a corpus shorter than its references (c ≤ r)":
            _bp(c, r),
        "BP never exceeds 1: a corpus longer than its references (c > r) is not penalised":
            math.exp(1 - r / c),
        "BLEU's brevity penalty is one for the corpus, from the summed lengths r and c, not the "
        "mean of per-image penalties": float(per_image),
    }


_BP_CASES = [
    ([[["a"] * 7, ["a"] * 11], [["b"] * 3, ["b"] * 5]], [["a"] * 9, ["b"] * 2]),
    ([[["a"] * 10, ["a"] * 12]], [["a"] * 11]),
    ([[["a"] * 4], [["b"] * 6, ["b"] * 8]], [["a"] * 6, ["b"] * 9]),
    ([[["a"] * 5, ["a"] * 9], [["b"] * 4]], [["a"] * 3, ["b"] * 2]),
    ([[["a"] * 12, ["a"] * 6]], [["a"] * 11]),
]


@exercise("brevity_penalty", blocked=(*_BLEU, bleu_score.brevity_penalty,
                                      bleu_score.closest_ref_length), stand_in=_brevity,
          code_hint="c = sum(len(h) for h in hypotheses); r = sum(min((abs(len(ref) - len(h)), "
                    "len(ref)) for ref in refs)[1] for each image); 1.0 if c > r else "
                    "math.exp(1 - r / c).",
          write_from="the formula for BP, with the lengths of the token lists")
def brevity_penalty(answer: Answer) -> int:
    """fn(references per image, hypotheses) -> the corpus brevity penalty BP, a float."""
    name = "brevity_penalty"
    for references, hypotheses in _BP_CASES:
        lengths = ([[len(r) for r in refs] for refs in references], [len(h) for h in hypotheses])
        inputs = f"reference lengths {lengths[0]}, hypothesis lengths {lengths[1]}"
        got = answer([[list(r) for r in refs] for refs in references],
                     [list(h) for h in hypotheses], inputs=inputs)
        want = _brevity(references, hypotheses)
        try:
            got = float(got)
        except (TypeError, ValueError):
            fail(name, f"returned {got!r}, expected a number ({inputs}).", "return BP as a float.")
        if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            continue
        mistake = next((m for m, v in _brevity_mistakes(references, hypotheses).items()
                        if math.isclose(got, v, rel_tol=1e-9)),
                       "BP = 1 if c > r, else e^(1 − r/c), with c the corpus's hypothesis length "
                       "and r the sum of the reference lengths closest to each hypothesis")
        fail(name, f"got {got:.6g}, expected {want:.6g} ({inputs}).", mistake + ".")
    return len(_BP_CASES)


def _hit(attention_map: np.ndarray, mask: np.ndarray) -> float:
    return pointing.pointing_hit(attention_map, mask)


@exercise("hit", blocked=(pointing.pointing_hit, pointing.pointing_game), stand_in=_hit,
          code_hint="top = attention_map == attention_map.max(); float(mask[top].mean()): the "
                    "share of the tied maxima inside the mask.",
          write_from="numpy comparisons of the map with its maximum, and the mask")
def hit(answer: Answer) -> int:
    """fn(attention_map (H, W), mask (H, W)) -> 1.0 hit, 0.0 miss, as ``pointing.pointing_hit``."""
    name = "hit"
    rng = np.random.default_rng(5)
    mask = pointing.box_mask([[1, 1, 4, 3]], (5, 6))
    inside, outside = rng.random((5, 6)), rng.random((5, 6))
    inside[2, 2], outside[4, 5] = 2.0, 2.0  # each map's peak
    plateau = np.zeros((5, 6))
    plateau[2, 3:6] = 1.0  # a tie: one of the three peak pixels is in the box
    cases = [("its peak inside the box", inside), ("its peak outside the box", outside),
             ("three tied peaks, one inside", plateau)]
    for label, attention_map in cases:
        want = pointing.pointing_hit(attention_map, mask)
        inputs = f"a (5, 6) map with {label}"
        got = answer(attention_map.copy(), mask.copy(), inputs=inputs)
        try:
            got = float(got)
        except (TypeError, ValueError):
            fail(name, f"returned {got!r}, expected a number ({inputs}).", "return a float.")
        if not math.isclose(got, want, abs_tol=1e-6):
            concept = "a hit is the map's maximum falling inside the box."
            if math.isclose(got, pointing.mass_in_box(attention_map, mask), abs_tol=1e-6):
                concept = ("that is the attention mass inside the box; the pointing game asks "
                           "only where the maximum is.")
            elif "tied" in label:
                concept = ("with tied maxima, score the share of them inside the box (argmax "
                           "alone picks the first).")
            elif math.isclose(got, 1 - want):
                concept = "inverted: 1.0 means the peak is inside the mask (mask True)."
            fail(name, f"got {got}, expected {want} ({inputs}).", concept)
    return len(cases)

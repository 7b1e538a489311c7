"""Notebook 05's checks: greedy decoding, one beam step, reordering beams, the best caption."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .. import search
from ..data import Vocab
from ..decoder import AttentionDecoder, DecoderState
from .machinery import Answer, exercise, fail, same_tensor

_VOCAB = Vocab([f"w{i}" for i in range(4, 12)])  # ids 4..11; <pad> 0, <start> 1, <end> 2, <unk> 3
_NEVER = {_VOCAB.pad_id: "<pad>", _VOCAB.start_id: "<start>", _VOCAB.unk_id: "<unk>"}


class ScriptDecoder(nn.Module):
    """A stand-in decoder: image i's most likely word at step t is scripts[i][t] (then noise).

    It checks that the state it is given has one row per previous token, and records the
    number of rows of every step, so a check can see whether finished images left the batch.
    """

    def __init__(self, scripts: list[list[int]]):
        super().__init__()
        self.scripts, self.calls = scripts, []

    def init_state(self, features: Tensor) -> DecoderState:
        h = torch.stack([torch.arange(features.shape[0]), torch.zeros(features.shape[0])], 1)
        return DecoderState(h, h.clone(), features, features.clone())

    def step(self, state: DecoderState, prev_tokens: Tensor):
        rows = prev_tokens.shape[0]
        for field in ("h", "c", "features", "projected"):
            if getattr(state, field).shape[0] != rows:
                raise ValueError(f"state.{field} has {getattr(state, field).shape[0]} rows but "
                                 f"prev_tokens {rows}: keep the same images' rows of h, c, "
                                 "features and projected")
        self.calls.append(rows)
        logits = []
        for image, t in state.h.long().tolist():
            g = torch.Generator().manual_seed(1000 * image + t)
            row = torch.randn(len(_VOCAB), generator=g)
            script = self.scripts[image]
            best = script[t] if t < len(script) else int(row[4:].argmax()) + 4
            row[best] = 6.0
            if best in _NEVER:  # the word the search must take instead
                row[4 + (image + t) % 8] = 5.0
            logits.append(row)
        alpha = torch.full((rows, state.features.shape[1]), 1 / state.features.shape[1])
        h = state.h + torch.tensor([0.0, 1.0])
        return torch.stack(logits).log_softmax(-1), alpha, state._replace(h=h, c=h)


def _greedy(decoder, features: Tensor, max_len: int, vocab) -> list[list[int]]:
    return [c.tokens for c in search.greedy_search(decoder, features, max_len, vocab=vocab)]


def _as_lists(got) -> list | None:
    if isinstance(got, Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        return None
    return [g.tolist() if isinstance(g, Tensor) else list(g) if isinstance(g, (list, tuple))
            else g for g in got]


def _greedy_cases() -> list[tuple[nn.Module, Tensor, int, str]]:
    end = _VOCAB.end_id
    scripts = [[4, 5, end], [6, 3, 7, 8, 9, 10, 11, 4], [5, end], [9, 1, 10, 11, end]]
    torch.manual_seed(7)
    real = AttentionDecoder(len(_VOCAB), 5, 4, 6, 3).eval()
    with torch.no_grad():
        real.L_o.bias[end] += 1.5  # some of its captions end early, some run to max_len
    return [(ScriptDecoder(scripts), torch.zeros(4, 3, 2), 6, "4 scripted images, max_len=6"),
            (ScriptDecoder(scripts[:3]), torch.zeros(3, 3, 2), 2, "3 scripted images, max_len=2"),
            (real, torch.randn(5, 4, 5, generator=torch.Generator().manual_seed(1)), 5,
             "an untrained AttentionDecoder, 5 images, max_len=5")]


@exercise("greedy_search", blocked=(search.greedy_search, search.beam_search,
                                    search._keep_images, search._compact_),
          stand_in=_greedy,
          code_hint="prev = start ids; live = torch.arange(B); each step: log_probs[:, never] = "
                    "-inf; prev = log_probs.argmax(-1); append prev to the caption of each "
                    "image in live; keep = prev != vocab.end_id; live, prev = live[keep], "
                    "prev[keep]; state = state._replace(h=state.h[keep], c=state.c[keep], "
                    "features=state.features[keep], projected=state.projected[keep]).",
          write_from="the steps the task describes, with decoder.init_state and decoder.step")
def greedy_search(answer: Answer) -> int:
    """fn(decoder, features, max_len, vocab) -> per image the token ids before <end>."""
    name = "greedy_search"
    cases = _greedy_cases()
    for decoder, features, max_len, inputs in cases:
        want = _greedy(decoder, features, max_len, _VOCAB)
        ends = [len(w) + 1 if c_ended and len(w) < max_len else None for w, c_ended in zip(
            want, [c.ended for c in search.greedy_search(decoder, features, max_len,
                                                         vocab=_VOCAB)], strict=True)]
        if isinstance(decoder, ScriptDecoder):
            decoder.calls = []
            recorded = decoder.calls
        else:
            recorded, plain_step = [], decoder.step
            decoder.step = lambda state, prev, f=plain_step, log=recorded: log.append(
                len(prev)) or f(state, prev)
        try:
            got = _as_lists(answer(decoder, features.clone(), max_len, _VOCAB, inputs=inputs))
        finally:
            decoder.__dict__.pop("step", None)
        _greedy_verdict(name, got, want, ends, recorded, max_len, inputs)
    return len(cases)


def _greedy_verdict(name, got, want, ends, recorded, max_len, inputs) -> None:
    """Name what is wrong with the captions or with the steps the function ran."""
    if got is None or len(got) != len(want):
        fail(name, f"returned {type(got).__name__} of {len(got or [])} items, expected one list "
             f"of token ids per image, {len(want)} images ({inputs}).",
             "return a list with one list of ints per image, in the images' order.")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g == w:
            continue
        emitted = [t for t in g if t in _NEVER]
        concept = "take the most likely word at every step; stop an image's caption at <end>."
        if g[:1] == [_VOCAB.start_id]:
            concept = "<start> is the first step's input, not a word of the caption: leave it out."
        elif emitted:
            concept = (f"the caption holds {_NEVER[emitted[0]]}: the search never emits <pad>, "
                       "<start> or <unk>; their log-probabilities count as -inf.")
        elif _VOCAB.end_id in g:
            concept = ("the caption holds <end> or words after it: an image's caption stops "
                       "before its <end>.")
        elif len(g) > max_len:
            concept = f"a caption longer than max_len={max_len}: stop after max_len steps."
        fail(name, f"image {i}: got {g}, expected {w} ({inputs}).", concept)
    live = [sum(1 for e in ends if e is None or e > t) for t in range(max_len)]
    if len(recorded) > max_len:
        fail(name, f"decoder.step ran {len(recorded)} times with max_len={max_len} ({inputs}).",
             "stop after max_len steps, or earlier when every caption has ended.")
    for t, (rows, n_live) in enumerate(zip(recorded, live, strict=False)):
        if rows > n_live:
            fail(name, f"step {t + 1} ran on {rows} images, but only {n_live} had not ended "
                 f"({inputs}).", "drop an image from the batch when its caption ends: keep the "
                 "rows of the live images in prev and in every field of the state.")


def _beam_step(scores: Tensor, log_probs: Tensor, n: int):
    return search.best_extensions(scores, log_probs.clone(), n)


@exercise("beam_step", blocked=(search.best_extensions, search.beam_search), stand_in=_beam_step,
          code_hint="(scores[:, :, None] + log_probs).flatten(1).topk(n) gives values and flat "
                    "indices; beam = index // V, token = index % V.",
          write_from="one topk over each image's candidates, as the task says")
def beam_step(answer: Answer) -> int:
    """fn(scores (B, k), log_probs (B, k, V), n) -> (top scores, beam, token), each (B, n)."""
    name = "beam_step"
    cases = [(2, 3, 7, 6, False), (1, 2, 5, 4, False), (3, 3, 6, 6, True)]
    for B, k, V, n, first in cases:
        g = torch.Generator().manual_seed(B * 10 + k)
        scores = -torch.rand(B, k, generator=g) * 5
        if first:  # the first step: k identical beams, only beam 0 alive
            scores[:, 1:] = -math.inf
        log_probs = torch.randn(B, k, V, generator=g).log_softmax(-1)
        inputs = (f"scores {tuple(scores.shape)}{' (first step)' if first else ''}, log_probs "
                  f"{tuple(log_probs.shape)}, n={n}")
        got = answer(scores.clone(), log_probs.clone(), n, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(name, f"returned {type(got).__name__}, expected (top_scores, beam, token).",
                 "return the three, in that order.")
        top, beam, token = got
        want_top, want_beam, want_token = _beam_step(scores, log_probs, n)
        concept = "one top-n over each image's k·V candidates, each scored beam score + word."
        if isinstance(top, Tensor) and top.shape == want_top.shape:
            if torch.allclose(top, log_probs.flatten(1).topk(n).values):
                concept = ("these are the words' log-probabilities alone: a candidate's score is "
                           "its beam's summed score plus the word's log-probability.")
            elif first and not torch.isfinite(top).all():
                concept = ("-inf among the top scores: on the first step only beam 0 is alive; a "
                           "top-n over all k·V candidates together never picks a dead beam.")
        same_tensor(name, "top_scores", top, want_top, concept, inputs)
        concept_token = "the token is the flat index's position within its beam's V words."
        if isinstance(token, Tensor) and token.shape == want_token.shape and bool(
                (token >= V).any()):
            concept_token = f"token holds flat indices beam·V + token (up to k·V − 1): V={V}."
        same_tensor(name, "beam", beam, want_beam, "the beam is which block of V candidates the "
                    "flat index falls in.", inputs)
        same_tensor(name, "token", token, want_token, concept_token, inputs)
    return len(cases)


def _reorder(h: Tensor, beam: Tensor) -> Tensor:
    return DecoderState(h, h, h, h).reorder(beam).h


@exercise("reorder", blocked=(DecoderState.reorder, search._like, search.beam_search),
          stand_in=_reorder,
          code_hint="h[torch.arange(B)[:, None], beam], or h.gather(1, beam[..., None]"
                    ".expand(-1, -1, n)).",
          write_from="indexing (or gather) on h, as the task says")
def reorder(answer: Answer) -> int:
    """fn(h (B, k, n), beam (B, k)) -> (B, k, n): row j of image b is h[b, beam[b, j]]."""
    name = "reorder"
    cases = [(2, 3, 4, [[0, 0, 2], [1, 2, 1]]), (1, 2, 3, [[1, 1]]),
             (3, 2, 2, [[1, 0], [0, 0], [1, 1]])]
    for B, k, n, beam_list in cases:
        h = torch.randn(B, k, n, generator=torch.Generator().manual_seed(B * k))
        beam = torch.tensor(beam_list)
        inputs = f"h {tuple(h.shape)}, beam {beam_list}"
        got = answer(h.clone(), beam.clone(), inputs=inputs)
        want = _reorder(h, beam)
        concept = "row j of image b is h[b, beam[b, j]]: each image picks among its own beams."
        if isinstance(got, Tensor) and got.shape != want.shape:
            if got.dim() == 4:
                concept = ("indexing dim 1 with the whole (B, k) beam mixes images: it gives "
                           "every image the picks of all B images; pair each pick with its "
                           "image's index.")
            elif got.shape[:2] == want.shape[:2]:
                concept = "gather needs an index as large as its output, (B, k, n)."
        same_tensor(name, "the reordered state", got, want, concept, inputs)
    return len(cases)


def _best_caption(scores: list[float], lengths: list[int], length_penalty: float) -> int:
    return int(np.argmax([search.length_normalised(s, n, length_penalty)
                          for s, n in zip(scores, lengths, strict=True)]))


_WORST = "you picked the worst: log-probabilities are ≤ 0, the highest is best"
_RANKINGS = [
    ("|y| counts every emitted token, <end> included: you used length − 1",
     lambda s, n, g: s / ((4 + n) / 6) ** g),
    ("you multiplied by the penalty ((5 + |y|) / 6)^γ; the score is divided by it",
     lambda s, n, g: s * ((5 + n) / 6) ** g),
    ("GNMT's length penalty is ((5 + |y|) / 6)^γ, not |y|^γ: the + 5 makes it grow more "
     "slowly, so that long captions are not favoured as much",
     lambda s, n, g: s / n ** g),
    ("you ranked by the plain summed log-probability; with γ > 0 divide it by "
     "((5 + |y|) / 6)^γ first", lambda s, n, g: s),
    (_WORST, lambda s, n, g: -s / ((5 + n) / 6) ** g),
    (_WORST, lambda s, n, g: -s),
]


@exercise("best_caption", blocked=(search.length_normalised, search._best_possible,
                                   search.beam_search), stand_in=_best_caption,
          code_hint="max(range(len(scores)), key=lambda i: scores[i] / ((5 + lengths[i]) / 6) "
                    "** length_penalty).",
          write_from="the length-normalised score's formula")
def best_caption(answer: Answer) -> int:
    """fn(scores, lengths, length_penalty) -> the index of the caption ranked first."""
    name = "best_caption"
    first = ([-4.0, -4.5, -6.0, -3.0, -7.5, -5.2], [4, 6, 9, 3, 14, 8])
    second = ([-3.0, -3.3, -8.0], [10, 4, 20])
    cases = [(*first, 0.0), (*first, 0.7), (*first, 1.0), (*first, 3.0), (*second, 1.0)]
    answers = []
    for scores, lengths, gamma in cases:
        inputs = f"scores {scores}, lengths {lengths}, length_penalty={gamma}"
        got = answer(list(scores), list(lengths), gamma, inputs=inputs)
        if isinstance(got, (np.integer, Tensor)) and np.size(got) == 1:
            got = int(got)
        if not isinstance(got, int) or isinstance(got, bool):
            fail(name, f"returned {got!r}, expected an index (int) ({inputs}).",
                 "return the position of the best caption in the list.")
        answers.append(got)
    wrong = [i for i, (got, case) in enumerate(zip(answers, cases, strict=True))
             if got != _best_caption(*case)]
    if wrong:
        scores, lengths, gamma = cases[wrong[0]]
        mistake = next((m for m, rank in _RANKINGS if all(
            got == int(np.argmax([rank(s, n, g) for s, n in zip(sc, ln, strict=True)]))
            for got, (sc, ln, g) in zip(answers, cases, strict=True))),
            "rank by the length-normalised score, the highest first")
        fail(name, f"picked caption {answers[wrong[0]]}, expected {_best_caption(*cases[wrong[0]])}"
             f" (scores {scores}, lengths {lengths}, length_penalty={gamma}).", mistake + ".")
    return len(cases)

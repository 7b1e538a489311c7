"""Decode a caption: greedy and beam search, batched over images (and beams) in one tensor.

Both use only ``decoder.init_state`` and ``decoder.step``. Conventions shared by both:

- ``max_len`` counts words, like ``Profile.max_len`` (the longest training caption) and
  ``Profile.decode_max_len``: ``<end>`` comes on top. A caption of ``max_len`` words can
  still end: the search takes one more step, ``max_len + 1`` in all, in which only an
  ``<end>`` counts. A caption that has not ended by then is cut at ``max_len`` words
  ("truncated").
- ``<pad>`` and ``<start>`` are never emitted, and ``<unk>`` only with ``allow_unk=True``:
  their log-probabilities are set to -inf before choosing. The paper does not forbid
  ``<unk>``; the course does by default, since "a <unk> circle" tells a reader nothing
  (with ``min_word_freq`` 1 on Shapes the model never sees one anyway).
- :class:`Caption` ``score`` is the summed log-probability of every emitted token,
  ``<end>`` included when it was emitted (never length-normalised); ``alphas`` holds one
  attention map per emitted token, in order, ``<end>`` included: shape
  ``(len(tokens) + ended, P)``.

Beam search (:func:`beam_search`) keeps ``k`` live hypotheses per image. At each step the
``2k`` best extensions of all live beams are ranked; an ``<end>`` among the first ``k`` of
them moves that hypothesis to the finished list, and the first ``k`` extensions that are not
``<end>`` become the new live beams. An image is done when no live beam can still beat its
best finished hypothesis, or after ``max_len`` steps. A finished hypothesis is always
preferred to a truncated one; if none finished, the best truncated one is returned.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Caption:
    """One decoded caption: token ids, words, summed log-probability, attention per token."""

    tokens: list[int]  # without <start>/<end>
    words: list[str]
    score: float  # sum of log p of every emitted token, <end> included when emitted
    alphas: Tensor  # (len(tokens) + ended, P): one map per emitted token, <end> included

    @property
    def ended(self) -> bool:
        """True when the caption ended with <end>, False when it was cut at max_len."""
        return self.alphas.shape[0] == len(self.tokens) + 1


@contextlib.contextmanager
def _decoding(decoder: torch.nn.Module):
    """Eval mode (no dropout, expected attention) and no autograd; restores the mode after."""
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.no_grad():  # not inference_mode: the returned tensors stay ordinary tensors
            yield
    finally:
        decoder.train(was_training)


def _check_args(features: Tensor, max_len: int, beam_size: int = 1) -> None:
    """Raise a ValueError a learner can act on for a bad features shape, max_len or beam size."""
    if features.dim() != 3:
        raise ValueError(
            f"features must be (images, positions, enc_dim), got shape {tuple(features.shape)}; "
            "for one image use features.unsqueeze(0)"
        )
    if int(max_len) < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if int(beam_size) < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")


def _forbidden(vocab, device: torch.device, allow_unk: bool) -> Tensor:
    """Ids the search must never emit: <pad>, <start>, and <unk> unless ``allow_unk``."""
    ids = [vocab.pad_id, vocab.start_id] + ([] if allow_unk else [vocab.unk_id])
    return torch.tensor(ids, device=device)


def _keep_images(state, rows: Tensor, caller_features: Tensor):
    """The decoder state of the images ``rows`` (ascending) only.

    The annotations and their projection take ~2 MB an image, and a fresh copy's time goes
    mostly to page faults (10-50 ms for 23 images on our host), so once the search has its
    own copies (never the caller's tensor, and two distinct ones) it moves the kept images
    forward in them instead.
    """
    if state.features is caller_features or state.projected is state.features:
        features, projected = state.features[rows], state.projected[rows]
    else:
        kept = rows.tolist()
        features, projected = _compact_(state.features, kept), _compact_(state.projected, kept)
    return state._replace(h=state.h[rows], c=state.c[rows], features=features, projected=projected)


def _compact_(x: Tensor, rows: list[int]) -> Tensor:
    """x[rows] for ascending ``rows``, in place: row rows[i] >= i moves up to row i."""
    for i, j in enumerate(rows):
        if i != j:
            x[i].copy_(x[j])
    return x[: len(rows)]


def _caption(tokens: list[int], score: float, alphas: Tensor, vocab, ended: bool) -> Caption:
    """A Caption from the emitted ids (<end> not among ``tokens``)."""
    assert alphas.shape[0] == len(tokens) + int(ended)
    return Caption(tokens, vocab.decode(tokens), score, alphas)


def greedy_search(decoder, features: Tensor, max_len: int, *, vocab,
                  allow_unk: bool = False) -> list[Caption]:
    """The most likely next word at every step, for all images at once; one Caption per image.

    Images whose caption has ended are dropped from the batch, so the step runs on live
    rows only. See the module docstring for ``max_len`` (words), ``allow_unk``, the score
    and the alphas.
    """
    _check_args(features, max_len)
    n_images, device = features.shape[0], features.device
    tokens = torch.zeros(n_images, max_len + 1, dtype=torch.long, device=device)
    n_emitted = torch.full((n_images,), max_len, dtype=torch.long)  # until one ends: truncated
    alphas = scores = None
    with _decoding(decoder):
        state = decoder.init_state(features)
        forbidden = _forbidden(vocab, device, allow_unk)
        prev = torch.full((n_images,), vocab.start_id, dtype=torch.long, device=device)
        live = torch.arange(n_images, device=device)  # images still decoding
        for t in range(max_len + 1):  # max_len words, then one more step for their <end>
            log_probs, alpha, state = decoder.step(state, prev)
            best, prev = log_probs.index_fill(-1, forbidden, -math.inf).max(dim=-1)
            if alphas is None:  # in the decoder's dtype
                alphas = alpha.new_zeros(n_images, max_len + 1, alpha.shape[-1])
                scores = best.new_zeros(n_images)
            ended = prev == vocab.end_id
            if t == max_len:  # after max_len words only an <end> is kept; the others stay cut
                live, prev, best, alpha = live[ended], prev[ended], best[ended], alpha[ended]
            tokens[live, t], scores[live], alphas[live, t] = prev, scores[live] + best, alpha
            if t == max_len:
                n_emitted[live.cpu()] = t + 1
            elif bool(ended.any()):
                n_emitted[live[ended].cpu()] = t + 1
                keep = (~ended).nonzero().squeeze(1)
                live, prev, state = live[keep], prev[keep], _keep_images(state, keep, features)
                if live.numel() == 0:
                    break
    out = []
    for i, n in enumerate(n_emitted.tolist()):
        ended = bool(tokens[i, n - 1] == vocab.end_id)
        ids = tokens[i, : n - int(ended)].tolist()
        out.append(_caption(ids, float(scores[i]), alphas[i, :n], vocab, ended))
    return out


def length_normalised(score: Tensor | float, length: int, length_penalty: float):
    """GNMT's length normalisation (Wu et al. 2016): score / ((5 + length) / 6) ** α.

    α = 0 is the plain summed log-probability; α > 0 favours longer captions (a log-prob
    sum only falls with every word); ``length`` counts the emitted tokens, <end> included.
    """
    return score / ((5.0 + length) / 6.0) ** length_penalty


def _best_possible(live_scores: Tensor, t: int, max_len: int, length_penalty: float) -> Tensor:
    """Upper bound of the normalised score any continuation of the live beams can reach.

    ``max_len`` here counts tokens, <end> included. A continuation of a beam with summed
    log-prob s ≤ 0 after t tokens finishes with a score s' ≤ s at a length L in
    [t+1, max_len], so its normalised score is at most
    max over L of s / lp(L). lp is monotone in L, so the maximum is at one of the two
    ends: with α > 0 at L = max_len (not at t+1: the bound does not shrink monotonically
    like the plain score does), with α < 0 at L = t+1, with α = 0 it is s itself.
    """
    s = live_scores.max(dim=-1).values
    return torch.maximum(
        length_normalised(s, t + 1, length_penalty), length_normalised(s, max_len, length_penalty)
    )


def best_extensions(scores: Tensor, log_probs: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The n best one-word extensions of each image's beams: one top-k over its k·V candidates.

    ``scores`` (B, k) are the beams' summed log-probabilities, ``log_probs`` (B, k, V) the
    next word's (added to in place). Returns (summed scores, beam, token), each (B, n), best
    first; beam and token index the candidate: beam · V + token in the flattened row.
    """
    vocab_size = log_probs.shape[-1]
    cand = log_probs.add_(scores.unsqueeze(-1)).flatten(1)  # (B, k·V): every extension
    top_scores, top_ids = cand.topk(min(n, cand.shape[1]), dim=1)
    return top_scores, top_ids // vocab_size, top_ids % vocab_size


def beam_search(decoder, features: Tensor, beam_size: int, max_len: int, *, vocab,
                length_penalty: float = 0.0, return_all: bool = False,
                allow_unk: bool = False) -> list[Caption] | list[list[Caption]]:
    """Beam search over all images and beams at once: B·k rows per step, features once per image.

    Returns the best Caption per image, ranked by :func:`length_normalised` score (plain
    summed log-probability when ``length_penalty`` is 0). With ``return_all`` it returns,
    per image, up to ``beam_size`` Captions best first: the finished ones, then (only if
    the search reached ``max_len`` words) truncated ones. The rules, ``max_len`` (words)
    and ``allow_unk`` are in the module docstring.
    """
    _check_args(features, max_len, beam_size)
    k, device = int(beam_size), features.device
    n_images = features.shape[0]
    finished: list[list[tuple]] = [[] for _ in range(n_images)]  # (truncated?, -norm, Caption)
    best_done = torch.full((n_images,), -math.inf, device=device)  # best finished, normalised
    with _decoding(decoder):
        state = decoder.init_state(features).expand(k)  # h, c: (B, k, D); features stay (B, P, E)
        forbidden = _forbidden(vocab, device, allow_unk)
        live = torch.arange(n_images, device=device)  # images still searched
        scores = torch.full((n_images, k), -math.inf, device=device)
        scores[:, 0] = 0.0  # k identical beams at the start: keep one
        prev = torch.full((n_images, k), vocab.start_id, dtype=torch.long, device=device)
        history = torch.zeros(n_images, k, 0, dtype=torch.long, device=device)  # tokens so far
        maps = None  # (b, k, t, P) attention so far
        for t in range(1, max_len + 2):  # t = tokens emitted after this step, <end> included
            log_probs, alpha, state = decoder.step(state, prev)  # (b, k, V), (b, k, P)
            # in place: a fresh (b, k, V) tensor per step costs more than the arithmetic
            log_probs.index_fill_(-1, forbidden, -math.inf)
            top_scores, beam, token = best_extensions(scores, log_probs, 2 * k)  # best first
            maps = alpha.unsqueeze(2) if maps is None else torch.cat([maps, alpha.unsqueeze(2)], 2)
            is_end = token == vocab.end_id
            to_finish = is_end & top_scores.isfinite()
            to_finish[:, k:] = False  # only an <end> among the k best finishes a hypothesis
            _add_finished(finished, best_done, to_finish, live, beam, top_scores, history, maps,
                          vocab, t, length_penalty)
            if t > max_len:  # max_len words: an <end> could still come, another word not
                _add_truncated(finished, live, scores, history, maps[:, :, :-1], vocab,
                               length_penalty)
                break
            # the k best extensions that are not <end> live on (a stable sort keeps their order)
            pick = torch.argsort(is_end.to(torch.int8), dim=1, stable=True)[:, :k]
            beam, token = beam.gather(1, pick), token.gather(1, pick)
            scores = top_scores.gather(1, pick)
            state = state.reorder(beam)
            history = torch.cat([history.gather(1, _like(beam, history)), token.unsqueeze(2)], 2)
            maps = maps.gather(1, _like(beam, maps))
            prev = token
            bound = _best_possible(scores, t, max_len + 1, length_penalty)
            done = (best_done[live] >= bound) & best_done[live].isfinite()
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                live, scores, prev = live[keep], scores[keep], prev[keep]
                history, maps = history[keep], maps[keep]
                state = _keep_images(state, keep, features)
                if live.numel() == 0:
                    break
    ranked = [[c for *_, c in sorted(hyps, key=lambda h: h[:2])][:k] for hyps in finished]
    return ranked if return_all else [hyps[0] for hyps in ranked]


def _add_finished(finished, best_done, to_finish, live, beam, top_scores, history, maps, vocab,
                  t: int, length_penalty: float) -> None:
    """Record the hypotheses whose <end> is among the k best of this step (t tokens emitted)."""
    for row, j in to_finish.nonzero().tolist():
        image, b = int(live[row]), int(beam[row, j])
        score = float(top_scores[row, j])
        caption = _caption(history[row, b].tolist(), score, maps[row, b], vocab, True)
        norm = float(length_normalised(score, t, length_penalty))
        finished[image].append((False, -norm, caption))
        best_done[image] = max(float(best_done[image]), norm)


def _like(beam: Tensor, x: Tensor) -> Tensor:
    """beam (b, k) as a gather index over dim 1 of x (b, k, ...)."""
    return beam.view(*beam.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])


def _add_truncated(finished, live, scores, history, maps, vocab, length_penalty) -> None:
    """At max_len: the live beams (finite score) join their image's list as truncated Captions."""
    max_len = history.shape[2]
    for row, b in scores.isfinite().nonzero().tolist():
        score = float(scores[row, b])
        caption = _caption(history[row, b].tolist(), score, maps[row, b], vocab, False)
        norm = float(length_normalised(score, max_len, length_penalty))
        finished[int(live[row])].append((True, -norm, caption))

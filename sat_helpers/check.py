"""Checks for the notebooks' exercises: a learner's function against the package's.

Each ``check.<name>(fn)`` calls ``fn`` on a few small inputs made here (edge cases included:
padding, ties, unknown words, a first beam step) and compares what it returns with the
package's own function. Right: it prints one line. Wrong: it raises :class:`ExerciseError`,
an AssertionError that says what is wrong (the shape, which entries, the gradient) and
gives a hint. A function that still raises ``NotImplementedError`` (the student edition's
stub) is reported as not written yet.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SoftAttention, doubly_stochastic_penalty
from .data import Vocab, encode_caption
from .decoder import DecoderOutput, DecoderState, lstm_update
from .encoder import annotations, get_spec
from .hard import attention_entropy, reinforce_surrogate
from .metrics import box_mask, mass_in_box, pointing_hit
from .search import best_extensions, length_normalised
from .train import caption_loss


class ExerciseError(AssertionError):
    """An exercise's answer is wrong: the message says what, on which input, and what to try."""


def _own_rng(check: Callable) -> Callable:
    """Run a check on a forked torch random state: the notebook's random numbers after a check
    stay what they were without it, in either edition (checks seed and build models)."""
    @functools.wraps(check)
    def wrapper(fn: Callable) -> None:
        with torch.random.fork_rng(devices=[]):
            return check(fn)
    return wrapper


def _fail(exercise: str, what: str, hint: str) -> None:
    raise ExerciseError(f"{exercise}: {what}\nHint: {hint}")


def _call(exercise: str, fn: Callable, *args, inputs: str = ""):
    """fn(*args); its own errors become an ExerciseError naming the input, stubs stay stubs."""
    try:
        return fn(*args)
    except NotImplementedError as e:
        raise NotImplementedError(
            f"{exercise}: your function still raises NotImplementedError. Write your solution "
            "where it says '# YOUR CODE HERE', delete the raise, run that cell, then this one."
        ) from e
    except Exception as e:
        raise ExerciseError(f"{exercise}: your function raised {type(e).__name__}: {e}\n"
                            f"on {inputs or 'the check input'}.\nHint: the task above says "
                            "what it receives and what it returns; check the shapes.") from e


def _passed(exercise: str, cases: int) -> None:
    tried = "the input" if cases == 1 else f"all {cases} inputs"
    print(f"✓ {exercise}: right on {tried} the check tried")


def _same_tensor(exercise: str, name: str, got, want: Tensor, hint: str, inputs: str,
                 atol: float = 1e-5) -> Tensor:
    """got must be a tensor of want's shape and values; the message names the wrong entries."""
    if not isinstance(got, Tensor):
        _fail(exercise, f"{name} is a {type(got).__name__}, not a torch.Tensor ({inputs}).",
              "build it with torch operations on the tensors you are given.")
    if got.shape != want.shape:
        _fail(exercise, f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
              f"({inputs}).", hint)
    close = torch.isclose(got.detach().double(), want.detach().double(), atol=atol, rtol=1e-4)
    if not bool(close.all()):
        if want.dim() == 0:
            value, expected = float(got.detach()) + 0.0, float(want) + 0.0
            _fail(exercise, f"{name} is {value:.5g}, expected {expected:.5g} ({inputs}).", hint)
        wrong = (~close).nonzero().tolist()
        first = [tuple(i) for i in wrong[:3]]
        there, expected = float(got.detach()[first[0]]), float(want.detach()[first[0]])
        _fail(exercise, f"{name}: the shape is right, but {len(wrong)} of {close.numel()} "
              f"entries differ ({inputs}); first at {first}: got {there + 0.0:.5g}, expected "
              f"{expected + 0.0:.5g}.", hint)
    return got


# ------------------------------------------------------------------ 01 · the data

_CORPUS = [["a", "red", "circle"], ["a", "blue", "star"], ["a", "red", "star"],
           ["two", "red", "squares"], ["a", "tiny", "green", "star"], ["big", "blue", "star"]]


@_own_rng
def vocabulary(fn: Callable[[list[list[str]], int], list[str]]) -> None:
    """fn(captions, min_freq) -> the vocabulary's words (no specials), as ``Vocab.build``."""
    name = "vocabulary"
    counts = Counter(w for c in _CORPUS for w in c)
    for min_freq in (1, 2, 3):
        want = Vocab.build(_CORPUS, min_freq).words
        inputs = f"min_freq={min_freq} on {len(_CORPUS)} captions"
        got = _call(name, fn, [list(c) for c in _CORPUS], min_freq, inputs=inputs)
        if not isinstance(got, list) or not all(isinstance(w, str) for w in got):
            _fail(name, f"returned {type(got).__name__}, expected a list of words ({inputs}).",
                  "return a list of str, e.g. [w for w, c in counts.items() if ...].")
        specials = [w for w in got if w.startswith("<")]
        if specials:
            _fail(name, f"the list holds specials {specials} ({inputs}).",
                  "return only the words: Vocab(words) puts <pad>, <start>, <end>, <unk> first.")
        extra = sorted(set(got) - set(want))
        if extra:
            _fail(name, f"keeps {extra}, seen {[counts[w] for w in extra]} times ({inputs}).",
                  "keep a word only if it occurs at least min_freq times in the captions.")
        missing = sorted(set(want) - set(got))
        if missing:
            _fail(name, f"drops {missing}, seen {[counts[w] for w in missing]} times "
                  f"({inputs}).", "a word seen exactly min_freq times stays: count >= min_freq.")
        if len(got) != len(set(got)):
            _fail(name, f"some words appear twice: {got} ({inputs}).", "list each word once.")
        if got != want:
            _fail(name, f"the right words in another order: {got}, expected {want} ({inputs}).",
                  "most frequent first, ties alphabetical: sorted(words, key=lambda w: "
                  "(-counts[w], w)).")
    _passed(name, 3)


@_own_rng
def encode(fn: Callable[[list[str], Vocab, int], list[int]]) -> None:
    """fn(tokens, vocab, max_len) -> one caption row, as ``data.encode_caption``."""
    name = "encode"
    vocab = Vocab.build(_CORPUS, 1)
    cases = [(["a", "red", "circle"], 5), (["a", "purple", "star"], 3), ([], 2),
             (["two", "red", "squares"], 3)]
    for tokens, max_len in cases:
        want = encode_caption(tokens, vocab, max_len)
        inputs = f"tokens={tokens}, max_len={max_len}"
        got = _call(name, fn, list(tokens), vocab, max_len, inputs=inputs)
        got = got.tolist() if hasattr(got, "tolist") else got
        if not isinstance(got, list):
            _fail(name, f"returned {type(got).__name__}, expected a list of ints ({inputs}).",
                  "return a list such as [vocab.start_id, ...].")
        if len(got) != max_len + 2:
            _fail(name, f"returned {len(got)} ids, expected max_len + 2 = {max_len + 2} "
                  f"({inputs}).", "every row has the same width: <start>, the words, <end>, "
                  "then <pad> (id 0) up to max_len + 2 ids.")
        if got != want:
            i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            unknown = [t for t in tokens if t not in vocab]
            hint = {0: "a row starts with <start> (vocab.start_id)."}.get(i, (
                f"{unknown[0]!r} is not in the vocabulary: it becomes <unk> (vocab.unk_id), "
                "as vocab.encode does." if unknown and want[i] == vocab.unk_id else
                "after the last word comes <end> (vocab.end_id), then <pad> (vocab.pad_id)."))
            word = vocab.itos[got[i]] if 0 <= got[i] < len(vocab) else "no word"
            _fail(name, f"id {i} is {got[i]} ({word}), expected {want[i]} "
                  f"({vocab.itos[want[i]]}); "
                  f"got {got}, expected {want} ({inputs}).", hint)
    _passed(name, len(cases))


# ------------------------------------------------------------------ 02 · the encoder

@_own_rng
def to_annotations(fn: Callable[[Tensor], Tensor]) -> None:
    """fn(feature_map (B, D, H, W)) -> (B, H·W, D), cells row by row (``encoder.annotations``)."""
    name = "to_annotations"
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 3, 4), (1, 7, 2, 2), (3, 4, 4, 3)]
    for shape in shapes:
        fmap = torch.randn(*shape, generator=g)
        inputs = f"a feature map of shape {shape}"
        got = _call(name, fn, fmap.clone(), inputs=inputs)
        want = annotations(fmap)
        b, d, h, w = shape
        hint = f"(B, H·W, D) = ({b}, {h * w}, {d}): one D-vector per cell of the H×W grid."
        if isinstance(got, Tensor) and got.shape == want.shape and not torch.allclose(got, want):
            if torch.equal(got, fmap.reshape(b, -1, d)):
                hint = ("you reshaped without moving the channels last, so each 'vector' mixes "
                        "several cells of one channel: permute to (B, H, W, D) first.")
            elif torch.equal(got, fmap.permute(0, 3, 2, 1).reshape(b, -1, d)):
                hint = ("the cells come column by column: annotation i·W + j must be the cell "
                        "(row i, column j), so permute(0, 2, 3, 1).")
        _same_tensor(name, "the annotations", got, want, hint, inputs)
    _passed(name, len(shapes))


@_own_rng
def cut_classifier(fn: Callable[[nn.Module], nn.Module]) -> None:
    """fn(resnet18) -> the module up to its last feature map, as the package's resnet18 trunk."""
    import torchvision

    name = "cut_classifier"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    reference = nn.Sequential(*(m for _, m in get_spec("resnet18").trunk(model))).eval()
    inputs = "torchvision's resnet18 (random weights) on 2 images of 3×64×64"
    cut = _call(name, fn, model, inputs=inputs)
    if not isinstance(cut, nn.Module):
        _fail(name, f"returned a {type(cut).__name__}, expected an nn.Module.",
              "wrap the layers you keep in nn.Sequential(...).")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = _call(name, cut.eval(), x, inputs=inputs)
        want = reference(x)
    hint = "keep conv1, bn1, relu, maxpool and layer1-layer4; drop avgpool and fc."
    if isinstance(got, Tensor):
        if got.dim() == 2:
            hint = (f"the output {tuple(got.shape)} is one vector per image: the classifier "
                    "(avgpool, fc) is still there. Drop both; keep the feature map.")
        elif got.shape[-2:] == (1, 1):
            hint = ("the output is pooled to 1×1: the global average pooling is still there, and "
                    "with it every position. Drop avgpool too.")
        elif got.dim() == 4 and got.shape[1] != want.shape[1]:
            hint = (f"{got.shape[1]} channels at {tuple(got.shape[-2:])}: the cut is at another "
                    "block; the last residual stage, layer4, gives 512 channels at stride 32.")
        elif got.shape == want.shape:
            hint = ("the right shape but other numbers: reuse the model's own layers (do not "
                    "build new ones) in their order.")
    _same_tensor(name, "the feature map", got, want, hint, inputs, atol=1e-4)
    _passed(name, 1)


# ------------------------------------------------------------------ 03 · attention

@_own_rng
def attention(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """fn(a, h, W_a, b, W_h, w) -> (z_hat (B, k, D), alpha (B, k, P)) for k questions per image."""
    name = "attention"
    cases = [(2, 6, 5, 3, 4, 7), (1, 4, 3, 1, 2, 5), (3, 9, 2, 4, 6, 3)]  # B, P, D, k, A, n
    for B, P, D, k, A, n in cases:
        torch.manual_seed(B * 100 + P)
        att = SoftAttention(D, n, A)
        a, h = torch.randn(B, P, D), torch.randn(B, k, n)
        weights = [att.W_a.weight.detach().clone().requires_grad_(),
                   att.W_a.bias.detach().clone().requires_grad_(),
                   att.W_h.weight.detach().clone().requires_grad_(),
                   att.w.weight.detach()[0].clone().requires_grad_()]
        inputs = f"a {tuple(a.shape)}, h {tuple(h.shape)}: B={B}, P={P}, D={D}, k={k}"
        got = _call(name, fn, a, h, *weights, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            _fail(name, f"returned {type(got).__name__}, expected a pair (z_hat, alpha).",
                  "end with `return z_hat, alpha`.")
        z, alpha = got
        want_z, want_alpha = att(a, h)
        hint = "α: softmax of e over the P positions, one row per image and question."
        if isinstance(alpha, Tensor) and alpha.shape == want_alpha.shape:
            sums = alpha.detach().sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                hint = "the rows of α do not sum to 1: take the softmax over the positions, dim=-1."
            elif torch.allclose(alpha, torch.full_like(alpha, 1 / P), atol=1e-4):
                hint = "α is uniform: the scores e must differ across positions (eq. 4)."
        _same_tensor(name, "alpha", alpha, want_alpha, hint, inputs)
        _same_tensor(name, "z_hat", z, want_z, "ẑ = Σ_i α_i a_i (eq. 13): a weighted sum of the "
                     "annotation vectors over P, e.g. alpha @ a, shape (B, k, D).", inputs)
        if not z.requires_grad:
            _fail(name, f"no gradient reaches the weights through z_hat ({inputs}).",
                  "do not wrap the computation in torch.no_grad() or call .detach(): training "
                  "learns W_a, W_h, b and w through it.")
        probe = torch.randn(want_z.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((z * probe).sum(), weights, allow_unused=True)
        params = [att.W_a.weight, att.W_a.bias, att.W_h.weight, att.w.weight]
        want_grads = torch.autograd.grad((want_z * probe).sum(), params)
        for label, grad, ref in zip(("W_a", "b", "W_h", "w"), grads, want_grads, strict=True):
            if grad is None or not torch.allclose(grad, ref.reshape(grad.shape), atol=1e-4):
                _fail(name, f"the gradient with respect to {label} is "
                      f"{'missing' if grad is None else 'wrong'} ({inputs}).",
                      f"use {label} exactly once, where eq. 4 has it; no .detach() on the way.")
    _passed(name, len(cases))


@_own_rng
def penalty(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """fn(alphas (B, T, P), lengths (B,), lam) -> the doubly stochastic penalty, a 0-d tensor."""
    name = "penalty"
    g = torch.Generator().manual_seed(3)
    cases = [((2, 5, 4), [5, 3], 1.0), ((3, 4, 6), [2, 4, 1], 0.5), ((1, 3, 9), [3], 2.0)]
    for shape, lengths_list, lam in cases:
        alphas = torch.rand(*shape, generator=g).softmax(-1)  # padding steps hold noise too
        lengths = torch.tensor(lengths_list)
        inputs = f"alphas {shape}, lengths {lengths_list}, lam={lam}"
        got = _call(name, fn, alphas.clone(), lengths.clone(), lam, inputs=inputs)
        want = doubly_stochastic_penalty(alphas, lengths, lam)
        hint = "λ · mean over positions of (1 − Σ_t α_ti)², Σ over real steps, mean over the batch."
        if isinstance(got, Tensor) and got.dim() > 0:
            hint = "return one number (a 0-d tensor): the mean over the batch and the positions."
        elif isinstance(got, Tensor):
            every_step = lam * ((1 - alphas.sum(1)) ** 2).mean()
            steps = torch.arange(shape[1])[None] < lengths[:, None]
            summed = lam * ((1 - (alphas * steps[..., None]).sum(1)) ** 2).sum(-1).mean()
            if torch.isclose(got, every_step) and not torch.isclose(got, want):
                hint = (f"padding steps count: with lengths {lengths_list}, only the first "
                        "lengths[b] steps of row b are real; mask the steps t >= lengths[b].")
            elif torch.isclose(got, summed):
                hint = ("you summed over the P positions; the course takes their mean, so one λ "
                        "means the same on any grid (notebook 03, section 9).")
            elif torch.isclose(got, want / lam):
                hint = "the right penalty without λ: multiply by lam."
        _same_tensor(name, "the penalty", got, want, hint, inputs)
    _passed(name, len(cases))


# ------------------------------------------------------------------ 04 · the decoder

@_own_rng
def loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """fn(scores, alphas, captions, lengths, lam) -> cross-entropy of the real words + penalty."""
    name = "loss"
    cases = [(3, 6, 7, 5, [6, 4, 2], 0.0), (2, 5, 9, 4, [5, 3], 1.0),
             (4, 4, 5, 3, [4, 4, 2, 3], 0.5)]
    for B, T1, V, P, lengths_list, lam in cases:  # captions (B, T1), scores (B, T1 - 1, V)
        g = torch.Generator().manual_seed(B * 10 + V)
        lengths = torch.tensor(lengths_list)
        captions = torch.randint(4, V, (B, T1), generator=g)
        captions[torch.arange(T1)[None] >= lengths[:, None]] = 0  # <pad> after each caption
        scores = torch.randn(B, T1 - 1, V, generator=g).requires_grad_()
        alphas = torch.rand(B, T1 - 1, P, generator=g).softmax(-1)
        inputs = (f"scores {tuple(scores.shape)}, captions {tuple(captions.shape)}, lengths "
                  f"{lengths_list}, lam={lam}")
        got = _call(name, fn, scores, alphas, captions.clone(), lengths.clone(), lam,
                    inputs=inputs)
        output = DecoderOutput(scores, alphas, None, None)
        want, parts = caption_loss(output, captions, lengths, SimpleNamespace(lam=lam))
        hint = ("cross-entropy of scores[b, t] against captions[b, t + 1] over the real steps "
                "t < lengths[b] − 1, averaged over all real words, + λ · penalty.")
        if isinstance(got, Tensor) and got.dim() == 0 and not torch.isclose(got, want):
            hint = _loss_hint(got, scores, alphas, captions, lengths, lam, parts) or hint
        _same_tensor(name, "the loss", got, want.detach(), hint, inputs)
        if not got.requires_grad:
            _fail(name, f"the loss has no gradient ({inputs}).", "compute it from scores with "
                  "torch operations, without torch.no_grad(), .item() or .detach().")
        grad, = torch.autograd.grad(got, scores)
        want_grad, = torch.autograd.grad(want, scores)
        _same_tensor(name, "the gradient of the loss with respect to scores", grad, want_grad,
                     "the loss is right but its gradient is not: compute it from scores with "
                     "torch operations (no .item(), .detach() or numpy on the way).", inputs)
    _passed(name, len(cases))


def _loss_hint(got, scores, alphas, captions, lengths, lam, parts) -> str | None:
    """Name the usual mistake when the loss matches it."""
    steps = scores.shape[1]
    real = torch.arange(steps)[None] < (lengths - 1)[:, None]
    with torch.no_grad():
        per_word = F.cross_entropy(scores.transpose(1, 2), captions[:, 1:steps + 1],
                                   reduction="none")
        unshifted = F.cross_entropy(scores.transpose(1, 2), captions[:, :steps], reduction="none")
        pen = doubly_stochastic_penalty(alphas, lengths - 1, lam)
        guesses = {
            "padding positions count: average only over the real words (steps t < lengths − 1)":
                per_word.mean() + pen,
            "the targets are not shifted: scores[:, t] predicts captions[:, t + 1], the word "
            "after the input": (unshifted * real).sum() / real.sum() + pen,
            "the doubly stochastic penalty is missing: add λ · mean_i (1 − Σ_t α_ti)² over the "
            "real steps": torch.tensor(parts["ce"]),
            "averaged per caption, then over captions: the course averages over all real "
            "words of the batch at once": ((per_word * real).sum(1) / real.sum(1)).mean() + pen,
            "the penalty counts the padding steps: pass lengths − 1 (the real steps) to it":
                (per_word * real).sum() / real.sum() + doubly_stochastic_penalty(
                    alphas, torch.full_like(lengths, steps), lam),
        }
    return next((k for k, v in guesses.items() if torch.isclose(got.detach(), v, atol=1e-5)),
                None)


@_own_rng
def lstm_step(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """fn(gates (B, 4n), c_prev (B, n)) -> (h, c): eq. 2-3 with gates in the order i, f, g, o."""
    name = "lstm_step"
    g = torch.Generator().manual_seed(4)
    cases = [(2, 3), (1, 5), (4, 2)]
    for B, n in cases:
        gates, c_prev = torch.randn(B, 4 * n, generator=g), torch.randn(B, n, generator=g)
        inputs = f"gates {tuple(gates.shape)}, c_prev {tuple(c_prev.shape)}"
        got = _call(name, fn, gates.clone(), c_prev.clone(), inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            _fail(name, f"returned {type(got).__name__}, expected a pair (h, c).",
                  "end with `return h, c`.")
        h, c = got
        want_h, want_c = lstm_update(gates, c_prev)
        hint = "c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g) (eq. 2), gates.chunk(4, dim=-1) = i, f, g, o."
        if isinstance(c, Tensor) and c.shape == want_c.shape:
            chunks = dict(zip("ifgo", gates.chunk(4, dim=-1), strict=True))
            for order in itertools.permutations("ifgo"):
                if order != tuple("ifgo"):
                    swapped = torch.cat([chunks[k] for k in order], dim=-1)
                    if torch.allclose(c, lstm_update(swapped, c_prev)[1], atol=1e-5):
                        hint = (f"you read the four gates in the order {', '.join(order)}; the "
                                "course's decoder (like torch.nn.LSTM) has i, f, g, o.")
        _same_tensor(name, "c", c, want_c, hint, inputs)
        _same_tensor(name, "h", h, want_h, "c is right; h_t = σ(o) ⊙ tanh(c_t) (eq. 3) uses the "
                     "new cell c_t, not c_{t−1}.", inputs)
    _passed(name, len(cases))


# ------------------------------------------------------------------ 05 · search

@_own_rng
def beam_step(fn: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]]) -> None:
    """fn(scores (B, k), log_probs (B, k, V), n) -> (top scores, beam, token), each (B, n)."""
    name = "beam_step"
    cases = [(2, 3, 7, 6, False), (1, 2, 5, 4, False), (3, 3, 6, 6, True)]
    for B, k, V, n, first in cases:
        g = torch.Generator().manual_seed(B * 10 + k)
        scores = -torch.rand(B, k, generator=g) * 5
        if first:  # the first step: k identical beams, only beam 0 alive
            scores[:, 1:] = -math.inf
        log_probs = torch.randn(B, k, V, generator=g).log_softmax(-1)
        inputs = f"scores {tuple(scores.shape)}{' (first step)' if first else ''}, log_probs " \
                 f"{tuple(log_probs.shape)}, n={n}"
        got = _call(name, fn, scores.clone(), log_probs.clone(), n, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 3:
            _fail(name, f"returned {type(got).__name__}, expected (top_scores, beam, token).",
                  "end with `return top_scores, beam, token`.")
        top, beam, token = got
        want_top, want_beam, want_token = best_extensions(scores, log_probs.clone(), n)
        hint = ("one topk over each image's k·V candidates: (scores[:, :, None] + log_probs)"
                ".flatten(1).topk(n).")
        if isinstance(top, Tensor) and top.shape == want_top.shape:
            words_only = log_probs.flatten(1).topk(n).values
            if torch.allclose(top, words_only):
                hint = ("these are the words' log-probabilities alone: add each beam's summed "
                        "score first, scores[:, :, None] + log_probs.")
            elif first and not torch.isfinite(top).all():
                hint = ("-inf among the top scores: on the first step only beam 0 is alive; a "
                        "topk over all k·V candidates together never picks a dead beam.")
        _same_tensor(name, "top_scores", top, want_top, hint, inputs)
        hint_token = "token = flat index % V: the word of the candidate."
        if isinstance(token, Tensor) and token.shape == want_token.shape and bool(
                (token >= V).any()):
            hint_token = f"token holds flat indices beam·V + token (up to k·V − 1): take % V={V}."
        _same_tensor(name, "beam", beam, want_beam, "beam = flat index // V: which beam the "
                     "candidate extends.", inputs)
        _same_tensor(name, "token", token, want_token, hint_token, inputs)
    _passed(name, len(cases))


@_own_rng
def reorder(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """fn(h (B, k, n), beam (B, k)) -> (B, k, n): row j of image b is h[b, beam[b, j]]."""
    name = "reorder"
    cases = [(2, 3, 4, [[0, 0, 2], [1, 2, 1]]), (1, 2, 3, [[1, 1]]),
             (3, 2, 2, [[1, 0], [0, 0], [1, 1]])]
    for B, k, n, beam_list in cases:
        h = torch.randn(B, k, n, generator=torch.Generator().manual_seed(B * k))
        beam = torch.tensor(beam_list)
        inputs = f"h {tuple(h.shape)}, beam {beam_list}"
        got = _call(name, fn, h.clone(), beam.clone(), inputs=inputs)
        want = DecoderState(h, h, h, h).reorder(beam).h
        hint = "row j of image b is h[b, beam[b, j]]: each image picks among its own beams."
        if isinstance(got, Tensor) and got.shape != want.shape:
            if got.dim() == 4:
                hint = ("h[:, beam] mixes images: it gives every image the picks of all B images; "
                        "pair it with the image index, h[torch.arange(B)[:, None], beam], or "
                        "h.gather(1, beam[..., None].expand(-1, -1, n)).")
            elif got.shape[:2] == want.shape[:2]:
                hint = ("gather needs an index as large as its output: "
                        "beam[..., None].expand(-1, -1, n).")
        _same_tensor(name, "the reordered state", got, want, hint, inputs)
    _passed(name, len(cases))


@_own_rng
def best_caption(fn: Callable[[list[float], list[int], float], int]) -> None:
    """fn(scores, lengths, length_penalty) -> the index of the caption ranked first."""
    name = "best_caption"
    scores, lengths = [-4.0, -4.5, -6.0, -3.0, -7.5], [4, 6, 9, 3, 14]
    cases = [0.0, 0.7, 1.5, 3.0]
    for alpha in cases:
        normalised = [length_normalised(s, n, alpha) for s, n in zip(scores, lengths, strict=True)]
        want = int(np.argmax(normalised))
        inputs = f"scores {scores}, lengths {lengths}, length_penalty={alpha}"
        got = _call(name, fn, list(scores), list(lengths), alpha, inputs=inputs)
        got = int(got) if isinstance(got, (int, np.integer)) or (
            isinstance(got, Tensor) and got.numel() == 1) else got
        if not isinstance(got, int):
            _fail(name, f"returned {got!r}, expected an index (int) ({inputs}).",
                  "return the position of the best caption in the list.")
        if got != want:
            plain = int(np.argmax(scores))
            hint = ("rank by score / ((5 + length) / 6) ** length_penalty (GNMT), the highest "
                    "first.")
            if got == plain and alpha > 0:
                hint = (f"you ranked by the plain summed log-probability; with length_penalty="
                        f"{alpha} divide it by ((5 + length) / 6) ** {alpha} first.")
            elif got == int(np.argmin(normalised)):
                hint = "you picked the worst: log-probabilities are ≤ 0, the highest is best."
            _fail(name, f"picked caption {got}, expected {want} (normalised scores "
                  f"{[round(float(x), 3) for x in normalised]}; {inputs}).", hint)
    _passed(name, len(cases))


# ------------------------------------------------------------------ 06 · evaluation

@_own_rng
def box_to_mask(fn: Callable[[list[list[float]], tuple[int, int]], np.ndarray]) -> None:
    """fn(boxes [[x0, y0, x1, y1], ...], (H, W)) -> bool (H, W), as ``metrics.box_mask``."""
    name = "box_to_mask"
    cases = [([[1, 2, 4, 5]], (6, 8)), ([[0, 0, 3, 2], [5, 1, 7, 6]], (7, 9)),
             ([[2.5, 1, 6, 3.5]], (5, 7))]
    for boxes, size in cases:
        want = box_mask(boxes, size)
        inputs = f"boxes {boxes}, image (H, W) = {size}"
        got = np.asarray(_call(name, fn, [list(b) for b in boxes], size, inputs=inputs))
        if got.shape != want.shape:
            hint = "rows are y (H of them), columns are x (W): np.zeros((H, W), dtype=bool)."
            _fail(name, f"the mask has shape {got.shape}, expected (H, W) = {want.shape} "
                  f"({inputs}).", hint)
        if got.dtype != bool:
            _fail(name, f"the mask is {got.dtype}, expected bool ({inputs}).",
                  "build it from comparisons (xs >= x0) & ..., which give booleans.")
        if not np.array_equal(got, want):
            wrong = np.argwhere(got != want)
            hint = ("a pixel (row y, column x) is inside when its centre (x + 0.5, y + 0.5) "
                    "satisfies x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1; several boxes: OR.")
            flipped = box_mask([[y0, x0, y1, x1] for x0, y0, x1, y1 in boxes], size)
            if np.array_equal(got, flipped):
                hint = "x and y are swapped: a box is [x0, y0, x1, y1] and the mask is mask[y, x]."
            _fail(name, f"{len(wrong)} pixels wrong ({inputs}); (row, column) of the first: "
                  f"{[tuple(map(int, w)) for w in wrong[:3]]}, there got "
                  f"{bool(got[tuple(wrong[0])])}, expected {bool(want[tuple(wrong[0])])}.", hint)
    _passed(name, len(cases))


@_own_rng
def hit(fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
    """fn(attention_map (H, W), mask (H, W)) -> 1.0 hit, 0.0 miss, as ``metrics.pointing_hit``."""
    name = "hit"
    rng = np.random.default_rng(5)
    mask = box_mask([[1, 1, 4, 3]], (5, 6))
    inside, outside = rng.random((5, 6)), rng.random((5, 6))
    inside[2, 2], outside[4, 5] = 2.0, 2.0  # each map's peak
    plateau = np.zeros((5, 6))
    plateau[2, 3:6] = 1.0  # a tie: one of the three peak pixels is in the box
    cases = [("its peak inside the box", inside), ("its peak outside the box", outside),
             ("three tied peaks, one inside", plateau)]
    for label, attention_map in cases:
        want = pointing_hit(attention_map, mask)
        inputs = f"a (5, 6) map with {label}"
        got = _call(name, fn, attention_map.copy(), mask.copy(), inputs=inputs)
        try:
            got = float(got)
        except (TypeError, ValueError):
            _fail(name, f"returned {got!r}, expected a number ({inputs}).", "return a float.")
        if not math.isclose(got, want, abs_tol=1e-6):
            hint = "a hit is the map's maximum falling inside the box: mask at argmax."
            if math.isclose(got, mass_in_box(attention_map, mask), abs_tol=1e-6):
                hint = ("that is the attention mass inside the box; the pointing game asks only "
                        "where the maximum is.")
            elif "tied" in label:
                hint = ("with tied maxima, score their share in the box: "
                        "mask[attention_map == attention_map.max()].mean().")
            elif math.isclose(got, 1 - want):
                hint = "inverted: 1.0 means the peak is inside the mask (mask True)."
            _fail(name, f"got {got}, expected {want} ({inputs}).", hint)
    _passed(name, len(cases))


# ------------------------------------------------------------------ 07 · hard attention

@_own_rng
def surrogate(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """fn(log_likelihood (N,), sample_log_prob (N,), baseline) -> the REINFORCE term, (N,)."""
    name = "surrogate"
    cases = [(4, -11.0), (6, -3.5), (1, 0.0)]
    for n, baseline in cases:
        g = torch.Generator().manual_seed(n)
        log_lik = (-torch.rand(n, generator=g) * 20).requires_grad_()
        log_prob = (-torch.rand(n, generator=g) * 4).requires_grad_()
        inputs = f"N={n}, baseline={baseline}"
        got = _call(name, fn, log_lik, log_prob, baseline, inputs=inputs)
        want = reinforce_surrogate(log_lik, log_prob, baseline)
        hint = "(log p(y|s̃,a) − b).detach() · (log p(s̃|a) − log p(s̃|a).detach())."
        if isinstance(got, Tensor) and got.shape == want.shape and not torch.allclose(
                got.detach(), want.detach()):
            hint = ("its value must be 0 so that the loss still reads as a cross-entropy: "
                    "multiply by (log p(s̃|a) − log p(s̃|a).detach()), which is 0 in value "
                    "but has the gradient of log p(s̃|a).")
        _same_tensor(name, "the surrogate's value", got, want.detach(), hint, inputs)
        if not got.requires_grad:
            _fail(name, f"the surrogate has no gradient ({inputs}).", "keep log p(s̃|a) "
                  "in the graph: only its .detach() copy may be subtracted.")
        grad, = torch.autograd.grad(got.sum(), log_prob, allow_unused=True)
        want_grad, = torch.autograd.grad(want.sum(), log_prob)
        _same_tensor(name, "the gradient with respect to log p(s̃|a)",
                     torch.zeros(n) if grad is None else grad, want_grad,
                     "∂ term_n / ∂ log p(s̃_n|a) must be the advantage log p(y_n|s̃_n,a) − b "
                     f"(here b={baseline}): subtract the baseline you are given.", inputs)
    _passed(name, len(cases))


@_own_rng
def entropy(fn: Callable[[Tensor], Tensor]) -> None:
    """fn(alphas (..., P)) -> H[α] in nats over the last axis, as ``hard.attention_entropy``."""
    name = "entropy"
    g = torch.Generator().manual_seed(6)
    one_hot = torch.eye(5)[[0, 3]]
    cases = [("random rows (3, 7)", torch.rand(3, 7, generator=g).softmax(-1)),
             ("uniform rows (2, 4, 5)", torch.full((2, 4, 5), 0.2)),
             ("one-hot rows (2, 5), with exact zeros", one_hot)]
    for label, alphas in cases:
        inputs = label
        got = _call(name, fn, alphas.clone(), inputs=inputs)
        want = attention_entropy(alphas)
        hint = "H = −Σ_i α_i log α_i over the last axis (natural log: nats)."
        if isinstance(got, Tensor) and got.shape == want.shape:
            if bool(torch.isnan(got).any()):
                hint = ("NaN: 0 · log 0 is 0 in the entropy, but 0 · (−inf) is NaN in floats; "
                        "clamp α before the log, α.clamp_min(1e-12).log().")
            elif torch.allclose(got, want / math.log(2), atol=1e-4):
                hint = "these are bits (log2); the course measures in nats: torch.log."
            elif torch.allclose(got, -want, atol=1e-4):
                hint = "the sign: H = −Σ α log α is ≥ 0."
        elif isinstance(got, Tensor) and got.numel() == 1:
            hint = "one entropy per row: sum over the last axis only (dim=-1)."
        _same_tensor(name, "the entropy", got, want, hint, inputs, atol=1e-4)
    _passed(name, len(cases))

"""The exercise checks accept right answers and name the mistake in wrong ones."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sat_helpers import check
from sat_helpers.attention import doubly_stochastic_penalty
from sat_helpers.check import ExerciseError


def fails(check_fn, answer, *phrases: str) -> str:
    """Run a check on a wrong answer; it must raise ExerciseError naming every phrase."""
    with pytest.raises(ExerciseError) as error:
        check_fn(answer)
    message = str(error.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in the message:\n{message}"
    assert "Hint:" in message
    return message


def unsolved(*args):
    raise NotImplementedError()


def test_an_unsolved_exercise_says_so():
    with pytest.raises(NotImplementedError, match="YOUR CODE HERE"):
        check.penalty(unsolved)


def test_a_crash_in_the_answer_names_the_input():
    fails(check.to_annotations, lambda fmap: fmap.view(7, -1), "raised RuntimeError",
          "feature map of shape")


def test_checks_leave_the_random_state_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    check.attention(attend)
    with pytest.raises(NotImplementedError):
        check.cut_classifier(unsolved)
    assert torch.equal(torch.random.get_rng_state(), before)


# -------------------------------------------------------------- 01


def vocabulary_words(captions, min_freq, keep=lambda c, m: c >= m, order=True):
    counts = Counter(w for tokens in captions for w in tokens)
    kept = [w for w, c in counts.items() if keep(c, min_freq)]
    return sorted(kept, key=lambda w: (-counts[w], w) if order else w)


def test_vocabulary(capsys):
    check.vocabulary(vocabulary_words)
    assert "✓ vocabulary" in capsys.readouterr().out
    fails(check.vocabulary, lambda c, m: vocabulary_words(c, m, keep=lambda c, m: c > m),
          "drops", "exactly min_freq times")
    fails(check.vocabulary, lambda c, m: vocabulary_words(c, m, order=False),
          "another order", "most frequent first")
    fails(check.vocabulary, lambda c, m: ["<pad>", *vocabulary_words(c, m)], "specials")


def encode_row(tokens, vocab, max_len, unknown=True, pad=True):
    ids = [vocab.stoi.get(t, vocab.unk_id) for t in tokens if unknown or t in vocab]
    ids = [vocab.start_id, *ids, vocab.end_id]
    return ids + [vocab.pad_id] * (max_len + 2 - len(ids)) * pad


def test_encode(capsys):
    check.encode(encode_row)
    assert "✓ encode" in capsys.readouterr().out
    fails(check.encode, lambda t, v, m: encode_row(t, v, m, pad=False), "max_len + 2")
    fails(check.encode, lambda t, v, m: encode_row(t, v, m, unknown=False),
          "'purple' is not in the vocabulary", "<unk>")


# -------------------------------------------------------------- 02


def test_to_annotations():
    check.to_annotations(lambda f: f.flatten(2).transpose(1, 2))
    fails(check.to_annotations, lambda f: f.reshape(f.shape[0], -1, f.shape[1]),
          "entries differ", "without moving the channels last")
    fails(check.to_annotations, lambda f: f.permute(0, 3, 2, 1).reshape(f.shape[0], -1, f.shape[1]),
          "column by column")


def test_cut_classifier():
    check.cut_classifier(lambda m: nn.Sequential(*list(m.children())[:-2]))
    fails(check.cut_classifier, lambda m: nn.Sequential(*list(m.children())[:-1]),
          "shape (2, 512, 1, 1)", "global average pooling")
    fails(check.cut_classifier, lambda m: nn.Sequential(*list(m.children())[:-3]),
          "256 channels", "layer4")


# -------------------------------------------------------------- 03


def attend(a, h, W_a, b, W_h, w, dim=-1, grad=True):
    with torch.set_grad_enabled(grad):
        e = torch.tanh((a @ W_a.T + b).unsqueeze(1) + (h @ W_h.T).unsqueeze(2)) @ w
        alpha = e.softmax(dim=dim)
        return alpha @ a, alpha


def test_attention():
    check.attention(attend)
    fails(check.attention, lambda *x: attend(*x, dim=1), "alpha", "do not sum to 1")
    fails(check.attention, lambda *x: attend(*x, grad=False), "no gradient")


def summed_penalty(alphas, lengths, lam):
    real = torch.arange(alphas.shape[1]) < lengths[:, None]
    return lam * ((1 - (alphas * real[..., None]).sum(1)) ** 2).sum(-1).mean()


def test_penalty():
    check.penalty(doubly_stochastic_penalty)
    fails(check.penalty, lambda al, n, lam: lam * ((1 - al.sum(1)) ** 2).mean(),
          "the penalty is", "padding steps count")
    fails(check.penalty, summed_penalty, "summed over the P positions")
    fails(check.penalty, lambda al, n, lam: doubly_stochastic_penalty(al, n, lam)[None],
          "shape (1,)", "0-d tensor")


# -------------------------------------------------------------- 04


def loss(scores, alphas, captions, lengths, lam, mask=True, shift=1, penalty=True):
    steps = scores.shape[1]
    targets = captions[:, shift:steps + shift]
    real = torch.arange(steps) < (lengths - 1)[:, None]
    if not mask:
        real = torch.ones_like(real)
    ce = F.cross_entropy(scores[real], targets[real])
    return ce + doubly_stochastic_penalty(alphas, lengths - 1, lam) * penalty


def test_loss():
    check.loss(loss)
    fails(check.loss, lambda *x: loss(*x, mask=False), "padding positions count")
    fails(check.loss, lambda *x: loss(*x, shift=0), "targets are not shifted")
    fails(check.loss, lambda *x: loss(*x, penalty=False), "lam=1.0", "penalty is missing")
    fails(check.loss, lambda *x: loss(*x).detach(), "no gradient")


def lstm_step(gates, c_prev, order="ifgo", h_from_old=False):
    chunks = dict(zip(order, gates.chunk(4, dim=-1), strict=True))
    c = torch.sigmoid(chunks["f"]) * c_prev + torch.sigmoid(chunks["i"]) * torch.tanh(chunks["g"])
    return torch.sigmoid(chunks["o"]) * torch.tanh(c_prev if h_from_old else c), c


def test_lstm_step():
    check.lstm_step(lstm_step)
    fails(check.lstm_step, lambda g, c: lstm_step(g, c, order="ifog"), "order i, f, o, g")
    fails(check.lstm_step, lambda g, c: lstm_step(g, c, h_from_old=True), "h: the shape is right",
          "the new cell")


# -------------------------------------------------------------- 05


def beam_step(scores, log_probs, n, add=True, split=True):
    vocab_size = log_probs.shape[-1]
    candidates = ((scores.unsqueeze(-1) if add else 0) + log_probs).flatten(1)
    top, index = candidates.topk(n, dim=1)
    return top, index // vocab_size, index % vocab_size if split else index


def test_beam_step():
    check.beam_step(beam_step)
    fails(check.beam_step, lambda s, lp, n: beam_step(s, lp, n, add=False), "top_scores",
          "log-probabilities alone")
    fails(check.beam_step, lambda s, lp, n: beam_step(s, lp, n, split=False), "token", "% V")


def test_reorder():
    check.reorder(lambda h, beam: h[torch.arange(h.shape[0])[:, None], beam])
    fails(check.reorder, lambda h, beam: h[:, beam], "shape (2, 2, 3, 4)", "mix")
    fails(check.reorder, lambda h, beam: h.gather(1, beam[..., None]), "shape (2, 3, 1)",
          "expand")
    fails(check.reorder, lambda h, beam: h, "entries differ", "h[b, beam[b, j]]")


def test_best_caption():
    def best(scores, lengths, alpha):
        return max(range(len(scores)), key=lambda i: scores[i] / ((5 + lengths[i]) / 6) ** alpha)

    check.best_caption(best)
    fails(check.best_caption, lambda s, n, a: int(np.argmax(s)), "length_penalty=1.5",
          "plain summed log-probability")
    fails(check.best_caption, lambda s, n, a: int(np.argmin(s)), "picked the worst")


# -------------------------------------------------------------- 06


def box_to_mask(boxes, size, swap=False, shape_wh=False):
    h, w = size
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros((w, h) if shape_wh else (h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        if swap:
            x0, y0, x1, y1 = y0, x0, y1, x1
        mask |= ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).reshape(mask.shape)
    return mask


def test_box_to_mask():
    check.box_to_mask(box_to_mask)
    fails(check.box_to_mask, lambda b, s: box_to_mask(b, s, swap=True), "pixels wrong",
          "x and y are swapped")
    fails(check.box_to_mask, lambda b, s: box_to_mask(b, s, shape_wh=True), "shape (8, 6)",
          "rows are y")


def test_hit():
    check.hit(lambda m, mask: float(mask[m == m.max()].mean()))
    fails(check.hit, lambda m, mask: float(m[mask].sum() / m.sum()), "attention mass")
    fails(check.hit, lambda m, mask: float(mask.flat[m.argmax()]), "three tied peaks",
          "tied maxima")


# -------------------------------------------------------------- 07


def test_surrogate():
    def term(log_lik, log_prob, b, detach=True, baseline=True):
        advantage = log_lik - (b if baseline else 0.0)
        return advantage.detach() * (log_prob - log_prob.detach() * detach)

    check.surrogate(term)
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b, detach=False),
          "the surrogate's value", "value must be 0")
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b, baseline=False),
          "gradient with respect to log p(s̃|a)", "b=-11.0")
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b).detach(), "no gradient")


def test_entropy():
    check.entropy(lambda a: -torch.special.xlogy(a, a).sum(-1))
    fails(check.entropy, lambda a: -(a * a.log()).sum(-1), "one-hot", "NaN", "clamp")
    fails(check.entropy, lambda a: -(a * a.clamp_min(1e-12).log2()).sum(-1), "bits")
    fails(check.entropy, lambda a: -(a * a.clamp_min(1e-12).log()).sum(), "dim=-1")

"""Notebook 04's checks: one decoding step (eq. 1-7) and the loss of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import fastcpu
from ..attention import doubly_stochastic_penalty
from ..decoder import AttentionDecoder, DecoderOutput, lstm_update
from ..hard import HardAttentionLoss, token_log_likelihood
from ..losses import caption_loss
from .attention import ATTENTION
from .machinery import Answer, exercise, fail, matches, same_tensor

STEP = (AttentionDecoder.advance, AttentionDecoder.step, AttentionDecoder.forward, lstm_update,
        fastcpu.step, *ATTENTION)


def _decoder_step(decoder, y_prev, h, c, a, projected):
    out = decoder.advance(y_prev, h, c, a, projected)
    return out.logits, out.h, out.c, out.alpha


def _by_hand(d: AttentionDecoder, y_prev, h, c, a, projected, **mistake) -> tuple:
    """The step with one of the usual mistakes switched on (all off: the right step)."""
    att = d.attention
    e = att.w(torch.tanh(projected + att.W_h(h).unsqueeze(1))).squeeze(-1)
    alpha = e.softmax(-1)
    context = (alpha.unsqueeze(-1) * a).sum(1)
    beta = torch.sigmoid(d.f_beta(h))
    z = context if mistake.get("no_gate") else beta * context
    Ey = d.embedding(y_prev)
    gates = d.lstm_emb(Ey) + d.lstm_ctx(z) + (0 if mistake.get("no_hh") else d.lstm_hh(h))
    h_t, c_t = lstm_update(gates, c)
    if mistake.get("h_from_old_c"):
        h_t = torch.sigmoid(gates.chunk(4, -1)[3]) * torch.tanh(c)
    z_out = context if mistake.get("ungated_output") else z
    h_out = h if mistake.get("old_h_output") else h_t
    inner = (0 if mistake.get("no_Ey_output") else Ey) + d.L_h(h_out) + d.L_z(z_out)
    logits = d.L_o(inner if mistake.get("no_tanh") else torch.tanh(inner))
    return logits, h_t, c_t, alpha


_MISTAKES = {
    "no_gate": "the LSTM reads the gated context β_t ẑ_t with β_t = σ(f_β(h_{t-1})) "
               "(Sec. 4.2.1), not the plain Σ_i α_ti a_i",
    "no_hh": "eq. 1 feeds h_{t-1} to the gates too: T [E y_{t-1}; h_{t-1}; ẑ_t] (lstm_hh)",
    "h_from_old_c": "eq. 3 uses the new cell: h_t = o_t ⊙ tanh(c_t), not tanh(c_{t-1})",
    "ungated_output": "h_t is right but the logits differ: the deep output reads the same gated "
                      "ẑ_t as the LSTM (β_t ẑ_t)",
    "old_h_output": "h_t is right but the logits differ: the deep output (eq. 7) reads the new "
                    "state h_t, not h_{t-1}",
    "no_Ey_output": "h_t is right but the logits differ: the deep output adds E y_{t-1}, L_h h_t "
                    "and L_z ẑ_t before the tanh (eq. 7); E y_{t-1} is missing",
    "no_tanh": "h_t is right but the logits differ: the course's eq. 7 applies a tanh to "
               "E y_{t-1} + L_h h_t + L_z ẑ_t before L_o",
}


@exercise("decoder_step", blocked=STEP, stand_in=_decoder_step,
          code_hint="e = att.w(torch.tanh(projected + att.W_h(h).unsqueeze(1))).squeeze(-1); "
                    "alpha = e.softmax(-1); z = torch.sigmoid(decoder.f_beta(h)) * (alpha."
                    "unsqueeze(-1) * a).sum(1); Ey = decoder.embedding(y_prev); gates = "
                    "decoder.lstm_emb(Ey) + decoder.lstm_hh(h) + decoder.lstm_ctx(z); i, f, g, o = "
                    "gates.chunk(4, -1); c_t = σ(f) c + σ(i) tanh(g); h_t = σ(o) tanh(c_t); "
                    "logits = decoder.L_o(torch.tanh(Ey + decoder.L_h(h_t) + decoder.L_z(z))).",
          write_from="the equations (eq. 1-7), with the decoder's layers the task names")
def decoder_step(answer: Answer) -> int:
    """fn(decoder, y_prev, h, c, a, projected) -> (logits (B, V), h_t, c_t, α (B, L))."""
    name = "decoder_step"
    cases = [(2, 6, 5, 4, 3, 7, 11), (1, 4, 3, 2, 5, 6, 9), (3, 9, 4, 6, 4, 3, 8)]
    for B, L, D, m, n, A, V in cases:
        torch.manual_seed(B * 100 + L)
        decoder = AttentionDecoder(V, D, m, n, A).eval()
        with torch.no_grad():
            decoder.attention.w.weight.mul_(4.0)  # sharper than at initialisation
            decoder.f_beta.bias.fill_(-1.0)  # β far from 1: a missing gate shows
        a, h, c = torch.randn(B, L, D), torch.randn(B, n), torch.randn(B, n)
        y_prev = torch.randint(0, V, (B,))
        inputs = f"B={B}, L={L}, D={D}, n={n}, V={V}"
        with torch.no_grad():
            projected = decoder.attention.project(a)
            want = _decoder_step(decoder, y_prev, h, c, a, projected)
            got = answer(decoder, y_prev.clone(), h.clone(), c.clone(), a.clone(),
                         projected.clone(), inputs=inputs)
            if not isinstance(got, tuple) or len(got) != 4:
                fail(name, f"returned {type(got).__name__}, expected (logits, h, c, alpha).",
                     "return the four, in that order.")
            if matches(got[1], want[2]) and matches(got[2], want[1]):
                fail(name, f"h_t and c_t are swapped ({inputs}).", "return (logits, h_t, c_t, "
                     "alpha): h_t = o_t ⊙ tanh(c_t) is the state the next step attends with.")
            for mistake, concept in _MISTAKES.items():
                variant = _by_hand(decoder, y_prev, h, c, a, projected, **{mistake: True})
                if all(matches(g, v, 1e-4) for g, v in zip(got, variant, strict=True)):
                    fail(name, f"{'the logits' if matches(got[1], want[1]) else 'h_t'} differ "
                         f"from the package's ({inputs}).", concept + ".")
        same_tensor(name, "alpha", got[3], want[3], "eq. 4-5: the attention of notebook 03 from "
                    "h_{t-1}; projected already holds W_a a_i + b.", inputs)
        same_tensor(name, "c_t", got[2], want[2], "eq. 1-2: the gates from E y_{t-1}, h_{t-1} and "
                    "β_t ẑ_t, in the order i, f, g, o; c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t.", inputs)
        same_tensor(name, "h_t", got[1], want[1], "eq. 3: h_t = o_t ⊙ tanh(c_t).", inputs)
        same_tensor(name, "the logits", got[0], want[0], "eq. 7: L_o tanh(E y_{t-1} + L_h h_t + "
                    "L_z ẑ_t), before any softmax.", inputs, atol=1e-4)
    return len(cases)


def _loss(scores, alphas, captions, lengths, lam):
    return caption_loss(DecoderOutput(scores, alphas, None, None), captions, lengths, lam)[0]


@exercise("loss", blocked=(caption_loss, token_log_likelihood, HardAttentionLoss.__call__),
          stand_in=_loss,
          code_hint="targets = captions[:, 1:T + 1]; real = torch.arange(T) < (lengths - 1)"
                    "[:, None]; F.cross_entropy(scores[real], targets[real]) + "
                    "doubly_stochastic_penalty(alphas, lengths - 1, lam).",
          write_from="the task's recipe: a cross-entropy over the real words plus the "
                      "penalty (doubly_stochastic_penalty is allowed)")
def loss(answer: Answer) -> int:
    """fn(scores, alphas, captions, lengths, lam) -> cross-entropy of the real words + penalty."""
    name = "loss"
    cases = [(3, 6, 7, 5, [6, 4, 2], 0.0), (2, 5, 9, 4, [5, 3], 1.0),
             (4, 4, 5, 3, [4, 4, 2, 3], 0.5)]
    for B, T1, V, L, lengths_list, lam in cases:  # captions (B, T1), scores (B, T1 - 1, V)
        g = torch.Generator().manual_seed(B * 10 + V)
        lengths = torch.tensor(lengths_list)
        captions = torch.randint(4, V, (B, T1), generator=g)
        captions[torch.arange(T1)[None] >= lengths[:, None]] = 0  # <pad> after each caption
        scores = torch.randn(B, T1 - 1, V, generator=g).requires_grad_()
        alphas = torch.rand(B, T1 - 1, L, generator=g).softmax(-1)
        inputs = (f"scores {tuple(scores.shape)}, captions {tuple(captions.shape)}, lengths "
                  f"{lengths_list}, lam={lam}")
        got = answer(scores, alphas, captions.clone(), lengths.clone(), lam, inputs=inputs)
        want = _loss(scores, alphas, captions, lengths, lam)
        concept = ("cross-entropy of scores[b, t] against captions[b, t + 1] over the real steps "
                   "t < lengths[b] − 1, averaged over all real words, + λ · penalty.")
        if isinstance(got, Tensor) and got.dim() == 0 and not torch.isclose(got, want):
            concept = _loss_mistake(got, scores, alphas, captions, lengths, lam) or concept
        same_tensor(name, "the loss", got, want.detach(), concept, inputs)
        if not got.requires_grad:
            fail(name, f"the loss has no gradient ({inputs}).", "compute it from scores with "
                 "torch operations, without torch.no_grad(), .item() or .detach().")
        grad, = torch.autograd.grad(got, scores)
        want_grad, = torch.autograd.grad(want, scores)
        same_tensor(name, "the gradient of the loss with respect to scores", grad, want_grad,
                    "the loss is right but its gradient is not: compute it from scores with "
                    "torch operations (no .item(), .detach() or numpy on the way).", inputs)
    return len(cases)


def _loss_mistake(got, scores, alphas, captions, lengths, lam) -> str | None:
    """Name the usual mistake when the loss matches it."""
    steps = scores.shape[1]
    real = torch.arange(steps)[None] < (lengths - 1)[:, None]
    with torch.no_grad():
        per_word = F.cross_entropy(scores.transpose(1, 2), captions[:, 1:steps + 1],
                                   reduction="none")
        unshifted = F.cross_entropy(scores.transpose(1, 2), captions[:, :steps], reduction="none")
        pen = doubly_stochastic_penalty(alphas, lengths - 1, lam)
        ce = (per_word * real).sum() / real.sum()
        guesses = {
            "padding positions count: average only over the real words (steps t < lengths − 1)":
                per_word.mean() + pen,
            "the targets are not shifted: scores[:, t] predicts captions[:, t + 1], the word "
            "after the input": (unshifted * real).sum() / real.sum() + pen,
            "the doubly stochastic penalty is missing: add λ · mean_i (1 − Σ_t α_ti)² over the "
            "real steps": ce,
            "averaged per caption, then over captions: the course averages over all real "
            "words of the batch at once": ((per_word * real).sum(1) / real.sum(1)).mean() + pen,
            "the penalty counts one step too many: it takes lengths − 1, the steps the decoder "
            "predicts (the caption's <start> is an input, never predicted), not lengths": ce
            + doubly_stochastic_penalty(alphas, lengths, lam),
            "the penalty counts the padding steps: it takes the number of real steps, "
            "lengths − 1": ce + doubly_stochastic_penalty(
                alphas, torch.full_like(lengths, steps), lam),
        }
    return next((k for k, v in guesses.items() if torch.isclose(got.detach(), v, atol=1e-5)),
                None)

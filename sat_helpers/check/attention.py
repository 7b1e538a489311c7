"""Notebook 03's checks: one attention step (eq. 4-6), k queries at once, and the penalty."""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention import (
    HardAttention,
    SoftAttention,
    blocked_scores,
    doubly_stochastic_penalty,
    expected_context,
)
from .machinery import Answer, exercise, fail, in_order, matches, same_tensor

# what a learner must not call to compute soft attention: the module and what it is built from
ATTENTION = (SoftAttention.forward, SoftAttention.attend, SoftAttention.scores,
             SoftAttention.weights, SoftAttention.project, HardAttention.forward,
             HardAttention.attend, expected_context, blocked_scores)


def _step_variants(att: SoftAttention, a: Tensor, h: Tensor) -> dict[str, tuple]:
    """(ẑ, α, e) of the usual mistakes, with what each one got wrong."""
    def run(bias=True, tanh=True, query=True, dim=-1, weighted=True):
        x = a @ att.W_a.weight.T + (att.W_a.bias if bias else 0)
        if query:
            x = x + att.W_h(h).unsqueeze(1)
        e = att.w(torch.tanh(x) if tanh else x).squeeze(-1)
        alpha = e.softmax(dim=dim)
        z = (alpha.unsqueeze(-1) * a).sum(1) if weighted else a.mean(1)
        return z, alpha, e
    with torch.no_grad():
        return {
            "the bias b is missing from eq. 4: W_a a_i + b is what att.W_a computes (its bias "
            "is b)": run(bias=False),
            "eq. 4 has a tanh between the sum and w": run(tanh=False),
            "the scores ignore h_{t-1}: W_h h_{t-1} is added to every W_a a_i + b": run(
                query=False),
            "α is a softmax over the batch; eq. 5 normalises over the L positions of each image":
                run(dim=0),
            "ẑ_t is the plain mean of the a_i; eq. 6 weights each a_i by α_ti": run(
                weighted=False),
        }


def _attention_step(att: SoftAttention, a: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    z, alpha = att(a, h)
    return z, alpha, att.scores(att.project(a), att.W_h(h))


@exercise("attention_step", blocked=ATTENTION, stand_in=_attention_step,
          code_hint="e = att.w(torch.tanh(att.W_a(a) + att.W_h(h).unsqueeze(1))).squeeze(-1); "
                    "alpha = e.softmax(dim=1); z_hat = (alpha.unsqueeze(-1) * a).sum(dim=1); "
                    "return z_hat, alpha, e.",
          write_from="the equations (eq. 4-6), with att's three layers")
def attention_step(answer: Answer) -> int:
    """fn(att, a (B, L, D), h (B, n)) -> (ẑ (B, D), α (B, L), e (B, L)), eq. 4-6."""
    name = "attention_step"
    cases = [(2, 6, 5, 4, 7), (1, 4, 3, 2, 5), (3, 9, 2, 6, 3)]  # B, L, D, A, n
    for B, L, D, A, n in cases:
        torch.manual_seed(B * 100 + L)
        att = SoftAttention(D, n, A)
        with torch.no_grad():
            att.w.weight.mul_(4.0)  # sharper than at initialisation: mistakes show
        a, h = torch.randn(B, L, D), torch.randn(B, n)
        inputs = f"a {tuple(a.shape)}, h {tuple(h.shape)}: B={B}, L={L}, D={D}"
        got = answer(att, a.clone(), h.clone(), inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(name, f"returned {type(got).__name__}, expected a triple (z_hat, alpha, e).",
                 "return the context and the weights, in SoftAttention's order, then the scores.")
        with torch.no_grad():
            want = _attention_step(att, a, h)
        in_order(name, got, want, ("z_hat", "alpha", "e"), inputs)
        for mistake, variant in _step_variants(att, a, h).items():
            if all(matches(g, v) for g, v in zip(got, variant, strict=True)) or (
                    matches(got[1], variant[1]) and not matches(got[1], want[1])):
                fail(name, f"{'α' if not matches(got[1], want[1]) else 'ẑ'} differs from the "
                     f"package's ({inputs}).", mistake + ".")
        same_tensor(name, "e", got[2], want[2], "eq. 4: e_ti = w^T tanh(W_a a_i + W_h h_{t-1} + b)"
                    ", one score per position: (B, L).", inputs)
        same_tensor(name, "alpha", got[1], want[1], "eq. 5: α_t = softmax(e_t) over the L "
                    "positions.", inputs)
        same_tensor(name, "z_hat", got[0], want[0], "eq. 6 (soft, eq. 13): ẑ_t = Σ_i α_ti a_i, "
                    "one D-vector per image.", inputs)
    return len(cases)


def _attend(a, h, W_a, b, W_h, w):
    att = SoftAttention(a.shape[-1], h.shape[-1], W_a.shape[0])
    params = {"W_a.weight": W_a, "W_a.bias": b, "W_h.weight": W_h, "w.weight": w[None]}
    return torch.func.functional_call(att, params, (a, h))


@exercise("attention", blocked=ATTENTION, stand_in=_attend,
          code_hint="e = torch.tanh((a @ W_a.T + b).unsqueeze(1) + (h @ W_h.T).unsqueeze(2)) @ w "
                    "is (B, k, L); alpha = e.softmax(dim=-1); z_hat = alpha @ a.",
          write_from="the equations (eq. 4, 5 and 13), with the weights you are given")
def attention(answer: Answer) -> int:
    """fn(a, h, W_a, b, W_h, w) -> (z_hat (B, k, D), alpha (B, k, L)) for k queries per image."""
    name = "attention"
    cases = [(2, 6, 5, 3, 4, 7), (1, 4, 3, 1, 2, 5), (3, 9, 2, 4, 6, 3)]  # B, L, D, k, A, n
    for B, L, D, k, A, n in cases:
        torch.manual_seed(B * 100 + L)
        att = SoftAttention(D, n, A)
        a, h = torch.randn(B, L, D), torch.randn(B, k, n)
        weights = [att.W_a.weight.detach().clone().requires_grad_(),
                   att.W_a.bias.detach().clone().requires_grad_(),
                   att.W_h.weight.detach().clone().requires_grad_(),
                   att.w.weight.detach()[0].clone().requires_grad_()]
        inputs = f"a {tuple(a.shape)}, h {tuple(h.shape)}: B={B}, L={L}, D={D}, k={k}"
        got = answer(a, h, *weights, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"returned {type(got).__name__}, expected a pair (z_hat, alpha).",
                 "return z_hat, then alpha.")
        want_z, want_alpha = att(a, h)
        in_order(name, got, (want_z, want_alpha), ("z_hat", "alpha"), inputs)
        z, alpha = got
        concept = "α: softmax of e over the L positions, one row per image and query."
        if isinstance(alpha, Tensor) and alpha.shape == want_alpha.shape:
            sums = alpha.detach().sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                concept = "the rows of α do not sum to 1: the softmax runs over the L positions."
            elif torch.allclose(alpha, torch.full_like(alpha, 1 / L), atol=1e-4):
                concept = "α is uniform: the scores e must differ across positions (eq. 4)."
        same_tensor(name, "alpha", alpha, want_alpha, concept, inputs)
        same_tensor(name, "z_hat", z, want_z, "ẑ = Σ_i α_i a_i (eq. 13): a weighted sum of the "
                    "annotation vectors over L, shape (B, k, D).", inputs)
        if not z.requires_grad:
            fail(name, f"no gradient reaches the weights through z_hat ({inputs}).",
                 "training learns W_a, W_h, b and w through this computation: no "
                 "torch.no_grad() and no .detach() on the way.")
        probe = torch.randn(want_z.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((z * probe).sum(), weights, allow_unused=True)
        params = [att.W_a.weight, att.W_a.bias, att.W_h.weight, att.w.weight]
        want_grads = torch.autograd.grad((want_z * probe).sum(), params)
        for label, grad, ref in zip(("W_a", "b", "W_h", "w"), grads, want_grads, strict=True):
            if grad is None or not torch.allclose(grad, ref.reshape(grad.shape), atol=1e-4):
                fail(name, f"the gradient with respect to {label} is "
                     f"{'missing' if grad is None else 'wrong'} ({inputs}).",
                     f"use {label} exactly once, where eq. 4 has it; no .detach() on the way.")
    return len(cases)


def _penalty(alphas: Tensor, lengths: Tensor, lam: float) -> Tensor:
    return doubly_stochastic_penalty(alphas, lengths, lam)


@exercise("penalty", blocked=(doubly_stochastic_penalty,), stand_in=_penalty,
          code_hint="real = torch.arange(T) < lengths[:, None] is (B, T); total = (alphas * "
                    "real.unsqueeze(-1)).sum(dim=1) is (B, L); lam * ((1 - total) ** 2).mean().",
          write_from="the equation, with torch operations on alphas and lengths")
def penalty(answer: Answer) -> int:
    """fn(alphas (B, T, L), lengths (B,), lam) -> the doubly stochastic penalty, a 0-d tensor."""
    name = "penalty"
    g = torch.Generator().manual_seed(3)
    cases = [((2, 5, 4), [5, 3], 1.0), ((3, 4, 6), [2, 4, 1], 0.5), ((1, 3, 9), [3], 2.0)]
    for shape, lengths_list, lam in cases:
        alphas = torch.rand(*shape, generator=g).softmax(-1)  # padding steps hold noise too
        lengths = torch.tensor(lengths_list)
        inputs = f"alphas {shape}, lengths {lengths_list}, lam={lam}"
        got = answer(alphas.clone(), lengths.clone(), lam, inputs=inputs)
        want = doubly_stochastic_penalty(alphas, lengths, lam)
        concept = ("λ · mean over positions of (1 − Σ_t α_ti)², Σ over real steps, mean over the "
                   "batch.")
        if isinstance(got, Tensor) and got.dim() > 0:
            concept = "return one number (a 0-d tensor): the mean over the batch and the positions."
        elif isinstance(got, Tensor) and not torch.isclose(got, want):
            every_step = lam * ((1 - alphas.sum(1)) ** 2).mean()
            steps = torch.arange(shape[1])[None] < lengths[:, None]
            summed = lam * ((1 - (alphas * steps[..., None]).sum(1)) ** 2).sum(-1).mean()
            if torch.isclose(got, every_step):
                concept = (f"padding steps count: with lengths {lengths_list}, only the first "
                           "lengths[b] steps of row b are real; leave out the steps "
                           "t >= lengths[b].")
            elif torch.isclose(got, summed):
                concept = ("you summed over the L positions; the course takes their mean, so one "
                           "λ means the same on any grid (notebook 03, section 8).")
            elif torch.isclose(got, want / lam):
                concept = "the right penalty without λ: multiply by lam."
        same_tensor(name, "the penalty", got, want, concept, inputs)
    return len(cases)

"""Notebook 07's checks: the entropy of α, the REINFORCE term, and the REINFORCE estimate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import HardAttention
from ..hard import HardAttentionLoss, attention_entropy, reinforce_surrogate
from .machinery import Answer, exercise, fail, matches, same_tensor

_HARD = (HardAttentionLoss.__call__, reinforce_surrogate)


def _entropy(alphas: Tensor) -> Tensor:
    return attention_entropy(alphas)


@exercise("entropy", blocked=(attention_entropy, HardAttention.attend), stand_in=_entropy,
          code_hint="-torch.special.xlogy(alphas, alphas).sum(-1), or -(alphas * "
                    "alphas.clamp_min(1e-12).log()).sum(-1).",
          write_from="the equation H = −Σ α log α, with torch operations")
def entropy(answer: Answer) -> int:
    """fn(alphas (..., L)) -> H[α] in nats over the last axis, as ``hard.attention_entropy``."""
    name = "entropy"
    g = torch.Generator().manual_seed(6)
    cases = [("random rows (3, 7)", torch.rand(3, 7, generator=g).softmax(-1)),
             ("uniform rows (2, 4, 5)", torch.full((2, 4, 5), 0.2)),
             ("one-hot rows (2, 5), with exact zeros", torch.eye(5)[[0, 3]])]
    for inputs, alphas in cases:
        got = answer(alphas.clone(), inputs=inputs)
        want = attention_entropy(alphas)
        concept = "H = −Σ_i α_i log α_i over the last axis (natural log: nats)."
        if isinstance(got, Tensor) and got.shape == want.shape:
            if bool(torch.isnan(got).any()):
                concept = ("NaN: 0 · log 0 counts as 0 in the entropy, but 0 · (−inf) is NaN in "
                           "floating point; keep log away from exact zeros.")
            elif matches(got, want / math.log(2), 1e-4):
                concept = "these are bits (log base 2); the course measures in nats (natural log)."
            elif matches(got, -want, 1e-4):
                concept = "the sign: H = −Σ α log α is ≥ 0."
        elif isinstance(got, Tensor) and got.numel() == 1:
            concept = "one entropy per row: sum over the last axis only."
        same_tensor(name, "the entropy", got, want, concept, inputs, atol=1e-4)
    return len(cases)


def _surrogate(log_likelihood: Tensor, sample_log_prob: Tensor, baseline: float) -> Tensor:
    return reinforce_surrogate(log_likelihood, sample_log_prob, baseline)


@exercise("surrogate", blocked=_HARD, stand_in=_surrogate,
          code_hint="(log_likelihood - baseline).detach() * (sample_log_prob - "
                    "sample_log_prob.detach()).",
          write_from="the task's recipe: the detached reward times a factor that is 0 in value")
def surrogate(answer: Answer) -> int:
    """fn(log_likelihood (N,), sample_log_prob (N,), baseline) -> the REINFORCE term, (N,)."""
    name = "surrogate"
    cases = [(4, -11.0), (6, -3.5), (1, 0.0)]
    for n, baseline in cases:
        g = torch.Generator().manual_seed(n)
        log_lik = (-torch.rand(n, generator=g) * 20).requires_grad_()
        log_prob = (-torch.rand(n, generator=g) * 4).requires_grad_()
        inputs = f"N={n}, baseline={baseline}"
        got = answer(log_lik, log_prob, baseline, inputs=inputs)
        want = reinforce_surrogate(log_lik, log_prob, baseline)
        same_tensor(name, "the term's value", got, want.detach(), "its value must be 0, so that "
                    "the loss still reads as a cross-entropy: multiply by a factor that is 0 in "
                    "value but has the gradient of log p(s̃|a).", inputs)
        if not got.requires_grad:
            fail(name, f"the term has no gradient ({inputs}).", "keep log p(s̃|a) in the graph: "
                 "only a detached copy of it may be subtracted.")
        grad, = torch.autograd.grad(got.sum(), log_lik, retain_graph=True, allow_unused=True)
        if grad is not None:
            fail(name, f"log p(y|s̃,a) is still in the term's graph ({inputs}).", "the reward "
                 "(log p(y|s̃,a) − b) only scales the score function; REINFORCE does not "
                 "differentiate it: detach it. (Its gradient through this term happens to be 0 "
                 "today, but a term multiplied by something else would send one.)")
        grad, = torch.autograd.grad(got.sum(), log_prob, allow_unused=True)
        want_grad, = torch.autograd.grad(want.sum(), log_prob)
        grad = torch.zeros(n) if grad is None else grad
        same_tensor(name, "the gradient with respect to log p(s̃|a)", grad, want_grad,
                    _surrogate_mistake(grad, want_grad, log_lik.detach(), baseline), inputs)
    return len(cases)


def _surrogate_mistake(grad: Tensor, want: Tensor, log_lik: Tensor, baseline: float) -> str:
    """What a wrong gradient of the term says about it."""
    if matches(grad, -want):
        return ("the gradient has the wrong sign: the zero factor is reversed. Write "
                "log p(s̃|a) − sg[log p(s̃|a)] (sample_log_prob - sample_log_prob.detach()), "
                "not the detached copy minus log p(s̃|a).")
    if matches(grad, log_lik):
        return (f"the baseline is missing (here b={baseline}): ∂ term_n / ∂ log p(s̃_n|a) must "
                "be the advantage log p(y_n|s̃_n,a) − b; subtract the baseline you are given.")
    return ("∂ term_n / ∂ log p(s̃_n|a) must be the advantage log p(y_n|s̃_n,a) − b "
            f"(here b={baseline}), times 1.")


def _reinforce(theta: Tensor, log_lik: Tensor, samples: Tensor, decay: float,
               start: float = 0.0, after: bool = False, swap: bool = False,
               baseline: bool = True, sign: float = 1.0, minus_alpha: bool = True) -> Tensor:
    """Per-sample REINFORCE estimates with a moving-average baseline (options: the mistakes)."""
    alpha = theta.detach().softmax(-1)
    rewards = log_lik.detach()[samples]
    b, bases = start, []
    keep = 1 - decay if swap else decay
    for r in rewards.tolist():
        if after:
            b = keep * b + (1 - keep) * r
        bases.append(b)
        if not after:
            b = keep * b + (1 - keep) * r
    advantage = rewards - torch.tensor(bases) * baseline
    score = F.one_hot(samples, theta.shape[-1]) - alpha * minus_alpha
    return advantage[:, None] * score * sign


_REINFORCE_MISTAKES = {
    "no baseline: (log p(y|s̃,a) − b) with b the moving average of the earlier rewards":
        {"baseline": False},
    "b_n must come from the samples before n only: you updated b with sample n before using "
    "it, so b depends on the sample and the estimate is biased": {"after": True},
    "the moving average keeps decay of the old b: b ← decay · b + (1 − decay) · reward":
        {"swap": True},
    "b starts at 0, as in the package's HardAttentionLoss (and the authors' code)":
        {"start": None},
    "the sign: ∂ log α_s / ∂θ = 1_s − α": {"sign": -1.0},
    "the score function's − α is missing: ∂ log α_s / ∂θ = onehot(s) − α, since the softmax's "
    "denominator depends on every θ_i": {"minus_alpha": False},
}


def _stand_in(theta: Tensor, log_lik: Tensor, samples: Tensor, decay: float) -> Tensor:
    return _reinforce(theta, log_lik, samples, decay)


@exercise("reinforce_gradient", blocked=_HARD, stand_in=_stand_in,
          code_hint="alpha = theta.softmax(-1); b = 0; for each sample s: row = (log_lik[s] - b) "
                    "* (F.one_hot(s, L) - alpha); then b = decay * b + (1 - decay) * log_lik[s].",
          write_from="eq. 12 with the moving-average baseline, with torch operations")
def reinforce_gradient(answer: Answer) -> int:
    """fn(theta (L,), log_lik (L,), samples (N,), decay) -> (N, L) per-sample estimates."""
    name = "reinforce_gradient"
    cases = [(4, 4000, 0.9, -3.0), (6, 3000, 0.8, -9.0), (3, 2000, 0.95, -1.0)]
    for L, N, decay, shift in cases:
        g = torch.Generator().manual_seed(L)
        theta = torch.randn(L, generator=g)
        log_lik = torch.randn(L, generator=g).log_softmax(-1) * 0.5 + shift
        samples = torch.multinomial(theta.softmax(-1), N, replacement=True, generator=g)
        inputs = f"L={L}, N={N} samples, decay={decay}"
        got = answer(theta.clone(), log_lik.clone(), samples.clone(), decay, inputs=inputs)
        want = _reinforce(theta, log_lik, samples, decay)
        if not matches(got, want, 1e-4):
            _reinforce_verdict(name, got, want, theta, log_lik, samples, decay, inputs)
    theta_ = theta.clone().requires_grad_()
    (theta_.softmax(-1) * log_lik).sum().backward()
    plain = _reinforce(theta, log_lik, samples, decay, baseline=False)
    print(f"  last input: the mean of your {N} estimates is within "
          f"{_standard_errors(got, theta_.grad):.1f} standard errors of the exact ∂L_s/∂θ; their "
          f"total variance {float(got.var(0).sum()):.4f}, without a baseline "
          f"{float(plain.var(0).sum()):.4f}")
    return len(cases)


def _standard_errors(estimates: Tensor, exact: Tensor) -> float:
    """The largest |mean − exact| over θ's entries, in standard errors of the mean."""
    stderr = estimates.std(0) / estimates.shape[0] ** 0.5
    return float(((estimates.mean(0) - exact).abs() / stderr.clamp_min(1e-12)).max())


def _reinforce_verdict(name, got, want, theta, log_lik, samples, decay, inputs) -> None:
    if not isinstance(got, Tensor) or got.shape != want.shape:
        same_tensor(name, "the estimates", got, want, "one row per sample, one column per θ_i.",
                    inputs)
    for mistake, options in _REINFORCE_MISTAKES.items():
        if options.get("start", 0.0) is None:
            options = {"start": float(log_lik[samples[0]])}
        if matches(got, _reinforce(theta, log_lik, samples, decay, **options), 1e-4):
            fail(name, f"the estimates differ from eq. 12's with the moving-average baseline "
                 f"({inputs}).", mistake + ".")
    theta_ = theta.clone().requires_grad_()
    (theta_.softmax(-1) * log_lik).sum().backward()
    off = _standard_errors(got.detach(), theta_.grad)
    fail(name, f"the estimates differ from eq. 12's ({inputs}); their mean is {off:.1f} standard "
         f"errors from the exact gradient, their total variance "
         f"{float(got.detach().var(0).sum()):.4g} against {float(want.var(0).sum()):.4g}.",
         "row n is (log p(y|s̃_n,a) − b_n)(1_{s̃_n} − α), b_n the moving average of the rewards "
         "before sample n, starting at 0.")

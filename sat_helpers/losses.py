"""The objectives training minimises: soft attention's (eq. 14) and hard attention's (eq. 12).

Both are losses of a teacher-forced ``DecoderOutput`` with the same interface
(:class:`CaptionLoss`): ``before_batch(model)`` before each training minibatch's forward pass,
``loss(output, captions, lengths, n_tokens=None) -> (loss, parts)`` with the parts as detached
tensors (``float()`` them to print: reading them every step would make the CPU wait for the
GPU), and ``state_dict``/``load_state_dict`` for what a checkpoint must keep. Each reads its
profile's fields once, when made. ``make_loss(profile, attention)`` gives the one a run uses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import doubly_stochastic_penalty
from .decoder import DecoderOutput


def target_mask(output: DecoderOutput, captions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(targets (B, T-1): the word each step predicts, real (B, T-1): True for real words).

    ``captions`` (B, T) start with <start>; ``lengths`` count <start> and <end>.
    """
    steps = output.scores.shape[1]
    targets = captions[:, 1:steps + 1]
    real = torch.arange(steps, device=targets.device) < (lengths.to(targets.device) - 1)[:, None]
    return targets, real


def caption_loss(output: DecoderOutput, captions: Tensor, lengths: Tensor, lam: float,
                 n_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy over the real words + λ times the doubly stochastic penalty (paper eq. 14).

    The cross-entropy is summed over real target tokens and divided by ``n_tokens`` (default:
    their number here; under DDP the global number / world size, so that DDP's averaging of
    gradients gives the mean over every token of the global batch). Returns the loss and its
    parts ("ce", "penalty") as detached tensors.
    """
    targets, real = target_mask(output, captions, lengths)
    ce = F.cross_entropy(output.scores[real].float(), targets[real], reduction="sum")
    ce = ce / (real.sum() if n_tokens is None else n_tokens)
    penalty = doubly_stochastic_penalty(output.alphas.float(), lengths - 1, lam)
    return ce + penalty, {"ce": ce.detach(), "penalty": penalty.detach()}


class CaptionLoss:
    """Soft attention's loss, :func:`caption_loss` at the profile's λ; the interface of all."""

    def __init__(self, profile):
        self.lam = profile.lam

    def before_batch(self, model: nn.Module) -> None:
        """Called before each training minibatch's forward pass (soft attention: nothing)."""

    def __call__(self, output: DecoderOutput, captions: Tensor, lengths: Tensor,
                 n_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return caption_loss(output, captions, lengths, self.lam, n_tokens)

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the loss (soft attention: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""


def reinforce_surrogate(log_likelihood: Tensor, sample_log_prob: Tensor,
                        baseline: Tensor | float) -> Tensor:
    """(log p(y|s̃,a) − b) · log p(s̃|a) as a term whose value is 0 and whose gradient is eq. 12's.

    The reward is detached (REINFORCE: it scales the score function, it is not
    differentiated) and ``log p − log p.detach()`` is zero in value, so adding the term to a
    loss changes its gradient but not the number it reports.
    """
    advantage = (log_likelihood - baseline).detach()
    return advantage * (sample_log_prob - sample_log_prob.detach())


def token_log_likelihood(output: DecoderOutput, captions: Tensor,
                         lengths: Tensor) -> tuple[Tensor, Tensor]:
    """log p(y_t | ·) of every target word (B, T-1), zero past each caption, and the real mask."""
    targets, real = target_mask(output, captions, lengths)
    log_p = -F.cross_entropy(output.scores.float().transpose(1, 2), targets, reduction="none")
    return log_p * real, real


def _global_mean(x: Tensor) -> Tensor:
    """The mean of x over the batch and, under torchrun, over every process's batch."""
    mean = x.detach().float().mean()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean = mean / dist.get_world_size()
    return mean


def _global_count(n: int, device: torch.device) -> Tensor:
    """n summed over every process under torchrun (the global batch's captions), else n."""
    total = torch.tensor(float(n), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return total


REWARDS = ("caption_sum", "authors")
"""``profile.reinforce_reward``: what REINFORCE rewards a sampled caption with.

- ``"caption_sum"``: eq. 12 as printed, the caption's log-likelihood Σ_t log p(y_t | ·),
  averaged over the batch like the cross-entropy; b moves on sampled minibatches.
- ``"authors"``: the rule of the authors' code (arctic-captions, capgen.py, lines 1194-1205):
  the caption's per-word mean log-likelihood, divided by 10, applied per caption without the
  1/B the cross-entropy gets; b moves on every minibatch. See :class:`HardAttentionLoss`.
"""


class HardAttentionLoss(CaptionLoss):
    """The paper's hard-attention objective (Sec. 4.1; the math: :mod:`sat_helpers.hard`).

    ``before_batch(model)`` draws whether the minibatch uses the expected context
    (probability ``profile.expected_context_p``), from a generator seeded by (seed, minibatch
    number): the same draws on every process and after a resume. With N the number of real
    words (or ``n_tokens``), B the number of captions, λ_r ``profile.reinforce_weight`` and
    λ_e ``profile.entropy_weight``, the loss is

        [−Σ log p(y|s̃,a) − λ_r Σ_n w (r_n − b) log p(s̃_n|a) − λ_e Σ H[α_t]] / N
        + doubly stochastic penalty with λ = ``profile.hard_lam``

    where (``profile.reinforce_reward``, see :data:`REWARDS`) either r_n = log p(y_n|s̃_n,a),
    w = 1 (``"caption_sum"``), or r_n = that divided by the caption's number of real words,
    w = B/10 (``"authors"``). The authors' objective is per caption, averaged over the batch
    (their ``cost.mean()``); the package's is per word, so it is the authors' times B/N: their
    per-caption REINFORCE weight (r_n − b)/10 becomes (B/10)(r_n − b)/N here, and λ_r = 1 with
    ``"authors"`` is their learning rule. Their entropy term, 0.002 · Σ α log α summed over
    the batch without 1/B, is λ_e = 0.002 · B here. The sign is REINFORCE's: a sample whose
    caption beat the baseline is made more likely (capgen.py's known_grads, descended by its
    optimisers, has the opposite sign; docs/departures.md).

    The REINFORCE term is there only when the output holds sampled locations (a sampled
    training minibatch; on an expected-context minibatch the authors' term is constant over
    locations, so the softmax passes no gradient from it). b is a moving average of the
    minibatch's mean r_n, b ← decay·b + (1 − decay)·mean r_n (decay ``profile.baseline_decay``,
    b starts at 0), moved on sampled minibatches (``"caption_sum"``) or on every one
    (``"authors"``, as their code). The term's value is zero, so the loss reported is the
    cross-entropy + penalty − λ_e · mean entropy. b and the minibatch counter are plain data
    in ``state_dict``.
    """

    def __init__(self, profile):
        if profile.reinforce_reward not in REWARDS:
            raise ValueError(f"reinforce_reward={profile.reinforce_reward!r}: use one of "
                             f"{list(REWARDS)} (sat_helpers.losses.REWARDS says what each is).")
        self.seed, self.expected_context_p = profile.seed, profile.expected_context_p
        self.lam, self.entropy_weight = profile.hard_lam, profile.entropy_weight
        self.reinforce_weight, self.decay = profile.reinforce_weight, profile.baseline_decay
        self.reward = profile.reinforce_reward
        self.baseline: Tensor | float = 0.0  # b, as in the authors' code
        self.batches = 0  # training minibatches seen (numbers the 0.5-mixture draws)

    def before_batch(self, model: nn.Module) -> bool:
        """Draw this minibatch's mode; set ``model.attention.expected``; True = expected context."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
        expected = bool(torch.rand((), generator=g) < self.expected_context_p)
        model.attention.expected = expected
        self.batches += 1
        return expected

    def __call__(self, output: DecoderOutput, captions: Tensor, lengths: Tensor,
                 n_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, its parts as detached tensors); moves b as ``reinforce_reward`` says."""
        if output.entropies is None:
            raise ValueError("HardAttentionLoss needs a hard-attention decoder's output "
                             "(AttentionDecoder(attention='hard')); this one has no entropies.")
        log_p, real = token_log_likelihood(output, captions, lengths)
        n = real.sum() if n_tokens is None else n_tokens
        ce = -log_p.sum() / n
        penalty = doubly_stochastic_penalty(output.alphas.float(), lengths - 1, self.lam)
        entropy = (output.entropies.float() * real).sum() / n  # mean H[α_t] per word
        loss = ce + penalty - self.entropy_weight * entropy
        parts = {"ce": ce.detach(), "penalty": penalty.detach(), "entropy": entropy.detach()}
        reward = log_p.sum(1)  # log p(y | s̃, a) per caption
        if self.reward == "authors":
            reward = reward / real.sum(1).clamp_min(1)  # per word: their masked_cost.mean(0)
        sampled = output.log_probs_of_samples is not None
        if sampled:  # a sampled minibatch: REINFORCE
            sample_log_prob = (output.log_probs_of_samples.float() * real).sum(1)  # log p(s̃|a)
            surrogate = reinforce_surrogate(reward, sample_log_prob, self.baseline)
            weight = (_global_count(len(reward), reward.device) / 10
                      if self.reward == "authors" else 1.0)
            loss = loss - self.reinforce_weight * weight * surrogate.sum() / n
            parts["baseline"] = torch.as_tensor(self.baseline, dtype=torch.float64)
        if sampled or self.reward == "authors":
            mean = _global_mean(reward).double()  # stays on the device: no wait
            self.baseline = self.decay * self.baseline + (1 - self.decay) * mean
        return loss, parts

    def state_dict(self) -> dict:
        """The baseline and the minibatch counter, as plain data for a checkpoint."""
        return {"baseline": float(self.baseline), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s numbers."""
        baseline = state["baseline"]  # None: a v0.2.0 checkpoint before its first sample
        self.baseline, self.batches = (0.0 if baseline is None else baseline), state["batches"]


def authors_entropy_weight(alpha_entropy_c: float, batch_size: int) -> float:
    """λ_e in the package's units of the authors' ``alpha_entropy_c`` at this batch size.

    capgen.py adds alpha_entropy_c · Σ α log α over every element of the minibatch, with no
    1/B; the package's objective is theirs times B/N and its λ_e weighs a per-word mean, so
    λ_e = alpha_entropy_c · B (their 0.002 at B = 64 is 0.128).
    """
    return alpha_entropy_c * batch_size


LOSSES: dict[str, type[CaptionLoss]] = {"soft": CaptionLoss, "hard": HardAttentionLoss}


def make_loss(profile, attention: str) -> CaptionLoss:
    """The loss a run of this attention trains with, reading the profile's fields once."""
    if attention not in LOSSES:
        raise ValueError(f"attention={attention!r}: no loss for it; use one of {list(LOSSES)}.")
    return LOSSES[attention](profile)

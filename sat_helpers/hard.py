"""Training hard (stochastic) attention: the paper's objective and its gradient (Sec. 4.1).

Hard attention treats the location s_t looked at before word t as a latent variable,
s_t ~ Multinoulli(α_t). The model maximises a variational lower bound on log p(y | a)
(paper eq. 10, by Jensen's inequality):

    L_s = Σ_s p(s | a) log p(y | s, a)  ≤  log Σ_s p(s | a) p(y | s, a) = log p(y | a),

whose gradient (eq. 11) is estimated by Monte Carlo with sampled locations s̃ ~ p(s | a)
(eq. 12, with the three variance-reduction devices of the paper):

    ∂L_s/∂W ≈ ∂log p(y | s̃, a)/∂W + λ_r (log p(y | s̃, a) − b) ∂log p(s̃ | a)/∂W + λ_e ∂H[s̃]/∂W

(λ_r is ``profile.reinforce_weight``, λ_e ``profile.entropy_weight``: the paper leaves
both to tuning and reports no values. The defaults, 1 and 0.01, are eq. 12 as written. The
reward here is a whole caption's log-likelihood, so at λ_r = 1 the REINFORCE term's noise can
dominate what the attention learns: on Shapes every seed then captioned worse, and with the
seed code's baseline start most seeds' α never left uniform. That profile uses λ_r = 0.01
and λ_e = 0, measured over seeds by ``benchmarks/hard_seeds.py``; its α learns mostly from
the minibatches that use the expected context (device 3 below), with REINFORCE as a small
correction. The authors' code weighs the term down too: its reward is the per-word mean
log-likelihood, divided by 10.)

1. b, a moving average of the log-likelihood, b ← decay·b + (1 − decay)·log p(y | s̃, a)
   (decay ``profile.baseline_decay`` = 0.9): subtracting it leaves the mean unchanged and
   lowers the variance of the REINFORCE term. b starts at 0, as in the authors' code: on
   Shapes that beat starting at the first sampled minibatch's mean on every seed measured
   (``benchmarks/baseline_start.py``, notebook 07);
2. the entropy bonus λ_e H[s̃] (``profile.entropy_weight``);
3. with probability 0.5 (``profile.semi_sampling_p``) a minibatch uses the expected context
   Σ_i α_i a_i instead of a sample (the paper's "set the sampled attention location s̃ to
   its expected value α"): that minibatch trains like soft attention.

:class:`HardAttentionLoss` is that objective as a loss for ``sat_helpers.train`` (which uses
it for ``attention="hard"``); it keeps b and the minibatch counter as plain data, so a
checkpoint holds them and a resumed run continues exactly.

At inference a hard-attention decoder in eval mode uses the expected context, as the paper's
reference code (arctic-captions) does when it generates test captions: its sampler is built
with ``sampling=False``, where stochastic attention weights the annotations by α itself.
Greedy and beam search therefore run on a hard model unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import doubly_stochastic_penalty
from .config import Profile
from .decoder import DecoderOutput


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
    steps = output.scores.shape[1]
    targets = captions[:, 1:steps + 1]
    real = torch.arange(steps, device=targets.device) < (lengths.to(targets.device) - 1)[:, None]
    log_p = -F.cross_entropy(output.scores.float().transpose(1, 2), targets, reduction="none")
    return log_p * real, real


def _global_mean(x: Tensor) -> Tensor:
    """The mean of x over the batch and, under torchrun, over every process's batch."""
    mean = x.detach().float().mean()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean = mean / dist.get_world_size()
    return mean


class HardAttentionLoss:
    """The paper's hard-attention objective as a loss: call it like ``train.caption_loss``.

    ``before_batch(model)`` draws, before each training minibatch's forward pass, whether it
    uses the expected context (probability ``profile.semi_sampling_p``), from a generator
    seeded by (seed, minibatch number): the same draws on every process and after a resume.
    ``loss(output, captions, lengths, profile, n_tokens=None)`` returns (loss, parts):

        loss = [−Σ log p(y|s̃,a) − λ_r Σ_n (log p(y_n|s̃_n,a) − b) log p(s̃_n|a) − λ_e Σ H[α_t]] / N
               + doubly stochastic penalty with λ = ``profile.hard_lam``

    with N the number of real words (or ``n_tokens``), as in the soft loss, and λ_r
    ``profile.reinforce_weight``; the REINFORCE term is only there when the output holds
    sampled locations (a sampled training minibatch), which is also the only time b moves.
    Its value is zero, so the number reported is the cross-entropy + penalty − λ_e · mean
    entropy.

    ``hard_lam`` is 0 by default: the paper's hard-attention objective (Sec. 4.1) has no
    doubly stochastic penalty, which it introduces for soft attention (Sec. 4.2.1). With a
    caption of T ≈ 10 words over L = 196 positions the penalty is smallest for uniform α,
    and in a sampled minibatch nothing but the noisy REINFORCE term pulls the other way.
    """

    def __init__(self, profile: Profile):
        self.seed, self.semi_sampling_p = profile.seed, profile.semi_sampling_p
        self.baseline = 0.0  # b, as in the authors' code (benchmarks/baseline_start.py)
        self.batches = 0  # training minibatches seen (numbers the 0.5-mixture draws)

    def before_batch(self, model: nn.Module) -> bool:
        """Draw this minibatch's mode; set ``model.attention.expected``; True = expected context."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
        expected = bool(torch.rand((), generator=g) < self.semi_sampling_p)
        model.attention.expected = expected
        self.batches += 1
        return expected

    def __call__(self, output: DecoderOutput, captions: Tensor, lengths: Tensor, profile: Profile,
                 n_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, float]]:
        """(loss, its parts as floats); updates the baseline on a sampled minibatch."""
        if output.entropies is None:
            raise ValueError("HardAttentionLoss needs a hard-attention decoder's output "
                             "(AttentionDecoder(attention='hard')); this one has no entropies.")
        log_p, real = token_log_likelihood(output, captions, lengths)
        n = real.sum() if n_tokens is None else n_tokens
        ce = -log_p.sum() / n
        penalty = doubly_stochastic_penalty(output.alphas.float(), lengths - 1, profile.hard_lam)
        entropy = (output.entropies.float() * real).sum() / n  # mean H[α_t] per word
        loss = ce + penalty - profile.entropy_weight * entropy
        parts = {"ce": float(ce.detach()), "penalty": float(penalty.detach()),
                 "entropy": float(entropy.detach())}
        if output.log_probs_of_samples is not None:  # a sampled minibatch: REINFORCE
            log_likelihood = log_p.sum(1)  # log p(y | s̃, a) per caption
            mean = _global_mean(log_likelihood)
            sample_log_prob = (output.log_probs_of_samples.float() * real).sum(1)  # log p(s̃|a)
            surrogate = reinforce_surrogate(log_likelihood, sample_log_prob, self.baseline)
            loss = loss - profile.reinforce_weight * surrogate.sum() / n
            parts["baseline"] = self.baseline
            decay = profile.baseline_decay
            self.baseline = decay * self.baseline + (1 - decay) * float(mean)
        return loss, parts

    def state_dict(self) -> dict:
        """The baseline and the minibatch counter, as plain data for a checkpoint."""
        return {"baseline": self.baseline, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s numbers."""
        baseline = state["baseline"]  # None: a v0.2.0 checkpoint before its first sample
        self.baseline, self.batches = (0.0 if baseline is None else baseline), state["batches"]


def attention_entropy(alphas: Tensor) -> Tensor:
    """H[α] = −Σ_i α_i log α_i in nats over the last axis: 0 for one location, log P for uniform."""
    alphas = torch.as_tensor(alphas).float()
    return -(alphas * alphas.clamp_min(1e-12).log()).sum(-1)

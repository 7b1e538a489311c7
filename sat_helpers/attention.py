"""Where to look: the paper's soft (deterministic) and hard (stochastic) attention.

Both score each annotation vector a_i against the decoder state h_{t-1} with the MLP
alignment model of Xu et al. (2015), eq. 4:  e_ti = w^T tanh(W_a a_i + W_h h_{t-1} + b),
then α_t = softmax(e_t) (eq. 5). Soft attention returns the expected context Σ_i α_ti a_i
(eq. 13); hard attention samples one location s_t ~ Multinoulli(α_t) (eq. 8–9).

``W_a a_i + b`` does not depend on t, so :meth:`SoftAttention.project` computes it once per
image and the decoder passes it back at every word.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SoftAttention(nn.Module):
    """Deterministic attention: the α-weighted mean of the annotation vectors."""

    def __init__(self, enc_dim: int, dec_dim: int, att_dim: int):
        super().__init__()
        self.W_a = nn.Linear(enc_dim, att_dim)  # annotation half of the MLP, holds b
        self.W_h = nn.Linear(dec_dim, att_dim, bias=False)  # decoder-state half
        self.w = nn.Linear(att_dim, 1, bias=False)  # e_ti = w^T tanh(...)

    def project(self, features: Tensor) -> Tensor:
        """W_a a_i + b for every position: (B, P, enc) -> (B, P, att), once per image."""
        return self.W_a(features)

    def forward(
        self,
        features: Tensor,
        hidden: Tensor,
        projected: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Context (B, enc) and α (B, P) for hidden (B, dec); (B, k, ·) for k rows per image."""
        if projected is None:
            projected = self.project(features)
        return self.attend(features, projected, self.W_h(hidden), mask)

    def weights(self, projected: Tensor, query: Tensor, mask: Tensor | None = None) -> Tensor:
        """α from the projected annotations (B, P, att) and the projected state W_h h."""
        squeeze = query.dim() == 2
        if squeeze:
            query = query.unsqueeze(1)  # (B, 1, att): one row per image
        scores = self.w(torch.tanh(projected.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)
        if mask is not None:  # (B, P): False where a position is padding
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        alpha = scores.softmax(dim=-1)  # (B, k, P)
        return alpha.squeeze(1) if squeeze else alpha

    def attend(
        self, features: Tensor, projected: Tensor, query: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Expected context Σ_i α_i a_i as one batched matrix product, and α."""
        alpha = self.weights(projected, query, mask)
        rows = alpha if alpha.dim() == 3 else alpha.unsqueeze(1)
        context = torch.bmm(rows, features)  # (B, k, P) @ (B, P, enc) -> (B, k, enc)
        return (context if alpha.dim() == 3 else context.squeeze(1)), alpha


class HardAttention(SoftAttention):
    """Stochastic attention: look at one sampled location (paper Sec. 4.1).

    In training it samples s_t ~ Multinoulli(α_t) and returns that annotation vector, the
    sample's log-probability (for the REINFORCE gradient) and the entropy of α. With
    ``expected=True``, and always in eval mode, it returns the expected context Σ_i α_i a_i
    instead: the paper's reference code (arctic-captions) decodes stochastic models with the
    deterministic expectation, and trains with it for half the minibatches.
    """

    def __init__(self, enc_dim: int, dec_dim: int, att_dim: int):
        super().__init__(enc_dim, dec_dim, att_dim)
        self.expected = False

    def attend(
        self, features: Tensor, projected: Tensor, query: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(context, α, log p(s_t) or None when the expectation is used, entropy of α)."""
        context, alpha = super().attend(features, projected, query, mask)
        entropy = -(alpha * alpha.clamp_min(1e-12).log()).sum(-1)
        if self.expected or not self.training:
            return context, alpha, None, entropy
        location = torch.multinomial(alpha.reshape(-1, alpha.shape[-1]), 1)
        location = location.view(alpha.shape[:-1])  # (B,) or (B, k)
        log_prob = alpha.gather(-1, location.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12).log()
        one_hot = torch.zeros_like(alpha).scatter_(-1, location.unsqueeze(-1), 1.0)
        rows = one_hot if one_hot.dim() == 3 else one_hot.unsqueeze(1)
        sampled = torch.bmm(rows, features)
        return (sampled if one_hot.dim() == 3 else sampled.squeeze(1)), alpha, log_prob, entropy


def doubly_stochastic_penalty(alphas: Tensor, lengths: Tensor, lam: float = 1.0) -> Tensor:
    """λ Σ_i (1 − Σ_t α_ti)², averaged over the batch, summing α only over real steps.

    alphas (B, T, P); lengths (B,) = the number of real (non-padding) steps of each row.
    It pushes every position to receive, over the whole caption, a total attention of one:
    the model is asked to look at every part of the image at some point (paper eq. 14).
    """
    steps = torch.arange(alphas.shape[1], device=alphas.device)
    real = (steps.unsqueeze(0) < lengths.to(alphas.device).unsqueeze(1)).to(alphas.dtype)
    total = (alphas * real.unsqueeze(-1)).sum(dim=1)  # (B, P): attention each position got
    return lam * ((1.0 - total) ** 2).sum(dim=1).mean()

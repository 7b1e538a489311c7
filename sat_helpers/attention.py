"""Where to look: the paper's soft (deterministic) and hard (stochastic) attention.

Both score each annotation vector a_i against the decoder state h_{t-1} with the MLP
alignment model of Xu et al. (2015), eq. 4:  e_ti = w^T tanh(W_a a_i + W_h h_{t-1} + b),
then α_t = softmax(e_t) (eq. 5). Soft attention returns the expected context Σ_i α_ti a_i
(eq. 13); hard attention samples one location s_t ~ Multinoulli(α_t) (eq. 8–9).

``W_a a_i + b`` does not depend on t, so :meth:`SoftAttention.project` computes it once per
image and the decoder passes it back at every word. Every method takes one query per image,
(B, ·), or k queries per image, (B, k, ·) (beam search: k beams share one image's features).
Everything here is plain PyTorch. On the CPU in float32 the scores are computed in
cache-sized blocks with tanh as a sigmoid: :class:`MLPScores` when training (the same e_ti
with its gradient written out), :func:`blocked_scores` without autograd (validation,
decoding); docs/speed.md says what each saves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _check_shapes(features: Tensor, projected: Tensor, query: Tensor) -> None:
    """Raise a ValueError naming the tensor whose shape does not fit the others."""
    if features.dim() != 3:
        raise ValueError(
            f"features must be (batch, positions, enc_dim), got {tuple(features.shape)}")
    if projected.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"projected {tuple(projected.shape)} does not match features {tuple(features.shape)}: "
            "pass attention.project(features) of the same features"
        )
    if query.dim() not in (2, 3) or query.shape[0] != features.shape[0]:
        raise ValueError(
            f"query/hidden must be (batch, dim) or (batch, k, dim) with batch "
            f"{features.shape[0]} (the features' batch), got {tuple(query.shape)}"
        )


class SoftAttention(nn.Module):
    """Deterministic attention: the α-weighted mean of the annotation vectors (paper Sec. 4.2)."""

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
        """Context (B, enc) and α (B, P) for hidden (B, dec); (B, k, ·) for k rows per image.

        ``projected`` (B, P, att) is :meth:`project` of the same features, reused across
        steps; ``mask`` (B, P) is False at positions that must get no attention (padding).
        """
        if projected is None:
            projected = self.project(features)
        return self.attend(features, projected, self.W_h(hidden), mask)

    def scores(self, projected: Tensor, query: Tensor, mask: Tensor | None = None) -> Tensor:
        """e_ti = w^T tanh(W_a a_i + b + W_h h) (eq. 4): (B, P), or (B, k, P); -inf where masked."""
        squeeze = query.dim() == 2
        if squeeze:
            query = query.unsqueeze(1)  # (B, 1, att): one row per image
        w = self.w.weight.squeeze(0)
        if not self.written_out(projected, query):  # a learner's w: the plain expression
            scores = self.w(torch.tanh(projected.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)
        elif torch.is_grad_enabled():  # the same e_ti, its backward by hand
            scores = MLPScores.apply(projected, query, w)
        else:  # the same e_ti, no graph (validation, decoding)
            scores = blocked_scores(projected, query, w)
        if mask is not None:  # (B, P): False where a position is padding
            if not bool(mask.any(dim=-1).all()):
                raise ValueError(
                    "mask leaves an image with no position to attend to (a row of all False)")
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return scores.squeeze(1) if squeeze else scores  # (B, k, P)

    def written_out(self, projected: Tensor, query: Tensor) -> bool:
        """Whether :class:`MLPScores` and :func:`blocked_scores` compute this module's scores
        (the same e_ti up to rounding): float32 on the CPU
        (no autocast), w still the plain bias-free ``nn.Linear`` without hooks."""
        w = self.w
        return (projected.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and projected.dtype == query.dtype == w.weight.dtype == torch.float32
                and type(w) is nn.Linear and w.bias is None
                and not (w._forward_hooks or w._forward_pre_hooks))

    def weights(self, projected: Tensor, query: Tensor, mask: Tensor | None = None) -> Tensor:
        """α = softmax over positions of the scores (eq. 5), from W_a a + b and W_h h."""
        return self.scores(projected, query, mask).softmax(dim=-1)

    def attend(
        self, features: Tensor, projected: Tensor, query: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Expected context Σ_i α_i a_i (eq. 13) and α, for an already projected query W_h h."""
        _check_shapes(features, projected, query)
        alpha = self.weights(projected, query, mask)
        return expected_context(features, alpha), alpha


_BLOCK_ELEMENTS = 1 << 19  # floats of σ(2z) per block of images (2 MB: within a core's cache)


def _block_size(projected: Tensor, query: Tensor) -> int:
    """How many images' (k, P, A) slices of z fit in one block."""
    per_image = query.shape[1] * projected[0].numel()
    return max(1, min(projected.shape[0], _BLOCK_ELEMENTS // per_image))


def _sigmoid_2z(projected: Tensor, query: Tensor, out: Tensor) -> Tensor:
    """σ(2z) of z = projected + query, (b, P, A) + (b, k, A) -> (b, k, P, A), into ``out``."""
    torch.add(projected.unsqueeze(1), query.unsqueeze(2), out=out)
    return out.mul_(2).sigmoid_()


def blocked_scores(projected: Tensor, query: Tensor, w: Tensor) -> Tensor:
    """e = w^T tanh(projected + query) (eq. 4) without autograd, queries (B, k, A) -> (B, k, P).

    tanh(z) = 2σ(2z) − 1, so w·tanh(z) = 2 w·σ(2z) − Σw: torch's CPU sigmoid is about four
    times faster than its tanh. The (B, k, P, A) tensor z goes through one buffer of a few
    images at a time, which stays in the cache.
    """
    size = _block_size(projected, query)
    buffer = projected.new_empty(size, query.shape[1], *projected.shape[1:])
    blocks = [_sigmoid_2z(projected[i:i + size], query[i:i + size],
                          buffer[: min(size, projected.shape[0] - i)]) @ w
              for i in range(0, projected.shape[0], size)]
    return 2 * torch.cat(blocks) - w.sum()


class MLPScores(torch.autograd.Function):
    """e = w^T tanh(z), z = (W_a a + b) + W_h h (eq. 4), with the gradient written out.

    What autograd builds for the plain expression is slow on the CPU: torch's tanh is about
    four times slower than its sigmoid, the gradient through w is a matrix product with one
    column, and every full-size temporary goes through memory. Here, with s = σ(2z), so that
    tanh(z) = 2s − 1, and g = ∂L/∂e, in blocks of images that stay in the cache:
    e = 2 w·s − Σw, ∂L/∂w = Σ g (2s − 1) = 2 Σ g (s − ½) and
    ∂L/∂z = g w (1 − tanh²z) = 4 g w s (1 − s);
    z's gradient goes to W_a a + b (summed over the k queries of an image) and to W_h h
    (summed over positions). projected (B, P, A), query (B, k, A), w (A,) -> e (B, k, P).
    """

    @staticmethod
    def forward(ctx, projected: Tensor, query: Tensor, w: Tensor) -> Tensor:
        size = _block_size(projected, query)
        s = projected.new_empty(projected.shape[0], query.shape[1], *projected.shape[1:])
        blocks = [_sigmoid_2z(projected[i:i + size], query[i:i + size], s[i:i + size]) @ w
                  for i in range(0, projected.shape[0], size)]
        ctx.save_for_backward(s, w)  # kept for the backward
        ctx.block = size
        return 2 * torch.cat(blocks) - w.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s, w = ctx.saved_tensors
        size, four_w = ctx.block, 4 * w
        grad_z, half_t = torch.empty_like(s), s.new_empty(ctx.block, *s.shape[1:])
        grad_w, grad_query = torch.zeros_like(w), []
        for i in range(0, s.shape[0], size):
            s_i, g_i, z_i = s[i:i + size], grad[i:i + size], grad_z[i:i + size]
            t_i = torch.sub(s_i, 0.5, out=half_t[: s_i.shape[0]])  # tanh(z) / 2 = s − ½
            grad_w.addmv_(t_i.flatten(0, -2).t(), g_i.flatten(), alpha=2)
            torch.mul(g_i.unsqueeze(-1), four_w, out=z_i)
            torch.ops.aten.sigmoid_backward.grad_input(z_i, s_i, grad_input=z_i)  # · s (1 − s)
            grad_query.append(z_i.sum(2))
        grad_projected = grad_z.squeeze(1) if grad_z.shape[1] == 1 else grad_z.sum(1)
        return grad_projected, torch.cat(grad_query), grad_w


def expected_context(features: Tensor, alpha: Tensor) -> Tensor:
    """Σ_i α_i a_i as one batched matrix product: (B, P) -> (B, enc), (B, k, P) -> (B, k, enc)."""
    rows = alpha if alpha.dim() == 3 else alpha.unsqueeze(1)
    context = torch.bmm(rows, features)  # (B, k, P) @ (B, P, enc) -> (B, k, enc)
    return context if alpha.dim() == 3 else context.squeeze(1)


def gather_locations(features: Tensor, location: Tensor) -> Tensor:
    """The annotation vectors at integer locations (B,) or (B, k): a_{s_t}, shape (..., enc)."""
    index = location.reshape(location.shape[0], -1, 1).expand(-1, -1, features.shape[-1])
    return features.gather(1, index).reshape(*location.shape, features.shape[-1])


class HardAttention(SoftAttention):
    """Stochastic attention: look at one sampled location (paper Sec. 4.1).

    In training it samples s_t ~ Multinoulli(α_t) and returns that annotation vector a_{s_t},
    α, the sample's exact log-probability log α_{t,s_t} (for the REINFORCE gradient, eq. 12)
    and the entropy H[α_t] (the paper's entropy bonus). No gradient reaches α through the
    sampled context: the trainer supplies it with the score-function term.

    With ``expected=True``, and always in eval mode, it returns the expected context
    Σ_i α_i a_i instead (log-probability None). That is what the paper's reference code
    (arctic-captions, capgen.py) does: its decoder for test captions, generate_caps.py, builds
    the sampler with ``sampling=False``, where stochastic attention uses α itself as the
    weights. In training it also uses α instead of the sample with probability 0.5
    (``expected_context_p``, drawn once per minibatch as capgen.py does; the paper, Sec. 4.1,
    says "for a given image"): a trainer reproduces that by setting ``expected`` for half the
    batches.
    """

    def __init__(self, enc_dim: int, dec_dim: int, att_dim: int):
        super().__init__(enc_dim, dec_dim, att_dim)
        self.expected = False

    def forward(  # type: ignore[override]
        self,
        features: Tensor,
        hidden: Tensor,
        projected: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(context, α, log p(s_t) or None, entropy of α) for hidden (B, dec) or (B, k, dec)."""
        if projected is None:
            projected = self.project(features)
        return self.attend(features, projected, self.W_h(hidden), mask)

    def attend(  # type: ignore[override]
        self, features: Tensor, projected: Tensor, query: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(context, α, log p(s_t) or None when the expectation is used, entropy of α)."""
        _check_shapes(features, projected, query)
        log_alpha = self.scores(projected, query, mask).log_softmax(dim=-1)
        alpha = log_alpha.exp()
        entropy = attention_entropy(alpha, log_alpha)
        if self.expected or not self.training:
            return expected_context(features, alpha), alpha, None, entropy
        flat = alpha.detach().reshape(-1, alpha.shape[-1])
        location = torch.multinomial(flat, 1).view(alpha.shape[:-1])  # (B,) or (B, k)
        log_prob = log_alpha.gather(-1, location.unsqueeze(-1)).squeeze(-1)
        return gather_locations(features, location), alpha, log_prob, entropy


def doubly_stochastic_penalty(alphas: Tensor, lengths: Tensor, lam: float = 1.0) -> Tensor:
    """λ · mean_i (1 − Σ_t α_ti)² (paper eq. 14 over P positions), averaged over the batch.

    alphas (B, T, P); lengths (B,) = the number of real (non-padding) steps of each row (for
    the decoder's alphas, the caption lengths minus one). It asks every position to receive,
    over the whole caption, a total attention of one: look at every part of the image at some
    point. Padding steps never add to the totals. Eq. 14 sums over the P positions and adds
    the sum to a caption's summed negative log-likelihood; this averages over the positions and
    is added to the per-word mean cross-entropy, so one λ means the same at any grid size. In
    eq. 14's units the package's λ is λ_paper · P / (words per caption): see
    :func:`paper_lam_to_package`.
    """
    if alphas.dim() != 3 or lengths.shape != alphas.shape[:1]:
        raise ValueError(
            f"alphas must be (batch, steps, positions) and lengths (batch,), got "
            f"{tuple(alphas.shape)} and {tuple(lengths.shape)}"
        )
    steps = torch.arange(alphas.shape[1], device=alphas.device)
    real = (steps.unsqueeze(0) < lengths.to(alphas.device).unsqueeze(1)).to(alphas.dtype)
    total = (alphas * real.unsqueeze(-1)).sum(dim=1)  # (B, P): attention each position got
    return lam * ((1.0 - total) ** 2).mean()


def paper_lam_to_package(lam_paper: float, positions: int, words_per_caption: float) -> float:
    """The package's λ for eq. 14's λ: λ_paper · P / (real target words per caption, <end> in).

    Eq. 14 per caption, averaged over a batch of B captions with N target words in all, is
    (1/B) Σ_n [NLL_n + λ_paper Σ_i (1 − Σ_t α_ti)²]; the package's loss is that times B/N,
    whose penalty λ_paper (B/N) Σ_n Σ_i (…)² is λ · mean over (n, i) at λ = λ_paper · P · B/N.
    """
    return lam_paper * positions / words_per_caption


def attention_entropy(alphas: Tensor, log_alphas: Tensor | None = None) -> Tensor:
    """H[α] = −Σ_i α_i log α_i in nats over the last axis: 0 for one location, log P for uniform.

    ``log_alphas``: log α when the caller has it (exact where α underflows to 0), else
    log max(α, 1e-12). Either way 0 · log 0 = 0, with no NaN in the backward pass.
    """
    if log_alphas is None:
        alphas = torch.as_tensor(alphas).float()
        log_alphas = alphas.clamp_min(1e-12).log()
    return -(alphas * log_alphas.masked_fill(alphas == 0, 0.0)).sum(-1)


_METHODS = ("forward", "attend", "scores", "weights", "project")
PLAIN = {cls: {name: getattr(cls, name) for name in _METHODS} for cls in (SoftAttention,
                                                                          HardAttention)}
"""The methods as shipped: :mod:`sat_helpers.fastcpu` runs only while these are the class's."""

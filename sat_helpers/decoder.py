"""The paper's LSTM decoder with attention (Xu et al. 2015, Sec. 3.1.2, eq. 1-7 and 4.2.1).

One decoding step is written once, equation by equation, in :meth:`AttentionDecoder.advance`,
in plain PyTorch: teacher-forced :meth:`AttentionDecoder.forward` runs it once per word on
the captions still live, and the searches' :meth:`AttentionDecoder.step` once per word on
every image (and beam). Two parts are moved out of the time loop because they do not feed
the next step: the projection of the annotation vectors, W_a a_i + b, computed once per
image, and in teacher forcing the output layer (eq. 7), applied once to the words of all
steps.

Decoding on the CPU (eval mode, no autograd, float32) runs the same equations through
faster kernels, behind one seam: ``step`` hands over to :mod:`sat_helpers.fastcpu` only
when the decoder is this class as shipped (no subclass, no patched method or layer), so a
learner's change reaches every search. On CUDA, with autograd, or in another dtype, the
step below is what runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import fastcpu
from .attention import HardAttention, SoftAttention
from .config import Profile


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM's eq. 2-3: gates (..., 4n) in the order i, f, g, o and c_{t-1} -> (h_t, c_t)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # eq. 2
    return torch.sigmoid(o) * torch.tanh(c), c  # eq. 3


class DecoderOutput(NamedTuple):
    """Teacher-forced outputs in the caller's order, zero past each caption's length."""

    scores: Tensor  # (B, T-1, V) logits predicting captions[:, 1:]
    alphas: Tensor  # (B, T-1, P) attention of every step
    log_probs_of_samples: Tensor | None  # (B, T-1) log p(s_t) of sampled locations (hard only)
    entropies: Tensor | None  # (B, T-1) entropy of α_t (hard only)


class StepOutput(NamedTuple):
    """What one step of :meth:`AttentionDecoder.advance` computes, for the rows it was given."""

    logits: Tensor | None  # (..., V) unnormalised log p(y_t | y_<t, a); None if output=False
    h: Tensor  # h_t
    c: Tensor  # c_t
    context: Tensor  # β_t ẑ_t, what the LSTM read
    alpha: Tensor  # α_t (..., P)
    sample_log_prob: Tensor | None  # log α_{t,s_t} of the sampled location (hard, training)
    entropy: Tensor | None  # H[α_t] (hard attention)


class Prefixes(torch.autograd.Function):
    """x[:n] for each n of ``counts`` (descending, the first len(x)), with one gradient for x.

    Autograd's own slice makes, in its backward, a zero tensor the size of x for every slice:
    with a slice per live count, that was a seventh of a Shapes training step. Here the
    prefixes' gradients are added into the first one's, the whole of x.
    """

    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...]) -> tuple[Tensor, ...]:
        if counts[0] != len(x):
            raise ValueError(f"the first prefix must be all of x ({len(x)} rows), not {counts[0]}")
        ctx.shape = x.shape
        return tuple(x[:n] for n in counts)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, None]:
        some = next((g for g in grads if g is not None), None)
        if some is None:
            return None, None
        total = grads[0].clone() if grads[0] is not None else some.new_zeros(ctx.shape)
        for g in grads[1:]:
            if g is not None:
                total[: len(g)] += g
        return total, None


class DecoderState(NamedTuple):
    """What one decoding step needs: LSTM state and the image's (projected) annotations."""

    h: Tensor  # (B, D) or (B, k, D) for k beams per image
    c: Tensor
    features: Tensor  # (B, P, E), shared by the k beams of an image
    projected: Tensor  # (B, P, A) = W_a a + b, computed once per image

    def expand(self, k: int) -> DecoderState:
        """k copies of each image's LSTM state, (B, D) -> (B, k, D); annotations stay shared."""
        grow = lambda x: x.unsqueeze(1).expand(-1, k, -1).contiguous()  # noqa: E731
        return self._replace(h=grow(self.h), c=grow(self.c))

    def reorder(self, beam_idx: Tensor) -> DecoderState:
        """Keep, for image b, the beams beam_idx[b] (B, k) of the previous step."""
        pick = lambda x: x.gather(1, beam_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
        return self._replace(h=pick(self.h), c=pick(self.c))


class AttentionDecoder(nn.Module):
    """LSTM decoder that attends over the annotation vectors before every word."""

    def __init__(
        self,
        vocab_size: int,
        enc_dim: int,
        embed_dim: int,
        dec_dim: int,
        att_dim: int,
        dropout: float = 0.5,
        attention: str = "soft",
        gate: str | None = "scalar",
        deep_output: bool = True,
    ):
        super().__init__()
        if attention not in ("soft", "hard"):
            raise ValueError(f"attention must be 'soft' or 'hard', got {attention!r}")
        if gate not in ("scalar", "vector", None):
            raise ValueError(f"gate must be 'scalar', 'vector' or None, got {gate!r}")
        self.config = dict(
            vocab_size=vocab_size, enc_dim=enc_dim, embed_dim=embed_dim, dec_dim=dec_dim,
            att_dim=att_dim, dropout=dropout, attention=attention, gate=gate,
            deep_output=deep_output,
        )
        attention_class = SoftAttention if attention == "soft" else HardAttention
        self.attention = attention_class(enc_dim, dec_dim, att_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)  # E
        with torch.no_grad():  # N(0, 0.01²), the authors' init (capgen.py norm_weight, scale
            self.embedding.weight.mul_(0.01)  # 0.01): E y feeds the deep output's tanh unsaturated
        self.init_h = nn.Linear(enc_dim, dec_dim)  # f_init,h of the mean annotation
        self.init_c = nn.Linear(enc_dim, dec_dim)  # f_init,c
        self.gate_dim = {"scalar": 1, "vector": enc_dim, None: 0}[gate]
        if gate is not None:
            self.f_beta = nn.Linear(dec_dim, self.gate_dim)  # β_t = σ(f_β(h_{t-1})), eq. 4.2.1
        self.lstm_emb = nn.Linear(embed_dim, 4 * dec_dim)  # LSTM input: E y_{t-1} half (+ bias)
        self.lstm_ctx = nn.Linear(enc_dim, 4 * dec_dim, bias=False)  # LSTM input: β ẑ half
        self.lstm_hh = nn.Linear(dec_dim, 4 * dec_dim, bias=False)  # recurrent weights
        self.dropout = nn.Dropout(dropout)  # on what L_o reads (after the deep output's tanh)
        if deep_output:
            self.dropout_h = nn.Dropout(dropout)  # on h_t before L_h (capgen.py's proj_h)
            self.L_h = nn.Linear(dec_dim, embed_dim)  # deep output layer, eq. 7
            self.L_z = nn.Linear(enc_dim, embed_dim, bias=False)
            self.L_o = nn.Linear(embed_dim, vocab_size)
        else:
            self.L_o = nn.Linear(dec_dim, vocab_size)

    # -- one step, shared by forward() and step() ------------------------------------------
    def advance(self, prev_tokens: Tensor, h: Tensor, c: Tensor, features: Tensor,
                projected: Tensor, *, embedded: Tensor | None = None,
                output: bool = True) -> StepOutput:
        """One word, as the paper writes it: y_{t-1}, h_{t-1}, c_{t-1} -> p(y_t), h_t, c_t.

        Any rows: prev_tokens (B,) with h, c (B, D), or (B, k) with (B, k, D) for k beams per
        image; features (B, P, E) and projected = W_a a + b (B, P, A) once per image.
        Teacher forcing passes ``embedded`` (E y_{t-1}, looked up for every step at once) and
        ``output=False``: eq. 7 feeds no later step, so :meth:`forward` applies
        :meth:`output_layer` once to the rows of all steps after its loop (logits None here).
        """
        Ey = self.embedding(prev_tokens) if embedded is None else embedded  # E y_{t-1} (..., m)
        # f_att (eq. 4): e_ti = w^T tanh(W_a a_i + b + W_h h_{t-1}); α_t = softmax(e_t) (eq. 5);
        # φ (eq. 6): ẑ_t = Σ_i α_ti a_i (soft, eq. 13), or a_{s_t} with s_t ~ α_t (hard, eq. 9)
        z, alpha, *hard = self.attention.attend(features, projected, self.attention.W_h(h))
        if self.gate_dim:
            z = torch.sigmoid(self.f_beta(h)) * z  # β_t = σ(f_β(h_{t-1})) gates ẑ_t (Sec. 4.2.1)
        # eq. 1: (i, f, o, g) = (σ, σ, σ, tanh)(T [E y_{t-1}; h_{t-1}; ẑ_t]), T as three maps
        h, c = lstm_update(self.lstm_emb(Ey) + self.lstm_hh(h) + self.lstm_ctx(z), c)  # eq. 2-3
        logits = self.output_layer(Ey, h, z) if output else None
        sample_log_prob, entropy = hard if hard else (None, None)
        return StepOutput(logits, h, c, z, alpha, sample_log_prob, entropy)

    def output_layer(self, Ey: Tensor, h: Tensor, z: Tensor) -> Tensor:
        """Eq. 7: logits of y_t from E y_{t-1}, h_t and ẑ_t, with the authors' two dropouts.

        Deep output: L_o(dropout(tanh(E y_{t-1} + L_h dropout(h_t) + L_z ẑ_t))); the tanh and
        both dropouts are the authors' code's (capgen.py drops h_t before L_h, and the tanh's
        output). Without it, h_t goes straight to L_o: the two sites are one, and h_t is
        dropped once (twice would drop 1 - (1 - p)^2 of it).
        """
        if self.config["deep_output"]:
            out = torch.tanh(Ey + self.L_h(self.dropout_h(h)) + self.L_z(z))
        else:
            out = h
        return self.L_o(self.dropout(out))  # p(y_t | a, y_<t) ∝ exp(logits)

    def _initial(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h_0 = tanh(f_init,h(mean a)), c_0 likewise, and W_a a + b for every position."""
        mean = features.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        return h, c, self.attention.project(features)

    # -- public API -------------------------------------------------------------------------
    def init_state(self, features: Tensor) -> DecoderState:
        """h_0, c_0 from the mean annotation vector; the annotations' projection, once."""
        h, c, projected = self._initial(features)
        return DecoderState(h, c, features, projected)

    def step(self, state: DecoderState, prev_tokens: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """One word: log p(y_t | y_<t, a) (..., V), α_t (..., P) and the next state."""
        if fastcpu.applies(self, state):  # decoding on the CPU: the same step, faster kernels
            return fastcpu.step(self, state, prev_tokens)
        out = self.advance(prev_tokens, state.h, state.c, state.features, state.projected)
        dtype = torch.promote_types(out.logits.dtype, torch.float32)
        return out.logits.log_softmax(-1, dtype=dtype), out.alpha, state._replace(h=out.h, c=out.c)

    def forward(self, features: Tensor, captions: Tensor, lengths: Tensor) -> DecoderOutput:
        """Teacher forcing: scores for captions[:, 1:], computing only live steps of the batch.

        features (B, P, E); captions (B, T) starting with <start>; lengths (B,) counting
        <start> and <end>. Rows are sorted by length inside, so that step t runs only on the
        rows still live, and the outputs are put back in the caller's order.
        """
        steps = lengths.to("cpu").long() - 1  # words to predict per caption
        if steps.min() < 1:
            raise ValueError("every caption needs <start>, at least one token and a length >= 2")
        batch, n_steps = captions.shape[0], int(steps.max())
        order = torch.argsort(steps, descending=True, stable=True)
        live = [int((steps > t).sum()) for t in range(n_steps)]  # rows live at step t
        order_dev = order.to(features.device)
        features = features[order_dev]  # indexing copies ~3x faster than index_select on the CPU
        words = captions.index_select(0, order_dev)[:, :n_steps].t()  # (T-1, B): time first
        Ey = self.embedding(words)  # E y_{t-1} of every step at once
        Ey_steps = Ey.unbind()  # per step: one gradient for all steps (no (T-1, B, m) per step)
        h, c, projected = self._initial(features)
        counts = tuple(sorted(set(live), reverse=True))  # the live rows are a prefix: [:n]
        images = dict(zip(counts, zip(Prefixes.apply(features, counts),
                                      Prefixes.apply(projected, counts), strict=True),
                          strict=True))
        outs = []
        for t, n in enumerate(live):
            out = self.advance(words[t, :n], h[:n], c[:n], *images[n],
                               embedded=Ey_steps[t][:n], output=False)
            h, c = out.h, out.c
            outs.append(out)
        rows = torch.cat([torch.arange(n) for n in live]).to(features.device)
        cols = torch.cat([torch.full((n,), t) for t, n in enumerate(live)]).to(features.device)
        where = (order_dev[rows], cols)
        logits = self.output_layer(Ey[cols, rows], torch.cat([o.h for o in outs]),
                                   torch.cat([o.context for o in outs]))  # eq. 7, all at once

        def unpack(parts: list[Tensor | None]) -> Tensor | None:
            """Live rows of every step, (Σ live, ...), -> (B, T-1, ...) in the caller's order."""
            if parts[0] is None:
                return None
            packed = parts[0] if len(parts) == 1 else torch.cat(parts)
            return packed.new_zeros(batch, n_steps, *packed.shape[1:]).index_put_(where, packed)

        return DecoderOutput(
            unpack([logits]),
            unpack([o.alpha for o in outs]),
            unpack([o.sample_log_prob for o in outs]),
            unpack([o.entropy for o in outs]),
        )


def build_decoder(profile: Profile, vocab_size: int, enc_dim: int,
                  attention: str = "soft") -> AttentionDecoder:
    """The profile's AttentionDecoder."""
    return AttentionDecoder(vocab_size, enc_dim, profile.embed_dim, profile.dec_dim,
                            profile.att_dim, profile.dropout, attention, profile.gate,
                            profile.deep_output)


PLAIN = {name: AttentionDecoder.__dict__[name]
         for name in ("advance", "output_layer", "_initial", "step")}
"""The methods as shipped: :mod:`sat_helpers.fastcpu` runs only while these are the class's."""

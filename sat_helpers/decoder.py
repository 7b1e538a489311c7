"""The paper's LSTM decoder with attention (Xu et al. 2015, Sec. 3.1.2, eq. 1-7 and 4.2.1).

One decoding step is defined once, in :meth:`AttentionDecoder._advance`; teacher-forced
:meth:`AttentionDecoder.forward` and the searches' :meth:`AttentionDecoder.step` both call it.
What does not depend on the previous step is moved out of the time loop: the projection of
the annotation vectors (once per image), the embedding half of the LSTM input (for all words
at once), and the output layer (once, on every live step together).

Decoding on the CPU (``init_state`` without autograd, float32) uses the step's weights
re-laid out once for oneDNN, carried in :attr:`DecoderState.weights`. A decoding step has
few rows (k beams of a few images), and for few rows torch's default float32 kernel (MKL)
is slow on some CPUs: on the AMD EPYC we measure on, the 10 000-word output layer took
2.8 ms for 5 rows and 0.3 ms packed (``benchmarks/bench_search.py`` shows both).
Set ``sat_helpers.decoder.PACK_WEIGHTS = False`` to decode with the plain kernels.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import HardAttention, SoftAttention

PACK_WEIGHTS = True  # decode on the CPU with weights packed for oneDNN (module docstring)
Weights = dict[str, tuple[Tensor, Tensor | None]]  # (weight, bias) of each linear map of a step


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x W^T + b: oneDNN's kernel for a weight packed by :func:`_pack`, else ``F.linear``."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _pack(weights: Weights) -> Weights:
    """The same maps with each weight re-laid out for oneDNN (an opaque CPU tensor)."""
    return {name: (torch.ops.mkldnn._reorder_linear_weight(w.contiguous()), b)
            for name, (w, b) in weights.items()}


@functools.cache
def _onednn_works() -> bool:
    """Whether this torch build can pack a weight and run oneDNN's linear (checked once)."""
    try:
        packed = _pack({"probe": (torch.ones(2, 3), None)})["probe"]
        return bool(torch.equal(_linear(torch.ones(1, 3), *packed), torch.full((1, 2), 3.0)))
    except Exception:  # whatever the failure, decoding falls back to the plain kernels
        return False


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


class DecoderState(NamedTuple):
    """What one decoding step needs: LSTM state and the image's (projected) annotations."""

    h: Tensor  # (B, D) or (B, k, D) for k beams per image
    c: Tensor
    features: Tensor  # (B, P, E), shared by the k beams of an image
    projected: Tensor  # (B, P, A) = W_a a + b, computed once per image
    weights: Weights | None = None  # the step's weights packed for CPU decoding, else None

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
        self.init_h = nn.Linear(enc_dim, dec_dim)  # f_init,h of the mean annotation
        self.init_c = nn.Linear(enc_dim, dec_dim)  # f_init,c
        self.gate_dim = {"scalar": 1, "vector": enc_dim, None: 0}[gate]
        if gate is not None:
            self.f_beta = nn.Linear(dec_dim, self.gate_dim)  # β_t = σ(f_β(h_{t-1})), eq. 4.2.1
        self.lstm_emb = nn.Linear(embed_dim, 4 * dec_dim)  # LSTM input: E y_{t-1} half (+ bias)
        self.lstm_ctx = nn.Linear(enc_dim, 4 * dec_dim, bias=False)  # LSTM input: β ẑ half
        self.lstm_hh = nn.Linear(dec_dim, 4 * dec_dim, bias=False)  # recurrent weights
        self.dropout = nn.Dropout(dropout)
        if deep_output:
            self.L_h = nn.Linear(dec_dim, embed_dim)  # deep output layer, eq. 7
            self.L_z = nn.Linear(enc_dim, embed_dim, bias=False)
            self.L_o = nn.Linear(embed_dim, vocab_size)
        else:
            self.L_o = nn.Linear(dec_dim, vocab_size)

    # -- one step, shared by forward() and step() ------------------------------------------
    def _fused_h_projection(self) -> tuple[Tensor, Tensor]:
        """One matrix for everything computed from h_{t-1}: W_h h, f_β(h), and W_hh h."""
        att, hh = self.attention.W_h.weight, self.lstm_hh.weight
        if not self.gate_dim:
            return torch.cat([att, hh]), None
        weight = torch.cat([att, self.f_beta.weight, hh])
        bias = torch.cat([att.new_zeros(att.shape[0]), self.f_beta.bias, hh.new_zeros(hh.shape[0])])
        return weight, bias

    def _weights(self) -> Weights:
        """(weight, bias) of every linear map of a step; the three maps of h_{t-1} fused as "h"."""
        weights = {
            "h": self._fused_h_projection(),
            "lstm_emb": (self.lstm_emb.weight, self.lstm_emb.bias),
            "lstm_ctx": (self.lstm_ctx.weight, None),
            "L_o": (self.L_o.weight, self.L_o.bias),
        }
        if hasattr(self, "L_h"):
            weights |= {"L_h": (self.L_h.weight, self.L_h.bias), "L_z": (self.L_z.weight, None)}
        return weights

    def _packed_weights(self, features: Tensor) -> Weights | None:
        """The step's weights packed for oneDNN when decoding float32 on the CPU, else None."""
        decoding_on_cpu = (
            PACK_WEIGHTS and not torch.is_grad_enabled() and features.device.type == "cpu"
            and features.dtype == self.L_o.weight.dtype == torch.float32
        )
        return _pack(self._weights()) if decoding_on_cpu and _onednn_works() else None

    def _advance(self, h, c, emb_gates, features, projected, weights: Weights):
        """h_{t-1}, c_{t-1} -> h_t, c_t, the gated context β_t ẑ_t, α_t (+ hard-attention terms)."""
        query, gate_logit, hh = _linear(h, *weights["h"]).split(
            [self.config["att_dim"], self.gate_dim, self.lstm_hh.out_features], -1
        )
        attended = self.attention.attend(features, projected, query)
        context, alpha = attended[0], attended[1]
        if self.gate_dim:
            context = torch.sigmoid(gate_logit) * context  # β_t ẑ_t
        # eq. 1: T_{D+m+n,n} [E y; h; ẑ], as three maps
        gates = emb_gates + hh + _linear(context, *weights["lstm_ctx"])
        h, c = lstm_update(gates, c)  # eq. 2-3
        extra = attended[2:] if len(attended) == 4 else (None, None)
        return h, c, context, alpha, *extra

    def _output(self, emb: Tensor, h: Tensor, context: Tensor, weights: Weights) -> Tensor:
        """Logits of the next word: L_o(E y_{t-1} + L_h h_t + L_z ẑ_t) (eq. 7), or L_o(h_t)."""
        if "L_h" in weights:
            h = torch.tanh(emb + _linear(h, *weights["L_h"]) + _linear(context, *weights["L_z"]))
        return _linear(self.dropout(h), *weights["L_o"])

    def _initial(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h_0 = tanh(f_init,h(mean a)), c_0 likewise, and W_a a + b for every position."""
        mean = features.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        return h, c, self.attention.project(features)

    # -- public API -------------------------------------------------------------------------
    def init_state(self, features: Tensor) -> DecoderState:
        """h_0, c_0 from the mean annotation vector; the annotations' projection, once.

        Without autograd, on the CPU, the state also carries the step's packed weights.
        """
        h, c, projected = self._initial(features)
        return DecoderState(h, c, features, projected, self._packed_weights(features))

    def step(self, state: DecoderState, prev_tokens: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """One word: log p(y_t | y_<t, a) (..., V), α_t (..., P) and the next state."""
        packed = state.weights is not None and not torch.is_grad_enabled()
        weights = state.weights if packed else self._weights()
        emb = self.embedding(prev_tokens)
        h, c, context, alpha, *_ = self._advance(
            state.h, state.c, _linear(emb, *weights["lstm_emb"]), state.features,
            state.projected, weights,
        )
        logits = self._output(emb, h, context, weights)
        log_probs = logits.log_softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return log_probs, alpha, state._replace(h=h, c=c)

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
        emb = self.embedding(captions.index_select(0, order_dev)[:, :n_steps])  # (B, T-1, m)
        weights = self._weights()
        emb_gates = _linear(emb, *weights["lstm_emb"])  # embedding half of all LSTM inputs, at once
        h, c, projected = self._initial(features)
        outs = []
        for t, n in enumerate(live):
            h, c, *rest = self._advance(
                h[:n], c[:n], emb_gates[:n, t], features[:n], projected[:n], weights
            )
            outs.append((h, *rest))
        hs, contexts, alphas, log_ps, ents = zip(*outs, strict=True)
        rows = torch.cat([torch.arange(n) for n in live]).to(features.device)
        cols = torch.cat([torch.full((n,), t) for t, n in enumerate(live)]).to(features.device)
        logits = self._output(emb[rows, cols], torch.cat(hs), torch.cat(contexts), weights)
        where = (order_dev[rows], cols)

        def unpack(packed: Tensor) -> Tensor:
            """(Σ live, ...) -> (B, T-1, ...) in the caller's order, zero where not live."""
            out = packed.new_zeros(batch, n_steps, *packed.shape[1:])
            return out.index_put(where, packed)

        hard = log_ps[0] is not None
        return DecoderOutput(
            unpack(logits),
            unpack(torch.cat(alphas)),
            unpack(torch.cat(log_ps)) if hard else None,
            unpack(torch.cat(ents)) if ents[0] is not None else None,
        )

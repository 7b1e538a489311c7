"""Decoding on the CPU, faster: the equations of ``AttentionDecoder.advance``, other kernels.

Used only when decoding on the CPU: float32, no autograd, the decoder in eval mode, where
both its dropouts (h_t before L_h, the deep output after its tanh) are the identity, so this
step has none, and hard attention takes the expected context. ``AttentionDecoder.init_state``
asks :func:`prepare` for the step's weights, and ``AttentionDecoder.step`` hands over to
:func:`step` when :func:`applies`; everywhere else (CUDA, training, float16/64) the plain
step runs. Three things make this one faster, none of which changes what it computes
(``tests/test_fastcpu.py`` checks the step outputs and the captions are the same):

1. **Packed weights.** A decoding step multiplies few rows (k beams of a few images) by
   large matrices, and for few rows torch's default float32 kernel (MKL) is slow on some
   CPUs: on the AMD EPYC we measure on, the 10 000-word output layer took 2.8 ms for 5
   rows and 0.3 ms through oneDNN with its weight re-laid out once per search
   (``torch.ops.mkldnn``; a build without oneDNN gets ``F.linear`` on the same weights).
2. **One product for h_{t-1}.** W_h h, f_β(h) and the LSTM's recurrent part read the same
   h_{t-1}: they are one matrix, split after the product.
3. **Attention scores in cache-sized blocks, tanh as a sigmoid.** The (B, k, P, A) tanh
   input of a batch of beams is tens of MB; here it goes through one reused buffer of about
   2 MB, and w·tanh(z) = 2 w·σ(2z) − Σw, since torch's CPU sigmoid is about five times
   faster than its tanh (5.6 ms a beam-search step instead of 28 at the seed's sizes).

Set ``sat_helpers.fastcpu.ENABLED = False`` to decode with the plain step on the CPU too
(``benchmarks/bench_search.py`` times both).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import expected_context

ENABLED = True  # decode on the CPU with this module's kernels (module docstring)
_BLOCK_ELEMENTS = 1 << 19  # floats per block of attention scores (2 MB)
Weights = dict[str, tuple[Tensor, Tensor | None]]  # (weight, bias) of each linear map of a step


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x W^T + b: oneDNN's kernel for a packed weight, else ``F.linear``."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _pack(weights: Weights) -> Weights:
    """The same maps with each weight re-laid out for oneDNN (an opaque CPU tensor)."""
    return {name: (torch.ops.mkldnn._reorder_linear_weight(w.contiguous()), b)
            for name, (w, b) in weights.items()}


@functools.cache
def onednn_works() -> bool:
    """Whether this torch build can pack a weight and run oneDNN's linear (checked once)."""
    try:
        packed = _pack({"probe": (torch.ones(2, 3), None)})["probe"]
        return bool(torch.equal(linear(torch.ones(1, 3), *packed), torch.full((1, 2), 3.0)))
    except Exception:  # whatever the failure, the weights stay in torch's layout
        return False


def step_weights(decoder) -> Weights:
    """(weight, bias) of every linear map of a step, the three maps of h_{t-1} as one ("h")."""
    att, hh = decoder.attention.W_h.weight, decoder.lstm_hh.weight
    h_weight, h_bias = torch.cat([att, hh]), None
    if decoder.gate_dim:
        h_weight = torch.cat([att, decoder.f_beta.weight, hh])
        h_bias = torch.cat([att.new_zeros(att.shape[0]), decoder.f_beta.bias,
                            hh.new_zeros(hh.shape[0])])
    weights = {"h": (h_weight, h_bias),
               "lstm_emb": (decoder.lstm_emb.weight, decoder.lstm_emb.bias),
               "lstm_ctx": (decoder.lstm_ctx.weight, None),
               "L_o": (decoder.L_o.weight, decoder.L_o.bias)}
    if decoder.config["deep_output"]:
        weights |= {"L_h": (decoder.L_h.weight, decoder.L_h.bias),
                    "L_z": (decoder.L_z.weight, None)}
    return {name: (w.detach(), None if b is None else b.detach())
            for name, (w, b) in weights.items()}


def prepare(decoder, features: Tensor) -> Weights | None:
    """The step's weights (packed when oneDNN works) when decoding float32 on the CPU, else None."""
    decoding_on_cpu = (
        ENABLED and not torch.is_grad_enabled() and features.device.type == "cpu"
        and features.dtype == decoder.L_o.weight.dtype == torch.float32
    )
    if not decoding_on_cpu:
        return None
    weights = step_weights(decoder)
    return _pack(weights) if onednn_works() else weights


def applies(decoder, state) -> bool:
    """Whether ``state`` can take this module's step: prepared weights, eval mode, no autograd."""
    return state.weights is not None and not decoder.training and not torch.is_grad_enabled()


def attention_scores(projected: Tensor, query: Tensor, w: Tensor) -> Tensor:
    """e = w^T tanh(projected + query) (eq. 4) for queries (B, k, A): (B, k, P), in blocks."""
    batch, per_image = projected.shape[0], query.shape[1] * projected[0].numel()
    size = max(1, min(batch, _BLOCK_ELEMENTS // per_image))
    buffer = projected.new_empty(size, query.shape[1], *projected.shape[1:])
    blocks = []
    for i in range(0, batch, size):
        x = buffer[: min(size, batch - i)]
        torch.add(projected[i:i + size].unsqueeze(1), query[i:i + size].unsqueeze(2), out=x)
        blocks.append(x.mul_(2).sigmoid_() @ w)  # tanh(z) = 2σ(2z) − 1
    return 2 * torch.cat(blocks) - w.sum()


def step(decoder, state, prev_tokens: Tensor) -> tuple[Tensor, Tensor, object]:
    """``AttentionDecoder.step`` through the prepared weights: (log p, α, next state)."""
    weights, h = state.weights, state.h
    beams = h.dim() == 3
    if not beams:  # one row per image: (B, 1, ·) for the attention, as k = 1 beams
        h, c, prev_tokens = h.unsqueeze(1), state.c.unsqueeze(1), prev_tokens.unsqueeze(1)
    else:
        c = state.c
    Ey = decoder.embedding(prev_tokens)  # E y_{t-1}
    query, gate_logit, hh = linear(h, *weights["h"]).split(
        [decoder.config["att_dim"], decoder.gate_dim, decoder.lstm_hh.out_features], -1)
    w = decoder.attention.w.weight.squeeze(0)
    alpha = attention_scores(state.projected, query, w).softmax(-1)  # eq. 4, 5
    z = expected_context(state.features, alpha)  # eq. 6 (eval mode: the expectation)
    if decoder.gate_dim:
        z = torch.sigmoid(gate_logit) * z  # β_t ẑ_t
    gates = linear(Ey, *weights["lstm_emb"]) + hh + linear(z, *weights["lstm_ctx"])  # eq. 1
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # eq. 2
    h = torch.sigmoid(o) * torch.tanh(c)  # eq. 3
    out = h
    if "L_h" in weights:
        out = torch.tanh(Ey + linear(h, *weights["L_h"]) + linear(z, *weights["L_z"]))  # eq. 7
    log_probs = linear(out, *weights["L_o"]).log_softmax(-1)
    if not beams:
        log_probs, alpha, h, c = log_probs.squeeze(1), alpha.squeeze(1), h.squeeze(1), c.squeeze(1)
    return log_probs, alpha, state._replace(h=h, c=c)

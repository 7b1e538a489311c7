"""Decoding on the CPU, faster: the equations of ``AttentionDecoder.advance``, other kernels.

Used only when decoding on the CPU: float32, no autograd, the decoder in eval mode (where
both its dropouts, h_t before L_h and the deep output after its tanh, are the identity, so
this step has none, and hard attention takes the expected context), and only for the
package's own decoder: ``AttentionDecoder.step`` hands over to :func:`step` when
:func:`applies`, which also asks that the decoder is an ``AttentionDecoder`` (not a
subclass), its attention a ``SoftAttention`` or ``HardAttention``, every other layer a plain
``nn.Linear``/``Embedding``/``Dropout`` without hooks, and no method of theirs replaced on the
class or the instance. A learner's change (a subclass, a patched method, another layer) so
reaches every search: the plain step runs it. Everywhere else (CUDA, training, float16/64)
the plain step runs too. The step's weights are laid out once per decoder and kept until a
parameter changes. Three things make this one faster, none of which changes what it computes
(``tests/test_fastcpu.py`` checks the step outputs and the captions are the same):

1. **Packed weights.** A decoding step multiplies few rows (k beams of a few images) by
   large matrices, and for few rows torch's default float32 kernel (MKL) is slow on some
   CPUs: on the AMD EPYC we measure on, the 10 000-word output layer took 2.8 ms for 5
   rows and 0.3 ms through oneDNN with its weight re-laid out once
   (``torch.ops.mkldnn``, private ops: used only when :func:`onednn_works` finds them
   working, else ``F.linear`` on the same weights).
2. **One product for h_{t-1}.** W_h h, f_β(h) and the LSTM's recurrent part read the same
   h_{t-1}: they are one matrix, split after the product.
3. **Attention scores in cache-sized blocks, tanh as a sigmoid**
   (``attention.blocked_scores``): the (B, k, P, A) tanh input of a batch of beams is tens
   of MB; it goes through one reused buffer of about 2 MB, and w·tanh(z) = 2 w·σ(2z) − Σw,
   since torch's CPU sigmoid is about four times faster than its tanh (5.6 ms a beam-search
   step instead of 28 at the seed's sizes).

Set ``sat_helpers.fastcpu.ENABLED = False`` to decode with the plain step on the CPU too
(``benchmarks/bench_search.py`` times both).
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention
from . import decoder as decoder_module

PLAIN_LAYERS = (nn.Linear, nn.Embedding, nn.Dropout)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> (key, weights)

ENABLED = True  # decode on the CPU with this module's kernels (module docstring)
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


def _own(module: nn.Module, originals: dict) -> bool:
    """Whether ``module`` runs the methods its class shipped with: none patched or replaced."""
    cls = type(module)
    return all(getattr(cls, name) is fn and name not in vars(module)
               for name, fn in originals.items())


def is_package_decoder(decoder: nn.Module) -> bool:
    """Whether this step computes exactly what ``decoder``'s own step would (module docstring)."""
    att = decoder.attention
    if type(decoder) is not decoder_module.AttentionDecoder or type(att) not in attention.PLAIN:
        return False
    if not (_own(decoder, decoder_module.PLAIN) and _own(att, attention.PLAIN[type(att)])):
        return False
    layers = [m for m in decoder.modules() if m is not decoder and m is not att]
    return all(type(m) in PLAIN_LAYERS and not (m._forward_hooks or m._forward_pre_hooks)
               for m in layers) and not (decoder._forward_hooks or att._forward_hooks)


def applies(decoder: nn.Module, state) -> bool:
    """Whether this module's step may run: the package's decoder decoding float32 on the CPU."""
    return (ENABLED and not decoder.training and not torch.is_grad_enabled()
            and state.features.device.type == "cpu"
            and state.features.dtype == decoder.L_o.weight.dtype == torch.float32
            and is_package_decoder(decoder))


def prepared_weights(decoder: nn.Module) -> Weights:
    """The step's weights (packed when oneDNN works), kept until a parameter of it changes."""
    key = tuple((p.data_ptr(), p._version) for p in decoder.parameters())
    cached = _CACHE.get(decoder)
    if cached is None or cached[0] != key:
        weights = step_weights(decoder)
        cached = (key, _pack(weights) if onednn_works() else weights)
        _CACHE[decoder] = cached
    return cached[1]


def step(decoder, state, prev_tokens: Tensor) -> tuple[Tensor, Tensor, object]:
    """``AttentionDecoder.step`` through the prepared weights: (log p, α, next state)."""
    weights, h = prepared_weights(decoder), state.h
    beams = h.dim() == 3
    if not beams:  # one row per image: (B, 1, ·) for the attention, as k = 1 beams
        h, c, prev_tokens = h.unsqueeze(1), state.c.unsqueeze(1), prev_tokens.unsqueeze(1)
    else:
        c = state.c
    Ey = decoder.embedding(prev_tokens)  # E y_{t-1}
    query, gate_logit, hh = linear(h, *weights["h"]).split(
        [decoder.config["att_dim"], decoder.gate_dim, decoder.lstm_hh.out_features], -1)
    w = decoder.attention.w.weight.squeeze(0)
    alpha = attention.blocked_scores(state.projected, query, w).softmax(-1)  # eq. 4, 5
    z = attention.expected_context(state.features, alpha)  # eq. 6 (eval mode: the expectation)
    if decoder.gate_dim:
        z = torch.sigmoid(gate_logit) * z  # β_t ẑ_t
    gates = linear(Ey, *weights["lstm_emb"]) + hh + linear(z, *weights["lstm_ctx"])  # eq. 1
    h, c = decoder_module.lstm_update(gates, c)  # eq. 2-3
    out = h
    if "L_h" in weights:
        out = torch.tanh(Ey + linear(h, *weights["L_h"]) + linear(z, *weights["L_z"]))  # eq. 7
    log_probs = linear(out, *weights["L_o"]).log_softmax(-1)
    if not beams:
        log_probs, alpha, h, c = log_probs.squeeze(1), alpha.squeeze(1), h.squeeze(1), c.squeeze(1)
    return log_probs, alpha, state._replace(h=h, c=c)

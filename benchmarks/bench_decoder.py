"""One decoder training step at the seed's sizes: the seed's formulation vs AttentionDecoder.

The seed (sgrvinod's tutorial, which most Show-Attend-Tell code descends from) runs, at every
word, the attention projection W_a a_i of all 196 annotation vectors, the weighted sum as a
broadcast product that materialises a (B, P, enc) tensor, an ``nn.LSTMCell`` on the
concatenated [E y; β ẑ], and the output layer (dropout at the same sites as AttentionDecoder),
on the batch sorted by length.
``SeedDecoder`` below is that formulation with the weights of an ``AttentionDecoder``, so
both compute the same function: the benchmark first checks that they give the same loss and
the same gradients, then times one training step (forward, loss, backward, Adam) of each, in
a fresh process per variant so that its peak memory (``ru_maxrss``) is its own; the
step's own peak is measured from a reset of Linux's peak mark just before it.

Sizes (the seed's): batch 32, 14x14 = 196 positions, enc 2048, embed = att = dec 512,
vocab 10 000, captions of 8-22 tokens. Two models: the seed's (vector gate β, output layer
on h) and the paper's (scalar β, deep output layer), the course default.

    python benchmarks/bench_decoder.py [--threads 2] [--steps 5] [--pair MODEL]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from sat_helpers.config import get_profile
from sat_helpers.decoder import AttentionDecoder, DecoderOutput
from sat_helpers.losses import caption_loss

SIZES = dict(batch=32, positions=196, enc=2048, dim=512, vocab=10_000, min_len=8, max_len=22)
SMOKE = dict(batch=4, positions=9, enc=16, dim=8, vocab=50, min_len=3, max_len=7)  # --smoke
MODELS = {"seed model (vector β, fc on h)": dict(gate="vector", deep_output=False),
          "paper model (scalar β, deep output)": dict(gate="scalar", deep_output=True)}
OUT = Path(__file__).resolve().parent / "results"


class SeedDecoder(nn.Module):
    """The seed's per-word formulation, holding a copy of an AttentionDecoder's weights."""

    def __init__(self, dec: AttentionDecoder):
        super().__init__()
        cfg = dec.config
        enc, emb, hid = cfg["enc_dim"], cfg["embed_dim"], cfg["dec_dim"]
        self.encoder_att = _copy(nn.Linear(enc, cfg["att_dim"]), dec.attention.W_a)
        self.decoder_att = _copy(nn.Linear(hid, cfg["att_dim"], bias=False), dec.attention.W_h)
        self.full_att = _copy(nn.Linear(cfg["att_dim"], 1, bias=False), dec.attention.w)
        self.embedding = _copy(nn.Embedding(cfg["vocab_size"], emb), dec.embedding)
        self.init_h = _copy(nn.Linear(enc, hid), dec.init_h)
        self.init_c = _copy(nn.Linear(enc, hid), dec.init_c)
        self.f_beta = _copy(nn.Linear(hid, dec.gate_dim), dec.f_beta)
        self.decode_step = nn.LSTMCell(emb + enc, hid)
        with torch.no_grad():
            self.decode_step.weight_ih.copy_(torch.cat([dec.lstm_emb.weight,
                                                        dec.lstm_ctx.weight], 1))
            self.decode_step.bias_ih.copy_(dec.lstm_emb.bias)
            self.decode_step.weight_hh.copy_(dec.lstm_hh.weight)
            self.decode_step.bias_hh.zero_()
        self.deep = cfg["deep_output"]
        if self.deep:
            self.L_h = _copy(nn.Linear(hid, emb), dec.L_h)
            self.L_z = _copy(nn.Linear(enc, emb, bias=False), dec.L_z)
        self.fc = _copy(nn.Linear(dec.L_o.in_features, cfg["vocab_size"]), dec.L_o)
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, features, captions, lengths):
        """Teacher forcing the seed's way; returns outputs in sorted order and the order."""
        lengths, order = lengths.sort(descending=True)
        features, captions = features[order], captions[order]
        decode_lengths = (lengths - 1).tolist()
        batch, steps = len(lengths), max(decode_lengths)
        embeddings = self.embedding(captions)
        mean = features.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        predictions = features.new_zeros(batch, steps, self.fc.out_features)
        alphas = features.new_zeros(batch, steps, features.shape[1])
        for t in range(steps):
            n = sum(length > t for length in decode_lengths)
            att1 = self.encoder_att(features[:n])  # (n, P, att), again at every word
            att2 = self.decoder_att(h[:n])
            alpha = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2).softmax(1)
            awe = (features[:n] * alpha.unsqueeze(2)).sum(dim=1)  # (n, P, enc) temporary
            if self.f_beta.out_features:
                awe = torch.sigmoid(self.f_beta(h[:n])) * awe
            emb = embeddings[:n, t]
            h, c = self.decode_step(torch.cat([emb, awe], dim=1), (h[:n], c[:n]))
            if self.deep:
                out = torch.tanh(emb + self.L_h(self.dropout(h)) + self.L_z(awe))
                preds = self.fc(self.dropout(out))
            else:
                preds = self.fc(self.dropout(h))
            predictions[:n, t] = preds
            alphas[:n, t] = alpha
        return DecoderOutput(predictions, alphas, None, None), order

    def grads_as(self, dec: AttentionDecoder) -> dict[str, torch.Tensor]:
        """This model's gradients under the AttentionDecoder's parameter names."""
        emb = dec.config["embed_dim"]
        g = {"attention.W_a.weight": self.encoder_att.weight.grad,
             "attention.W_a.bias": self.encoder_att.bias.grad,
             "attention.W_h.weight": self.decoder_att.weight.grad,
             "attention.w.weight": self.full_att.weight.grad,
             "embedding.weight": self.embedding.weight.grad,
             "lstm_emb.weight": self.decode_step.weight_ih.grad[:, :emb],
             "lstm_ctx.weight": self.decode_step.weight_ih.grad[:, emb:],
             "lstm_emb.bias": self.decode_step.bias_ih.grad,
             "lstm_hh.weight": self.decode_step.weight_hh.grad,
             "L_o.weight": self.fc.weight.grad, "L_o.bias": self.fc.bias.grad}
        for name in ("init_h", "init_c", "f_beta") + (("L_h", "L_z") if self.deep else ()):
            for p_name, p in getattr(self, name).named_parameters():
                g[f"{name}.{p_name}"] = p.grad
        return g


def _copy(module: nn.Module, source: nn.Module) -> nn.Module:
    module.load_state_dict(source.state_dict())
    return module


def make_inputs(seed: int = 0):
    """Random annotation vectors and captions of 8-22 tokens at the seed's sizes."""
    s = SIZES
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(s["batch"], s["positions"], s["enc"], generator=g).relu()
    lengths = torch.randint(s["min_len"], s["max_len"] + 1, (s["batch"],), generator=g)
    captions = torch.randint(4, s["vocab"], (s["batch"], s["max_len"]), generator=g)
    captions[:, 0] = 1
    for b, n in enumerate(lengths.tolist()):
        captions[b, n - 1], captions[b, n:] = 2, 0
    return features, captions, lengths


def make_decoder(model: str, dropout: float = 0.5) -> AttentionDecoder:
    torch.manual_seed(0)
    s = SIZES
    return AttentionDecoder(s["vocab"], s["enc"], s["dim"], s["dim"], s["dim"], dropout,
                            **MODELS[model])


def loss_of(variant: nn.Module, features, captions, lengths, profile):
    """The training loss of one batch, for either formulation."""
    if isinstance(variant, SeedDecoder):
        out, order = variant(features, captions, lengths)
        return caption_loss(out, captions[order], lengths[order], profile.lam)[0]
    return caption_loss(variant(features, captions, lengths), captions, lengths, profile.lam)[0]


def check_same(model: str) -> dict:
    """Same loss and gradients from both formulations on the same weights (no dropout)."""
    profile = get_profile("shapes", lam=1.0)
    dec = make_decoder(model, dropout=0.0)
    seed = SeedDecoder(dec)
    inputs = make_inputs()
    loss_ours = loss_of(dec, *inputs, profile)
    loss_ours.backward()
    loss_seed = loss_of(seed, *inputs, profile)
    loss_seed.backward()
    ours, theirs = dict(dec.named_parameters()), seed.grads_as(dec)
    assert set(theirs) == set(ours), set(ours) ^ set(theirs)
    worst = max(float((ours[k].grad - theirs[k]).abs().max() / ours[k].grad.abs().max())
                for k in ours)
    assert torch.allclose(loss_ours, loss_seed, rtol=1e-5), (loss_ours, loss_seed)
    assert worst < 1e-3, f"gradients differ: largest relative difference {worst:.2e}"
    return {"loss": loss_ours.item(), "loss_seed": loss_seed.item(), "max_rel_grad_diff": worst}


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB (Linux), else None."""
    try:
        lines = Path("/proc/self/status").read_text().split("\n")
    except OSError:
        return None
    return next(int(line.split()[1]) for line in lines if line.startswith(field + ":")) / 1024


def current_rss_mib() -> float:
    """Resident memory now, in MiB; on Linux also resets the peak mark (VmHWM) to it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak then counts from the process start
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _proc_status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident memory since ``current_rss_mib`` (Linux), else since the process start."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str, variant: str, steps: int, threads: int) -> dict:
    """Time training steps of one variant in this (fresh) process; peak RSS in MiB."""
    torch.set_num_threads(threads)
    profile = get_profile("shapes", lam=1.0)
    net = SeedDecoder(make_decoder(model)) if variant == "seed" else make_decoder(model)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    inputs = make_inputs()

    def step():
        loss = loss_of(net, *inputs, profile)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    before = current_rss_mib()
    step()  # warm-up (and Adam's state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    return {"seconds": statistics.median(times), "peak_rss_mib": peak,
            "rss_before_mib": before, "module": sys.modules["sat_helpers"].__file__}


def measure_pair(model: str, steps: int, threads: int) -> dict:
    """Steps of the seed's formulation and of ours taken in turn in one process: the ratio of
    their medians holds up better on a shared machine than two runs minutes apart."""
    torch.set_num_threads(threads)
    profile = get_profile("shapes", lam=1.0)
    inputs = make_inputs()
    nets = {"seed": SeedDecoder(make_decoder(model)).train(), "ours": make_decoder(model).train()}
    optimizers = {k: torch.optim.Adam(net.parameters(), lr=1e-4) for k, net in nets.items()}
    times: dict[str, list[float]] = {k: [] for k in nets}
    for i in range(steps + 1):  # the first round warms up (and makes Adam's state)
        for k, net in nets.items():
            start = time.perf_counter()
            loss = loss_of(net, *inputs, profile)
            optimizers[k].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[k].step()
            if i:
                times[k].append(time.perf_counter() - start)
    return {"seed_s": statistics.median(times["seed"]), "ours_s": statistics.median(times["ours"]),
            "module": sys.modules["sat_helpers"].__file__}


def markdown(table: pd.DataFrame) -> str:
    """A pandas table as a Markdown table (without the optional tabulate package)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def run_variant(model: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([model, variant]),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    if args.smoke:
        cmd.append("--smoke")
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: check that the benchmark runs (no results written)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--pair", metavar="MODEL", choices=MODELS,
                        help="time both formulations of MODEL in turn in this process; print "
                             "JSON (what benchmarks/compare.py runs against each tree)")
    args = parser.parse_args()
    if args.smoke:
        SIZES.update(SMOKE)
    if args.one:
        print(json.dumps(measure(*json.loads(args.one), args.steps, args.threads)))
        return
    if args.pair:
        print(json.dumps(measure_pair(args.pair, args.steps, args.threads)))
        return
    torch.set_num_threads(args.threads)
    rows = []
    for model in MODELS:
        check = check_same(model)
        seed, ours = (run_variant(model, v, args) for v in ("seed", "ours"))
        rows.append({
            "model": model,
            "seed s/step": round(seed["seconds"], 3),
            "AttentionDecoder s/step": round(ours["seconds"], 3),
            "speed-up": round(seed["seconds"] / ours["seconds"], 2),
            "seed peak RSS MiB": round(seed["peak_rss_mib"]),
            "ours peak RSS MiB": round(ours["peak_rss_mib"]),
            "seed step MiB": round(seed["peak_rss_mib"] - seed["rss_before_mib"]),
            "ours step MiB": round(ours["peak_rss_mib"] - ours["rss_before_mib"]),
            "same loss": f"{check['loss']:.5f} / {check['loss_seed']:.5f}",
            "max rel. grad diff": f"{check['max_rel_grad_diff']:.1e}",
        })
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    sizes = ", ".join(f"{k} {v}" for k, v in SIZES.items())
    text = (f"# Decoder training step: seed formulation vs AttentionDecoder\n\n"
            f"One step = forward, loss (cross-entropy + doubly stochastic penalty), backward, "
            f"Adam. Sizes: {sizes}. {args.threads} threads, torch {torch.__version__}, median "
            f"of {args.steps} steps after a warm-up. Peak RSS of a fresh process per variant "
            f"(torch, model, Adam state, data and the step); step MiB: the peak's rise over "
            f"the RSS before the first step (activations, gradients, Adam state).\n\n"
            f"Command: `python benchmarks/bench_decoder.py --threads {args.threads} "
            f"--steps {args.steps}`\n\n{markdown(table)}\n")
    print(text)
    if args.smoke:
        return
    OUT.mkdir(exist_ok=True)
    (OUT / "decoder.md").write_text(text)


if __name__ == "__main__":
    main()

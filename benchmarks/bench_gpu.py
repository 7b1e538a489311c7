"""On a CUDA GPU: one training step and beam search (k = 5), the seed's formulation vs ours.

At the seed's sizes (batch 32, 14x14 = 196 positions of 2048 numbers, 512 for embedding,
attention and LSTM, a vocabulary of 10 000), in float32 and under mixed precision (bfloat16
autocast where the GPU has it, else float16 with a GradScaler, as ``sat_helpers.train``
picks), with the peak GPU memory of each. The seed formulations are the ones the CPU
benchmarks define and check: ``bench_decoder.SeedDecoder`` (the seed's per-word training
step) and ``bench_search.seed_beam_search`` (one image at a time, W_a a every step). Before
timing, each pair is checked to compute the same thing in float32 (loss; captions). Writes
benchmarks/results/gpu.md.

    python benchmarks/bench_gpu.py [--steps 5] [--images 32] [--repeats 3]
    python benchmarks/bench_gpu.py --smoke --device cpu   # tiny sizes, float32: a dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import bench_decoder
import bench_search
import pandas as pd
import torch

from sat_helpers.config import get_profile
from sat_helpers.search import beam_search
from sat_helpers.train import autocast_dtype

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.md"
MODEL = "paper model (scalar β, deep output)"  # the course's decoder (bench_decoder.MODELS)
SMOKE_SEARCH = dict(P=9, ENC=16, DIM=8, VOCAB=50, MAX_LEN=8)


def use_smoke_sizes() -> None:
    """Tiny sizes in both CPU benchmarks' modules (what --smoke and the tests use)."""
    bench_decoder.SIZES.update(bench_decoder.SMOKE)
    for name, value in SMOKE_SEARCH.items():
        setattr(bench_search, name, value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, in MiB (NaN off the GPU)."""
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**20


def _mib(value: float) -> str:
    """A peak in whole MiB, or "–" where there is none (off the GPU)."""
    return "–" if value != value else str(round(value))


@torch.no_grad()
def check_step(device: torch.device) -> dict:
    """The seed's and our training loss on the same weights and batch, in float32."""
    profile = get_profile("shapes", lam=1.0)
    ours = bench_decoder.make_decoder(MODEL, dropout=0.0).to(device)
    seed = bench_decoder.SeedDecoder(ours).to(device)
    inputs = [t.to(device) for t in bench_decoder.make_inputs()]
    loss_ours = bench_decoder.loss_of(ours, *inputs, profile)
    loss_seed = bench_decoder.loss_of(seed, *inputs, profile)
    return {"ours": float(loss_ours), "seed": float(loss_seed)}


def time_step(variant: str, dtype: torch.dtype | None, device: torch.device,
              steps: int) -> dict:
    """Median seconds of a training step (forward, loss, backward, Adam) and its peak MiB."""
    profile = get_profile("shapes", lam=1.0)
    ours = bench_decoder.make_decoder(MODEL)
    net = (bench_decoder.SeedDecoder(ours) if variant == "seed" else ours).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    inputs = [t.to(device) for t in bench_decoder.make_inputs()]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = bench_decoder.loss_of(net, *inputs, profile)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up: kernels chosen, Adam's state made
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mib": _peak_mib(device)}


def search_both(dtype: torch.dtype | None, device: torch.device, images: int,
                repeats: int) -> dict:
    """Beam search k = 5 of ``images`` images, ours (batched) and the seed's loop: time, MiB."""
    decoder, vocab = bench_search.make_model(end_bias=4.0, sharpness=8.0)
    decoder = decoder.to(device)
    feats = bench_search.annotations(images).to(device)
    k, max_len = bench_search.BEAM, bench_search.MAX_LEN
    runs = {
        "ours": lambda: [c.tokens for c in beam_search(decoder, feats, k, max_len, vocab=vocab)],
        "seed": lambda: [bench_search.seed_beam_search(decoder, f, k, max_len, vocab)
                         for f in feats],
    }
    out = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        runs["ours"]()  # warm-up
        for name, run in runs.items():
            _sync(device)
            _reset_peak(device)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                tokens = run()
                _sync(device)
                best = min(best, time.perf_counter() - start)
            out[name] = {"seconds": best, "peak_mib": _peak_mib(device), "tokens": tokens}
    out["same"] = sum(a == b for a, b in zip(out["ours"]["tokens"], out["seed"]["tokens"],
                                             strict=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--images", type=int, default=32, help="images beam-searched")
    parser.add_argument("--repeats", type=int, default=3, help="timed searches; the fastest")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: run the checks and the timings, write nothing")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # `make bench` on a CPU machine
        print("bench_gpu.py: skipped, no CUDA GPU here (torch.cuda.is_available() is False); "
              "`--smoke --device cpu` checks that it runs.", file=sys.stderr)
        return
    if args.smoke:
        use_smoke_sizes()
    precisions = {"fp32": None}
    mixed = autocast_dtype(get_profile("shapes"), device)  # what training on this GPU uses
    if mixed is not None:
        precisions[{torch.bfloat16: "bf16", torch.float16: "fp16"}[mixed]] = mixed
    check = check_step(device)
    if abs(check["ours"] - check["seed"]) > 1e-4 * abs(check["seed"]):
        raise SystemExit(f"seed and ours disagree on the loss: {check}")
    rows = []
    for label, dtype in precisions.items():
        seed, ours = (time_step(v, dtype, device, args.steps) for v in ("seed", "ours"))
        rows.append({"what": "training step", "precision": label,
                     "seed s": seed["seconds"], "ours s": ours["seconds"],
                     "speed-up": f"{seed['seconds'] / ours['seconds']:.1f}x",
                     "seed peak MiB": _mib(seed["peak_mib"]),
                     "ours peak MiB": _mib(ours["peak_mib"]), "same result": "loss checked"})
        search = search_both(dtype, device, args.images, args.repeats)
        if dtype is None and search["same"] != args.images:
            raise SystemExit(f"float32 beam search: seed and ours agree on only {search['same']} "
                             f"of {args.images} images: a bug in one of them")
        rows.append({"what": f"beam search k={bench_search.BEAM}, {args.images} images",
                     "precision": label, "seed s": search["seed"]["seconds"],
                     "ours s": search["ours"]["seconds"],
                     "speed-up": f"{search['seed']['seconds'] / search['ours']['seconds']:.1f}x",
                     "seed peak MiB": _mib(search["seed"]["peak_mib"]),
                     "ours peak MiB": _mib(search["ours"]["peak_mib"]),
                     "same result": f"{search['same']}/{args.images} captions"})
        print(rows[-2], rows[-1], sep="\n", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sizes = ", ".join(f"{k} {v}" for k, v in bench_decoder.SIZES.items())
    text = (f"# Training step and beam search on {name}\n\n"
            f"`python benchmarks/bench_gpu.py --steps {args.steps} --images {args.images} "
            f"--repeats {args.repeats}`, torch {torch.__version__}. Training: the "
            f"{MODEL}, {sizes}; median of {args.steps} steps after a warm-up (forward, loss, "
            f"backward, Adam). Search: beam {bench_search.BEAM}, max_len "
            f"{bench_search.MAX_LEN}, random weights, fastest of {args.repeats}. Peak MiB: "
            f"torch.cuda.max_memory_allocated over the timed runs (weights included). In "
            f"float32 the seed formulation and ours give the same loss (rel. 1e-4) and the "
            f"same captions; under mixed precision the column counts equal captions.\n\n"
            f"{bench_search.markdown(pd.DataFrame(rows), digits=3)}\n")
    print(text)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()

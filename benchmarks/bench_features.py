"""How fast the feature cache fills: images/s of ``cache_features`` per encoder and setting.

Each setting runs in a fresh process (so peak memory is its own) on a synthetic prepared
split of 224-px images: EfficientNet-Lite0 at stride 16 and 32, channels_last on and off,
several batch sizes, then BatchNorm not folded and the autograd context (inference_mode /
no_grad / grad) of the default setting. The Shapes course caches ``shapes_images`` (6000)
images, so the last column estimates that job.

    python benchmarks/bench_features.py [--images 256] [--threads 2] [--batch-sizes 8,16,32,64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sat_helpers.config import get_profile
from sat_helpers.encoder import Encoder, cache_features

CONTEXTS = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
            "grad": contextlib.nullcontext}


def fake_split(root: Path, n: int, size: int) -> Path:
    """A prepared-dataset folder with one split of random images (all cache_features reads)."""
    rng = np.random.default_rng(0)
    np.save(root / "train_images.npy", rng.integers(0, 256, (n, size, size, 3), np.uint8))
    (root / "manifest.json").write_text(json.dumps({"benchmark": n}))
    return root


def measure(args: argparse.Namespace) -> dict:
    """One setting, in this process: warm up on one batch, then time the whole split."""
    torch.set_num_threads(args.threads)
    encoder = Encoder(args.encoder, grid=14, image_size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_split(Path(tmp), args.images, args.size)
        warm = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        with torch.inference_mode():  # the timed run's kernels, prepared once
            encoder.eval().to(memory_format=memory_format)
            encoder(encoder.preprocess(warm).contiguous(memory_format=memory_format))
        tracemalloc.start()
        start = time.perf_counter()
        if args.context == "inference_mode":
            cache_features(encoder, root, "train", root / "features", args.batch_size, "cpu",
                           channels_last=args.channels_last, fold=not args.no_fold)
        else:  # cache_features' loop under another autograd context (no file written)
            images = np.load(root / "train_images.npy", mmap_mode="r")
            with CONTEXTS[args.context]():
                for i in range(0, args.images, args.batch_size):
                    batch = torch.from_numpy(np.array(images[i:i + args.batch_size]))
                    x = encoder.preprocess(batch.permute(0, 3, 1, 2))
                    encoder(x.contiguous(memory_format=memory_format)).half().numpy()
        wall = time.perf_counter() - start
        traced_peak = tracemalloc.get_traced_memory()[1]
    return {"wall_s": wall, "images_per_s": args.images / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "py_heap_peak_mb": traced_peak / 2**20}


def run_one(args: argparse.Namespace, **setting) -> dict:
    """Measure one setting in a child process and return its row."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**vars(args), **setting}.items()
             if k not in ("worker", "batch_sizes", "channels_last", "no_fold")]
    flags += ["--channels-last"] if setting.get("channels_last", True) else []
    flags += ["--no-fold"] if setting.get("no_fold", False) else []
    result = subprocess.run([sys.executable, __file__, "--worker", *flags], check=True,
                            capture_output=True, text=True)
    return {**setting, **json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default="efficientnet_lite0_s16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-fold", action="store_true", help="keep BatchNorm unfolded")
    parser.add_argument("--context", default="inference_mode", choices=CONTEXTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return
    rows = [run_one(args, encoder=name, channels_last=cl, batch_size=bs, context="inference_mode")
            for name in ("efficientnet_lite0_s16", "efficientnet_lite0_s32")
            for cl in (True, False)
            for bs in (int(b) for b in args.batch_sizes.split(","))]
    rows += [run_one(args, encoder="efficientnet_lite0_s16", channels_last=True,
                     batch_size=args.batch_size, context="inference_mode", no_fold=True)]
    rows += [run_one(args, encoder="efficientnet_lite0_s16", channels_last=True,
                     batch_size=args.batch_size, context=c) for c in ("no_grad", "grad")]
    table = pd.DataFrame(rows)
    shapes_images = get_profile("shapes").shapes_images
    table[f"est_{shapes_images}_img_s"] = shapes_images / table.images_per_s
    print(f"cache_features, {args.images} images of {args.size} px, torch "
          f"{torch.__version__}, {args.threads} threads")
    print(table.round(1).to_string(index=False))


if __name__ == "__main__":
    main()

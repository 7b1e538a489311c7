"""Which encoder gives the real-data profiles a true 14 x 14 grid most cheaply.

Candidates at 224 px, random weights (speed and memory do not depend on the values): the
dilated ResNet-101 (stride 16, 14 x 14 x 2048), the paper's VGG-19 conv5_4 (14 x 14 x 512),
and, for scale, the original ResNet-101 (stride 32: 7 x 7, which the seed pooled up to 14 x 14).
Each runs in a fresh process (so its peak memory is its own): multiply-adds per image
(torch's FlopCounterMode: the same on any machine), images/s of a batched forward under
``torch.inference_mode``, peak RSS, and the bytes one image takes in the float16 feature cache.

    python benchmarks/bench_encoders.py [--images 16] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from sat_helpers.encoder import Encoder

CANDIDATES = ("resnet101", "vgg19", "resnet101_s32")


def measure(name: str, images: int, batch_size: int, threads: int, size: int) -> dict:
    """One encoder, in this process: GMACs per image, then the timed batches."""
    torch.set_num_threads(threads)
    encoder = Encoder(name, pretrained=False, grid=14, image_size=size).eval()
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        x = encoder.preprocess(batch).contiguous(memory_format=torch.channels_last)
        encoder.to(memory_format=torch.channels_last)
        with FlopCounterMode(display=False) as counter:
            fmap = encoder.feature_map(x[:1])
        encoder(x)  # warm-up
        start = time.perf_counter()
        for _ in range(images // batch_size):
            encoder(x)
        wall = time.perf_counter() - start
    return {"encoder": name, "map": "x".join(map(str, fmap.shape[1:])),
            "GMACs_per_image": counter.get_total_flops() / 2e9,
            "images_per_s": images // batch_size * batch_size / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cache_kb_per_image": 14 * 14 * encoder.channels * 2 / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.images, args.batch_size, args.threads,
                                 args.size)))
        return
    rows = []
    for name in CANDIDATES:
        out = subprocess.run([sys.executable, __file__, f"--worker={name}",
                              f"--images={args.images}", f"--batch-size={args.batch_size}",
                              f"--threads={args.threads}", f"--size={args.size}"],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"encoders at {args.size} px, batch {args.batch_size}, {args.images} images, torch "
          f"{torch.__version__}, {args.threads} threads, random weights")
    print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == "__main__":
    main()

"""The encoder's share of a training epoch without a feature cache (the ``coco`` path).

On a COCO 2014 look-alike in its real layout (tests/lookalike.py: served on 127.0.0.1,
downloaded, prepared), the ``coco`` profile at toy sizes (64 px, a 4 x 4 grid, random
ResNet-101 weights, the decoder of ``photos_quick``) trains epochs with every caption of each
image; the encoder's time (``CaptionModel.annotations``: preprocessing, the CNN, the float16
rounding) and the images it encodes are counted per epoch. Each code version runs in a fresh
process; with ``--against REV`` that commit's ``sat_helpers`` (``git archive``) runs too,
alternating with the working tree's, so both share the machine's load.

    python benchmarks/bench_uncached_epoch.py [--images 40] [--epochs 2] [--repeats 2]
                                              [--threads 1] [--against REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lookalike import fake_torchvision_weights, make_coco2014, point_downloads_at, serve  # noqa: E402


def toy_coco():
    """The coco profile at photos_quick's toy sizes (as tests/test_photos.py trains it)."""
    from sat_helpers.config import get_profile

    toy, flickr8k = get_profile("photos_quick").to_dict(), get_profile("flickr8k").to_dict()
    sizes = {k: v for k, v in toy.items() if v != flickr8k[k] and k != "name"}
    return replace(get_profile("coco"), **sizes, name="photos_quick_coco")


def measure(epochs: int, threads: int) -> dict:
    """In this process: train ``epochs`` epochs, timing the encoder and counting its images."""
    import torch

    from sat_helpers.train import Trainer

    torch.set_num_threads(threads)
    trainer = Trainer(toy_coco(), out_dir=Path(os.environ["SAT_DATA"]) / "bench-run",
                      device="cpu", one_per_image=False)
    model, clock = trainer.caption_model, {"seconds": 0.0, "images": 0}
    encode = model.annotations

    def timed(x):
        start = time.perf_counter()
        out = encode(x)
        clock["seconds"] += time.perf_counter() - start
        clock["images"] += len(x)
        return out

    model.annotations = timed
    start = time.perf_counter()
    for epoch in range(epochs):
        trainer.epoch = epoch
        trainer.train_epoch()
    return {"train_images": len(trainer.train_set.meta),
            "encoded_per_epoch": clock["images"] / epochs,
            "encoder_s_per_epoch": clock["seconds"] / epochs,
            "epoch_s": (time.perf_counter() - start) / epochs}


def prepare(data: Path, n_images: int) -> None:
    """Serve a COCO look-alike of ``n_images`` training photos and prepare it under ``data``."""
    from sat_helpers.data import ensure_dataset

    mirror = data / "mirror"
    look = make_coco2014(mirror, n_train=n_images // 2, n_val=n_images - n_images // 2 + 6)
    with serve(mirror) as base, pytest.MonkeyPatch.context() as mp:
        point_downloads_at(mp, base, look)
        ensure_dataset(toy_coco())


def export(rev: str, into: Path) -> Path:
    """``rev``'s sat_helpers package, unpacked under ``into`` (a PYTHONPATH for it)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sat_helpers"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    archive_path = into / "sat_helpers.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into, filter="data")
    return into


def run_one(code: Path, args: argparse.Namespace, env: dict) -> dict:
    """One measurement in a fresh process that imports sat_helpers from ``code``."""
    result = subprocess.run(
        [sys.executable, __file__, "--worker", f"--epochs={args.epochs}",
         f"--threads={args.threads}"], check=True, capture_output=True, text=True,
        env={**env, "PYTHONPATH": str(code)}, cwd=code)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="train + restval photos")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also run this commit's sat_helpers, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.epochs, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "SAT_DATA": str(tmp / "data"), "TORCH_HOME": str(tmp / "torch")}
        os.environ.update(SAT_DATA=env["SAT_DATA"], TORCH_HOME=env["TORCH_HOME"])
        fake_torchvision_weights(tmp / "torch", toy_coco().encoder)
        prepare(tmp / "data", args.images)
        codes = {"working tree": ROOT}
        if args.against:
            codes[args.against] = export(args.against, tmp / "against")
        rows = [{"code": name, **run_one(code, args, env)}
                for _ in range(args.repeats) for name, code in codes.items()]
    table = pd.DataFrame(rows).groupby("code", sort=False).median()
    print(f"one epoch of {toy_coco().name} (every caption), {args.epochs} epochs x "
          f"{args.repeats} runs each, median, {args.threads} thread(s)")
    print(table.round(2).to_string())
    if args.against:
        ratio = table.loc[args.against] / table.loc["working tree"]
        print(f"\n{args.against} / working tree: encoder time {ratio.encoder_s_per_epoch:.2f}x, "
              f"epoch time {ratio.epoch_s:.2f}x")


if __name__ == "__main__":
    main()

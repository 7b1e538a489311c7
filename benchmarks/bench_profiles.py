"""What each real-data profile needs on a Colab runtime: disk, RAM and GPU time.

Measured here, on the CPU, at the profile's sizes: the bytes one image takes as a prepared
uint8 array and in the float16 feature cache (exact), the multiply-adds of the encoder per
image and of one decoder training step per caption (torch's FlopCounterMode: the same on any
machine), and the peak RSS of a process that encodes a batch and takes a decoder training
step (random weights). Extrapolated: disk from each dataset's image counts and published
archive sizes; GPU time from the FLOPs at ``--gpu-tflops`` (default 10: an assumed sustained
fp16 rate of a Colab T4, a sixth of its peak; no GPU was available to measure it). The
encoder's share is FLOP-bound and so fairly estimated; the decoder's is a lower bound (its
small per-word kernels are latency-bound on a GPU), as is anything waiting on the disk.

    python benchmarks/bench_profiles.py [--gpu-tflops 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from sat_helpers.config import get_profile
from sat_helpers.encoder import Encoder, get_spec
from sat_helpers.train import build_decoder, caption_loss

# Karpathy splits (train incl. restval / val / test) and the images' archives as published
DATASETS = {
    "flickr8k": dict(splits=(6000, 1000, 1000), jpeg_gb=1.12, vocab=2600),
    "flickr30k": dict(splits=(29000, 1014, 1000), jpeg_gb=4.4, vocab=7000),
    "coco": dict(splits=(113287, 5000, 5000), jpeg_gb=20.2, vocab=10000),
}
CAPTION_TOKENS = 14  # a mean caption of about 12 words, with <start> and <end>
GB = 1e9


def flops_per_image(profile, batch: int = 32) -> tuple[float, float, float]:
    """(encoder FLOPs per image, decoder training FLOPs per caption, peak RSS GB)."""
    encoder = Encoder(profile.encoder, pretrained=False, grid=profile.grid,
                      image_size=profile.image_size).eval()
    images = torch.randint(0, 256, (batch, 3, profile.image_size, profile.image_size),
                           dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = encoder(encoder.preprocess(images))
    encoder_flops = counter.get_total_flops() / batch
    decoder = build_decoder(profile, DATASETS["coco"]["vocab"], encoder.channels)
    captions = torch.randint(4, 1000, (batch, CAPTION_TOKENS))
    lengths = torch.full((batch,), CAPTION_TOKENS)
    with FlopCounterMode(display=False) as counter:
        loss, _ = caption_loss(decoder(features, captions, lengths), captions, lengths, profile.lam)
        loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    return encoder_flops, counter.get_total_flops() / batch, peak


def needs(name: str, gpu_flops: float, encoder_flops: float, decoder_flops: float) -> dict:
    """Disk (GB) and GPU time (h) of one profile, from the per-image numbers."""
    profile, info = get_profile(name), DATASETS[name]
    n_train, n_val, n_test = info["splits"]
    n = n_train + n_val + n_test
    feature_bytes = profile.grid ** 2 * get_spec(profile.encoder).channels * 2
    cached = n if profile.feature_cache else n_val + n_test
    prepared_gb = n * profile.image_size ** 2 * 3 / GB
    features_gb = cached * feature_bytes / GB
    captions = n_train * profile.captions_per_image  # every caption is a sample of an epoch
    # without a train cache, each training image goes through the encoder once an epoch
    encoded = 0 if profile.feature_cache else n_train
    epoch_h = (captions * decoder_flops + encoded * encoder_flops) / gpu_flops / 3600
    return {"profile": name, "images": n, "feature_cache": profile.feature_cache,
            "JPEGs GB": info["jpeg_gb"], "prepared GB": round(prepared_gb, 1),
            "features GB": round(features_gb, 1),
            "besides JPEGs GB": round(prepared_gb + features_gb, 1),
            "full cache GB": round(n * feature_bytes / GB, 1),
            "GPU min: cache": round(cached * encoder_flops / gpu_flops / 60, 1),
            "GPU min: epoch": round(epoch_h * 60, 1),
            f"GPU h: {profile.epochs} epochs": round(profile.epochs * epoch_h, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-tflops", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder_flops, decoder_flops, peak = flops_per_image(get_profile("coco"))
    print(f"per image: encoder {encoder_flops / 1e9:.1f} GFLOP; decoder training "
          f"{decoder_flops / 1e9:.1f} GFLOP per caption; peak RSS of encoding 32 images and "
          f"one decoder step {peak:.2f} GB; extrapolated at {args.gpu_tflops:g} TFLOP/s")
    rows = [needs(name, args.gpu_tflops * 1e12, encoder_flops, decoder_flops)
            for name in DATASETS]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

"""Soft attention over seeds: the doubly stochastic penalty at eq. 14's λ against λ = 0.

Trains the profile's soft model for every seed and every λ given in the paper's units (eq. 14:
λ Σ_i (1 − Σ_t α_ti)² per caption, against its summed negative log-likelihood), converted to
the package's (attention.paper_lam_to_package: λ_paper · positions / words per caption, the
words counted on the prepared training captions, <end> included), everything else equal, each
run in its own folder under data_root()/experiments/ (a finished folder is scored, not
retrained), and scores it on the test split as notebook 07 does: greedy BLEU-4, noun-phrase
pointing and the mean entropy of α. Writes benchmarks/results/soft_seeds-<profile>-e<epochs>.md:
every run, then per λ the mean, the standard deviation and the worst over the seeds.

    python benchmarks/soft_seeds.py [--profile shapes] [--epochs 24] [--seeds 0 1 2 3]
        [--paper-lams 0 1]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from baseline_start import score
from hard_seeds import write_results

from sat_helpers import train as tr
from sat_helpers.attention import paper_lam_to_package
from sat_helpers.config import data_root, get_profile
from sat_helpers.data import ensure_dataset


def words_per_caption(profile) -> float:
    """The mean number of target tokens (words and <end>) of the prepared training captions."""
    lengths = np.load(Path(ensure_dataset(profile)) / "train_lengths.npy")
    return float((lengths - 1).mean())


def run(profile, lam_paper: float, lam: float, seed: int) -> dict:
    """Train (or reuse) one soft model at this λ and seed; its test numbers."""
    p = replace(profile, lam=lam, seed=seed)
    out = (data_root() / "experiments" / "soft_seeds"
           / f"{p.name}-e{p.epochs}-lam{lam_paper:g}-s{seed}")
    log = tr.train(p, "soft", resume=True, out_dir=out)
    return {"λ (eq. 14)": lam_paper, "λ (package)": lam, "seed": seed, **score(p, out, log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--epochs", type=int, default=24, help="per run (the course: 24)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--paper-lams", type=float, nargs="+", default=[0.0, 1.0],
                        help="λ in eq. 14's units")
    args = parser.parse_args()
    profile = get_profile(args.profile, epochs=args.epochs)
    words = words_per_caption(profile)
    lams = {lp: paper_lam_to_package(lp, profile.grid ** 2, words) for lp in args.paper_lams}
    table = pd.DataFrame([run(profile, lp, lam, s) for lp, lam in lams.items()
                          for s in args.seeds])
    write_results(
        f"soft_seeds-{profile.name}-e{profile.epochs}",
        "Soft attention over seeds (`python benchmarks/soft_seeds.py`)",
        f"Profile {profile.name}, {profile.epochs} epochs per run, {profile.grid ** 2} "
        f"positions, {words:.2f} target words per training caption, test split, greedy "
        f"captions, torch {torch.__version__}. λ (package) = λ (eq. 14) × positions / words "
        f"per caption.", table, ["λ (eq. 14)", "λ (package)"])

if __name__ == "__main__":
    main()

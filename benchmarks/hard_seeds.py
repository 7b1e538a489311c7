"""Hard attention over several seeds: how λ_r (``reinforce_weight``) decides whether α learns.

One Shapes hard-attention run says little at λ_r = 1: with the same data and code, its
outcome swings with the seed (with the seed code's baseline start, some seeds learned to look
at the named object and others left α almost uniform). This trains the profile's hard
model for each seed and each λ_r (everything else equal), each run in its own folder under
data_root()/experiments/ (never the course's run; a finished folder is scored, not
retrained), and scores it on the test split as notebook 07 does.
Writes benchmarks/results/hard_seeds-e<epochs>-ew<λ_e>.md.

    python benchmarks/hard_seeds.py [--weights 1 0.01] [--seeds 0 1 2 3] [--epochs 8]
                                    [--entropy-weight 0]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from baseline_start import score, summary
from bench_search import markdown

from sat_helpers import train as tr
from sat_helpers.config import data_root, get_profile

RESULTS = Path(__file__).resolve().parent / "results"


def run(profile, weight: float, seed: int) -> dict:
    """Train (or reuse) one hard model with this λ_r and seed; its test numbers."""
    p = replace(profile, reinforce_weight=weight, seed=seed)
    out = (data_root() / "experiments" / "hard_seeds"
           / f"{p.name}-e{p.epochs}-ew{p.entropy_weight:g}-rw{weight:g}-s{seed}")
    log = tr.train(p, "hard", resume=True, out_dir=out)
    return {"λ_r": weight, "λ_e": p.entropy_weight, "seed": seed, **score(p, out, log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--epochs", type=int, default=8, help="per run (the course: 24)")
    parser.add_argument("--entropy-weight", type=float, default=None,
                        help="λ_e (default: the profile's)")
    args = parser.parse_args()
    profile = get_profile(args.profile, epochs=args.epochs)
    if args.entropy_weight is not None:
        profile = replace(profile, entropy_weight=args.entropy_weight)
    table = pd.DataFrame([run(profile, w, s) for w in args.weights for s in args.seeds])
    text = (f"# Hard attention over seeds (`python benchmarks/hard_seeds.py`)\n\n"
            f"Profile {profile.name}, {profile.epochs} epochs per run, test split, greedy "
            f"captions, torch {torch.__version__}; every run's own numbers, then the mean and "
            f"the worst over the seeds of each λ_r.\n\n{markdown(table, digits=3)}\n\n"
            f"{markdown(summary(table, 'λ_r'), digits=3)}\n")
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"hard_seeds-e{profile.epochs}-ew{profile.entropy_weight:g}.md").write_text(text)


if __name__ == "__main__":
    main()

"""Training recipes over seeds: which profile settings reach the course's quality soonest.

Trains the profile's soft or hard model for every seed under each variant (profile fields
changed as ``sat train --set`` changes them, e.g. ``"dropout=0.3 epochs=16"``), everything else
equal, each run in its own folder under data_root()/experiments/recipes/ (a finished folder is
scored, not retrained), and scores it on the test split as notebook 07 does: greedy BLEU-4,
noun-phrase pointing, the mean entropy of α, and the training minutes (the epochs' own time,
which depends on the machine and what else ran on it). A hard run with ``hard_warm_start``
starts from the soft run of the same variant and seed (trained first, in its own folder): its
best validation BLEU-4 is its own epochs', "train minutes" counts the shared soft epochs too
and "hard minutes" its own, and its row adds that soft model's test BLEU-4 and the ratio. Writes
benchmarks/results/recipes-<profile>-<attention>-<name>.md: every run, then per variant the
mean, the standard deviation and the worst over the seeds.

    python benchmarks/recipe_seeds.py --attention soft --seeds 0 1 2
        --variants "" "dropout=0.3" --name dropout [--score-only]
"""

from __future__ import annotations

import argparse
import re

import pandas as pd
import torch
from baseline_start import score
from hard_seeds import write_results

from sat_helpers import train as tr
from sat_helpers.config import data_root, get_profile, parse_overrides


def label(variant: str) -> str:
    """The variant as the tables show it: its overrides, or "profile" for none."""
    return " ".join(variant.split()) or "profile"


def run(profile_name: str, attention: str, variant: str, seed: int,
        score_only: bool = False) -> dict | None:
    """Train (or reuse) one model of this variant and seed; its test numbers.

    ``score_only``: score the folder's finished run as it is, None if it has none.
    """
    p = get_profile(profile_name, seed=seed, **parse_overrides(variant.split()))
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", label(variant))
    folder = data_root() / "experiments" / "recipes"
    out, soft_dir = (folder / f"{p.name}-{a}-{slug}-s{seed}" for a in (attention, "soft"))
    if score_only:
        last = out / "last.pt"
        if not (last.exists() and torch.load(last, weights_only=True).get("finished")):
            return None
        log = pd.read_csv(out / "log.csv")
    else:
        log = tr.train(p, attention, resume=True, out_dir=out, soft_dir=soft_dir)
    row = {"variant": label(variant), "seed": seed, **score(p, out, log)}
    if attention == "hard" and p.hard_warm_start:  # the soft run it started from, to compare
        own = log.iloc[p.hard_warm_start:]  # the log's first rows are the soft run's epochs
        soft = score(p, soft_dir, pd.read_csv(soft_dir / "log.csv"))["test BLEU-4"]
        row.update({"best val BLEU-4": float(own["val_bleu4"].max()),
                    "hard minutes": float(own["seconds"].sum() / 60),
                    "soft test BLEU-4": soft, "hard / soft": row["test BLEU-4"] / soft})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--attention", choices=("soft", "hard"), default="soft")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=[""],
                        help='profile overrides per variant, e.g. "" "dropout=0.3 lr=2e-3"')
    parser.add_argument("--name", default="variants", help="the results file's suffix")
    parser.add_argument("--score-only", action="store_true",
                        help="train nothing: score the runs already there, leave out the rest")
    args = parser.parse_args()
    rows = [run(args.profile, args.attention, v, s, args.score_only)
            for v in args.variants for s in args.seeds]
    table = pd.DataFrame([row for row in rows if row is not None])
    write_results(
        f"recipes-{args.profile}-{args.attention}-{args.name}",
        f"{args.attention.capitalize()} attention: recipes over seeds "
        f"(`python benchmarks/recipe_seeds.py`)",
        f"Profile {args.profile} ({args.attention}), each variant the profile with the fields "
        f"it names changed; test split, greedy captions, torch {torch.__version__}.",
        table, ["variant"])

if __name__ == "__main__":
    main()

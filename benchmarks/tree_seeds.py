"""Another commit's soft model over seeds, trained and scored by that commit's own code.

"The quality at commit X" is one course run (one seed) unless measured like this. Check out X
beside this tree (``git worktree add /tmp/base 0119d65``), point PYTHONPATH at it and SAT_DATA
at a data root of its own (its code builds its own data and features), and this script trains
X's profile's soft model for each seed, each in data_root()/experiments/tree/ (a finished run
is scored, not retrained), and scores it as notebook 07 does: test split, greedy BLEU-4,
noun-phrase pointing, the mean entropy of α (``baseline_start.score``). It, and what it reuses,
call only what every tree since 0119d65 has. Writes the runs, then their mean, standard
deviation and worst, as markdown to ``--out``.

    SAT_DATA=/tmp/base-data PYTHONPATH=/tmp/base OMP_NUM_THREADS=1 \
        python benchmarks/tree_seeds.py --seeds 0 1 2 --out results/tree-0119d65.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from baseline_start import score
from bench_search import markdown

from sat_helpers import train as tr
from sat_helpers.config import data_root, get_profile

COLUMNS = ["test BLEU-4", "pointing (noun phrase)", "attention entropy (nats)"]


def run(profile_name: str, seed: int) -> dict:
    """Train (or reuse) one seed's soft model with the checked-out code; its test numbers."""
    profile = get_profile(profile_name, seed=seed)
    out = data_root() / "experiments" / "tree" / f"{profile.name}-soft-s{seed}"
    log = tr.train(profile, "soft", resume=True, out_dir=out, device="cpu")
    return {"seed": seed, **score(profile, out, log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="the markdown file to write")
    args = parser.parse_args()
    runs = pd.DataFrame([run(args.profile, seed) for seed in args.seeds])
    summary = pd.DataFrame({"runs": [len(runs)], **{
        f"{c} {how}": [getattr(runs[c], how)()] for c in COLUMNS
        for how in ("mean", "std", "max" if "entropy" in c else "min")}})
    args.out.write_text(f"{markdown(runs, digits=3)}\n\n{markdown(summary, digits=3)}\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()

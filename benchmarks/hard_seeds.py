"""Hard attention over seeds: which reward, λ_r and λ_e let α learn, BLEU-4 and pointing.

One Shapes hard-attention run says little: with the same data and code its outcome swings with
the seed. This trains the profile's hard model for every seed and every combination of reward
(``reinforce_reward``: "caption_sum", eq. 12 as printed, or "authors", capgen.py's rule), λ_r
(``reinforce_weight``) and λ_e, everything else equal, each run in its own folder under
data_root()/experiments/ (never the course's run; a finished folder is scored, not retrained),
and scores it on the test split as notebook 07 does: greedy BLEU-4, noun-phrase pointing and
the mean entropy of α. λ_e is given in the package's units (``--entropy-weights``) or in the
authors' (``--authors-entropy``: capgen.py's alpha_entropy_c, summed over the minibatch; λ_e =
alpha_entropy_c · batch_size). Writes
benchmarks/results/hard_seeds-<profile>-e<epochs>-<rewards>.md: every run, then per setting
the mean, the standard deviation and the worst over the seeds.

    python benchmarks/hard_seeds.py [--profile shapes] [--epochs 24] [--seeds 0 1 2 3]
        [--rewards caption_sum authors] [--weights 1 0.01]
        [--entropy-weights 0] [--authors-entropy 0.002]
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from baseline_start import score
from bench_search import markdown

from sat_helpers import train as tr
from sat_helpers.config import data_root, get_profile
from sat_helpers.losses import REWARDS, authors_entropy_weight

RESULTS = Path(__file__).resolve().parent / "results"
MEASURES = {"test BLEU-4": "min", "pointing (noun phrase)": "min",
            "attention entropy (nats)": "max"}


def run(profile, reward: str, weight: float, entropy: tuple[str, float], seed: int) -> dict:
    """Train (or reuse) one hard model with these settings and seed; its test numbers."""
    label, entropy_weight = entropy
    p = replace(profile, reinforce_reward=reward, reinforce_weight=weight,
                entropy_weight=entropy_weight, seed=seed)
    out = (data_root() / "experiments" / "hard_seeds" / f"{p.name}-e{p.epochs}-{reward}"
           f"-rw{weight:g}-ew{entropy_weight:g}-s{seed}")
    log = tr.train(p, "hard", resume=True, out_dir=out)
    return {"reward": reward, "λ_r": weight, "λ_e": label, "seed": seed, **score(p, out, log)}


def summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per setting: runs, and the mean, standard deviation and worst of every measure."""
    groups = table.groupby(by, sort=False)
    parts = {f"{c} {how}": groups[c].agg(how) for c, worst in MEASURES.items()
             for how in ("mean", "std", worst)}
    return pd.DataFrame({"runs": groups.size(), **parts}).reset_index()


def write_results(name: str, heading: str, intro: str, table: pd.DataFrame,
                  by: list[str]) -> None:
    """Print and write benchmarks/results/<name>.md: every run's row, then per setting (the
    ``by`` columns) the mean, standard deviation and worst over the seeds."""
    text = (f"# {heading}\n\n{intro} Every run's own numbers, then per setting the mean, "
            f"standard deviation and worst over the seeds.\n\n{markdown(table, digits=3)}\n\n"
            f"{markdown(summary(table, by), digits=3)}\n")
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)


def entropy_settings(args, batch_size: int) -> list[tuple[str, float]]:
    """(label, λ_e in the package's units) for each λ_e asked for, in either unit."""
    settings = [(f"{w:g}", w) for w in args.entropy_weights]
    settings += [(f"{authors_entropy_weight(c, batch_size):g} (authors' {c:g})",
                  authors_entropy_weight(c, batch_size)) for c in args.authors_entropy]
    return settings or [(f"{get_profile(args.profile).entropy_weight:g}",
                         get_profile(args.profile).entropy_weight)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--epochs", type=int, default=24, help="per run (the course: 24)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--rewards", nargs="+", choices=REWARDS, default=list(REWARDS))
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.01], help="λ_r")
    parser.add_argument("--entropy-weights", type=float, nargs="*", default=[],
                        help="λ_e in the package's units (per word)")
    parser.add_argument("--authors-entropy", type=float, nargs="*", default=[],
                        help="λ_e as capgen.py's alpha_entropy_c (the authors used 0.002)")
    args = parser.parse_args()
    profile = get_profile(args.profile, epochs=args.epochs)
    settings = itertools.product(args.rewards, args.weights,
                                 entropy_settings(args, profile.batch_size), args.seeds)
    table = pd.DataFrame([run(profile, *setting) for setting in settings])
    write_results(
        f"hard_seeds-{profile.name}-e{profile.epochs}-{'-'.join(args.rewards)}",
        "Hard attention over seeds (`python benchmarks/hard_seeds.py`)",
        f"Profile {profile.name}, {profile.epochs} epochs per run, batch {profile.batch_size}, "
        f"test split, greedy captions, torch {torch.__version__}. λ_e in the package's units "
        f"(the authors' alpha_entropy_c × batch size).", table, ["reward", "λ_r", "λ_e"])

if __name__ == "__main__":
    main()

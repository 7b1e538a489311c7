"""Where the hard-attention baseline b starts: 0 (the authors' code) or the first batch's mean.

The moving average b_k = decay · b_{k-1} + (1 − decay) · mean log p(y | s̃_k, a) needs a first
value. arctic-captions (the authors' Theano code) starts it at 0; an earlier version of this
course started it at the mean log-likelihood of the first sampled minibatch. This trains the
profile's hard-attention model with each start for each seed (same data, everything else
equal; one seed is not enough: a Shapes hard run's outcome swings with the seed, see
hard_seeds.py), each in a folder of its own under data_root()/experiments/ (never the course's
run), and scores both on the test split as notebook 07 does: greedy BLEU-4, the pointing game
(noun phrase) and the mean entropy of α over the emitted words. Writes
benchmarks/results/baseline_start.md (whose older tables call that start "seed code": the code
the course grew from has no hard attention; the rule was this course's own). The seed column
is the random seed. The package starts at 0 since the Shapes profile's run of this (λ_r =
0.01, 24 epochs, seeds 0-3) scored better with it on every seed.

    python benchmarks/baseline_start.py [--profile shapes] [--epochs 8] [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from bench_search import markdown

from sat_helpers import train as tr
from sat_helpers.config import data_root, get_profile
from sat_helpers.evaluate import evaluate
from sat_helpers.hard import HardAttentionLoss, attention_entropy, token_log_likelihood

RESULTS = Path(__file__).resolve().parent / "results" / "baseline_start.md"


class FirstBatchStart(HardAttentionLoss):
    """b starts at the mean log-likelihood of the first sampled minibatch (the earlier rule)."""

    def __init__(self, profile):
        super().__init__(profile)
        self.baseline = None

    def __call__(self, output, captions, lengths, n_tokens=None):
        if self.baseline is None and output.log_probs_of_samples is not None:
            log_p, _ = token_log_likelihood(output, captions, lengths)
            self.baseline = float(log_p.sum(1).detach().mean())
        return super().__call__(output, captions, lengths, n_tokens)


# The package's loss starts b at 0, as arctic-captions does: it is the other start.
STARTS = {"0 (authors' code, the package)": HardAttentionLoss,
          "first batch's mean (earlier rule)": FirstBatchStart}


def score(profile, out: Path, log: pd.DataFrame) -> dict:
    """The test numbers of the run in ``out`` (its best.pt), as notebook 07 measures them."""
    decoder, vocab, _ = tr.load_checkpoint(out / "best.pt")
    table, metrics = evaluate((decoder, vocab), "test", beam_size=1, profile=profile,
                              device="cpu", coco=False)
    entropy = torch.cat([attention_entropy(c.alphas) for c in table["caption"]])
    return {"test BLEU-4": metrics["BLEU-4"],
            "pointing (noun phrase)": metrics.get("pointing_noun_phrase", float("nan")),
            "attention entropy (nats)": float(entropy.mean()),
            "best val BLEU-4": float(log["val_bleu4"].max()), "epochs": len(log),
            "train minutes": float(log["seconds"].sum() / 60)}


def summary(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean and worst (min; max for the entropy) over the seeds of each ``by`` group."""
    groups = table.groupby(by, sort=False)
    columns = {"test BLEU-4": "min", "pointing (noun phrase)": "min",
               "attention entropy (nats)": "max"}
    parts = {f"{c} {how}": groups[c].agg(how) for c, worst in columns.items()
             for how in ("mean", worst)}
    return pd.DataFrame({"runs": groups.size(), **parts}).reset_index()


def run(profile, name: str, loss_class, train: bool = True) -> dict:
    """Train one hard model with this start in its own folder; its test numbers.

    ``train=False`` scores the folder's best.pt as it is (a run stopped early).
    """
    out = (data_root() / "experiments" / "baseline_start"
           / f"{profile.name}-e{profile.epochs}-s{profile.seed}-{loss_class.__name__}")
    tr.LOSSES["hard"] = loss_class
    log = tr.train(profile, "hard", resume=True, out_dir=out) if train else \
        pd.read_csv(out / "log.csv")
    return {"baseline start": name, "seed": profile.seed, **score(profile, out, log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--epochs", type=int, default=8, help="per run (the course: 24)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--only", choices=[c.__name__ for c in STARTS.values()], default=None)
    parser.add_argument("--score-only", action="store_true",
                        help="score the best.pt of runs already there (stopped early)")
    args = parser.parse_args()
    profiles = [get_profile(args.profile, epochs=args.epochs, seed=s) for s in args.seeds]
    table = pd.DataFrame([run(p, name, cls, not args.score_only) for name, cls in STARTS.items()
                          if args.only in (None, cls.__name__) for p in profiles])
    profile = profiles[0]
    text = (f"# Hard attention: where the baseline starts (`python benchmarks/baseline_start.py`)"
            f"\n\nProfile {profile.name} (λ_r = {profile.reinforce_weight:g}, λ_e = "
            f"{profile.entropy_weight:g}), {profile.epochs} "
            f"epochs per run, test split, greedy captions, torch {torch.__version__}.\n\n"
            f"{markdown(table, digits=3)}\n\n{markdown(summary(table, 'baseline start'), 3)}\n")
    print(text)
    if args.only is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()

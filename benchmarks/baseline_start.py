"""Where the hard-attention baseline b starts: 0 (the authors' code) or the first batch's mean.

The moving average b_k = decay · b_{k-1} + (1 − decay) · mean log p(y | s̃_k, a) needs a
first value. arctic-captions (the authors' Theano code) starts it at 0; the seed started it
at the mean log-likelihood of the first sampled minibatch. This trains the profile's
hard-attention model once with each start (same seed, same data, everything else equal),
each in a folder of its own under data_root()/experiments/ (never the course's run), and
scores both on the test split as notebook 07 does: greedy BLEU-4, the pointing game (noun
phrase) and the mean entropy of α over the emitted words. Writes
benchmarks/results/baseline_start.md.

    python benchmarks/baseline_start.py [--profile shapes] [--epochs 24]
"""

from __future__ import annotations

import argparse
import time
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
    """b starts at the mean log-likelihood of the first sampled minibatch (the seed's rule)."""

    def __init__(self, profile):
        super().__init__(profile)
        self.baseline = None

    def __call__(self, output, captions, lengths, profile, n_tokens=None):
        if self.baseline is None and output.log_probs_of_samples is not None:
            log_p, _ = token_log_likelihood(output, captions, lengths)
            self.baseline = float(log_p.sum(1).detach().mean())
        return super().__call__(output, captions, lengths, profile, n_tokens)


class ZeroStart(HardAttentionLoss):
    """b starts at 0 (arctic-captions)."""

    def __init__(self, profile):
        super().__init__(profile)
        self.baseline = 0.0


STARTS = {"0 (authors' code)": ZeroStart, "first batch's mean (seed)": FirstBatchStart}


def run(profile, name: str, loss_class, train: bool = True) -> dict:
    """Train one hard model with this start in its own folder; its test numbers.

    ``train=False`` scores the folder's best.pt as it is (a run stopped early).
    """
    out = data_root() / "experiments" / "baseline_start" / f"{profile.name}-{loss_class.__name__}"
    tr.LOSSES["hard"] = loss_class
    start = time.perf_counter()
    log = tr.train(profile, "hard", resume=True, out_dir=out) if train else \
        pd.read_csv(out / "log.csv")
    minutes = (time.perf_counter() - start) / 60 if train else log["seconds"].sum() / 60
    decoder, vocab, _ = tr.load_checkpoint(out / "best.pt")
    table, metrics = evaluate((decoder, vocab), "test", beam_size=1, profile=profile,
                              device="cpu", coco=False)
    entropy = torch.cat([attention_entropy(c.alphas) for c in table["caption"]])
    return {"baseline start": name, "test BLEU-4": metrics["BLEU-4"],
            "pointing (noun phrase)": metrics.get("pointing_noun_phrase", float("nan")),
            "attention entropy (nats)": float(entropy.mean()),
            "best val BLEU-4": float(log["val_bleu4"].max()), "epochs": len(log),
            "train minutes (this run)": minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="shapes")
    parser.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    parser.add_argument("--only", choices=[c.__name__ for c in STARTS.values()], default=None)
    parser.add_argument("--score-only", action="store_true",
                        help="score the best.pt of runs already there (stopped early)")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    if args.epochs is not None:
        profile = get_profile(args.profile, epochs=args.epochs)
    rows = [run(profile, name, cls, not args.score_only) for name, cls in STARTS.items()
            if args.only in (None, cls.__name__)]
    table = pd.DataFrame(rows)
    text = (f"# Hard attention: where the baseline starts (`python benchmarks/baseline_start.py`)"
            f"\n\nProfile {profile.name}, {profile.epochs} epochs, seed {profile.seed}, test "
            f"split, greedy captions, torch {torch.__version__}.\n\n"
            f"{markdown(table, digits=3)}\n")
    print(text)
    if args.only is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()

"""Catch a speed regression: the working tree against a base commit, side by side in one run.

For the training step (``bench_decoder.py``, the paper model) and beam search
(``bench_search.py``) it measures each tree's speed-up over the seed's formulation, the
ratio the course's bars are stated in (>= 3.7x and >= 10x). The base is exported with
``git archive`` into a temporary folder; every measurement is a fresh process that runs this
tree's benchmark scripts with ``PYTHONPATH`` set to one tree, so only ``sat_helpers``
differs. The two trees alternate (base, work, then work, base, ...) so that a change in the
machine's load falls on both. The noise is the spread (max - min) of a tree's ratios over
the repeats; a ratio whose median fell below the base's by more than the larger of the two
spreads is a regression, and the script then exits with status 1. Writes
benchmarks/results/compare.md.

    python benchmarks/compare.py [--base REV] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "compare.md"
MODEL = "paper model (scalar β, deep output)"  # the model the course trains
BARS = {"training step": 3.7, "beam search": 10.0}  # DESIGN.md's bars (speed-up over the seed)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def default_base() -> str:
    """The last release tag (v*) reachable from HEAD, else origin/main, else main."""
    for candidate in (["describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD"],
                      ["rev-parse", "--verify", "--quiet", "origin/main"],
                      ["rev-parse", "--verify", "--quiet", "main"]):
        try:
            found = git(*candidate)
        except subprocess.CalledProcessError:
            continue
        if found:
            return found if candidate[0] == "describe" else candidate[-1]
    raise SystemExit("no base to compare with: no v* tag, no origin/main, no main; pass --base")


def export(rev: str, folder: Path) -> Path:
    """The tree of commit ``rev`` (committed files only) written into ``folder``."""
    archive = folder / "base.tar"
    try:
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev], cwd=ROOT,
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"git archive {rev!r} failed ({err.stderr.strip()}): "
                         "pass --base a commit, tag or branch of this repository") from err
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", **safe)
    return folder / "tree"


def run_json(script: str, args: list[str], tree: Path, threads: int) -> dict:
    """Run benchmarks/<script> of this checkout with ``tree``'s sat_helpers; its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, str(HERE / script), *args], env=env, cwd=tree,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{script} {' '.join(args)} failed on {tree}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["module"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{script} imported sat_helpers from {result['module']}, not from "
                         f"{tree}: an installed copy shadows PYTHONPATH")
    return result


def measure(tree: Path, args) -> dict[str, float]:
    """One repeat on one tree: the training step's and beam search's speed-ups over the seed."""
    common = ["--threads", str(args.threads)]
    step = run_json("bench_decoder.py", ["--pair", MODEL, "--steps", str(args.steps), *common],
                    tree, args.threads)
    search = run_json("bench_search.py", ["--one", "--repeats", "1", "--images",
                                          str(args.images), *common], tree, args.threads)
    if not search["same"]:
        raise SystemExit(f"beam search on {tree} returns other captions than the seed loop")
    return {"training step": step["seed_s"] / step["ours_s"],
            "beam search": search["seed_s"] / search["ours_s"]}


def verdicts(ratios: dict[str, dict[str, list[float]]]) -> tuple[list[dict], bool]:
    """Per benchmark: each tree's median and spread, and whether the work tree fell."""
    rows, fell_any = [], False
    for bench in BARS:
        base, work = ratios["base"][bench], ratios["work"][bench]
        noise = max(max(base) - min(base), max(work) - min(work))
        drop = statistics.median(base) - statistics.median(work)
        fell = drop > noise
        fell_any |= fell
        rows.append({"benchmark": bench,
                     "base": f"{statistics.median(base):.2f}x ({min(base):.2f}-{max(base):.2f})",
                     "work": f"{statistics.median(work):.2f}x ({min(work):.2f}-{max(work):.2f})",
                     "noise": f"{noise:.2f}", "bar": f"{BARS[bench]}x",
                     "verdict": "REGRESSION" if fell else "ok"})
    return rows, fell_any


def report(rows: list[dict], base: str, args, load: tuple[float, float]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row[k] for k in head) + " |" for row in rows]
    changed = git("status", "--porcelain", "--untracked-files=no")
    dirty = " (with uncommitted changes)" if changed else ""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# Speed against a base commit (`python benchmarks/compare.py`)\n\n"
        f"Base `{base}` ({git('rev-parse', '--short', base)}) vs the working tree at "
        f"{git('rev-parse', '--short', 'HEAD')}{dirty}, {when}. Speed-up over the seed's "
        f"formulation, median over {args.repeats} interleaved repeats (min-max in brackets): "
        f"training step = {MODEL} at the seed's sizes, median of {args.steps} steps; beam "
        f"search = {args.images} images, beam 5. {args.threads} threads, load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after. Noise: the larger spread of the two "
        f"trees; REGRESSION when the work tree's median is below the base's by more.\n\n"
        + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="commit, tag or branch (default: last v* tag, "
                                       "else origin/main, else main)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed training steps of each formulation a run")
    parser.add_argument("--images", type=int, default=24, help="images a beam search run")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2: the noise is the spread over the repeats")
    base = args.base or default_base()
    ratios: dict[str, dict[str, list[float]]] = {t: {b: [] for b in BARS} for t in ("base", "work")}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sat-bench-") as tmp:
        trees = {"base": export(base, Path(tmp)), "work": ROOT}
        for r in range(args.repeats):
            for name in ("base", "work") if r % 2 == 0 else ("work", "base"):
                for bench, ratio in measure(trees[name], args).items():
                    ratios[name][bench].append(ratio)
                    print(f"repeat {r + 1}/{args.repeats} {name:4} {bench}: {ratio:.2f}x",
                          flush=True)
    rows, fell = verdicts(ratios)
    text = report(rows, base, args, (load_before, os.getloadavg()[0]))
    print("\n" + text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    if fell:
        raise SystemExit("A speed-up fell by more than the measured noise (REGRESSION above): "
                         "find the cause before merging, or rerun on a quieter machine.")
    print("No speed-up fell by more than the measured noise.")


if __name__ == "__main__":
    main()

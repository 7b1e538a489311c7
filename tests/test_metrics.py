"""Metrics: BLEU equals the COCO toolkit's and a hand count; the toolkit's scores."""

import math
import os
import shutil
import subprocess
import sys
import threading
from subprocess import PIPE

import numpy as np
import pytest

from sat_helpers import metrics
from sat_helpers.metrics import (
    CocoToolkitMissing,
    bleu_scores,
    coco_scores,
)


def synthetic_corpus(seed: int, n: int = 40, cut: int = 0) -> tuple[list, list]:
    """Shapes-like references and hypotheses mutated from them (dropped, swapped, cut words)."""
    rng = np.random.default_rng(seed)
    words = "a small large red blue green circle square star to the left of above and".split()
    refs, hyps = [], []
    for _ in range(n):
        rs = [list(rng.choice(words, size=rng.integers(3, 12))) for _ in range(rng.integers(1, 6))]
        hyp = list(rs[0])
        for _ in range(rng.integers(0, 4)):
            hyp[rng.integers(len(hyp))] = str(rng.choice(words))
        hyp = hyp[: max(2, len(hyp) - cut)] + list(rng.choice(words, size=rng.integers(0, 3)))
        refs.append([[str(w) for w in r] for r in rs])
        hyps.append([str(w) for w in hyp])
    return refs, hyps


def toolkit_bleu(references: list, hypotheses: list) -> list[float]:
    """pycocoevalcap's BLEU-1..4 on the same tokens (joined by spaces; its scorer splits them)."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    return Bleu(4).compute_score(gts, res)[0]


@pytest.mark.parametrize("seed,cut", [(0, 0), (1, 3), (2, 6)])
def test_bleu_equals_pycocoevalcap(seed, cut):
    pytest.importorskip("pycocoevalcap")
    refs, hyps = synthetic_corpus(seed, cut=cut)
    ours = bleu_scores(refs, hyps)
    theirs = toolkit_bleu(refs, hyps)
    assert ours["BLEU-4"] > 0.05  # the corpus shares 4-grams: a real comparison, not 0 == 0
    for n in range(1, 5):
        assert ours[f"BLEU-{n}"] == pytest.approx(theirs[n - 1], abs=1e-3), n


def test_bleu_by_hand():
    refs = [["a big red circle on the left".split(), "a large red circle at left".split()],
            ["the blue square".split(), "a small blue square".split()]]
    hyps = ["a big red circle".split(), "the blue blue square".split()]
    # hypothesis lengths 4 + 4; closest reference lengths 6 (of 7, 6) + 4 (of 3, 4)
    brevity = math.exp(1 - 10 / 8)
    # clipped matches / n-grams: "blue" counts once; "blue blue", and the 3-grams of hyp 2, miss
    precisions = [(4 + 3) / 8, (3 + 2) / 6, (2 + 0) / 4, (1 + 0) / 2]
    scores = bleu_scores(refs, hyps)
    for n in range(1, 5):
        expected = brevity * math.prod(precisions[:n]) ** (1 / n)
        assert scores[f"BLEU-{n}"] == pytest.approx(expected, abs=1e-9), n


def test_bleu_rejects_strings_and_mismatched_lengths():
    with pytest.raises(TypeError, match="token lists"):
        bleu_scores([["a red circle"]], ["a red circle"])
    with pytest.raises(ValueError, match="2 reference lists but 1 hypotheses"):
        bleu_scores([[["a"]], [["b"]]], [["a"]])


def coco_corpus() -> tuple[list, list]:
    """A tiny corpus with a perfect, an empty and a punctuated hypothesis."""
    refs, hyps = synthetic_corpus(3, n=6)
    hyps[0] = list(refs[0][0])
    hyps[1] = []
    refs[2][0] = refs[2][0] + ["."]  # PTB drops punctuation
    return refs, hyps


def check_coco(scores: dict, refs: list, hyps: list) -> None:
    """The toolkit's BLEU is ours on the PTB tokens; every other metric is in range."""
    refs = [[[w for w in r if w != "."] for r in rs] for rs in refs]
    ours = bleu_scores(refs, hyps)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(ours[f"BLEU-{n}"], abs=1e-3)
    assert 0 < scores["ROUGE-L"] < 1 and scores["CIDEr"] > 0


def needs_toolkit() -> None:
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("no Java")


def test_coco_scores_without_meteor():
    needs_toolkit()
    refs, hyps = coco_corpus()
    scores = coco_scores(refs, hyps, meteor=False)
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    check_coco(scores, refs, hyps)


def test_coco_scores_keep_the_tokeniser_quiet(capfd):
    """PTBTokenizer's Java prints a line on fd 2 per call: a notebook shows it as a red box."""
    needs_toolkit()
    refs, hyps = coco_corpus()
    capfd.readouterr()
    coco_scores(refs, hyps, meteor=False)
    assert capfd.readouterr().err == ""


def test_a_failing_tokeniser_still_shows_its_error(capfd):
    class BrokenTokenizer:
        def tokenize(self, captions):
            os.system("echo 'Error: could not find the jar' >&2")  # as Java would, on fd 2
            raise RuntimeError("the tokeniser failed")

    with pytest.raises(RuntimeError, match="the tokeniser failed"):
        metrics.ptb_tokenize({"k": ["a red circle"]}, BrokenTokenizer)
    assert "could not find the jar" in capfd.readouterr().err


def test_meteor_starts_once_a_session_and_a_failed_one_is_not_kept(monkeypatch):
    needs_toolkit()
    started = []

    class FakeMeteor:  # stands in for the Java process: counts its starts
        def __init__(self):
            self.lock, self.meteor_p = threading.Lock(), subprocess.Popen(["cat"], stdin=PIPE)
            started.append(self)

        def compute_score(self, gts, res):
            if len(gts) == 1:
                raise RuntimeError("METEOR's Java process died")
            return 0.25, []

    kit = metrics._coco_toolkit()
    monkeypatch.setattr(metrics, "_coco_toolkit", lambda: {**kit, "Meteor": FakeMeteor})
    metrics.meteor_scorer.cache_clear()
    refs, hyps = coco_corpus()
    hyps[1] = ["a"]
    assert coco_scores(refs, hyps)["METEOR"] == coco_scores(refs, hyps)["METEOR"] == 0.25
    assert len(started) == 1 and started[0].meteor_p.poll() is None  # one process, still open
    with pytest.raises(RuntimeError, match="died"):
        coco_scores(refs[:1], hyps[:1])
    assert started[0].meteor_p.poll() is not None  # closed, and the next call starts another
    coco_scores(refs, hyps)
    assert len(started) == 2
    metrics._close_meteor(started[1])
    metrics.meteor_scorer.cache_clear()


@pytest.mark.skipif(not os.environ.get("SAT_TEST_METEOR"),
                    reason="METEOR's Java start costs minutes of CPU; set SAT_TEST_METEOR=1")
def test_coco_scores_with_meteor():
    needs_toolkit()
    refs, hyps = coco_corpus()
    hyps[1] = ["a"]  # METEOR is not fed an empty hypothesis here
    scores = coco_scores(refs, hyps)
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    check_coco(scores, refs, hyps)
    assert 0 < scores["METEOR"] < 1
    assert coco_scores(refs, hyps)["METEOR"] == scores["METEOR"]  # the same process, reused


def test_missing_pycocoevalcap_says_how_to_install(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("pycocoevalcap")] + ["pycocoevalcap"]:
        monkeypatch.setitem(sys.modules, name, None)  # import now fails as if not installed
    with pytest.raises(CocoToolkitMissing, match=r'pip install "show-attend-tell-course\[coco\]"'):
        coco_scores([["a red circle".split()]], ["a red circle".split()])
    assert bleu_scores([["a red circle".split()]], ["a red circle".split()])["BLEU-3"] == 1.0


def test_missing_java_says_install_a_jre(monkeypatch, tmp_path):
    pytest.importorskip("pycocoevalcap")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CocoToolkitMissing, match="Java runtime"):
        coco_scores([["a red circle".split()]], ["a red circle".split()])


def test_bleu_without_the_brevity_penalty():
    """The paper's Table 1 BLEU: the same precisions, BP = 1 (so never below the toolkit's)."""
    refs = [["a big red circle on the left".split()], ["the blue square".split()]]
    hyps = ["a big red circle".split(), "the blue square".split()]
    precisions = [7 / 7, 5 / 5, 3 / 3, 1 / 1]
    with_bp = bleu_scores(refs, hyps)
    without = bleu_scores(refs, hyps, with_brevity_penalty=False)
    for n in range(1, 5):
        assert without[f"BLEU-{n}"] == pytest.approx(math.prod(precisions[:n]) ** (1 / n))
        assert with_bp[f"BLEU-{n}"] == pytest.approx(math.exp(1 - 10 / 7) * without[f"BLEU-{n}"])

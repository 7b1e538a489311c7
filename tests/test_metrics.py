"""Metrics: BLEU equals the COCO toolkit's and a hand count; the pointing game scores maps."""

import math
import os
import shutil
import sys

import numpy as np
import pytest

from sat_helpers import metrics
from sat_helpers.metrics import (
    CocoToolkitMissing,
    bleu_scores,
    coco_scores,
    pointing_game,
    pointing_summary,
)

GRID, SIZE = 14, 224
CELL = SIZE // GRID


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


# ------------------------------------------------------------------------ pointing game


def peak_at(x: float, y: float, n_words: int = 1) -> np.ndarray:
    """(n_words, P) maps, each peaked on the grid cell holding pixel (x, y)."""
    alpha = np.full(GRID * GRID, 0.1 / (GRID * GRID - 1))
    alpha[int(y) // CELL * GRID + int(x) // CELL] = 0.9
    return np.tile(alpha, (n_words, 1))


def obj(shape: str, colour: str, size: str, box: list) -> dict:
    return {"shape": shape, "colour": colour, "size": size, "box": box}


RED_CIRCLE = obj("circle", "red", "large", [16, 16, 96, 96])
BLUE_CIRCLE = obj("circle", "blue", "small", [150, 150, 190, 190])


def named(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == "named"]


def test_peak_inside_the_box_hits_and_outside_misses():
    words = "a large red circle".split()
    hit = named(pointing_game(peak_at(56, 56, 4), words, [RED_CIRCLE], GRID, SIZE))
    miss = named(pointing_game(peak_at(170, 56, 4), words, [RED_CIRCLE], GRID, SIZE))
    assert len(hit) == len(miss) == 1
    assert hit[0]["hit_phrase"] == hit[0]["hit_shape"] == hit[0]["hit_colour"] == 1.0
    assert miss[0]["hit_phrase"] == miss[0]["hit_shape"] == miss[0]["hit_size"] == 0.0
    assert hit[0]["mass_phrase"] > 0.9 > 0.1 > miss[0]["mass_phrase"]


def test_phrase_and_shape_word_are_scored_apart():
    words = "a red circle".split()
    alphas = np.concatenate([peak_at(200, 200), peak_at(56, 56), peak_at(200, 10)])
    alphas[1] *= 3  # the colour word carries the phrase, as after doubly stochastic training
    (rec,) = named(pointing_game(alphas, words, [RED_CIRCLE], GRID, SIZE))
    assert rec["phrase"] == "red circle"
    assert (rec["hit_phrase"], rec["hit_colour"], rec["hit_shape"]) == (1.0, 1.0, 0.0)
    assert np.isnan(rec["hit_size"])


def test_uniform_maps_score_the_documented_baselines():
    words = "a red circle and a small blue circle".split()
    uniform = np.full((len(words) + 1, GRID * GRID), 1 / GRID**2)  # + the <end> row
    records = named(pointing_game(uniform, words, [RED_CIRCLE, BLUE_CIRCLE], GRID, SIZE))
    assert len(records) == 2
    for rec in records:
        x0, y0, x1, y1 = [RED_CIRCLE, BLUE_CIRCLE][rec["objects"][0]]["box"]
        share = (x1 - x0) * (y1 - y0) / SIZE**2
        assert rec["baseline_uniform"] == pytest.approx(share)
        assert rec["hit_phrase"] == pytest.approx(share, abs=1e-9)
        assert rec["mass_phrase"] == pytest.approx(share, abs=1e-9)
    summary = pointing_summary(records)
    assert summary["pointing_phrase"] == pytest.approx(summary["baseline_uniform"])
    assert summary["baseline_centre"] == 0.0  # neither box holds the centre


def test_centre_baseline():
    middle = obj("star", "green", "large", [90, 90, 140, 140])
    (rec,) = named(pointing_game(peak_at(0, 0, 2), ["green", "star"], [middle], GRID, SIZE))
    assert rec["baseline_centre"] == 1.0 and rec["hit_phrase"] == 0.0


def test_words_naming_no_object_are_left_out_and_counted():
    words = "a red circle and a green star and a yellow circle".split()
    records = pointing_game(peak_at(56, 56, len(words)), words, [RED_CIRCLE, BLUE_CIRCLE],
                            GRID, SIZE)
    assert [r["phrase"] for r in named(records)] == ["red circle"]
    summary = pointing_summary(records)
    assert summary["named_objects"] == 1 and summary["pointing_phrase"] == 1.0
    assert summary["unmatched_words"] == 2  # the star, and the circle that is not yellow
    assert summary["unnamed_objects"] == 1  # the blue circle


def test_synonyms_and_plurals_name_objects():
    box = obj("square", "purple", "large", [16, 16, 96, 96])
    records = named(pointing_game(peak_at(56, 56, 4), "a big purple box".split(), [box],
                                  GRID, SIZE))
    assert len(records) == 1 and records[0]["hit_phrase"] == 1.0
    assert records[0]["phrase"] == "big purple box"
    words = "two circles".split()
    (both,) = named(pointing_game(peak_at(170, 170, 2), words, [RED_CIRCLE, BLUE_CIRCLE],
                                  GRID, SIZE))
    assert both["objects"] == (0, 1) and both["hit_shape"] == 1.0


@pytest.mark.parametrize("colour,target", [("red", 0), ("blue", 1)])
def test_colour_picks_one_of_two_circles(colour, target):
    words = ["a", colour, "circle"]
    (rec,) = named(pointing_game(peak_at(56, 56, 3), words, [RED_CIRCLE, BLUE_CIRCLE], GRID, SIZE))
    assert rec["objects"] == (target,)
    assert rec["hit_phrase"] == (1.0 if colour == "red" else 0.0)


def test_unique_phrase_claims_first():
    words = "a circle above a small circle".split()
    records = named(pointing_game(peak_at(56, 56, 6), words, [RED_CIRCLE, BLUE_CIRCLE],
                                  GRID, SIZE))
    assert [r["objects"] for r in records] == [(0,), (1,)]


def test_bad_alphas_shape_is_explained():
    with pytest.raises(ValueError, match="grid=7"):
        pointing_game(peak_at(1, 1, 3), "a red circle".split(), [RED_CIRCLE], 7, SIZE)
    with pytest.raises(ValueError, match="one row per word"):
        pointing_game(peak_at(1, 1, 2), "a red circle".split(), [RED_CIRCLE], GRID, SIZE)


def test_scale_objects_moves_boxes_to_the_prepared_image():
    (scaled,) = metrics.scale_objects([RED_CIRCLE], 448, 112, 224)
    assert scaled["box"] == [8, 32, 48, 192] and RED_CIRCLE["box"] == [16, 16, 96, 96]


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

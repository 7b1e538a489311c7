"""The pointing game: a peak inside the named object's box hits, baselines, noun phrases."""

import numpy as np
import pytest

from sat_helpers.pointing import pointing_game, pointing_summary, scale_objects

GRID, SIZE = 14, 224
CELL = SIZE // GRID


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
    (scaled,) = scale_objects([RED_CIRCLE], 448, 112, 224)
    assert scaled["box"] == [8, 32, 48, 192] and RED_CIRCLE["box"] == [16, 16, 96, 96]

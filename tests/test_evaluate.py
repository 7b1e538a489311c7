"""Evaluation: a quick checkpoint scored end to end, in Python and with `sat evaluate`."""

import json
import math
import os

import pytest
import torch

from sat_helpers.cli import main
from sat_helpers.config import get_profile
from sat_helpers.data import ensure_dataset
from sat_helpers.encoder import FeatureDataset, ensure_features
from sat_helpers.evaluate import evaluate, load_model
from sat_helpers.metrics import CocoToolkitMissing, bleu_scores
from sat_helpers.search import beam_search, greedy_search
from sat_helpers.train import train

# quick Shapes at 64 px (a 4 x 4 grid): drawing, features and one epoch take seconds
TINY = dict(image_size=64, grid=4, epochs=1, batch_size=12)
METEOR = bool(os.environ.get("SAT_TEST_METEOR"))  # METEOR's Java start costs minutes of CPU
POINTING = {"pointing_noun_phrase", "pointing_shape_word", "pointing_baseline_centre",
            "pointing_baseline_uniform", "named_objects"}


@pytest.fixture(scope="module")
def root(tmp_path_factory, device):
    """A data root holding one tiny trained run; yields (root, path of its best.pt)."""
    path = tmp_path_factory.mktemp("sat_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAT_DATA", str(path))
        train(get_profile("quick", **TINY), out_dir=path / "run", device=str(device))
        yield path, path / "run" / "best.pt"


@pytest.fixture
def checkpoint(root, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(root[0]))
    return root[1]


@pytest.fixture(scope="module")
def evaluated(root, device):
    """evaluate() of the tiny run on its test split, beam 2, in chunks of 5 images."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAT_DATA", str(root[0]))
        return evaluate(root[1], "test", beam_size=2, batch_size=5, meteor=METEOR,
                        device=str(device))


def test_evaluate_a_checkpoint(checkpoint, evaluated, device):
    table, metrics = evaluated
    profile = get_profile("quick", **TINY)
    meta = json.loads((ensure_dataset(profile) / "test_meta.json").read_text())
    assert list(table["id"]) == [m["id"] for m in meta] and metrics["images"] == len(meta)
    # decoded in chunks of 5, yet each row holds its own image's beam-search caption
    decoder, vocab, _, _ = load_model(checkpoint, str(device))
    test = FeatureDataset(ensure_features(profile), ensure_dataset(profile), "test")
    feats = torch.from_numpy(test.features[:].astype("float32")).to(device)
    expected = beam_search(decoder, feats, 2, profile.decode_max_len, vocab=vocab)
    assert list(table["hypothesis"]) == [" ".join(c.words) for c in expected]
    # the corpus scores are those of these hypotheses against these images' references
    references = [m["references"] for m in meta]
    hypotheses = [h.split() for h in table["hypothesis"]]
    assert metrics["BLEU-4"] == pytest.approx(bleu_scores(references, hypotheses)["BLEU-4"])
    expected_keys = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", *POINTING}
    assert expected_keys | ({"METEOR"} if METEOR else set()) <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("BLEU-1", "ROUGE-L"))
    assert table["bleu4"].between(0, 1).all() and table["bleu1"].ge(table["bleu4"]).all()
    # per-image pointing adds up to the corpus figure
    assert metrics["named_objects"] == table["named_objects"].sum()
    if metrics["named_objects"]:
        hit_rate = table["phrase_hits"].sum() / table["named_objects"].sum()
        assert metrics["pointing_noun_phrase"] == pytest.approx(hit_rate)
        assert 0 <= metrics["pointing_baseline_uniform"] <= 1
    else:  # a one-epoch model may name no object: pointing is undefined, not 0
        assert math.isnan(metrics["pointing_noun_phrase"])
        assert math.isnan(metrics["pointing_baseline_uniform"])
    assert (table["shape_hits"] <= table["named_objects"]).all()


def test_a_model_pair_needs_its_profile_and_bleu_survives_a_missing_toolkit(
        checkpoint, monkeypatch, capsys, device):
    decoder, vocab, profile, _ = load_model(checkpoint, str(device))
    with pytest.raises(ValueError, match="profile="):
        evaluate((decoder, vocab), "val", beam_size=1)

    def no_toolkit(*args, **kwargs):
        raise CocoToolkitMissing("no toolkit in this test")

    monkeypatch.setattr("sat_helpers.evaluate.coco_scores", no_toolkit)
    for _ in range(2):
        table, metrics = evaluate((decoder, vocab), "val", beam_size=1, profile=profile)
    assert capsys.readouterr().out.count("no toolkit in this test") == 1  # said once
    assert {"BLEU-1", "BLEU-4"} <= set(metrics) and not {"METEOR", "CIDEr"} & set(metrics)
    val = FeatureDataset(ensure_features(profile), ensure_dataset(profile), "val")
    features = torch.from_numpy(val.features[:].astype("float32")).to(device)
    greedy = greedy_search(decoder, features, profile.decode_max_len, vocab=vocab)
    assert list(table["hypothesis"]) == [" ".join(c.words) for c in greedy]


def test_cli_prints_the_table_and_the_metrics(checkpoint, evaluated, capsys):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--beam", "2", "--rows", "3",
                 "--no-meteor"]) == 0
    out = capsys.readouterr().out
    table, _ = evaluated
    assert "hypothesis" in out and table["hypothesis"][0][:40] in out
    for key in ("BLEU-4", "ROUGE-L", "CIDEr", "pointing_noun_phrase"):
        assert key in out


def test_cli_bad_checkpoint_says_what_is_wrong(checkpoint, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    no_profile = tmp_path / "no_profile.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "profile"}, no_profile)
    cases = [(tmp_path / "none.pt", "No checkpoint at"),
             (garbage, "Could not load checkpoint"),
             (no_profile, "stores no profile")]
    for path, message in cases:
        assert main(["evaluate", "--checkpoint", str(path)]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and str(path) in captured.err and not captured.out

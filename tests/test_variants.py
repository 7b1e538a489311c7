"""Variants live beside the course: a changed field builds its own folders, never the course's."""

import hashlib
from dataclasses import replace

import pytest

from sat_helpers import config
from sat_helpers import train as tr
from sat_helpers.config import Profile, get_profile, results_path, variant_name
from sat_helpers.data import prepared_dir, shapes_dir
from sat_helpers.encoder import features_dir

# a course profile of its own at the quick scale, 64 px (a 4 x 4 grid): an epoch in a second
COURSE = replace(config.PROFILES["quick"], name="tiny", image_size=64, grid=4, epochs=1,
                 train_minutes=60.0, batch_size=12)


@pytest.fixture
def course(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(tmp_path))
    monkeypatch.setitem(config.PROFILES, "tiny", COURSE)
    return get_profile("tiny")


def snapshot(*folders):
    """Every file under the folders: (modification time, sha256 of its bytes)."""
    return {str(path): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def test_variant_name_hashes_only_the_changed_fields(course):
    assert variant_name(course, ["lam", "min_word_freq"]) == "tiny"
    lam = get_profile("tiny", lam=0.5)
    name = variant_name(lam, ["lam", "min_word_freq"])
    assert name.startswith("tiny-") and len(name) == len("tiny-") + 6
    assert variant_name(lam, ["min_word_freq"]) == "tiny"  # lam is not among the fields
    two = variant_name(get_profile("tiny", lam=2), ["lam"])
    assert two == variant_name(get_profile("tiny", lam=2.0), ["lam"])  # 2 and 2.0: one variant
    assert variant_name(get_profile("tiny", lam=2.0), ["lam"]) != variant_name(lam, ["lam"])
    assert variant_name(Profile(name="mine"), ["lam"]) == "mine"  # unknown name: the defaults
    assert results_path(course).name == "tiny.json" and results_path(lam) != results_path(course)


def test_each_artefact_is_keyed_by_the_fields_it_depends_on(course):
    seed = get_profile("tiny", seed=3)  # the training seed shares the data and the features
    assert prepared_dir(seed) == prepared_dir(course) and features_dir(seed) == features_dir(course)
    assert tr.run_dir(seed) != tr.run_dir(course)
    data_seed = get_profile("tiny", data_seed=3)
    assert prepared_dir(data_seed) != prepared_dir(course)
    assert features_dir(data_seed) != features_dir(course)
    for field, value in (("expected_context_p", 0.0), ("entropy_weight", 0.1), ("hard_lam", 1.0),
                         ("baseline_decay", 0.5), ("reinforce_weight", 0.5),
                         ("reinforce_reward", "authors")):
        hard_only = get_profile("tiny", **{field: value})
        assert tr.run_dir(hard_only, "soft") == tr.run_dir(course, "soft"), field
        assert tr.training_config(hard_only, "soft") == tr.training_config(course, "soft"), field
        assert tr.run_dir(hard_only, "hard") != tr.run_dir(course, "hard"), field
    lam = get_profile("tiny", lam=0.5)
    assert tr.run_dir(lam, "hard") == tr.run_dir(course, "hard")
    assert tr.run_dir(lam, "soft") != tr.run_dir(course, "soft")
    cold = get_profile("tiny", epochs=2)
    warm = get_profile("tiny", epochs=2, hard_warm_start=1)
    warm_lam = get_profile("tiny", epochs=2, hard_warm_start=1, lam=0.5)
    assert tr.run_dir(warm_lam, "hard") != tr.run_dir(warm, "hard")  # it starts from soft's run
    assert tr.run_dir(warm, "soft") != tr.run_dir(cold, "soft")  # that run keeps epoch-1.pt
    beam = get_profile("tiny", beam_size=5)  # decoding only: shares the trained model
    assert tr.run_dir(beam, "soft") == tr.run_dir(course, "soft")


def test_variants_train_beside_the_course_and_leave_it_untouched(course):
    tr.ensure_trained(course)
    root = config.data_root()
    ours = (prepared_dir(course), features_dir(course), tr.run_dir(course), shapes_dir(course))
    assert [p.name for p in ours[:3]] == ["tiny", f"tiny-{features_dir(course).name[5:]}",
                                          "tiny-soft"]
    before = snapshot(*ours)
    assert any(p.endswith("best.pt") for p in before) and any(p.endswith(".npy") for p in before)
    for fields in ({"min_word_freq": 2}, {"lam": 0.5}, {"expected_context_p": 0.0}):
        variant = get_profile("tiny", **fields)
        tr.ensure_trained(variant)
        assert snapshot(*ours) == before, fields  # not rebuilt, not retrained, not moved
        assert not list(root.rglob("*.replaced-*")), fields
    word = get_profile("tiny", min_word_freq=2)
    assert prepared_dir(word) != prepared_dir(course)
    assert (tr.run_dir(word) / "best.pt").exists() and tr.run_dir(word) != tr.run_dir(course)
    lam = get_profile("tiny", lam=0.5)  # another λ: the course's data and features, its own run
    assert prepared_dir(lam) == prepared_dir(course) and (tr.run_dir(lam) / "best.pt").exists()
    hard_only = get_profile("tiny", expected_context_p=0.0)  # reuses the course's soft model
    assert tr.finished_run(hard_only) == tr.run_dir(course) / "best.pt"
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(
        {tr.run_dir(course).name, tr.run_dir(word).name, tr.run_dir(lam).name})


def test_overrides_are_parsed_to_each_fields_type():
    parsed = config.parse_overrides(["epochs=2", "lr=3e-4", "lam=1", "gate=None", "resize=squash",
                                     "feature_cache=false", "fine_tune=true", "deterministic=On"])
    assert parsed == {"epochs": 2, "lr": 3e-4, "lam": 1.0, "gate": None, "resize": "squash",
                      "feature_cache": False, "fine_tune": True, "deterministic": True}
    assert type(parsed["epochs"]) is int and type(parsed["lam"]) is float
    assert config.parse_overrides(["fine_tune=2"]) == {"fine_tune": 2}  # bool | int: a count
    assert config.parse_overrides(["gate=vector"]) == {"gate": "vector"}
    assert config.parse_overrides([]) == {}


@pytest.mark.parametrize("items, message", [
    (["epoch=2"], r"Unknown profile field 'epoch' \(did you mean 'epochs'\?\)\. "
                  r"Valid fields: dataset, .*batch_size, .*epochs"),
    (["epochs=2.5"], r"epochs='2\.5': epochs takes a whole number \(e\.g\. epochs=24\)"),
    (["lr=fast"], r"lr='fast': lr takes a number"),
    (["feature_cache=1"], r"feature_cache takes true/false \(e\.g\. feature_cache=true\)"),
    (["fine_tune=some"], r"fine_tune takes true/false or a whole number"),
    (["epochs"], r"'epochs' is not FIELD=VALUE"),
    (["name=mine"], r"choose it with --profile"),
    (["epochs=1", "epochs=2"], r"'epochs' is set twice"),
    (["semi_sampling_p=0.5"], r"now 'expected_context_p'"),
])
def test_a_bad_override_names_the_field_and_what_it_takes(items, message):
    with pytest.raises(ValueError, match=message):
        config.parse_overrides(items)


def test_cli_overrides_build_a_variant_beside_the_course(course, capsys):
    from sat_helpers.cli import main

    variant = get_profile("tiny", min_word_freq=2, lam=0.5)
    settings = ["--set", "min_word_freq=2", "lam=0.5"]
    assert main(["data", "--profile", "tiny", *settings]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(prepared_dir(variant))
    assert main(["train", "--profile", "tiny", "--device", "cpu", *settings]) == 0
    assert str(tr.run_dir(variant)) in capsys.readouterr().out
    assert (tr.run_dir(variant) / "best.pt").is_file() and tr.run_dir(variant) != tr.run_dir(course)
    assert not tr.run_dir(course).exists() and not prepared_dir(course).exists()
    assert main(["evaluate", "--profile", "tiny", "--no-meteor", "--device", "cpu", *settings]) == 0
    assert str(tr.run_dir(variant) / "best.pt") in capsys.readouterr().out
    assert main(["train", "--profile", "tiny", "--set", "epoch=1"]) == 1
    assert "Unknown profile field 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "x.pt", "--set", "lam=0.5"]) == 1
    assert "give one or the other" in capsys.readouterr().err

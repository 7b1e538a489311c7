"""benchmarks/compare.py (make bench): the verdict, the base's export, the paired timing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_decoder  # noqa: E402
import compare  # noqa: E402


def test_a_fall_beyond_the_noise_is_a_regression():
    base = {"training step": [4.0, 4.2, 4.1], "beam search": [12.0, 14.0, 13.0]}
    work = {"training step": [3.0, 3.2, 3.1], "beam search": [11.5, 15.0, 12.5]}
    rows, fell = compare.verdicts({"base": base, "work": work})
    assert fell
    assert {r["benchmark"]: r["verdict"] for r in rows} == {
        "training step": "REGRESSION", "beam search": "ok"}  # 0.5 below, with a spread of 3.5
    assert rows[0]["noise"] == "0.20" and rows[0]["work"].startswith("3.10x")
    _, fell = compare.verdicts({"base": base, "work": base})
    assert not fell


def test_the_base_is_exported_with_its_own_package(tmp_path):
    tree = compare.export("HEAD", tmp_path)
    assert (tree / "sat_helpers" / "decoder.py").is_file() and not (tree / ".git").exists()


def test_paired_timing_runs_both_formulations(monkeypatch):
    for key, value in bench_decoder.SMOKE.items():
        monkeypatch.setitem(bench_decoder.SIZES, key, value)
    result = bench_decoder.measure_pair("paper model (scalar β, deep output)", steps=1, threads=1)
    assert result["seed_s"] > 0 and result["ours_s"] > 0
    assert Path(result["module"]).parent.name == "sat_helpers"

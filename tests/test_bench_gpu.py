"""benchmarks/bench_gpu.py at tiny sizes: its seed formulations and ours agree, on any device."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_decoder  # noqa: E402
import bench_gpu  # noqa: E402
import bench_search  # noqa: E402


@pytest.fixture
def tiny_sizes(monkeypatch):
    """bench_gpu's --smoke sizes, undone after the test."""
    for key, value in bench_decoder.SMOKE.items():
        monkeypatch.setitem(bench_decoder.SIZES, key, value)
    for name, value in bench_gpu.SMOKE_SEARCH.items():
        monkeypatch.setattr(bench_search, name, value)


def test_seed_and_ours_agree_at_tiny_sizes(tiny_sizes, device):
    check = bench_gpu.check_step(device)
    assert check["ours"] == pytest.approx(check["seed"], rel=1e-5)
    search = bench_gpu.search_both(None, device, images=6, repeats=1)
    assert search["same"] == 6 and search["ours"]["tokens"] == search["seed"]["tokens"]
    assert any(search["ours"]["tokens"])  # not six empty captions


def test_a_timed_step_trains(tiny_sizes, device):
    for variant in ("seed", "ours"):
        result = bench_gpu.time_step(variant, None, device, steps=2)
        assert result["seconds"] > 0
        assert result["peak_mib"] > 0 if device.type == "cuda" else math.isnan(result["peak_mib"])

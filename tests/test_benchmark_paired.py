"""benchmarks/harness.py's paired_ratio (train_step.py --paired): the ratio and its interval, against hand-computed values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("benchmark_harness", ROOT / "benchmarks" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_ratio_is_the_geometric_mean_of_round_ratios(harness):
    # JAX/PyTorch speed = torch seconds / JAX seconds: rounds at 1.1x and 1/1.1x cancel
    result = harness.paired_ratio([0.1, 0.11], [0.11, 0.1])
    assert result["geomean"] == pytest.approx(1.0) and result["per_round"] == [1.1, 0.909]
    # logs ±ln 1.1: sd = ln 1.1 · √2, half-width = t(0.975, 1) · sd / √2 = 12.7062 · ln 1.1
    half = 12.7062 * math.log(1.1)
    assert result["ci"] == pytest.approx([math.exp(-half), math.exp(half)], abs=1e-3)  # the JSON keeps 3 decimals


def test_identical_rounds_give_a_zero_width_interval(harness):
    result = harness.paired_ratio([0.1, 0.1, 0.1], [0.13, 0.13, 0.13])
    assert result["geomean"] == pytest.approx(1.3) and result["ci"] == pytest.approx([1.3, 1.3])


def test_one_round_has_no_interval(harness):
    result = harness.paired_ratio([0.1], [0.1])
    assert result["rounds"] == 1 and "ci" not in result
    with pytest.raises(ValueError):
        harness.paired_ratio([0.1, 0.2], [0.1])  # rounds must pair up

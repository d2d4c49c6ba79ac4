"""The cost estimate (nt_robust.studies.cost): FLOPs that do not depend on this host's kernels,
device-hours against a hand computation, the scaled memory plan against real compiles, and
the messages for bad input."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_flops import _step_band, wrn_count  # noqa: E402 (the hand counts live beside the FLOP tests)

from nt_robust.train import cost as step_cost  # noqa: E402
from nt_robust.config import ConfigError, load_config  # noqa: E402
from nt_robust.models.registry import estimate_model_size  # noqa: E402
from nt_robust.studies import cost  # noqa: E402
from nt_robust.studies.sweep import load_study  # noqa: E402
from nt_robust.train import ExperimentConfig  # noqa: E402

SYNTHETIC = SimpleNamespace(image_shape=(8, 8, 1), num_classes=4, train=448, val=64, test=256)


def _base(tmp_path: Path, conv_impl: str = "auto", dtype: str = "float32") -> Path:
    base = tmp_path / f"base_{conv_impl}_{dtype}.toml"
    base.write_text(f'''name = "tiny"
[data]
dataset = "synthetic"
val_size = 64
crop_padding = 0
flip = false
[model]
arch = "wrn"
depth = 10
conv_impl = "{conv_impl}"
dtype = "{dtype}"
[objective]
kind = "trades"
[train_attack]
num_steps = 2
[eval]
val_examples = 64
test_examples = 64
[eval.attack]
num_steps = 3
[train]
epochs = 2
batch_size = 8
progress = false
''')
    return base


def _study(tmp_path: Path, **base_options):
    spec = tmp_path / f"study_{'_'.join(map(str, base_options.values())) or 'default'}.toml"
    spec.write_text(f'''name = "tiny_cost"
base_config = "{_base(tmp_path, **base_options)}"
runs_root = "{tmp_path / 'runs'}"
seeds = [0, 1]
[grid]
"model.width" = [1, 2]
"objective.lam" = [1.0, 6.0]
''')
    return load_study(spec)


def _config(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, ["data.dataset=synthetic", "data.crop_padding=0", "data.flip=false",
                                                "train.batch_size=8", "train_attack.num_steps=2", *overrides])


def test_counts_are_cached_by_what_they_count(tmp_path, monkeypatch):
    """A second estimate of the same step computes nothing; another step, or the cache turned
    off, computes again; an unreadable cache file is ignored, not fatal."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NT_ROBUST_ESTIMATE_CACHE", "on")
    calls = []
    compute = lambda: calls.append(1) or {"flops_per_step": 1.0}  # noqa: E731
    assert cost.cached("flops", ("a", (8, 8, 1)), compute) == {"flops_per_step": 1.0}
    assert cost.cached("flops", ("a", (8, 8, 1)), compute) == {"flops_per_step": 1.0} and len(calls) == 1
    cost.cached("flops", ("b", (8, 8, 1)), compute)
    assert len(calls) == 2
    (tmp_path / "cache" / "nt_robust" / "estimates.json").write_text("{not json")
    cost.cached("flops", ("a", (8, 8, 1)), compute)
    assert len(calls) == 3
    monkeypatch.setenv("NT_ROBUST_ESTIMATE_CACHE", "off")
    cost.cached("flops", ("a", (8, 8, 1)), compute)
    assert len(calls) == 4


def test_device_estimate_matches_a_hand_computation_whatever_this_host_runs(tmp_path, capsys):
    """H100 device-hours of a tiny WRN study against a hand count: per width, FLOPs per step in
    the hand band (test_flops._step_band), seconds = FLOPs / (0.4 x 494.5 TFLOP/s, TF32),
    hours = runs x epochs x seconds x (steps per epoch + eval points x f / batch) / 3600 with
    f = (3 + 12) / (2 + 2). The same numbers whichever conv_impl the config ("auto" on this
    host, "native" through the command line) would run."""
    from nt_robust.cli import main

    reference = cost.estimate_cost(_study(tmp_path, conv_impl="xla"), device="h100", mfu=0.4)
    auto = cost.estimate_cost(_study(tmp_path, conv_impl="auto"), device="h100", mfu=0.4)
    assert [(r["flops_per_step"], r["hours"], r["peak_bytes"]) for r in auto] == \
           [(r["flops_per_step"], r["hours"], r["peak_bytes"]) for r in reference]
    for row, width in zip(reference, (1, 2)):
        counts = wrn_count(10, width, 8, 8, 1, 4)
        config = _config("model.arch=wrn", "model.depth=10", f"model.width={width}", "objective.kind=trades")
        params = estimate_model_size(config.model, 4, (8, 8, 1))["parameters"]
        # the elementwise bound of test_flops' WRN-34-10 band: per forward-equivalent (2K + 7 = 11)
        # 16 per BN input element and 40 per logit, 64 per input element per attack step, SGD
        elementwise = 16 * counts["bn_elements"] * 11 + 64 * 64 * 2 + 40 * 4 * 11 + 10 * params / 8
        low, high = _step_band(config, (8, 8, 1), counts["macs"], counts["stem_macs"], elementwise)
        seconds = lambda f: f * 8 / (0.4 * 494.5e12)  # noqa: E731  (per-image FLOPs x batch)
        hours = lambda s: 4 * 2 * s * (448 // 8 + 128 * (15 / 4) / 8) / 3600  # noqa: E731
        assert row["runs"] == 4 and row["steps_per_epoch"] == 56 and row["device"] == "h100"
        assert hours(seconds(low)) <= row["hours"] <= hours(seconds(high)), (row, hours(seconds(low)))
    assert main(["study", str(_study(tmp_path, conv_impl="native").spec_path), "--estimate", "--device", "h100"]) == 0
    out = capsys.readouterr().out
    assert f"{sum(r['hours'] for r in reference):.2f} device-hours in total" in out  # native: the same plan
    assert "this host's XLA buffer plan of WRN-10-1 at batch 8, scaled" in out


def test_scaled_memory_plan_against_real_compiles(tmp_path):
    """The plan is exact where it was compiled (width 1, batch 8) and within a factor 2 of a
    real compile at width 2 and batch 16 (the estimate's stated uncertainty); bfloat16 halves
    the activations' part."""
    splits = SYNTHETIC
    one = _config("model.arch=wrn", "model.depth=10", "model.width=1", "objective.kind=trades")
    plan = cost.memory_plan(one, splits)
    assert plan["batch"] == 8
    exact = cost.scaled_peak(plan, one, splits, plan["state_bytes"])
    assert exact == plan["state_bytes"] + plan["temp_bytes"]
    two = _config("model.arch=wrn", "model.depth=10", "model.width=2", "objective.kind=trades", "train.batch_size=16")
    step, state, images, labels = step_cost.abstract_step(step_cost.xla_implementations(two), (8, 8, 1), 4, 16)
    compiled = step_cost.memory_bytes(step.lower(state, images, labels).compile())
    predicted = cost.scaled_peak(plan, two, splits, step_cost.state_bytes(state))
    real = step_cost.state_bytes(state) + compiled["temp"]
    assert 0.5 <= predicted / real <= 2.0, (predicted, real)
    half = dataclasses.replace(two, model=dataclasses.replace(two.model, dtype="bfloat16"))
    assert cost.scaled_peak(plan, half, splits, step_cost.state_bytes(state)) - step_cost.state_bytes(state) == \
        pytest.approx((predicted - step_cost.state_bytes(state)) / 2)


def test_unknown_device_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="h100.*tpu-v5e"):
        cost.estimate_cost(_study(tmp_path), device="h900")


def test_a_width_that_does_not_fit_says_by_how_much():
    rows = [{"model": f"WRN-34-{k}", "runs": 1, "epochs": 1, "steps_per_epoch": 1, "flops_per_step": 1e12,
             "seconds_per_step": 1.0, "hours_per_run": 1.0, "hours": 1.0, "peak_bytes": peak * 2**30,
             "memory_bytes": 80 * 2**30, "fits": peak <= 80, "how": "x", "device": "h100", "batch_size": 128,
             "memory_how": "a plan"} for k, peak in ((10, 40), (20, 120))]
    text = cost.format_estimate(rows)
    assert "NO (1.5x the memory)" in text
    assert "do not fit: WRN-34-20 (needs 120.0 GiB, 40.0 GiB more" in text and "fit WRN-34-10;" in text

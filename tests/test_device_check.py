"""benchmarks/device_check.py --smoke: the GPU check's code paths, on CPU with tiny shapes.

The smoke run here covers every measuring part but the mini-sweep (``study``: a whole
``nt-robust study`` run, tested in tests/studies/); for that part this checks that the
spec it writes loads as a study with one run per width. ``tests`` (the fast subset) is
not run from inside the suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_writes_one_json_with_positive_numbers(device_check, tmp_path):
    out = tmp_path / "device_check.json"
    args = argparse.Namespace(out=str(out), smoke=True, tests=False, budget_scale=1.0, work_dir=str(tmp_path),
                              parts="trades_step,width_memory,attacks,scaling,data_path")
    device_check.run(args)
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"trades_step", "width_memory", "attacks", "scaling", "data_path"}
    assert not [name for name, part in parts.items() if "error" in part], parts
    assert report["environment"]["backend"] == "cpu" and report["smoke"] is True

    steps = parts["trades_step"]
    assert _positive(steps["flops"]["flops_per_image"])
    ran = [r for r in steps["results"] if "images_per_s" in r]
    if report["model_fields_for_precision"] == ["dtype", "matmul_precision"]:
        assert {r["precision"] for r in ran} == {"float32-highest", "tf32", "bfloat16"}
    else:  # before model.dtype / model.matmul_precision exist: every variant skipped, saying why
        assert not ran and all("item 1" in s["reason"] for s in steps["skipped"])
    for r in ran:
        assert not [k for k in ("images_per_s", "flops_per_s", "compile_s", "seconds_per_step") if not _positive(r[k])], r
        assert r["mfu"] is None and r["loss_finite"]  # no CPU peak -> no MFU
        assert r["xla_memory"]["peak_bytes"] > 0
    if ran:
        memory = parts["width_memory"]["results"]
        assert memory and all(m["fits"] is True and m["xla_memory"]["peak_bytes"] > 0 for m in memory)
        for name in ("pgd20-0.007", "autoattack-standard"):
            stages = parts["attacks"]["results"][name]["stages"]
            assert stages and all(_positive(s["images_per_s"]) for s in stages.values()), stages
        data = parts["data_path"]
        assert 0 < data["host_share_of_step"] < 1 and _positive(data["device_resident_seconds_per_step"])
    assert "device visible" in parts["scaling"]["skipped"]  # one CPU device in the suite


def test_mini_sweep_spec_loads_as_a_study(device_check, tmp_path):
    from nt_robust.studies.sweep import load_study

    study = dict(device_check.FULL["study"], widths=(1, 2))
    spec = device_check.write_mini_sweep(tmp_path / "mini", study, "fashion_mnist")
    loaded = load_study(spec, tmp_path / "runs")
    assert sorted(r.width for r in loaded.runs()) == [1, 2]
    assert {r.stage for r in loaded.runs()} == {"grid"}

"""benchmarks/: the scripts split out of train_step.py import, parse their command lines, and
train_step.py's JSON keeps the keys docs/benchmarks.md (and its own docstring) read.

The train_step run is real (the project's step and the PyTorch reference on a 4x4 image,
batch 2, one timed step); only the child process is skipped: ``run_child`` runs the
worker in this process (its ``--worker`` entry is the same ``_worker_main``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# What docs/benchmarks.md and train_step.py's docstring read from one worker's result.
JAX_KEYS = {"framework", "parameters", "images_per_s", "images_per_cpu_s", "first_step_s", "timed_steps",
            "s_per_step_median", "compile_s", "trace_lower_s", "compile_peak_rss_mb", "step_peak_rss_mb",
            "xla_temp_mb", "page_faults_per_step", "memory_method", "conv_impl", "dense_impl", "attack_loop",
            "dtype", "devices", "malloc", "gflop_per_image", "tflop_per_s", "mfu", "flops_per_step"}
TORCH_KEYS = {"framework", "parameters", "images_per_s", "images_per_cpu_s", "first_step_s", "step_peak_rss_mb",
              "page_faults_per_step", "torch_threads", "torch_variant", "device", "malloc"}
TOP_KEYS = {"benchmark", "cpu", "cores", "versions", "XLA_FLAGS", "command", "settings", "torch_note",
            "summary", "results", "load_1min_start", "load_1min_end", "wall_s"}
SUMMARY_KEYS = {"jax_natural_images_per_s", "torch_natural_images_per_s", "jax_natural_gflop_per_image",
                "jax_natural_tflop_per_s", "jax_natural_mfu", "jax_over_torch_natural"}


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train_step", "native_dw", "native_conv_fwd", "native_matmul", "attacks",
                                  "step_flops"])
def test_the_benchmarks_that_share_the_harness_print_their_help(name, monkeypatch, capsys):
    module = _load(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_probes_are_the_documented_ones(monkeypatch):
    train_step = _load("train_step", monkeypatch)
    docs = (ROOT / "docs" / "benchmarks.md").read_text() + train_step.__doc__
    assert set(train_step.PROBES) == {"cache-keys", "conv-layout", "conv-grads", "transposes", "step-parts",
                                      "loop-input-gradient"}
    assert all(f"--probe {name}" in docs for name in train_step.PROBES)


def test_train_step_json_keeps_its_keys(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    import json

    train_step = _load("train_step", monkeypatch)
    seen = []

    def in_process(script, spec, timeout):
        assert Path(script) == BENCHMARKS / "train_step.py"
        seen.append(spec["framework"])
        return json.loads(json.dumps(train_step.jax_worker(spec) if spec["framework"] == "jax"
                                     else train_step.torch_worker(spec)))

    monkeypatch.setattr(train_step, "run_child", in_process)
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--models", "mlp", "--objectives", "natural",
                                      "--batch", "2", "--input", "4,4,1", "--steps", "1", "--min-seconds", "0",
                                      "--warmup", "0", "--devices", "1", "--conv-impl", "xla", "--dense-impl", "xla",
                                      "--no-library-xla-flags", "--no-library-malloc", "--torch-threads", "1",
                                      "--quiet"])
    threads = torch.get_num_threads()
    try:
        train_step.main()
    finally:
        torch.set_num_threads(threads)  # torch_worker sets it for the process
    out = json.loads(capsys.readouterr().out)
    assert seen == ["jax", "torch"]
    assert TOP_KEYS <= set(out), TOP_KEYS - set(out)
    runs = out["results"]["mlp"]["natural"]
    assert JAX_KEYS <= set(runs["jax"]), JAX_KEYS - set(runs["jax"])
    assert TORCH_KEYS <= set(runs["torch"]), TORCH_KEYS - set(runs["torch"])
    assert SUMMARY_KEYS == set(out["summary"]["mlp"])
    # MLP-2x256 on 16 inputs, 10 classes: (16·256 + 256) + (256·256 + 256) + (256·10 + 10) in both frameworks
    assert runs["jax"]["parameters"] == runs["torch"]["parameters"] == 16 * 256 + 256 + 256 * 256 + 256 + 2570
    assert runs["jax"]["timed_steps"] == runs["torch"]["timed_steps"] == 1
    assert runs["jax_over_torch"] == pytest.approx(runs["jax"]["images_per_s"] / runs["torch"]["images_per_s"],
                                                   abs=1e-3)

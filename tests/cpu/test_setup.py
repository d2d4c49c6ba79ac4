"""XLA:CPU set-up: the library's flags are added once and never over a user's own choice;
the CPU device count is validated and refused once the backend runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nt_robust.cpu import choice
from nt_robust.cpu.devices import auto_cpu_devices, set_cpu_devices
from nt_robust.cpu.setup import configure_xla_cpu, elementwise_fusions_pay
from nt_robust.cpu.xla_flags import (CPU_FLAGS, CPU_SCHEDULER_FLAG, YNN_ELTWISE_FLAG, YNN_FUSION_FLAG,
                                     jaxlib_version)
from nt_robust.cpu_host import backend_started


@pytest.fixture
def before_the_backend(monkeypatch):
    """configure_xla_cpu as at the start of a fresh process (this one may have run JAX already)."""
    monkeypatch.setattr("nt_robust.cpu.setup.backend_started", lambda: False)


def test_flags_are_appended_to_existing_flags_once(monkeypatch, before_the_backend):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr("nt_robust.cpu.xla_flags.jaxlib_version", lambda: (0, 10, 2))
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.setenv("NT_ROBUST_CONV_IMPL_AUTO", "shifted_matmul")  # XLA's convolutions: the elementwise fusions pay
    assert configure_xla_cpu() is True
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {CPU_SCHEDULER_FLAG} {YNN_ELTWISE_FLAG}"
    assert configure_xla_cpu() is False  # a second call adds nothing
    for _, option, _, _ in CPU_FLAGS:
        assert os.environ["XLA_FLAGS"].count(option) == 1


@pytest.mark.parametrize("version,expected", [((0, 9, 9), ""), ((0, 10, 0), CPU_SCHEDULER_FLAG),
                                              ((0, 10, 2), f"{CPU_SCHEDULER_FLAG} {YNN_ELTWISE_FLAG}"),
                                              ((0, 11, 2), CPU_SCHEDULER_FLAG)])
def test_each_flag_is_added_only_for_the_jaxlibs_it_was_checked_on(monkeypatch, before_the_backend, version, expected):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr("nt_robust.cpu.xla_flags.jaxlib_version", lambda: version)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("NT_ROBUST_CONV_IMPL_AUTO", "shifted_matmul")  # XLA's convolutions: the elementwise fusions pay
    assert configure_xla_cpu() is bool(expected)
    assert os.environ["XLA_FLAGS"] == expected


def test_users_choice_and_opt_out_are_respected(monkeypatch, before_the_backend):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr("nt_robust.cpu.xla_flags.jaxlib_version", lambda: (0, 10, 2))
    own = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT --xla_cpu_experimental_ynn_fusion_type=individual_dot"
    monkeypatch.setenv("XLA_FLAGS", own)
    assert configure_xla_cpu() is False
    assert os.environ["XLA_FLAGS"] == own
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("NT_ROBUST_XLA_CPU_FLAGS", "off")
    assert configure_xla_cpu() is False and os.environ["XLA_FLAGS"] == ""


def test_elementwise_fusions_are_left_out_where_auto_runs_the_native_kernels(monkeypatch, before_the_backend,
                                                                            tmp_path):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr("nt_robust.cpu.xla_flags.jaxlib_version", lambda: (0, 10, 2))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for forced, flag in (("native", YNN_FUSION_FLAG), ("xla", YNN_ELTWISE_FLAG), ("shifted_matmul", YNN_ELTWISE_FLAG)):
        monkeypatch.setenv("NT_ROBUST_CONV_IMPL_AUTO", forced)
        monkeypatch.setenv("XLA_FLAGS", "")
        assert configure_xla_cpu() and os.environ["XLA_FLAGS"] == f"{CPU_SCHEDULER_FLAG} {flag}"
    # Not forced: measured once per machine in a subprocess, under the flags without the fusions
    # (the key the choice is cached under), then read from the cache.
    monkeypatch.delenv("NT_ROBUST_CONV_IMPL_AUTO")
    seen = []

    def measure(timeout=600.0):
        seen.append(os.environ["XLA_FLAGS"])
        return "native"

    monkeypatch.setattr(choice, "measure_in_subprocess", measure)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert configure_xla_cpu() and os.environ["XLA_FLAGS"] == f"{CPU_SCHEDULER_FLAG} {YNN_FUSION_FLAG}"
    assert seen == [f"{CPU_SCHEDULER_FLAG} {YNN_FUSION_FLAG}"]
    monkeypatch.setattr(choice, "cached_impl", lambda: "xla")
    assert elementwise_fusions_pay() and len(seen) == 1
    monkeypatch.setattr(choice, "cached_impl", lambda: None)
    monkeypatch.setattr(choice, "measure_in_subprocess", lambda timeout=600.0: None)  # it failed
    assert elementwise_fusions_pay()  # as before the choice existed


def test_the_cached_choice_is_found_under_the_flags_it_was_measured_with(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", f"{CPU_SCHEDULER_FLAG} {YNN_FUSION_FLAG}")
    assert choice.cached_impl() is None
    key = choice.machine_key()
    choice.cache_path().parent.mkdir(parents=True)
    choice.cache_path().write_text(json.dumps({key: {"impl": "native", "xla_ms": 1.0}}))
    assert choice.cached_impl() == "native"
    monkeypatch.setenv("XLA_FLAGS", f"{CPU_SCHEDULER_FLAG} {YNN_ELTWISE_FLAG}")  # a process that added them
    assert choice.machine_key() == key and choice.cached_impl() == "native"
    choice.cache_path().write_text("{not json")
    assert choice.cached_impl() is None


def test_no_flag_is_added_once_the_backend_runs_so_children_compile_like_their_parent(monkeypatch):
    # The flags would no longer reach this process's compiler, but environment.json would
    # record them and subprocesses would inherit them: a SIGKILL-resume test compared a child's
    # steps with this process's and found rounding differences (CI, Intel Xeon, jaxlib 0.10.2).
    from nt_robust.cli import main

    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr("nt_robust.cpu.xla_flags.jaxlib_version", lambda: (0, 10, 2))
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    jax.devices()
    assert backend_started()
    assert configure_xla_cpu() is False and os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    assert main(["info"]) == 0  # a caller of main(argv) in a process that already ran JAX
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_cpu_device_count_is_validated_and_refused_once_the_backend_runs(monkeypatch):
    monkeypatch.delenv("NT_ROBUST_CPU_DEVICES", raising=False)
    assert set_cpu_devices() is None  # nothing asked: JAX's default stands
    monkeypatch.setenv("NT_ROBUST_CPU_DEVICES", "two")
    with pytest.raises(ValueError, match="NT_ROBUST_CPU_DEVICES must be a positive integer"):
        set_cpu_devices()
    with pytest.raises(ValueError, match="integer >= 1"):
        set_cpu_devices(0)
    jax.devices()  # the backend is running now
    with pytest.raises(RuntimeError, match="already started its backend"):
        set_cpu_devices(3)


@pytest.mark.parametrize("models,cores,expected", [
    ([("wrn", 128, 256)], 2, 2),                       # conv nets: one device per core
    ([("cnn", 128, 256), ("wrn", 128, 256)], 4, 4),
    ([("wrn", 128, 256)], 64, 8),                      # at most MAX_AUTO_CPU_DEVICES
    ([("cnn", 96, 100)], 8, 4),                        # the largest count that divides every batch
    ([("cnn", 128, 100)], 8, 4),
    ([("mlp", 128, 256)], 2, 1),                       # MLP steps are slower split
    ([("wrn", 128, 256), ("mlp", 128, 256)], 2, 1),   # one count per process: any MLP keeps one
    ([], 2, 1),
])
def test_auto_cpu_devices(models, cores, expected):
    assert auto_cpu_devices(models, cores=cores) == expected


def _environment_after_cli_train(tmp_path, arch, *args):
    overrides = ["data.dataset=synthetic", "data.val_size=64", f"model.arch={arch}", "model.width=1",
                 "model.depth=10", "train.batch_size=64", "train.epochs=1", "objective.kind=natural",
                 "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=64", "eval.attack.num_steps=1",
                 "eval.lipschitz=none", "train.progress=false", "data.train_subset=128"]
    env = {k: v for k, v in os.environ.items() if k != "NT_ROBUST_CPU_DEVICES"}
    command = [sys.executable, "-m", "nt_robust.cli", "train", "--run-dir", str(tmp_path / arch), *args]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, env={**env, "JAX_PLATFORMS": "cpu", "NT_ROBUST_COMPILATION_CACHE": "off"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / arch / "environment.json").read_text())


def test_the_cli_splits_the_cpu_for_conv_nets_only_and_records_why(tmp_path):
    conv = _environment_after_cli_train(tmp_path, "wrn")
    expected = auto_cpu_devices([("wrn", 64, 64)])
    assert conv["device_count"] == expected and conv["cpu_devices"]["count"] == expected
    assert conv["cpu_devices"]["source"].startswith("auto")
    mlp = _environment_after_cli_train(tmp_path, "mlp")
    assert mlp["device_count"] == 1 and mlp["cpu_devices"]["source"].startswith("auto")
    asked = _environment_after_cli_train(tmp_path / "asked", "wrn", "--cpu-devices", "1")
    assert asked["device_count"] == 1 and asked["cpu_devices"]["source"] == "--cpu-devices"


_FLAGGED_MATH = r"""
import json, sys
import numpy as np
from nt_robust.cpu.setup import configure_xla_cpu
configure_xla_cpu()
import jax, jax.numpy as jnp
rng = np.random.default_rng(0)
a, b, c = (rng.standard_normal((64, 8, 8, 16)).astype(np.float32) for _ in range(3))
def fused(a, b, c):  # the shape of a BatchNorm-backward fusion feeding a weight-gradient convolution
    return jnp.transpose(a * b + c, (3, 1, 2, 0)), jnp.exp(a), jnp.tanh(b), jax.lax.rsqrt(jnp.abs(c) + 0.5)
compiled = jax.jit(fused).lower(a, b, c).compile()
outputs = [np.asarray(o, np.float64) for o in compiled(a, b, c)]
json.dump({"ynn": "ynn" in compiled.as_text(), "outputs": [o.ravel().tolist() for o in outputs]}, sys.stdout)
"""


def test_the_library_flags_keep_elementwise_math_at_float32_accuracy():
    """With the library's XLA flags, elementwise fusions run through YNNPACK (on the jaxlibs
    the flag is for): their values must stay float32-accurate against float64 numpy. Bounds:
    a*b + c rounds at most twice, so |error| <= 2 eps (|a b| + |c|); the transpose moves values
    exactly; exp, tanh and rsqrt of libm quality are within a few ulps (8 allowed; a bfloat16
    approximation is off by >= 2**15 ulps, a fast-math one by hundreds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NT_ROBUST_XLA_CPU_FLAGS")}
    env["NT_ROBUST_CONV_IMPL_AUTO"] = "xla"  # XLA's convolutions: the library adds the elementwise fusions
    done = subprocess.run([sys.executable, "-c", _FLAGGED_MATH], env={**env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    version = jaxlib_version()
    if version is not None and (0, 10, 2) <= version < (0, 11, 0):
        assert result["ynn"], "the elementwise fusion did not run through YNNPACK with the library's flags"
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((64, 8, 8, 16)).astype(np.float32).astype(np.float64) for _ in range(3))
    eps = float(np.finfo(np.float32).eps)
    fused, exp, tanh, rsqrt = (np.asarray(o) for o in result["outputs"])
    exact = np.transpose(a * b + c, (3, 1, 2, 0)).ravel()
    bound = 2 * eps * np.transpose(np.abs(a * b) + np.abs(c), (3, 1, 2, 0)).ravel()
    assert np.all(np.abs(fused - exact) <= bound)
    for got, want in ((exp, np.exp(a)), (tanh, np.tanh(b)), (rsqrt, 1 / np.sqrt(np.abs(c) + 0.5))):
        want = want.ravel()
        spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(got - want) / spacing) <= 8

"""The one CPU-host gate (nt_robust.cpu_host): on a simulated accelerator host no kernel is
built, no subprocess measures anything, no XLA:CPU flag is added, the CPU is not split,
malloc is left alone, and environment.json says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nt_robust import cpu_host

SIMULATED_GPU_HOST = r"""
import json, os, subprocess, sys
import nt_robust.cpu_host as gate
gate.installed_distributions = lambda: ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"]
started = []
real_run = subprocess.run
def spy(command, *args, **kwargs):
    started.append(" ".join(map(str, command)))
    return real_run(command, *args, **kwargs)
subprocess.run = spy
from nt_robust.cpu import choice, native
def no_build(*args, **kwargs):
    raise AssertionError("the native kernels were built on an accelerator host")
native.build = no_build
choice.measure = choice.measure_dense = no_build
from jax import lax
from nt_robust.cpu.devices import set_cpu_devices
from nt_robust.cpu.malloc import tune_malloc
from nt_robust.cpu.ops import resolve_conv_impl, resolve_dense_impl
from nt_robust.cpu.setup import configure_xla_cpu
from nt_robust.environment import environment_info
from nt_robust.models import ModelConfig, create_model
flags_before = os.environ.get("XLA_FLAGS", "")
result = {"malloc_tuned": tune_malloc(), "devices_set": set_cpu_devices(2, source="--cpu-devices"),
          "flags_added": configure_xla_cpu(), "flags_unchanged": os.environ.get("XLA_FLAGS", "") == flags_before}
result["resolved"] = [resolve_conv_impl("auto"), resolve_conv_impl("native"), resolve_dense_impl("auto"),
                      resolve_dense_impl("native")]
result["models_take_xla"] = [
    create_model(ModelConfig("wrn", conv_impl=impl), 10).conv is lax.conv_general_dilated
    and create_model(ModelConfig("mlp", dense_impl=impl), 10).dot_general is lax.dot_general for impl in ("auto", "native")]
info = environment_info(conv_impl="native", dense_impl="native")
result["info"] = {k: info[k] for k in ("cpu_host", "conv_impl_auto", "conv_impl_auto_choice", "native_conv",
                                       "dense_impl_auto", "native_dense", "cpu_devices", "malloc", "device_count")}
result["subprocesses"] = [c for c in started if "g++" in c or sys.executable in c or "python" in c]
print(json.dumps(result))
"""


def test_a_simulated_accelerator_host_runs_none_of_the_cpu_machinery(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "NT_ROBUST_CONV_IMPL_AUTO", "NT_ROBUST_DENSE_IMPL_AUTO", "XLA_FLAGS")}
    env["XDG_CACHE_HOME"] = str(tmp_path)  # an empty cache: "auto" would have to measure
    done = subprocess.run([sys.executable, "-c", SIMULATED_GPU_HOST], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["malloc_tuned"] is False and result["devices_set"] is None
    assert result["flags_added"] is False and result["flags_unchanged"] is True
    assert result["resolved"] == ["xla", "xla", "xla", "xla"]
    assert result["models_take_xla"] == [True, True]
    assert result["subprocesses"] == []   # no compiler, no measuring Python process
    info = result["info"]
    assert info["cpu_host"]["cpu"] is False and "jax-cuda12-plugin" in info["cpu_host"]["reason"]
    assert info["conv_impl_auto"] == info["dense_impl_auto"] == "xla"
    assert info["conv_impl_auto_choice"] is None and info["native_conv"] is None and info["native_dense"] is None
    assert "not applied: not a CPU host" in info["cpu_devices"]["source"] and info["device_count"] == 1
    assert "not a CPU host" in info["malloc"]["note"]
    assert not list(tmp_path.rglob("*.so")) and not (tmp_path / "nt_robust" / "conv_impl.json").exists()


@pytest.mark.parametrize("platforms, plugins, expected", [
    ("cpu", ["jax-cuda12-plugin"], True),       # asked for the CPU: a CPU host beside a plugin
    ("cuda,cpu", [], False),                    # the first platform decides
    ("tpu", [], False),
    ("", ["libtpu"], False),
    ("", ["jax-rocm60-plugin"], False),
    ("", ["jax", "jaxlib"], True),
])
def test_the_rule(monkeypatch, platforms, plugins, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(cpu_host, "installed_distributions", lambda: plugins)
    cpu_host.refresh()
    try:
        host = cpu_host.cpu_host()
        assert host.cpu is expected and bool(host) is expected and host.reason
    finally:
        monkeypatch.undo()
        cpu_host.refresh()
    assert cpu_host.cpu_host().cpu  # the suite itself runs on a CPU host

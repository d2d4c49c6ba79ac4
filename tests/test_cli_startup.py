"""The command line starts without JAX for help and --version, and says so before a first-use
measurement (issue 38's startup items)."""

from __future__ import annotations

import subprocess
import sys

from nt_robust.cpu import choice

NO_JAX = r"""
import sys
from nt_robust import cli
for argv in (["--version"], ["-h"], ["train", "-h"], ["study", "-h"], ["eval", "-h"]):
    try:
        cli.main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
print("JAX IMPORTED" if "jax" in sys.modules else "NO JAX")
"""


def test_help_and_version_do_not_import_jax():
    done = subprocess.run([sys.executable, "-c", NO_JAX], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "NO JAX"
    assert done.stdout.splitlines()[0].startswith("nt-robust 0.")


def test_a_first_use_measurement_is_announced_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NT_ROBUST_DENSE_IMPL_AUTO", raising=False)
    monkeypatch.setattr(choice, "measure_dense", lambda: {"xla_ms": 2.0, "native_ms": 1.0, "native_over_xla": 0.5})
    choice._say_once.cache_clear()
    choice.cpu_dense_choice.cache_clear()
    try:
        assert choice.cpu_dense_choice()["impl"] == "native"
        choice.cpu_dense_choice.cache_clear()
        choice.cpu_dense_choice()  # cached now: nothing measured, nothing said
    finally:
        choice.cpu_dense_choice.cache_clear()
    err = capsys.readouterr().err
    assert err.count("nt-robust: first use on this machine: timing xla / native") == 1
    assert "dense_impl = 'auto'" in err and str(tmp_path) in err

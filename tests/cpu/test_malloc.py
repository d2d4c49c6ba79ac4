"""glibc malloc tuning (nt_robust.cpu.malloc): where it applies, and that after it a worker
thread's large buffer is reused instead of re-mapped (counted in page faults, in a fresh
interpreter that imports what the CLI imports first, as the CLI does)."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from nt_robust.cpu import malloc

# A worker thread mallocs, fills and frees a buffer larger than a glibc thread arena
# (64 MB), twice; it prints the minor page faults of the second round and the page count.
PROBE = r"""
import ctypes, json, os, resource, sys, threading
import nt_robust.cli  # the CLI's imports come first, as in `nt-robust`
from nt_robust.cpu.malloc import malloc_settings, tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 96 << 20
faults = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start(); thread.join()
print(json.dumps({"tuned": tuned, "second_round_faults": faults[1], "pages": size // os.sysconf("SC_PAGE_SIZE"),
                  "settings": malloc_settings()}))
"""


def _probe(mode: str, tmp_path: Path, **env: str) -> dict:
    import os

    environment = {key: value for key, value in os.environ.items() if key != "NT_ROBUST_MALLOC"}
    environment.update(JAX_PLATFORMS="cpu", **env)
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc")
def test_tuned_malloc_reuses_a_worker_threads_large_buffer(tmp_path):
    tuned = _probe("tune", tmp_path)
    assert tuned["tuned"] is True and tuned["settings"]["settings"] == malloc.SETTINGS
    # reused: the pages are already mapped (a few faults for Python's own allocations)
    assert tuned["second_round_faults"] < 0.05 * tuned["pages"]
    if not _transparent_huge_pages_always():  # with huge pages for every mapping, few faults either way
        default = _probe("default", tmp_path)
        assert default["tuned"] is False
        # glibc's default: a fresh mmap each round, so every page faults again
        assert default["second_round_faults"] >= 0.9 * default["pages"]


def test_opt_out_and_accelerator_hosts_keep_glibcs_defaults(monkeypatch):
    from nt_robust import cpu_host

    def skip_reason(**env):
        for name in ("JAX_PLATFORMS", "NT_ROBUST_MALLOC"):
            if env.get(name) is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, env[name])
        cpu_host.refresh()
        return malloc._skip_reason()

    monkeypatch.setattr(cpu_host, "installed_distributions", lambda: ["jax", "jaxlib"])
    monkeypatch.setattr(malloc.platform, "system", lambda: "Linux")
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
    try:
        assert skip_reason() is None
        monkeypatch.setattr(cpu_host, "installed_distributions",
                            lambda: ["jax", "jax-cuda12-plugin", "jax-cuda12-pjrt"])
        assert "jax-cuda12-plugin" in skip_reason()
        assert skip_reason(JAX_PLATFORMS="cpu") is None  # asked for the CPU: tuned even beside a plugin
        assert "not the CPU backend" in skip_reason(JAX_PLATFORMS="cuda,cpu")
        assert "NT_ROBUST_MALLOC" in skip_reason(JAX_PLATFORMS="cpu", NT_ROBUST_MALLOC="default")
        monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("", ""))
        assert "glibc" in skip_reason(JAX_PLATFORMS="cpu")
    finally:
        monkeypatch.undo()
        cpu_host.refresh()


def test_tune_malloc_records_why_it_did_nothing(monkeypatch):
    monkeypatch.setattr(malloc, "_state", dict(malloc._state, tuned=False))
    monkeypatch.setenv("NT_ROBUST_MALLOC", "default")
    assert malloc.tune_malloc() is False
    assert malloc.malloc_settings() == {"tuned": False, "settings": None,
                                             "note": "NT_ROBUST_MALLOC asks for glibc's defaults"}

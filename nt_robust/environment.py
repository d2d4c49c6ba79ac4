"""What a run is computed with: versions, devices, processes, CPU model and ISA, git commit,
XLA flags, and what the CPU machinery chose (``nt_robust.cpu``); the persistent compilation cache.

    info = environment_info(conv_impl="auto", dense_impl="auto")   # saved as RUN_DIR/environment.json
    cpu_info()                     # {"model": "AMD EPYC ...", "vendor": ..., "isa": ["avx2", ...], "cores": 2}
    enable_compilation_cache()

Setting up the process for XLA:CPU (flags, devices, malloc) is ``nt_robust.cpu``'s job.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import jax

from nt_robust.cpu import ops
from nt_robust.cpu.devices import cpu_device_choice
from nt_robust.cpu.machine import cache_dir, cpu_info, describe_cpu, package_version
from nt_robust.cpu.malloc import malloc_settings
from nt_robust.cpu_host import cpu_host

__all__ = ["PACKAGES", "cpu_info", "describe_cpu", "enable_compilation_cache", "environment_info", "git_commit",
           "package_version", "package_versions"]

PACKAGES = ("nt_robust", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib")


def package_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in PACKAGES}


def git_commit() -> str | None:
    """The commit of the nt_robust checkout (with ``+dirty`` if modified), if it is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment_info(conv_impl: str = "auto", dense_impl: str = "auto") -> dict[str, Any]:
    """The record of this process (``conv_impl`` / ``dense_impl``: the run's ``model.conv_impl``
    and ``model.dense_impl``, whose native kernels are recorded where they run)."""
    devices = jax.devices()
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": cpu_info(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_host": cpu_host().as_record(),
        **ops.record(conv_impl, dense_impl),
        "cpu_devices": cpu_device_choice(),
        "malloc": malloc_settings(),
    }


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes (runs of a sweep that differ only in
    λ or seed share programs). ``NT_ROBUST_COMPILATION_CACHE=off`` disables it; any other
    value is the cache directory (default ``~/.cache/nt_robust/xla``)."""
    setting = os.environ.get("NT_ROBUST_COMPILATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return
    jax.config.update("jax_compilation_cache_dir", setting or str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

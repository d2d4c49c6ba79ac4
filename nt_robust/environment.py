"""What a run is computed with: versions, devices, processes, git commit; and the
persistent compilation cache.

    info = environment_info()      # saved as RUN_DIR/environment.json
    enable_compilation_cache()     # what the CLI does at start-up
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("nt_robust", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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


def environment_info() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
    }


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes (runs of a sweep that differ only in
    λ or seed share programs). ``NT_ROBUST_COMPILATION_CACHE=off`` disables it; any other
    value is the cache directory (default ``~/.cache/nt_robust/xla``)."""
    setting = os.environ.get("NT_ROBUST_COMPILATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    jax.config.update("jax_compilation_cache_dir", setting or str(cache_home / "nt_robust" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

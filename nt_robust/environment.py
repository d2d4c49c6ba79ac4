"""What a run is computed with: versions, devices, processes, CPU model and ISA, git commit,
XLA flags; the persistent compilation cache and XLA:CPU's scheduler.

    info = environment_info()      # saved as RUN_DIR/environment.json
    cpu_info()                     # {"model": "AMD EPYC ...", "vendor": ..., "isa": ["avx2", ...], "cores": 2}
    configure_xla_cpu()            # what the CLI does at start-up, before the backend starts
    enable_compilation_cache()
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

from nt_robust.models.conv import resolve_conv_impl

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


# Instruction-set features that change which float kernels XLA, Eigen, oneDNN and numpy
# pick (and so summation orders and rounding): what a result's machine is told apart by.
ISA_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve", "sve2")


def cpu_info(cpuinfo_path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name, vendor, the :data:`ISA_FEATURES` it has and the cores this
    process may use. Reads ``/proc/cpuinfo`` (Linux); elsewhere only what ``platform`` knows."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "vendor": None, "isa": [],
                            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                            "family": None, "model_number": None}
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor describes them all
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    info["model"] = fields.get("model name") or fields.get("cpu model") or info["model"]
    info["vendor"] = fields.get("vendor_id") or fields.get("cpu implementer")
    # "AMD EPYC" names Zen 4 (family 25) and Zen 5 (family 26) alike: the numbers tell them apart.
    info["family"], info["model_number"] = fields.get("cpu family"), fields.get("model")
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    info["isa"] = [feature for feature in ISA_FEATURES if feature in flags]
    return info


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line, e.g. ``AMD EPYC family 26 model 2 (2 cores; avx2 fma avx512f ...)`` (family and
    model numbers where /proc/cpuinfo has them; records from before they were kept lack them)."""
    info = info or cpu_info()
    numbers = (f" family {info['family']} model {info['model_number']}"
               if info.get("family") and info.get("model_number") else "")
    return f"{info['model']}{numbers} ({info['cores']} cores; {' '.join(info['isa']) or 'ISA unknown'})"


def environment_info() -> dict[str, Any]:
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
        "conv_impl_auto": resolve_conv_impl("auto"),
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


CPU_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def configure_xla_cpu() -> bool:
    """Ask XLA:CPU for its memory-optimized scheduler (what the CLI does at start-up).

    The default scheduler keeps the unrolled attack's activations alive: XLA plans 1.5 GB
    of temporaries for the small CNN's TRADES step, 0.3 GB with this one, and the step is
    no slower (docs/benchmarks.md). Takes effect only before JAX starts its backend (XLA
    reads ``XLA_FLAGS`` then), and only for CPU compiles. Left alone when ``XLA_FLAGS``
    already names a scheduler, when ``NT_ROBUST_XLA_CPU_FLAGS=off``, and on jaxlib older
    than 0.10 (where the flag was not checked; XLA aborts on flags it does not know).
    Returns whether the flag was added.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("NT_ROBUST_XLA_CPU_FLAGS", "").lower() in ("off", "0", "false", "no"):
        return False
    if "xla_cpu_scheduler_type" in flags:
        return False
    try:
        major, minor = (int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if (major, minor) < (0, 10):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_SCHEDULER_FLAG}".strip()
    return True


def set_cpu_devices(count: int | None = None) -> int | None:
    """Split the host CPU into ``count`` XLA devices (default: ``$NT_ROBUST_CPU_DEVICES``;
    neither: leave JAX's default of one). Training and its per-epoch evaluation then shard
    each batch over them exactly as over GPUs (protocol evaluations do not), so XLA:CPU keeps every core busy: with one device per
    core, conv-net TRADES steps ran ~1.5x faster here (docs/benchmarks.md). Results
    depend on the device count at float-rounding level, and it is recorded in
    environment.json. Must run before JAX starts its backend. Returns the count set."""
    if count is None:
        setting = os.environ.get("NT_ROBUST_CPU_DEVICES", "").strip()
        if not setting:
            return None
        if not setting.isdigit():
            raise ValueError(f"NT_ROBUST_CPU_DEVICES must be a positive integer, got {setting!r}")
        count = int(setting)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of CPU devices must be an integer >= 1, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as error:  # JAX refuses once its backend has started
        raise RuntimeError(f"cannot split the CPU into {count} devices: JAX has already started its "
                           "backend in this process; set the count first thing (nt-robust train|eval|study ... --cpu-devices N, "
                           "or NT_ROBUST_CPU_DEVICES=N in the environment)") from error
    return count

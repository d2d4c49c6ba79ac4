"""What the machine is: the CPU's model, numbers and ISA, installed versions, and nt_robust's
per-user cache. Reads files and package metadata only; starts no JAX backend::

    cpu_info()                 # {"model": "AMD EPYC ...", "vendor": ..., "isa": ["avx2", ...], "cores": 2, ...}
    describe_cpu()             # "AMD EPYC ... family 25 model 17 (2 cores; sse4_2 avx avx2 ...)"
    package_version("jaxlib")  # "0.10.2", or None when not installed
    cache_dir()                # ~/.cache/nt_robust (the kernels' builds, the conv choice, XLA's cache)
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

# Instruction-set features that change which float kernels XLA, Eigen, oneDNN and numpy
# pick (and so summation orders and rounding): what a result's machine is told apart by.
ISA_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve", "sve2")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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


def cache_dir() -> Path:
    """nt_robust's per-user cache: ``$XDG_CACHE_HOME/nt_robust`` (default ``~/.cache/nt_robust``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nt_robust"

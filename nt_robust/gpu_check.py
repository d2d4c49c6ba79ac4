"""Refuse to train on the CPU by accident: where an NVIDIA GPU is visible but JAX runs on the
CPU (a CUDA plugin missing, or one that does not match jaxlib, after which JAX falls back to the
CPU with only a warning), ``train``, ``eval`` and ``study`` stop with what to install, unless
``--allow-cpu`` (or ``NT_ROBUST_ALLOW_CPU=1``, or ``JAX_PLATFORMS=cpu``) says the CPU is meant::

    add_gpu_check_arguments(parser)     # --allow-cpu
    check_gpu_used(args)                # after the CPU device count is set; CpuFallbackError

"Visible" means ``nvidia-smi -L`` (on PATH) lists a GPU, or ``/proc/driver/nvidia/gpus`` has an
entry. A run that is going to join a multi-process job (``--distributed``, ``--coordinator`` or
``NT_ROBUST_COORDINATOR``) must not start JAX's backend before it joins, so there the backend is
asked in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ALLOW_CPU_ENV = "NT_ROBUST_ALLOW_CPU"
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
CHECKED_COMMANDS = ("train", "eval", "study")
# study options that compute nothing (listing, reports, emitting job scripts)
NOTHING_TO_RUN = ("dry_run", "list", "report", "emit")


class CpuFallbackError(RuntimeError):
    """An NVIDIA GPU is visible but JAX would run on the CPU."""


def add_gpu_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-cpu`` to ``parser``."""
    parser.add_argument("--allow-cpu", action="store_true",
                        help=f"run on the CPU even where an NVIDIA GPU is visible but JAX does not use it "
                             f"(also {ALLOW_CPU_ENV}=1 or JAX_PLATFORMS=cpu)")


def visible_nvidia_gpus(proc_dir: Path = NVIDIA_PROC, timeout: float = 20.0) -> list[str]:
    """The NVIDIA GPUs this machine shows: ``nvidia-smi -L``'s lines, else the entries of
    ``proc_dir`` (the driver's); [] when neither shows one."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout)
            lines = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("GPU ")]
            if done.returncode == 0 and lines:
                return lines
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return [f"GPU at PCI {entry.name} ({proc_dir})" for entry in sorted(proc_dir.iterdir())]
    except OSError:
        return []


def _cpu_is_meant(args: argparse.Namespace) -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    return (getattr(args, "allow_cpu", False) or os.environ.get(ALLOW_CPU_ENV, "").strip() not in ("", "0")
            or platforms.split(",")[0].strip() == "cpu")


def _joins_a_job(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "distributed", False) or getattr(args, "coordinator", None)
                or os.environ.get("NT_ROBUST_COORDINATOR"))


def jax_backend(in_subprocess: bool = False) -> str:
    """The platform JAX computes on ("cpu", "gpu", "tpu"); in a subprocess (that does not take
    GPU memory), to leave this process's backend unstarted."""
    if not in_subprocess:
        import jax
        return jax.default_backend()
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    done = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                          capture_output=True, text=True, timeout=300, env=env)
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else "unknown"


def _jax_packages() -> str:
    """"jax 0.10.2, jaxlib 0.10.2, jax-cuda12-plugin 0.12.0": what decides the backend."""
    import importlib.metadata

    names = sorted({name for d in importlib.metadata.distributions()
                    if (name := (d.metadata["Name"] or "").lower().replace("_", "-")) in ("jax", "jaxlib")
                    or name.startswith(("jax-cuda", "jax-rocm"))})
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names) or "no jax package"


def check_gpu_used(args: argparse.Namespace) -> None:
    """Raise :class:`CpuFallbackError` where ``args`` (the CLI's) would compute on the CPU
    while an NVIDIA GPU is visible and nothing says the CPU is meant (module docstring)."""
    if getattr(args, "command", None) not in CHECKED_COMMANDS or _cpu_is_meant(args):
        return
    if any(getattr(args, name, None) for name in NOTHING_TO_RUN):
        return
    gpus = visible_nvidia_gpus()
    if not gpus:
        return
    backend = jax_backend(in_subprocess=_joins_a_job(args))
    if backend != "cpu":
        return
    raise CpuFallbackError(
        f"an NVIDIA GPU is visible ({gpus[0]}{f' and {len(gpus) - 1} more' if len(gpus) > 1 else ''}) but JAX "
        f"runs on the CPU ({_jax_packages()}): the CUDA plugin is missing or does not match jaxlib. Install the "
        "CUDA build of JAX in this project's range: pip install -e \".[cuda12]\" (or \".[cuda13]\" for CUDA 13 "
        "drivers); an environment that already has a newer JAX: README, \"GPU install\". To run on the CPU "
        f"anyway: --allow-cpu (or {ALLOW_CPU_ENV}=1, or JAX_PLATFORMS=cpu).")

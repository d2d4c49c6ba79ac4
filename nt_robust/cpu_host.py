"""Whether this process is a CPU host: the one place that decides whether nt_robust's CPU
machinery runs.

The CPU machinery is everything that exists only to make XLA:CPU fast (``nt_robust.cpu``):
the XLA:CPU flags (``cpu.setup.configure_xla_cpu``), splitting the CPU into several XLA devices
(``cpu.devices.set_cpu_devices``), glibc's malloc tuning (``cpu.malloc.tune_malloc``), and
``conv_impl`` / ``dense_impl`` = "auto" or "native" (the per-machine timing, its subprocess, and
the g++ build of the native kernels). On a GPU or TPU host none of it runs: "auto" and
"native" mean XLA's convolutions and products, nothing is built or timed, no flag is added::

    host = cpu_host()
    host.cpu        # True: the CPU backend runs this process's JAX computations
    host.reason     # why, in words (saved in environment.json as "cpu_host")

The rule, decided without starting JAX's backend (the flags must be set before it starts):

1. ``JAX_PLATFORMS`` set: a CPU host exactly when its first platform is "cpu" (so
   ``JAX_PLATFORMS=cpu`` on a GPU machine gets the CPU machinery, as the CPU's own
   measurement subprocess does);
2. else an accelerator plugin installed (``jax-cuda*-plugin``, ``jax-rocm*``, ``libtpu``): not a
   CPU host, even where the plugin finds no device and JAX falls back to the CPU — set
   ``JAX_PLATFORMS=cpu`` there to get the CPU machinery;
3. else a CPU host.

Once the backend has started, a backend other than the CPU also makes it not a CPU host.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os

ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


@dataclasses.dataclass(frozen=True)
class CpuHost:
    """The decision: ``cpu`` (whether the CPU machinery runs here) and ``reason`` (why)."""

    cpu: bool
    reason: str

    def __bool__(self) -> bool:
        return self.cpu

    def as_record(self) -> dict[str, object]:
        return {"cpu": self.cpu, "reason": self.reason}


def installed_distributions() -> list[str]:
    """Lower-case names of the installed Python distributions."""
    return [(dist.metadata["Name"] or "").lower() for dist in importlib.metadata.distributions()]


@functools.lru_cache(maxsize=1)
def _predicted() -> CpuHost:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        first = platforms.split(",")[0].strip()
        if first == "cpu":
            return CpuHost(True, f"JAX_PLATFORMS={platforms} asks for the CPU backend")
        return CpuHost(False, f"JAX_PLATFORMS={platforms}: not the CPU backend")
    plugins = sorted(name for name in installed_distributions() if name.startswith(ACCELERATOR_PLUGINS))
    if plugins:
        return CpuHost(False, f"an accelerator plugin is installed ({', '.join(plugins)}); "
                              "JAX_PLATFORMS=cpu makes this a CPU host")
    return CpuHost(True, "no accelerator plugin is installed and JAX_PLATFORMS is unset: JAX runs on the CPU")


def backend_started() -> bool:
    """Whether JAX has started its backend in this process (it has read ``XLA_FLAGS`` then)."""
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # a jax without it: assume not, as before this check existed
        return False
    return backends_are_initialized()


def cpu_host() -> CpuHost:
    """Whether the CPU machinery runs in this process (module docstring: the rule)."""
    predicted = _predicted()
    if predicted.cpu and backend_started():
        import jax

        backend = jax.default_backend()
        if backend != "cpu":
            return CpuHost(False, f"JAX's backend is {backend!r}, not the CPU")
    return predicted


def refresh() -> None:
    """Decide again (after a change of ``JAX_PLATFORMS`` or of the installed packages; tests)."""
    _predicted.cache_clear()

"""XLA:CPU's performance engine: everything nt_robust does only to make the CPU backend fast,
behind a small face. Nothing here runs off a CPU host (``nt_robust.cpu_host``, the one gate)::

    from nt_robust import cpu

    cpu.tune_malloc(); cpu.set_cpu_devices(2); cpu.configure_xla_cpu()   # set up the process, before JAX's backend
    ops = cpu.layer_ops(model_config)     # {"conv": fn, "dot_general": fn}: resolved once, outside any trace
    cpu.record("auto", "auto")            # the environment.json entries (conv_impl_auto, native_conv, ...)

Inside, from the bottom up: ``machine`` (CPU facts, versions, the cache folder) and
``xla_flags``; ``native`` (the C++ kernels in ``kernels/``, their g++ build and XLA FFI
registration) and ``malloc``; ``conv`` and ``dense`` (the custom-VJP drop-ins for
``lax.conv_general_dilated`` / ``lax.dot_general``); ``choice`` (what "auto" measured fastest
on this machine); ``ops`` (config strings to functions, and the record); ``setup`` (the XLA
flags) and ``devices`` (the CPU split into XLA devices). The face's names are loaded on first
use, so ``import nt_robust.cpu.machine`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_FACE = {"layer_ops": "ops", "record": "ops", "supports_forward_mode": "ops", "CONV_IMPLS": "ops",
         "DENSE_IMPLS": "ops", "configure_xla_cpu": "setup", "set_cpu_devices": "devices",
         "auto_cpu_devices": "devices", "cpu_device_choice": "devices", "tune_malloc": "malloc",
         "malloc_settings": "malloc", "cpu_info": "machine", "describe_cpu": "machine"}
__all__ = sorted(_FACE)


def __getattr__(name: str) -> Any:
    if name not in _FACE:
        raise AttributeError(f"module 'nt_robust.cpu' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nt_robust.cpu.{_FACE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))

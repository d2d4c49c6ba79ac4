"""The CPU split into several XLA devices, so that data parallelism keeps every core busy::

    auto_cpu_devices([("wrn", 128, 256)], cores=2)   # 2: the CLI's choice for conv nets
    set_cpu_devices(2, source="--cpu-devices")       # before JAX starts its backend
    cpu_device_choice()                              # {"count": 2, "source": ...}: saved in environment.json
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax

from nt_robust.cpu.machine import cpu_info
from nt_robust.cpu_host import cpu_host

# Architectures whose training steps run faster split over one XLA device per core: measured
# on 2 cores (docs/benchmarks.md), small-CNN and WRN-16-k steps 1.04-2x; MLP steps are slower
# split (up to 2.7x), so they stay on one device.
CONV_ARCHS = ("cnn", "wrn")
MAX_AUTO_CPU_DEVICES = 8  # measured up to 4 devices on 2 cores; more devices only shrink per-device batches
_cpu_device_choice: dict[str, Any] = {"count": None, "source": "JAX's default (one device)"}


def auto_cpu_devices(models: Sequence[tuple[str, int, int]], cores: int | None = None) -> int:
    """The CPU device count the CLI picks when none is asked for, from the (arch, train batch,
    eval batch) of every run it will train: one device per core (at most
    :data:`MAX_AUTO_CPU_DEVICES`, and a count that divides every batch) when all are conv
    nets, else 1::

        auto_cpu_devices([("wrn", 128, 256)], cores=2)   # 2
        auto_cpu_devices([("mlp", 128, 256)], cores=2)   # 1
    """
    cores = cores or cpu_info()["cores"] or 1
    if not models or any(arch not in CONV_ARCHS for arch, _, _ in models):
        return 1
    count = min(cores, MAX_AUTO_CPU_DEVICES)
    while count > 1 and any(batch % count for _, *batches in models for batch in batches):
        count -= 1
    return count


def cpu_device_choice() -> dict[str, Any]:
    """How this process's CPU device count was chosen (``count`` None: JAX's default), as
    :func:`set_cpu_devices` recorded it; saved in environment.json."""
    return dict(_cpu_device_choice)


def set_cpu_devices(count: int | None = None, source: str | None = None) -> int | None:
    """Split the host CPU into ``count`` XLA devices (default: ``$NT_ROBUST_CPU_DEVICES``;
    neither: leave JAX's default of one). Training and its per-epoch evaluation then shard
    each batch over them exactly as over GPUs (protocol evaluations do not), so XLA:CPU
    keeps every core busy (the CLI's choice without either: :func:`auto_cpu_devices`).
    Results depend on the device count at float-rounding level; the count and ``source``
    (how it was chosen) are recorded in environment.json. Must run before JAX starts its
    backend. Off a CPU host (``nt_robust.cpu_host``) nothing is split: the count is
    recorded as not applied and None is returned. Returns the count set."""
    if count is None:
        setting = os.environ.get("NT_ROBUST_CPU_DEVICES", "").strip()
        if not setting:
            return None
        if not setting.isdigit():
            raise ValueError(f"NT_ROBUST_CPU_DEVICES must be a positive integer, got {setting!r}")
        count, source = int(setting), "NT_ROBUST_CPU_DEVICES"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of CPU devices must be an integer >= 1, got {count!r}")
    host = cpu_host()
    if not host:
        _cpu_device_choice.update(count=None, source=f"{source or 'set_cpu_devices'} asked for {count}, "
                                                     f"not applied: not a CPU host ({host.reason})")
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as error:  # JAX refuses once its backend has started
        raise RuntimeError(f"cannot split the CPU into {count} devices: JAX has already started its "
                           "backend in this process; set the count first thing (nt-robust train|eval|study ... --cpu-devices N, "
                           "or NT_ROBUST_CPU_DEVICES=N in the environment)") from error
    _cpu_device_choice.update(count=count, source=source or "set_cpu_devices")
    return count

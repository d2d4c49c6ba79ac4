"""Does a run fit this host's memory? Checked from shapes, before anything is allocated::

    print(check_memory(config))        # "MLPx256: 269,322 parameters; training needs roughly ..."
    check_memory(config)               # ConfigError when it cannot fit, naming the likely mistake
    check_memory(config, dry_run=True) # "warning: training would be refused here: ..." instead

The estimate is :func:`nt_robust.train.config.estimate_training_memory` (per model replica);
the budget is the host's available RAM on the CPU backend, where every CPU device holds a
replica, else the first accelerator's memory limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nt_robust.config import ConfigError

MEMINFO = Path("/proc/meminfo")


def gib(n: float) -> str:
    """``gib(3 * 2**30)`` -> ``"3.0 GiB"``; under a quarter GiB in MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def available_memory() -> tuple[int | None, str, bool]:
    """(bytes free for one run, where, whether model replicas share it): the host's available
    RAM on the CPU backend (every CPU device holds a replica there), else the first
    accelerator's memory limit. None when unknown."""
    import jax

    if jax.default_backend() == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this host's available memory", True
        except OSError:
            pass
        return None, "this host", True
    device = jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return (None if limit is None else int(limit)), f"{device.device_kind}", False


def check_memory(config: Any, skip: bool = False, dry_run: bool = False) -> str:
    """Estimate parameters and memory of training ``config`` (an ExperimentConfig) from
    shapes; refuse (ConfigError) a run that cannot fit, naming the numbers and the likely
    mistake, unless ``skip`` (--no-memory-check). A dry run only says it would be refused
    here (the config may be meant for a larger machine). Returns the one-line estimate."""
    import jax

    from nt_robust.models.registry import width_hint
    from nt_robust.train.config import estimate_training_memory

    estimate = estimate_training_memory(config)
    available, where, shared = available_memory()
    replicas = jax.local_device_count()
    need = (estimate["weights_bytes"] * (replicas if shared else 1)
            + estimate["activation_bytes"] // (1 if shared else replicas))
    line = (f"{config.model.label}: {estimate['parameters']:,} parameters; training needs roughly {gib(need)} "
            f"({gib(estimate['weights_bytes'])} weights, gradients and momentum"
            f"{f' x {replicas} CPU devices' if shared and replicas > 1 else ''}, "
            f"{gib(estimate['activation_bytes'])} activations at train.batch_size = {config.train.batch_size})")
    if available is not None and need > available and not skip:
        hint = width_hint(config.model)
        message = (f"{line}, more than {where} ({gib(available)}). "
                   + (f"{hint}. " if hint else "Lower model.width, model.depth or train.batch_size. ")
                   + "(--no-memory-check trains anyway.)")
        if not dry_run:
            raise ConfigError(message)
        return f"warning: training would be refused here: {message}"
    return line

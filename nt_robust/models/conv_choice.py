"""Which convolution weight gradient ``conv_impl = "auto"`` uses on CPU, chosen by measuring
both on this machine once and caching the answer.

    cpu_conv_choice()   # {"impl": "xla", "xla_ms": 16.3, "shifted_matmul_ms": 50.7, "source": "measured", ...}

XLA:CPU's own weight gradient was 3.6x slower than shifted matmuls on one 2-core AMD EPYC
and 2-3x faster on another (docs/benchmarks.md), so no rule by CPU name holds. The first
time "auto" is resolved on a machine, both are timed on one 32x32, 32->32 layer at batch
64 (about a second), and the answer is kept in ``~/.cache/nt_robust/conv_impl.json``
under a key of CPU model, cores, jaxlib version and ``XLA_FLAGS``. Shifted matmuls are
chosen only when clearly faster (:data:`SHIFTED_MARGIN`). "xla" here means XLA's weight
gradient, which "auto" runs as ``conv_impl = "flipped_dx"`` (``nt_robust.models.conv``).
``NT_ROBUST_CONV_IMPL_AUTO=xla`` (or ``shifted_matmul``) skips the measurement;
environment.json records the choice and its timings.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

SHIFTED_MARGIN = 0.8  # shifted matmuls must take under 80 % of XLA's time
CHOICES = ("xla", "shifted_matmul")
_LAYER = (64, 32, 32, 32, 32)  # batch, height, width, channels in, channels out


def choose(xla_ms: float, shifted_matmul_ms: float) -> str:
    """The faster weight gradient, XLA's unless shifted matmuls are clearly faster."""
    return "shifted_matmul" if shifted_matmul_ms < SHIFTED_MARGIN * xla_ms else "xla"


def cache_path() -> Path:
    from nt_robust.environment import cache_dir

    return cache_dir() / "conv_impl.json"


def machine_key() -> str:
    """What the measurement depends on: the CPU, the cores this process may use, jaxlib, XLA_FLAGS."""
    from nt_robust.environment import cpu_info, package_version

    cpu = cpu_info()
    jaxlib = package_version("jaxlib") or "unknown"
    return (f"{cpu['model']} family {cpu['family']} model {cpu['model_number']} | {cpu['cores']} cores | "
            f"jaxlib {jaxlib} | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")


def _median_ms(fn: Callable[[], Any], repeats: int = 7) -> float:
    import jax

    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times), 2)


def measure() -> dict[str, float]:
    """Median ms of one weight gradient of :data:`_LAYER`, each way."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.models.conv import shifted_matmul_conv

    batch, height, width, cin, cout = _LAYER
    rng = np.random.default_rng(0)
    with jax.ensure_compile_time_eval():  # real timings even when first asked inside a jit trace
        x = jnp.asarray(rng.random((batch, height, width, cin), np.float32))
        kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)).astype(np.float32))
        g = jnp.ones((batch, height, width, cout), jnp.float32)
        timings = {}
        for name, conv in (("xla", lax.conv_general_dilated), ("shifted_matmul", shifted_matmul_conv)):
            def weight_gradient(x, kernel, g, conv=conv):
                forward = lambda k: conv(x, k, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
                return jax.vjp(forward, kernel)[1](g)[0]
            compiled = jax.jit(weight_gradient)
            timings[f"{name}_ms"] = _median_ms(lambda compiled=compiled: compiled(x, kernel, g))
    return timings


@functools.lru_cache(maxsize=1)
def cpu_conv_choice() -> dict[str, Any]:
    """The weight gradient "auto" uses on CPU here: forced by ``$NT_ROBUST_CONV_IMPL_AUTO``,
    else from the cache, else measured now (and cached). Once per process."""
    from nt_robust import io

    forced = os.environ.get("NT_ROBUST_CONV_IMPL_AUTO", "").strip()
    if forced:
        if forced not in CHOICES:
            raise ValueError(f"NT_ROBUST_CONV_IMPL_AUTO must be one of {CHOICES}, got {forced!r}")
        return {"impl": forced, "source": "NT_ROBUST_CONV_IMPL_AUTO"}
    key, path = machine_key(), cache_path()
    try:
        cached = io.read_json(path)
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and entry.get("impl") in CHOICES:
        return {**entry, "source": f"measured earlier on this machine ({path})"}
    entry = {**measure(), "layer": "batch 64, 32x32, 32->32, 3x3", "key": key,
             "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    entry["impl"] = choose(entry["xla_ms"], entry["shifted_matmul_ms"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(path, {**(cached if isinstance(cached, dict) else {}), key: entry})
    except OSError:
        pass  # a read-only home: measure again next time
    return {**entry, "source": "measured now"}

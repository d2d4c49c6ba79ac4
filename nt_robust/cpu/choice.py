"""Which convolution ``conv_impl = "auto"`` (and which matrix product ``dense_impl = "auto"``)
uses on CPU, chosen by measuring the candidates on this machine once and caching the answer.

    cpu_conv_choice()   # {"impl": "native", "xla_ms": 26.01, "shifted_matmul_ms": 31.48, "native_ms": 15.49, ...}
    cpu_dense_choice()  # {"impl": "native", "xla_ms": 3.315, "native_ms": 2.838, "native_over_xla": 0.88, ...}

The candidates are XLA's convolutions with XLA's weight gradient (``"xla"``, which "auto"
runs as ``conv_impl = "flipped_dx"``), the same with shifted-matmul weight gradients
(``"shifted_matmul"``) and the hand-written kernels (``"native"``, ``nt_robust.cpu.native``;
a candidate only where g++ can build them). Their ranking differs between CPUs: XLA's own weight
gradient was 3.6x slower than shifted matmuls on one 2-core AMD EPYC and 2-3x faster on another
(docs/benchmarks.md), so no rule by CPU name holds. The first time "auto" is resolved on a
machine, each candidate's forward pass and both gradients are timed, the candidates taking
turns, on one 32x32, 32->32 layer at batch 64 (a few seconds, plus one g++ build), and the
answer is kept in ``~/.cache/nt_robust/conv_impl.json`` under a key of CPU model, cores,
jaxlib version and ``XLA_FLAGS``. A candidate other than XLA's must be clearly faster (:data:`MARGIN`).
``NT_ROBUST_CONV_IMPL_AUTO=xla`` (or ``shifted_matmul``, ``native``) skips the measurement;
environment.json records the choice and its timings.

Dense layers (``nt_robust.cpu.dense``) are chosen the same way, between XLA's products and
the matrix-product kernel, on one 128 x 3072 -> 256 layer (an MLP's first on CIFAR-10); the
kernel must take under :data:`DENSE_MARGIN` of XLA's time. ``NT_ROBUST_DENSE_IMPL_AUTO=xla``
(or ``native``) skips that measurement.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from nt_robust.cpu import native
from nt_robust.cpu.machine import cache_dir, cpu_info, package_version
from nt_robust.cpu.xla_flags import YNN_ELTWISE_FLAG, YNN_FUSION_FLAG

MARGIN = 0.8  # a candidate other than XLA's must take under 80 % of the best time before it
CHOICES = ("xla", "shifted_matmul", "native")  # in order of preference on a tie
SCHEME = "forward+gradients of xla, shifted_matmul, native"  # part of the cache key: older entries measured less
_LAYER = (64, 32, 32, 32, 32)  # batch, height, width, channels in, channels out


def choose(timings: dict[str, float]) -> str:
    """The fastest candidate (``timings``: ``{"xla_ms": ..., ...}``, missing = unavailable),
    each taken over the ones before it in :data:`CHOICES` only when it needs under
    :data:`MARGIN` of their best time::

        choose({"xla_ms": 10.0, "shifted_matmul_ms": 7.9})                   # "shifted_matmul"
        choose({"xla_ms": 10.0, "shifted_matmul_ms": 8.5, "native_ms": 5.0})  # "native"
    """
    best, best_ms = "xla", timings["xla_ms"]
    for name in CHOICES[1:]:
        ms = timings.get(f"{name}_ms")
        if ms is not None and ms < MARGIN * best_ms:
            best, best_ms = name, ms
    return best


def cache_path() -> Path:
    """Where the choices are kept: ``~/.cache/nt_robust/conv_impl.json``."""
    return cache_dir() / "conv_impl.json"


def machine_key() -> str:
    """What the measurement depends on: the CPU, the cores this process may use, jaxlib,
    XLA_FLAGS, and the target the native kernels are built for. The library's elementwise-fusion
    flag counts as its flag without them: whether it is added follows from this very choice
    (``nt_robust.cpu.setup.elementwise_fusions_pay``), which is measured without it."""
    cpu = cpu_info()
    jaxlib = package_version("jaxlib") or "unknown"
    flags = os.environ.get("XLA_FLAGS", "").replace(YNN_ELTWISE_FLAG, YNN_FUSION_FLAG)
    return (f"{cpu['model']} family {cpu['family']} model {cpu['model_number']} | {cpu['cores']} cores | "
            f"jaxlib {jaxlib} | XLA_FLAGS={flags} | {SCHEME} | -march={native.march()}")


def _alternating_times(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each call, ``rounds`` times, the calls taking turns within each round (a
    machine's speed drifts by more than the candidates differ: timed one after the other, the
    same two once came out 0.69 and 0.84 of each other). Each call is made once untimed first."""
    import jax

    for fn in calls.values():
        jax.block_until_ready(fn())  # compile and warm up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            started = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(1000 * (time.perf_counter() - started))
    return times


def native_unavailable() -> str | None:
    """Why the native kernels cannot be a candidate here (None: they can): a jaxlib they were
    not tested with (said once, on stderr: nothing is built then), or a failed build or load."""
    reason = native.unchecked_jaxlib()
    if reason is not None:
        _say_once(f"nt-robust: note: {reason}")
        return reason
    try:
        status = native.native_status()
    except OSError as error:  # an unwritable kernel cache folder: a reason to leave native out, not to stop
        return f"the native kernels cannot be built into the cache ({error}); make that folder writable"
    return None if status["available"] else status["reason"]


@functools.lru_cache(maxsize=None)
def _say_once(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def measure(rounds: int = 15) -> dict[str, Any]:
    """Median ms of one forward pass and both gradients of :data:`_LAYER` for each candidate,
    timed in turns over ``rounds`` rounds (``native_ms`` missing, and ``native_unavailable``
    saying why, where g++ cannot build the kernels)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nt_robust.cpu.conv import flipped_dx_conv, native_conv, shifted_matmul_conv

    candidates = {"xla": flipped_dx_conv, "shifted_matmul": shifted_matmul_conv, "native": native_conv}
    timings: dict[str, Any] = {}
    reason = native_unavailable()
    if reason is not None:
        del candidates["native"]
        timings["native_unavailable"] = reason
    batch, height, width, cin, cout = _LAYER
    rng = np.random.default_rng(0)
    with jax.ensure_compile_time_eval():  # real timings even when first asked inside a jit trace
        x = jnp.asarray(rng.random((batch, height, width, cin), np.float32))
        kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)).astype(np.float32))
        g = jnp.ones((batch, height, width, cout), jnp.float32)
        calls = {}
        for name, conv in candidates.items():
            def training_use(x, kernel, g, conv=conv):  # what a training step asks of a layer
                forward = lambda x, k: conv(x, k, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
                out, vjp = jax.vjp(forward, x, kernel)
                return out, vjp(g)
            calls[name] = functools.partial(jax.jit(training_use), x, kernel, g)
        times = _alternating_times(calls, rounds)
    timings.update({f"{name}_ms": round(statistics.median(values), 2) for name, values in times.items()})
    return timings


def _cached_choice(choices: tuple[str, ...], variable: str, key: str, measure_now: Callable[[], dict],
                   choose_now: Callable[[dict], str], layer: str) -> dict[str, Any]:
    """The implementation "auto" uses on CPU (one of ``choices``): forced by ``$variable``, else
    the cache file's entry under ``key``, else measured now (``layer`` says on what) and cached."""
    from nt_robust import storage

    forced = os.environ.get(variable, "").strip()
    if forced:
        if forced not in choices:
            raise ValueError(f"{variable} must be one of {choices}, got {forced!r}")
        return {"impl": forced, "source": variable}
    path = cache_path()
    try:
        cached = storage.read_json(path)
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and entry.get("native_unavailable") and native_unavailable() is None:
        entry = None  # measured without the native kernels, which build now (g++ installed since): again
    if isinstance(entry, dict) and entry.get("impl") in choices and "xla_ms" in entry:
        entry = {**entry, "source": f"measured earlier on this machine ({path})"}
        if entry["impl"] == "native" and (reason := native_unavailable()) is not None:  # e.g. g++ removed since
            entry.update(impl=choose_now({k: v for k, v in entry.items() if k != "native_ms"}), native_unavailable=reason)
        return entry
    _say_once(f"nt-robust: first use on this machine: timing {' / '.join(choices)} on one layer ({layer}) "
              f"to choose what {variable.removeprefix('NT_ROBUST_').removesuffix('_AUTO').lower()} = 'auto' runs "
              f"(under a minute, once; cached in {path})")
    entry = {**measure_now(), "layer": layer, "key": key,
             "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    entry["impl"] = choose_now(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.write_json(path, {**(cached if isinstance(cached, dict) else {}), key: entry})
    except OSError:
        pass  # a read-only home: measure again next time
    return {**entry, "source": "measured now"}


def cached_impl() -> str | None:
    """The convolution "auto" chose when it was measured on this machine under the current
    ``XLA_FLAGS`` (None: not yet). Starts no JAX backend, so it can inform XLA's flags."""
    from nt_robust import storage

    try:
        entry = storage.read_json(cache_path()).get(machine_key())
    except (OSError, ValueError, AttributeError):
        return None
    return entry["impl"] if isinstance(entry, dict) and entry.get("impl") in CHOICES else None


def measure_in_subprocess(timeout: float = 600.0) -> str | None:
    """:func:`cpu_conv_choice` in a fresh process under the current ``XLA_FLAGS`` (which this
    process's backend may not have started with yet), cached as usual; its choice, or None if
    it failed or took longer than ``timeout`` seconds."""
    import subprocess
    import sys

    command = [sys.executable, "-c",
               "from nt_robust.cpu.choice import cpu_conv_choice; print(cpu_conv_choice()['impl'])"]
    _say_once(f"nt-robust: first start on this machine: timing the convolutions {' / '.join(CHOICES)} in a "
              f"subprocess to choose conv_impl = 'auto' and the XLA:CPU flags (under a minute, once; cached in "
              f"{cache_path()})")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the CPU's convolutions, on a machine with a GPU too
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines and lines[-1] in CHOICES else None


@functools.lru_cache(maxsize=1)
def cpu_conv_choice() -> dict[str, Any]:
    """The convolution "auto" uses on CPU here: forced by ``$NT_ROBUST_CONV_IMPL_AUTO``,
    else from the cache, else measured now (and cached). Once per process."""
    return _cached_choice(CHOICES, "NT_ROBUST_CONV_IMPL_AUTO", machine_key(), lambda: measure(),
                          choose, "batch 64, 32x32, 32->32, 3x3")


# model.dense_impl = "auto": XLA's matrix products or the kernel's (nt_robust.cpu.dense),
# timed on one dense layer as an MLP on CIFAR-10 has it.
DENSE_CHOICES = ("xla", "native")
DENSE_MARGIN = 0.95  # the kernel must take under 95 % of XLA's time (a median of paired ratios)
_DENSE_LAYER = (128, 3072, 256)  # batch, inputs, outputs


def choose_dense(timings: dict[str, float]) -> str:
    """``"native"`` where the kernel was timed (``timings["native_ms"]``) and took under
    :data:`DENSE_MARGIN` of XLA's time (the median of paired ratios,
    ``timings["native_over_xla"]``, where measured so), else ``"xla"``::

        choose_dense({"xla_ms": 3.0, "native_ms": 2.8})                            # "native"
        choose_dense({"xla_ms": 3.0, "native_ms": 2.8, "native_over_xla": 0.97})   # "xla"
    """
    if timings.get("native_ms") is None:
        return "xla"
    ratio = timings.get("native_over_xla", timings["native_ms"] / timings["xla_ms"])
    return "native" if ratio < DENSE_MARGIN else "xla"


def measure_dense(rounds: int = 51) -> dict[str, Any]:
    """Median ms of one dense layer's forward pass and both gradients (:data:`_DENSE_LAYER`)
    with XLA's products and with the kernel, timed in turns (``rounds`` each), and the median
    of the paired ratios kernel / XLA (``native_over_xla``; ``native_ms`` missing, and
    ``native_unavailable`` saying why, where g++ cannot build the kernels)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu.dense import native_dot_general

    candidates = {"xla": lax.dot_general, "native": native_dot_general}
    timings: dict[str, Any] = {}
    reason = native_unavailable()
    if reason is not None:
        del candidates["native"]
        timings["native_unavailable"] = reason
    batch, inputs, outputs = _DENSE_LAYER
    numbers = (((1,), (0,)), ((), ()))
    rng = np.random.default_rng(0)
    with jax.ensure_compile_time_eval():  # real timings even when first asked inside a jit trace
        x = jnp.asarray(rng.random((batch, inputs), np.float32))
        kernel = jnp.asarray(rng.standard_normal((inputs, outputs)).astype(np.float32))
        g = jnp.asarray(rng.standard_normal((batch, outputs)).astype(np.float32))
        calls = {}
        for name, dot_general in candidates.items():
            def training_use(x, kernel, g, dot_general=dot_general):
                out, vjp = jax.vjp(lambda x, k: dot_general(x, k, numbers), x, kernel)
                return out, vjp(g)
            calls[name] = functools.partial(jax.jit(training_use), x, kernel, g)
        times = _alternating_times(calls, rounds)
    for name, values in times.items():
        timings[f"{name}_ms"] = round(statistics.median(values), 3)
    if "native" in times:
        timings["native_over_xla"] = round(statistics.median(
            [n / x for n, x in zip(times["native"], times["xla"])]), 3)
    return timings


@functools.lru_cache(maxsize=1)
def cpu_dense_choice() -> dict[str, Any]:
    """The dense-layer products "auto" uses on CPU here: forced by
    ``$NT_ROBUST_DENSE_IMPL_AUTO``, else from the cache, else measured now (and cached)."""
    batch, inputs, outputs = _DENSE_LAYER
    return _cached_choice(DENSE_CHOICES, "NT_ROBUST_DENSE_IMPL_AUTO", f"{machine_key()} | dense",
                          lambda: measure_dense(), choose_dense, f"batch {batch}, {inputs}->{outputs}")

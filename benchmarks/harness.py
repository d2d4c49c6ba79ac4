"""The benchmarks' shared harness: timing, peak memory, child and paired worker processes,
the paired ratio, the models and hyper-parameters, and the project's JAX training step.

``train_step.py``, ``cpu_probes.py``, ``torch_reference.py`` and the per-kernel benchmarks
(``native_dw.py``, ``native_conv_fwd.py``, ``native_matmul.py``, ``attacks.py``) import it
from the ``benchmarks/`` folder::

    import harness
    ms = harness.median_ms(lambda: jax.block_until_ready(f(x)), steps=5, min_seconds=1.0)
    harness.paired_ratio([0.10, 0.12], [0.11, 0.13])   # {"geomean": 1.09..., "ci": [...], ...}
    config = harness.jax_config(spec, harness.MODELS["wrn16-1"])
    jitted, state, images, labels, model, variables = harness.jax_step(spec, config)

A ``spec`` is the JSON-able dict a worker gets (``train_step.py`` builds it from its
command line: batch, input, steps, min_seconds, warmup, objective, conv_impl, ...).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# name -> ModelConfig fields
MODELS: dict[str, dict[str, Any]] = {
    "mlp": dict(arch="mlp", width=256, depth=2),
    "cnn": dict(arch="cnn", width=1, depth=16),
    "wrn16-1": dict(arch="wrn", width=1, depth=16),
    "wrn16-2": dict(arch="wrn", width=2, depth=16),
    "wrn16-4": dict(arch="wrn", width=4, depth=16),
}
OBJECTIVES = ("natural", "trades")
# TRADES reference hyper-parameters (the defaults of ExperimentConfig as well).
EPS, STEP_SIZE, ATTACK_STEPS, START_STD, BETA = 0.031, 0.007, 10, 0.001, 6.0
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
NUM_CLASSES = 10


# --------------------------------------------------------------------------- measuring

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident set of this process above a baseline, in MiB, with a resettable peak."""

    def __init__(self) -> None:
        self.baseline_kb = _status_kb("VmRSS") or 0
        self.method = "VmHWM (/proc/self/status, reset via clear_refs) - VmRSS after imports"
        self.can_reset = self.reset()
        if not self.can_reset:
            self.method = "ru_maxrss (getrusage, not resettable) - VmRSS after imports"

    def reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def peak_mb(self) -> float:
        peak_kb = _status_kb("VmHWM")
        if peak_kb is None or not self.can_reset:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return round((peak_kb - self.baseline_kb) / 1024, 1)


def malloc_note() -> str:
    from nt_robust.cpu.malloc import malloc_settings
    return "tuned (nt_robust.cpu.malloc)" if malloc_settings()["tuned"] else "glibc defaults"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run_step, spec: dict[str, Any]) -> dict[str, Any]:
    """The first (untimed) step's seconds, then ``time_steps``, as images per second."""
    t0 = time.perf_counter()
    run_step()
    first_step_s = time.perf_counter() - t0
    if spec.get("paired"):
        return {"first_step_s": round(first_step_s, 3), **_serve_rounds(run_step, spec)}
    timing = time_steps(run_step, spec["warmup"], spec["steps"], spec["min_seconds"])
    elapsed = timing.pop("_elapsed")
    return {"first_step_s": round(first_step_s, 3), **timing,
            "images_per_s": round(spec["batch"] * timing["timed_steps"] / elapsed, 1),
            "images_per_cpu_s": round(spec["batch"] / timing["cpu_s_per_step"], 1)}


def time_steps(run_step, warmup: int, min_steps: int, min_seconds: float) -> dict[str, Any]:
    """Run ``warmup`` untimed steps, then at least ``min_steps`` and ``min_seconds`` timed ones."""
    for _ in range(warmup):
        run_step()
    times, load_before, cpu_before = [], os.getloadavg()[0], _cpu_seconds()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    times.sort()
    return {
        "timed_steps": len(times), "timed_s": round(elapsed, 3),
        "s_per_step_median": round(times[len(times) // 2], 5),
        "s_per_step_min": round(times[0], 5),
        "cpu_s_per_wall_s": round((_cpu_seconds() - cpu_before) / elapsed, 2),
        "cpu_s_per_step": round((_cpu_seconds() - cpu_before) / len(times), 4),
        "page_faults_per_step": round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
                                      / len(times)),
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "_elapsed": elapsed,
    }


def median_ms(fn, steps: int, min_seconds: float, digits: int = 2) -> float:
    """Median ms of ``fn()`` over at least ``steps`` calls and ``min_seconds`` (after two untimed
    calls): the timer of the per-layer kernel benchmarks (``native_conv_fwd.py``, ``native_matmul.py``)."""
    timing = time_steps(fn, 2, steps, min_seconds)
    return round(1000 * timing["s_per_step_median"], digits)


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b|, in float64: how far a kernel's values are from XLA's."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def optional_torch():
    """``torch`` set to use every core, or None where it cannot be imported (PyTorch columns are optional)."""
    try:
        import torch
    except Exception:  # noqa: BLE001 (optional)
        return None
    torch.set_num_threads(os.cpu_count())
    return torch


def _serve_rounds(run_step, spec: dict[str, Any]) -> dict[str, Any]:
    """--paired: after the warm-up, say READY and run the rounds the driver asks for on
    stdin ("N S": at least N timed steps and S seconds, answered with each step's seconds;
    "stop": done)."""
    for _ in range(spec["warmup"]):
        run_step()
    times, cpu_before = [], _cpu_seconds()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        steps, seconds = line.split()
        round_times, started = [], time.perf_counter()
        while len(round_times) < int(steps) or time.perf_counter() - started < float(seconds):
            t0 = time.perf_counter()
            run_step()
            round_times.append(time.perf_counter() - t0)
        times += round_times
        print("TIMES " + json.dumps(round_times), flush=True)
    if not times:
        raise RuntimeError("the driver asked for no timed steps")
    ordered = sorted(times)
    return {"timed_steps": len(times), "timed_s": round(sum(times), 3),
            "s_per_step_median": round(ordered[len(ordered) // 2], 5), "s_per_step_min": round(ordered[0], 5),
            "cpu_s_per_step": round((_cpu_seconds() - cpu_before) / len(times), 4),
            "page_faults_per_step": round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
                                          / len(times)),
            "images_per_s": round(spec["batch"] * len(times) / sum(times), 1),
            "images_per_cpu_s": round(spec["batch"] * len(times) / (_cpu_seconds() - cpu_before), 1)}


# --------------------------------------------------------------------------- the project's JAX step

def configure_jax(spec: dict[str, Any]):
    """Set up JAX as nt-robust's CLI does (XLA:CPU flags, malloc tuning) plus the spec's PRNG,
    matmul precision and compilation cache, before the backend starts; returns ``jax``."""
    import jax

    if spec.get("prng_impl"):
        jax.config.update("jax_default_prng_impl", spec["prng_impl"])
    if spec.get("matmul_precision"):
        jax.config.update("jax_default_matmul_precision", spec["matmul_precision"])
    if spec.get("library_xla_flags", True):  # what nt-robust's CLI does before the backend starts
        from nt_robust.cpu.setup import configure_xla_cpu
        configure_xla_cpu()
    if spec.get("library_malloc", True):  # so does its glibc malloc tuning
        from nt_robust.cpu.malloc import tune_malloc
        tune_malloc()
    if spec.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return jax


def jax_config(spec: dict[str, Any], model: dict[str, Any], seed: int = 0, lam: float = BETA,
                epochs: int = 100):
    """The ``ExperimentConfig`` of ``model`` (a :data:`MODELS` entry) with the spec's objective,
    batch, augmentation, attack loop and implementations, built with ``load_config`` overrides."""
    from nt_robust.config import load_config
    from nt_robust.train import ExperimentConfig

    model = dict(model, conv_impl=spec.get("conv_impl") or "auto", dense_impl=spec.get("dense_impl") or "auto",
                 dtype=spec.get("dtype") or "float32")
    overrides = [f"model.{key}={value!r}" if isinstance(value, str) else f"model.{key}={value}"
                 for key, value in model.items()]
    overrides += [
        f"objective.kind={spec['objective']}", f"objective.lam={lam}",
        f"data.crop_padding={4 if spec['augment'] else 0}", f"data.flip={str(bool(spec['augment'])).lower()}",
        f"train_attack.loop={spec['loop']}", f"train.batch_size={spec['batch']}",
        f"train.seed={seed}", f"train.epochs={epochs}",
    ]
    return load_config(ExperimentConfig, None, overrides)


def jax_step(spec: dict[str, Any], config):
    """The jitted project train step, its initial state and a batch, as the Trainer builds them."""
    import jax
    import numpy as np

    from nt_robust.models import create_model, init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.state import init_key
    from nt_robust.train.step import make_train_step

    shape = tuple(spec["input"])
    model = create_model(config.model, num_classes=NUM_CLASSES)
    variables = init_variables(model, init_key(config.train.seed), shape)
    optimizer = make_optimizer(config.optim, epochs=config.train.epochs,
                               steps_per_epoch=50_000 // config.train.batch_size)
    state = create_train_state(variables, optimizer, config.objective.lam,
                               use_ema=config.optim.ema_decay is not None, seed=config.train.seed)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec["batch"], *shape), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, spec["batch"]).astype(np.int32)
    step = make_train_step(model, config, optimizer)
    devices = spec.get("devices") or 1
    if devices > 1:  # data parallel over host "devices", exactly as the Trainer shards it
        from nt_robust.train.sharding import batch_sharding, data_mesh, replicated_sharding
        mesh = data_mesh()
        rep, batch = replicated_sharding(mesh), batch_sharding(mesh)
        jitted = jax.jit(step, in_shardings=(rep, batch, batch), out_shardings=(rep, rep), donate_argnums=0)
        state = jax.device_put(state, rep)
        images, labels = jax.device_put(images, batch), jax.device_put(labels, batch)
    else:
        jitted = jax.jit(step, donate_argnums=0)
        images, labels = jax.device_put(images), jax.device_put(labels)
    return jitted, state, images, labels, model, variables


# --------------------------------------------------------------------------- child processes

def run_child(script: str | Path, spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (``script --worker SPEC``, which prints
    ``RESULT <json>``) and return its result dict."""
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"framework": spec["framework"], "error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"framework": spec["framework"], "error": f"exit code {done.returncode}: " + " | ".join(tail)}


PAIRED_ROUND_MIN_SECONDS = 0.5  # so that a round of fast (MLP) steps is not all wake-up


class PairedWorker:
    """A --paired measurement process: lines from its stdout through a queue, so that every
    wait has a deadline; stderr to a file (no pipe to fill)."""

    def __init__(self, script: str | Path, spec: dict[str, Any]) -> None:
        import queue
        import tempfile
        import threading

        self.framework, self.lines = spec["framework"], queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, str(script), "--worker", json.dumps(dict(spec, paired=True))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, cwd=ROOT)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line that starts with ``prefix``."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise RuntimeError(f"{self.framework} worker: no {prefix!r} within {timeout:.0f} s") from None
            if line is None:
                self.stderr.seek(0)
                tail = " | ".join(self.stderr.read().strip().splitlines()[-5:])
                raise RuntimeError(f"{self.framework} worker exited with {self.process.wait()}: {tail}")
            if line.startswith(prefix):
                return line[len(prefix):]

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


def paired_ratio(jax_seconds: Sequence[float], torch_seconds: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """JAX/PyTorch throughput ratio from per-round median step times: the geometric mean of
    the per-round ratios torch_s / jax_s, with a Student-t interval on their logarithms
    (rounds are independent pairs, each run back to back, so slow spells of the machine
    cancel)::

        paired_ratio([0.10, 0.12], [0.11, 0.13])   # {"geomean": 1.09..., "ci": [...], ...}
    """
    import math

    from nt_robust.studies.uncertainty import t_quantile

    logs = [math.log(t / j) for j, t in zip(jax_seconds, torch_seconds, strict=True)]
    n = len(logs)
    mean = sum(logs) / n
    result = {"rounds": n, "geomean": round(math.exp(mean), 3), "per_round": [round(math.exp(v), 3) for v in logs]}
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (n - 1))
        half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        result.update(level=level, ci=[round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)])
    return result


def run_pair(script: str | Path, specs: dict[str, dict[str, Any]], rounds: int, steps: int,
             timeout: float) -> dict[str, Any]:
    """--paired: both frameworks' workers alive at once, ``rounds`` rounds of at least ``steps``
    steps and :data:`PAIRED_ROUND_MIN_SECONDS`, alternating which goes first; the other waits, blocked on its stdin, meanwhile."""
    import statistics

    workers = {framework: PairedWorker(script, spec) for framework, spec in specs.items()}
    try:
        for worker in workers.values():
            worker.expect("READY", timeout)
        medians: dict[str, list[float]] = {framework: [] for framework in workers}
        order = list(workers)
        for round_index in range(rounds):
            for framework in (order if round_index % 2 == 0 else order[::-1]):
                time.sleep(0.2)  # the other side's threads stop spinning and park
                workers[framework].send(f"{steps} {PAIRED_ROUND_MIN_SECONDS}")
                medians[framework].append(statistics.median(json.loads(workers[framework].expect("TIMES ", timeout))))
        runs = {}
        for framework, worker in workers.items():
            worker.send("stop")
            runs[framework] = json.loads(worker.expect("RESULT ", timeout))
    except RuntimeError as error:
        return {"error": str(error)}
    finally:
        for worker in workers.values():
            worker.close()
    runs["paired"] = {"steps_per_round": steps, "s_per_step_round_medians": medians,
                      "jax_over_torch": paired_ratio(medians["jax"], medians["torch"])}
    return runs



def version(name: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()



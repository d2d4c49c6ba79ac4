"""Training-step throughput, compile time and peak memory: JAX (the project's step) vs PyTorch.

For each model and objective ("natural": CE only; "trades": the 10-step KL attack, then
CE(clean) + 6·KL) this times one SGD training step on a batch of random images, with

* JAX: the project's own step, ``nt_robust.train.step.make_train_step``, built from an
  ``ExperimentConfig`` (``load_config`` + overrides), ``make_optimizer``,
  ``create_train_state`` and ``create_model``/``init_variables``, jitted with the state
  donated as in ``nt_robust.train.loop.Trainer``;
* PyTorch (optional: skipped with a note when ``import torch`` fails): the same
  architectures written in torch below and the TRADES reference semantics — model.eval()
  during the attack from x + 0.001·N(0, I) (ε = 0.031, step 0.007, clamp to [0, 1]),
  model.train() for CE(clean) + 6·KL(batchmean), SGD(momentum 0.9, weight decay 2e-4).

Augmentation (random crop + flip) is excluded from both by default (``--augment`` includes
it in both). Every (framework, model, objective) runs in a fresh subprocess, so peak
memory and compile time are those of a cold process::

    .venv/bin/python benchmarks/train_step.py                        # all models (see below)
    .venv/bin/python benchmarks/train_step.py --models mlp,cnn --objectives trades --min-seconds 10
    .venv/bin/python benchmarks/train_step.py --input 28,28,1 --no-torch
    XLA_FLAGS=--xla_cpu_use_onednn=true .venv/bin/python benchmarks/train_step.py --models cnn
    .venv/bin/python benchmarks/train_step.py --models cnn --conv-impl xla --no-library-xla-flags  # as before
    .venv/bin/python benchmarks/train_step.py --models mlp,cnn --objectives trades --no-torch --dtype bfloat16
    .venv/bin/python benchmarks/train_step.py --models cnn --objectives natural --paired 9 --steps 5
    .venv/bin/python benchmarks/train_step.py --models cnn --torch-malloc   # PyTorch with our malloc tuning too
    .venv/bin/python benchmarks/train_step.py --probe cache-keys     # which config changes recompile
    .venv/bin/python benchmarks/train_step.py --probe conv-grads     # fwd / dx / dw of one conv layer
    .venv/bin/python benchmarks/train_step.py --probe transposes [--no-library-xla-flags]
    .venv/bin/python benchmarks/train_step.py --probe step-parts --models wrn16-1 --devices 1  # fwd / +dx / +dw, JAX vs torch
    .venv/bin/python benchmarks/train_step.py --probe loop-input-gradient --devices 1   # dx in a fori_loop vs unrolled

Results and what was tried: docs/benchmarks.md. The default run (all five models, both
objectives, both frameworks) took 10.8 min on an idle 2-core machine;
``--models cnn,wrn16-1`` about 3 min.

``--paired ROUNDS`` keeps a JAX and a PyTorch worker alive at once and alternates rounds of
at least ``--steps`` steps and 0.5 s between them (the idle one blocked on its stdin), so that the machine's
slow spells hit both: ``paired.jax_over_torch`` is the geometric mean of the per-round
ratios with a 95% Student-t interval. Without it, each framework is timed in turn.

Output: one JSON line per model as it finishes (``--quiet`` drops them), then one JSON
object with everything. ``images_per_s`` = batch × timed steps / wall time of those steps
(each step ends with ``block_until_ready``, as a training loop reading metrics would);
``compile_s`` = XLA compile of the lowered step, ``trace_lower_s`` = tracing + lowering,
``first_step_s`` = the first call after compiling (not timed). FLOPs (JAX only; nt_robust.flops):
``gflop_per_image`` from XLA's cost analysis of the step, ``tflop_per_s`` = that × images/s,
``mfu`` = that over the device's dense peak (None on CPU: no peak). Memory: on CPU, the
process's peak resident set (VmHWM from /proc/self/status, reset with
/proc/self/clear_refs after compiling; ``ru_maxrss`` where that is unavailable) minus its
resident set once the framework is imported and its CPU backend started: ``compile_peak_rss_mb`` covers building + compiling,
``step_peak_rss_mb`` the warm-up and timed steps. On GPU: ``memory_stats()['peak_bytes_in_use']``
(JAX) and ``torch.cuda.max_memory_allocated()``.
"""

from __future__ import annotations

import argparse
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


def _malloc_note() -> str:
    from nt_robust.cpu.malloc import malloc_settings
    return "tuned (nt_robust.host_memory)" if malloc_settings()["tuned"] else "glibc defaults"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(run_step, spec: dict[str, Any]) -> dict[str, Any]:
    """The first (untimed) step's seconds, then ``_time_steps``, as images per second."""
    t0 = time.perf_counter()
    run_step()
    first_step_s = time.perf_counter() - t0
    if spec.get("paired"):
        return {"first_step_s": round(first_step_s, 3), **_serve_rounds(run_step, spec)}
    timing = _time_steps(run_step, spec["warmup"], spec["steps"], spec["min_seconds"])
    elapsed = timing.pop("_elapsed")
    return {"first_step_s": round(first_step_s, 3), **timing,
            "images_per_s": round(spec["batch"] * timing["timed_steps"] / elapsed, 1),
            "images_per_cpu_s": round(spec["batch"] / timing["cpu_s_per_step"], 1)}


def _time_steps(run_step, warmup: int, min_steps: int, min_seconds: float) -> dict[str, Any]:
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
    timing = _time_steps(fn, 2, steps, min_seconds)
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


# --------------------------------------------------------------------------- JAX worker

def im2col_weight_gradient(x, g, kernel_shape, padding):
    """The conv weight gradient as one matmul over an explicit 9x im2col patch tensor
    (stride 1): the first alternative we tried to XLA's, kept for the conv-grads probe."""
    import jax.numpy as jnp

    kh, kw, cin, cout = kernel_shape
    h, w = g.shape[1:3]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return (patches.reshape(-1, kh * kw * cin).T @ g.reshape(-1, cout)).reshape(kernel_shape)


def _configure_jax(spec: dict[str, Any]):
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


def _jax_config(spec: dict[str, Any], model: dict[str, Any], seed: int = 0, lam: float = BETA,
                epochs: int = 100):
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


def _jax_step(spec: dict[str, Any], config):
    """The jitted project train step, its initial state and a batch, as the Trainer builds them."""
    import jax
    import numpy as np

    from nt_robust.models import create_model, init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.step import init_key, make_train_step

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


def jax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    jax = _configure_jax(spec)
    import nt_robust.train.step  # noqa: F401 (imports before the memory baseline)
    from nt_robust.models import count_parameters

    jax.devices()  # start the backend, too
    memory = PeakMemory()
    config = _jax_config(spec, MODELS[spec["model"]])
    jitted, state, images, labels, _, variables = _jax_step(spec, config)

    t0 = time.perf_counter()
    lowered = jitted.lower(state, images, labels)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    compile_peak = memory.peak_mb()
    memory.reset()
    buffers = {}
    with contextlib.suppress(Exception):  # XLA's own buffer plan for the step
        analysis = compiled.memory_analysis()
        buffers = {f"xla_{name}_mb": round(getattr(analysis, f"{name}_size_in_bytes") / 2**20, 1)
                   for name in ("temp", "argument", "output", "generated_code")}

    counted = _step_flops(compiled, spec, config, jitted, state, images, labels)
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = compiled(holder["state"], images, labels)
        jax.block_until_ready((holder["state"], metrics))

    result = {
        "framework": "jax", "parameters": count_parameters(variables["params"]),
        "trace_lower_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3), **_measure(run_step, spec),
        "compile_peak_rss_mb": compile_peak, "step_peak_rss_mb": memory.peak_mb(),
        **buffers, "memory_method": memory.method, "attack_loop": _resolved_loop(spec["loop"]),
        "conv_impl": _resolved_conv_impl(config.model.conv_impl), "dense_impl": _resolved_dense_impl(config.model.dense_impl) if config.model.arch == "mlp" else None,
        "dtype": config.model.dtype,
        "devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": _malloc_note(),
    }
    result.update(_flop_rate(counted, result["images_per_s"], spec["batch"], config))
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        result["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        result["memory_method"] = "jax.devices()[0].memory_stats()['peak_bytes_in_use']"
    return result


def _step_flops(compiled, spec, config, jitted, state, images, labels) -> dict[str, Any]:
    """FLOPs of one global step (nt_robust.flops.train_step_flops): the step lowered with XLA's
    convolutions and products and the attack unrolled, so every conv_impl / dense_impl, the
    native kernels included (custom calls XLA's cost analysis cannot see), counts the same work."""
    from nt_robust import flops

    counted = flops.train_step_flops(config, tuple(spec["input"]), NUM_CLASSES, spec["batch"])
    return {"flops_per_step": counted["flops_per_step"],
            "flops_source": "lowered with XLA's convolutions and products, attack unrolled"}


def _flop_rate(counted: dict[str, Any], images_per_s: float, batch: int, config) -> dict[str, Any]:
    """``gflop_per_image``, achieved ``tflop_per_s`` and ``mfu`` (None without a peak, e.g. CPU)."""
    import jax

    from nt_robust import flops

    per_step = counted.get("flops_per_step")
    if per_step is None:
        return {"gflop_per_image": None, "tflop_per_s": None, "mfu": None, **counted}
    rate = per_step / batch * images_per_s
    device = jax.devices()[0]
    klass = flops.precision_class(*flops.config_precision(config), device.platform)
    return {"gflop_per_image": round(per_step / batch / 1e9, 4), "tflop_per_s": round(rate / 1e12, 5),
            "mfu": flops.mfu(rate, device.device_kind, klass, jax.device_count()), "peak_class": klass, **counted}


def _devices(setting: str, model: str, batch: int) -> int:
    """--devices for ``model``: the number given, or (auto) the CLI's choice for it."""
    if setting != "auto":
        return int(setting)
    from nt_robust.cpu.devices import auto_cpu_devices
    return auto_cpu_devices([(MODELS[model]["arch"], batch, batch)])


def _resolved_conv_impl(name: str) -> str:
    from nt_robust.cpu.ops import resolve_conv_impl
    return resolve_conv_impl(name)


def _resolved_dense_impl(name: str) -> str:
    from nt_robust.cpu.ops import resolve_dense_impl
    return resolve_dense_impl(name)


def _resolved_loop(loop: str) -> str:
    from nt_robust.attacks import resolve_loop
    return resolve_loop(loop)


# --------------------------------------------------------------------------- PyTorch worker

def _torch_models():
    """The benchmark's architectures in PyTorch (NCHW), mirroring nt_robust.models."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def init_(module):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    class MLP(nn.Module):
        def __init__(self, in_features: int, width: int, depth: int):
            super().__init__()
            layers, features = [], in_features
            for _ in range(depth):
                layers += [nn.Linear(features, width), nn.ReLU()]
                features = width
            self.body = nn.Sequential(*layers, nn.Linear(features, NUM_CLASSES))

        def forward(self, x):
            return self.body(torch.flatten(x, 1))

    class SmallCNN(nn.Module):
        """conv 32-32, pool, conv 64-64, pool, dense 200-200 (× width), SAME padding."""

        def __init__(self, in_channels: int, height: int, width_px: int, width: int):
            super().__init__()
            layers, channels = [], in_channels
            for stage in (32, 64):
                for _ in range(2):
                    layers += [nn.Conv2d(channels, stage * width, 3, padding=1), nn.ReLU()]
                    channels = stage * width
                layers.append(nn.MaxPool2d(2, 2))
            flat = channels * (height // 4) * (width_px // 4)
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 200 * width), nn.ReLU(),
                                      nn.Linear(200 * width, 200 * width), nn.ReLU(),
                                      nn.Linear(200 * width, NUM_CLASSES))
            init_(self)

        def forward(self, x):
            return self.head(self.features(x))

    class BasicBlock(nn.Module):
        """TRADES WideResNet pre-activation block (BN-ReLU shared with a 1x1 shortcut)."""

        def __init__(self, in_planes: int, out_planes: int, stride: int):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_planes)
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.equal_in_out = in_planes == out_planes and stride == 1
            self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

        def forward(self, x):
            activated = F.relu(self.bn1(x))
            out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
            return (x if self.equal_in_out else self.shortcut(activated)) + out

    class WideResNet(nn.Module):
        def __init__(self, in_channels: int, depth: int, width: int):
            super().__init__()
            n = (depth - 4) // 6
            self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            blocks, planes = [], 16
            for channels, stride in ((16, 1), (32, 2), (64, 2)):
                for block in range(n):
                    blocks.append(BasicBlock(planes, channels * width, stride if block == 0 else 1))
                    planes = channels * width
            self.blocks = nn.Sequential(*blocks)
            self.bn = nn.BatchNorm2d(planes)
            self.fc = nn.Linear(planes, NUM_CLASSES)
            init_(self)

        def forward(self, x):
            out = F.relu(self.bn(self.blocks(self.stem(x))))
            return self.fc(out.mean(dim=(2, 3)))

    return MLP, SmallCNN, WideResNet


def _torch_augment(x, pad: int = 4):
    """Per-example random crop of the zero-padded batch + random horizontal flip."""
    import torch
    from torch.nn import functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    flip = torch.rand(n, 1, 1) < 0.5
    cols = torch.where(flip, cols.flip(-1), cols)
    batch = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("torch_malloc"):  # the same glibc tuning as the JAX side: a like-for-like comparison
        from nt_robust.cpu.malloc import tune_malloc
        tune_malloc()
    try:
        import torch
        from torch.nn import functional as F
    except Exception as error:  # noqa: BLE001 (optional dependency: any import failure skips it)
        return {"framework": "torch", "skipped": f"import torch failed: {error!r}"}
    memory = PeakMemory()
    threads = spec.get("torch_threads") or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if spec.get("torch_cuda") and torch.cuda.is_available() else "cpu")
    MLP, SmallCNN, WideResNet = _torch_models()
    h, w, c = spec["input"]
    fields = MODELS[spec["model"]]
    if fields["arch"] == "mlp":
        model = MLP(h * w * c, fields["width"], fields["depth"])
    elif fields["arch"] == "cnn":
        model = SmallCNN(c, h, w, fields["width"])
    else:
        model = WideResNet(c, fields["depth"], fields["width"])
    model = model.to(device)
    if spec.get("torch_channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (spec["batch"], c, h, w), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (spec["batch"],), generator=generator).to(device)
    trades, reference = spec["objective"] == "trades", spec.get("torch_variant") == "reference"

    def kl(adv_logits, clean_logits, reduction):
        return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction=reduction)

    def run_step():
        x = images.float().div_(255)
        if spec["augment"]:
            x = _torch_augment(x)
        if spec.get("torch_channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        if trades:
            model.eval()
            if not reference:  # clean target computed once (what the JAX step does)
                with torch.no_grad():
                    clean_target = model(x)
            x_adv = x.detach() + START_STD * torch.randn_like(x)
            for _ in range(ATTACK_STEPS):
                x_adv.requires_grad_()
                with torch.enable_grad():
                    target = model(x) if reference else clean_target  # reference: re-run every step
                    loss_kl = kl(model(x_adv), target, "sum")
                grad = torch.autograd.grad(loss_kl, [x_adv])[0]
                x_adv = x_adv.detach() + STEP_SIZE * torch.sign(grad.detach())
                x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp_(0.0, 1.0)
            model.train()
            x_adv = x_adv.detach()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        if trades:
            clean_for_kl = model(x) if reference else logits  # reference: a second clean pass
            loss = loss + BETA * kl(model(x_adv), clean_for_kl, "batchmean")
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {
        "framework": "torch", "parameters": sum(p.numel() for p in model.parameters()), **_measure(run_step, spec),
        "step_peak_rss_mb": memory.peak_mb(), "memory_method": memory.method,
        "torch_threads": torch.get_num_threads(), "torch_variant": spec.get("torch_variant") or "matched",
        "device": str(device), "malloc": _malloc_note(),
    }
    if device.type == "cuda":
        result["peak_bytes_in_use"] = torch.cuda.max_memory_allocated()
        result["memory_method"] = "torch.cuda.max_memory_allocated()"
    return result


# --------------------------------------------------------------------------- probes

def probe_cache_keys(spec: dict[str, Any]) -> dict[str, Any]:
    """Which config changes give a different XLA program (= a recompile, and a miss in the
    persistent cache), judged by the hash of the lowered StableHLO text."""
    import hashlib

    _configure_jax(spec)
    variants = {
        "base": dict(), "lam=12": dict(lam=12.0), "seed=1": dict(seed=1), "epochs=50": dict(epochs=50),
    }
    model = MODELS[spec["model"]]
    hashes, timings = {}, {}
    for name, kwargs in variants.items():
        config = _jax_config(spec, model, **kwargs)
        jitted, state, images, labels, _, _ = _jax_step(spec, config)
        t0 = time.perf_counter()
        text = jitted.lower(state, images, labels).as_text()
        timings[name] = round(time.perf_counter() - t0, 3)
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    wider = dict(model, width=model["width"] * 2)
    config = _jax_config(spec, wider)
    jitted, state, images, labels, _, _ = _jax_step(spec, config)
    hashes[f"width={wider['width']}"] = hashlib.sha256(
        jitted.lower(state, images, labels).as_text().encode()).hexdigest()[:16]
    same = {name: value == hashes["base"] for name, value in hashes.items() if name != "base"}
    return {"probe": "cache-keys", "model": spec["model"], "objective": spec["objective"],
            "program_hash": hashes, "same_program_as_base": same, "trace_lower_s": timings}


def probe_conv_layout(spec: dict[str, Any]) -> dict[str, Any]:
    """Forward+backward of one 3x3 convolution (SmallCNN's second layer, batch ``--batch``)
    with activations in NHWC and in NCHW: which layout does XLA's CPU backend run faster?"""
    import jax
    import jax.numpy as jnp

    _configure_jax(spec)
    h, w, _ = spec["input"]
    results = {}
    for layout, x_shape, kernel_shape, numbers in (
            ("NHWC", (spec["batch"], h, w, 32), (3, 3, 32, 32), ("NHWC", "HWIO", "NHWC")),
            ("NCHW", (spec["batch"], 32, h, w), (32, 32, 3, 3), ("NCHW", "OIHW", "NCHW"))):
        x = jnp.full(x_shape, 0.5, jnp.float32)
        kernel = jnp.full(kernel_shape, 0.01, jnp.float32)

        def loss(x, kernel, numbers=numbers):
            out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=numbers)
            return jnp.sum(jax.nn.relu(out) ** 2)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        jax.block_until_ready(grad(x, kernel))
        timing = _time_steps(lambda: jax.block_until_ready(grad(x, kernel)), 1, spec["steps"], spec["min_seconds"])
        timing.pop("_elapsed")
        results[layout] = timing
    return {"probe": "conv-layout", "batch": spec["batch"], "conv": "3x3, 32->32 channels", "results": results}


def probe_conv_grads(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for the three pieces of a 3x3 convolution layer in training — forward,
    input gradient (dx: all an attack needs) and weight gradient (dw: only the update needs
    it) — in XLA, as an im2col matmul, as the library's shifted matmuls
    (``model.conv_impl = "shifted_matmul"``), and in PyTorch (when installed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu.conv import shifted_matmul_conv

    _configure_jax(spec)
    numbers = ("NHWC", "HWIO", "NHWC")
    try:
        import torch
        torch.set_num_threads(spec.get("torch_threads") or os.cpu_count())
    except Exception:  # noqa: BLE001
        torch = None
    # the last three: WRN-16-1's groups (stride-1 layers)
    batch, layers, results = spec["batch"], [(32, 32, 32), (16, 64, 64), (32, 64, 64), (32, 16, 16), (16, 32, 32), (8, 64, 64)], {}
    for size, cin, cout in layers:
        rng = np.random.default_rng(0)
        x_np = rng.random((batch, size, size, cin), np.float32)
        w_np = (rng.standard_normal((3, 3, cin, cout)) * 0.05).astype(np.float32)
        x, w = jnp.asarray(x_np), jnp.asarray(w_np)
        pad = ((1, 1), (1, 1))

        def conv(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=numbers)

        def conv_shifted(x, w):
            return shifted_matmul_conv(x, w, (1, 1), pad, dimension_numbers=numbers)

        g = jnp.ones((batch, size, size, cout), jnp.float32)
        fns = {
            "jax_fwd": jax.jit(conv),
            "jax_dx": jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]),
            "jax_dw": jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]),
            "jax_dw_im2col": jax.jit(lambda x, w, g: im2col_weight_gradient(x, g, w.shape, pad)),
            "jax_dw_shifted_matmul": jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv_shifted(x, w_), w)[1](g)[0]),
        }
        row = {}
        for name, fn in fns.items():
            args = (x, w) if name == "jax_fwd" else (x, w, g)
            jax.block_until_ready(fn(*args))
            timing = _time_steps(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), 1,
                                 spec["steps"], spec["min_seconds"])
            row[name] = round(1000 * timing["s_per_step_median"], 1)
        reference = fns["jax_dw"](x, w, g)
        for name in ("jax_dw_im2col", "jax_dw_shifted_matmul"):
            candidate = fns[name](x, w, g)
            row[f"{name}_max_rel_diff"] = float(jnp.max(jnp.abs(candidate - reference)) / jnp.max(jnp.abs(reference)))
        if torch is not None:
            tx = torch.tensor(x_np).permute(0, 3, 1, 2).contiguous()
            tw = torch.tensor(w_np).permute(3, 2, 0, 1).contiguous()
            tg = torch.ones(batch, cout, size, size)
            torch_fns = {
                "torch_fwd": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
                "torch_dx": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, padding=1),
                "torch_dw": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, padding=1),
            }
            for name, fn in torch_fns.items():
                fn()
                timing = _time_steps(fn, 1, spec["steps"], spec["min_seconds"])
                row[name] = round(1000 * timing["s_per_step_median"], 1)
        results[f"{size}x{size}, {cin}->{cout}"] = row
    return {"probe": "conv-grads", "batch": batch, "unit": "ms (median)", "load_1min_end": os.getloadavg()[0],
            "results": results}


def probe_transposes(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for the layout transposes XLA:CPU puts around a weight-gradient
    convolution (NHWC -> CHWN of WRN-16-1's first-group activations, batch ``--batch``), fused
    with an elementwise op as in the step, against a plain elementwise copy. Run it with and
    without ``--no-library-xla-flags`` to see what YNNPACK's elementwise fusions change."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    _configure_jax(spec)
    x = jnp.asarray(np.random.default_rng(0).random((spec["batch"], 32, 32, 16), np.float32))
    fns = {"copy": lambda x: x * 2.0,
           "transpose_nhwc_to_chwn": lambda x: jnp.transpose(x * 2.0, (3, 1, 2, 0)),
           "transpose_nhwc_to_hwcn": lambda x: jnp.transpose(x * 2.0, (1, 2, 3, 0))}
    results = {}
    for name, fn in fns.items():
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(x))
        timing = _time_steps(lambda jitted=jitted: jax.block_until_ready(jitted(x)), 3, max(spec["steps"], 20),
                             spec["min_seconds"])
        results[name] = round(1000 * timing["s_per_step_median"], 3)
    return {"probe": "transposes", "shape": list(x.shape), "unit": "ms (median)",
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": results}


def probe_step_parts(spec: dict[str, Any]) -> dict[str, Any]:
    """Where a conv net's natural step goes, in both frameworks: milliseconds for the
    train-mode forward pass with the cross-entropy, that plus the input gradient (what an
    attack step adds: every layer's dx), and that plus the parameter gradients (every layer's
    dx and dw: the natural step without the update), for the first ``--models`` entry, unsharded
    (run it with ``--devices 1``); then the same with every BatchNorm replaced by the identity (BatchNorm's share).
    ``parameter_gradient_ms - input_gradient_ms`` is about the weight gradients' cost.
    ``eval_mode_input_gradient_ms``: forward and input gradient with BatchNorm in eval mode,
    one iteration of the training attack (``objective.attack_bn_mode = "eval"``)."""
    from unittest import mock

    import jax
    import numpy as np
    import optax

    import nt_robust.models.wide_resnet as wide_resnet
    from nt_robust.models import create_model, init_variables

    _configure_jax(spec)
    fields, (h, w, c), batch = MODELS[spec["model"]], spec["input"], spec["batch"]
    if fields["arch"] != "wrn":
        raise SystemExit("--probe step-parts is for the WideResNets (its no-BatchNorm variant replaces theirs)")
    rng = np.random.default_rng(0)
    images_np = rng.random((batch, h, w, c), np.float32)
    labels_np = rng.integers(0, NUM_CLASSES, batch)

    def time_ms(fn):
        return round(1000 * _time_steps(fn, 2, spec["steps"], spec["min_seconds"])["s_per_step_median"], 1)

    def jax_parts() -> dict[str, float]:
        config = _jax_config(spec, fields)
        model = create_model(config.model, num_classes=NUM_CLASSES)
        variables = init_variables(model, jax.random.key(0), (h, w, c))
        stats = variables.get("batch_stats", {})
        images, labels = jax.numpy.asarray(images_np), jax.numpy.asarray(labels_np)

        def loss(params, x):
            logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        def eval_loss(params, x):
            logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        parts = {"forward_ms": jax.jit(loss), "input_gradient_ms": jax.jit(jax.grad(loss, argnums=1)),
                 "parameter_gradient_ms": jax.jit(jax.grad(loss)),
                 "eval_mode_input_gradient_ms": jax.jit(jax.grad(eval_loss, argnums=1))}
        params = variables["params"]
        return {name: time_ms(lambda fn=fn: jax.block_until_ready(fn(params, images))) for name, fn in parts.items()}

    def torch_parts(without_bn: bool) -> dict[str, float] | str:
        try:
            import torch
            from torch.nn import functional as F
        except Exception as error:  # noqa: BLE001 (optional dependency)
            return f"import torch failed: {error!r}"
        torch.set_num_threads(spec.get("torch_threads") or os.cpu_count())
        torch.manual_seed(0)
        model = _torch_models()[2](c, fields["depth"], fields["width"]).train()
        if without_bn:
            for module in list(model.modules()):
                for name, child in module.named_children():
                    if isinstance(child, torch.nn.BatchNorm2d):
                        setattr(module, name, torch.nn.Identity())
        images = torch.tensor(images_np).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(labels_np)

        def forward():
            with torch.no_grad():
                F.cross_entropy(model(images), labels)

        def input_gradient():
            x = images.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), labels), x)

        def parameter_gradient():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()

        timings = {"forward_ms": time_ms(forward), "parameter_gradient_ms": time_ms(parameter_gradient)}
        for parameter in model.parameters():  # an attack's backward pass: no weight gradients
            parameter.requires_grad_(False)
        timings["input_gradient_ms"] = time_ms(input_gradient)
        model.eval()
        timings["eval_mode_input_gradient_ms"] = time_ms(input_gradient)
        return {key: timings[key] for key in ("forward_ms", "input_gradient_ms", "parameter_gradient_ms",
                                              "eval_mode_input_gradient_ms")}

    results = {"with_batchnorm": {"jax": jax_parts(), "torch": torch_parts(False)}}
    identity = lambda train, name, dtype=None: (lambda x: x)  # noqa: E731
    with mock.patch.object(wide_resnet, "_batch_norm", identity):
        results["without_batchnorm"] = {"jax": jax_parts(), "torch": torch_parts(True)}
    return {"probe": "step-parts", "model": spec["model"], "batch": batch, "devices": jax.device_count(),
            "unit": "ms (median)",
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": results}


def probe_loop_input_gradient(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for ten input gradients of a 3x3 convolution (50x28x28x32, an attack
    iteration's shape on the small CNN), chained in a ``lax.fori_loop`` against unrolled,
    with autodiff's input gradient (``conv_impl = "xla"``) and with the flipped-kernel one
    of ``conv_impl = "flipped_dx"``: XLA:CPU runs autodiff's off its fast path in loops."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu.ops import conv_function

    _configure_jax(spec)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((50, 28, 28, 32), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 32)).astype(np.float32) * 0.05)
    results = {}
    for impl in ("xla", "flipped_dx"):
        conv = conv_function(impl)

        def step(_, y, conv=conv):
            return jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, kernel, (1, 1), ((1, 1), (1, 1)),
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))))(y)

        def unrolled(y, step=step):
            for i in range(10):
                y = step(i, y)
            return y

        for layout, fn in (("fori_loop", lambda y, step=step: lax.fori_loop(0, 10, step, y)), ("unrolled", unrolled)):
            jitted = jax.jit(fn)
            jax.block_until_ready(jitted(x))
            timing = _time_steps(lambda jitted=jitted: jax.block_until_ready(jitted(x)), 1, spec["steps"],
                                 spec["min_seconds"])
            results[f"{impl}, {layout}"] = round(1000 * timing["s_per_step_median"], 1)
    return {"probe": "loop-input-gradient", "unit": "ms (median) for 10 input gradients", "results": results}


PROBES = {"cache-keys": probe_cache_keys, "conv-layout": probe_conv_layout, "conv-grads": probe_conv_grads,
          "transposes": probe_transposes, "step-parts": probe_step_parts,
          "loop-input-gradient": probe_loop_input_gradient}


# --------------------------------------------------------------------------- driver

def _run_child(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its result dict."""
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
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


class _PairedWorker:
    """A --paired measurement process: lines from its stdout through a queue, so that every
    wait has a deadline; stderr to a file (no pipe to fill)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import queue
        import tempfile
        import threading

        self.framework, self.lines = spec["framework"], queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(dict(spec, paired=True))],
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


def _run_pair(specs: dict[str, dict[str, Any]], rounds: int, steps: int, timeout: float) -> dict[str, Any]:
    """--paired: both frameworks' workers alive at once, ``rounds`` rounds of at least ``steps``
    steps and :data:`PAIRED_ROUND_MIN_SECONDS`, alternating which goes first; the other waits, blocked on its stdin, meanwhile."""
    import statistics

    workers = {framework: _PairedWorker(spec) for framework, spec in specs.items()}
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


def _worker_main(spec: dict[str, Any]) -> None:
    if spec["framework"] == "jax":
        result = jax_worker(spec)
    elif spec["framework"] == "torch":
        result = torch_worker(spec)
    else:
        result = PROBES[spec["framework"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


def _version(name: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "images_per_s") -> float | None:
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--frameworks", default="jax,torch")
    parser.add_argument("--no-torch", action="store_true", help="same as --frameworks jax")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--input", default="32,32,3", help="H,W,C (e.g. 28,28,1)")
    parser.add_argument("--steps", type=int, default=2, help="at least this many timed steps")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="and at least this long")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--augment", action="store_true", help="random crop + flip in both frameworks")
    parser.add_argument("--loop", default="auto", choices=("auto", "unroll", "fori"),
                        help="train_attack.loop of the JAX step")
    parser.add_argument("--prng-impl", default=None, help="jax_default_prng_impl (threefry2x32, rbg, unsafe_rbg)")
    parser.add_argument("--matmul-precision", default=None, help="jax_default_matmul_precision")
    parser.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache directory")
    parser.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "flipped_dx", "shifted_matmul", "native"),
                        help="model.conv_impl of the JAX models (auto: measured per machine, nt_robust.models.conv)")
    parser.add_argument("--dense-impl", default="auto", choices=("auto", "xla", "native"),
                        help="model.dense_impl of the JAX models (auto: measured per machine, nt_robust.models.dense)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="model.dtype (compute dtype) of the JAX models; PyTorch stays float32")
    parser.add_argument("--no-library-xla-flags", action="store_true",
                        help="do not add the XLA:CPU flags nt-robust's CLI adds (configure_xla_cpu)")
    parser.add_argument("--no-library-malloc", action="store_true",
                        help="JAX with glibc's malloc defaults, not the CLI's tuning (nt_robust.host_memory)")
    parser.add_argument("--torch-malloc", action="store_true",
                        help="PyTorch with the same glibc malloc tuning as nt-robust (default: as shipped)")
    parser.add_argument("--devices", default="auto",
                        help="JAX host devices to shard the batch over (sets jax_num_cpu_devices); auto: what "
                             "nt-robust train picks for the model (environment.auto_cpu_devices)")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--torch-variant", default="matched", choices=("matched", "reference"),
                        help="matched: clean logits once per step, as the JAX step; reference: the TRADES "
                             "code verbatim (clean forward re-run in every attack step and twice in the loss)")
    parser.add_argument("--torch-channels-last", action="store_true")
    parser.add_argument("--timeout", type=float, default=900, help="per measurement, seconds")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="both frameworks' workers alive at once, ROUNDS alternating rounds of --steps steps "
                             "each; adds the per-round JAX/PyTorch ratio with a 95%% interval (noisy machines)")
    parser.add_argument("--probe", choices=tuple(PROBES), default=None, help="run a probe instead")
    parser.add_argument("--quiet", action="store_true", help="no per-model JSON lines")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        spec = json.loads(args.worker)
        if (spec.get("devices") or 1) > 1:
            import jax
            jax.config.update("jax_num_cpu_devices", spec["devices"])
        _worker_main(spec)
        return

    base = {
        "batch": args.batch, "input": [int(v) for v in args.input.split(",")], "steps": args.steps,
        "min_seconds": args.min_seconds, "warmup": args.warmup, "augment": args.augment, "loop": args.loop,
        "prng_impl": args.prng_impl, "matmul_precision": args.matmul_precision, "cache_dir": args.cache_dir,
        "devices": args.devices, "conv_impl": args.conv_impl, "dense_impl": args.dense_impl, "dtype": args.dtype,
        "library_xla_flags": not args.no_library_xla_flags, "torch_threads": args.torch_threads, "torch_variant": args.torch_variant,
        "torch_channels_last": args.torch_channels_last, "library_malloc": not args.no_library_malloc,
        "torch_malloc": args.torch_malloc,
    }
    if len(base["input"]) != 3:
        parser.error("--input must be H,W,C")
    if args.paired == 1 or args.paired < 0:
        parser.error(f"--paired needs at least 2 rounds for an interval, got {args.paired}")
    if args.devices != "auto" and not (args.devices.isdigit() and int(args.devices) >= 1):
        parser.error(f"--devices must be auto or a positive integer, got {args.devices!r}")
    environment = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        **{name: os.environ[name] for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF") if name in os.environ}, "load_1min_start": round(os.getloadavg()[0], 2),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.probe:
        first_model = args.models.split(",")[0]
        spec = dict(base, framework=args.probe, model=first_model, objective=args.objectives.split(",")[-1],
                    devices=_devices(args.devices, first_model, args.batch))
        print(json.dumps({"benchmark": "train_step", **environment, **_run_child(spec, args.timeout)}, indent=2))
        return

    frameworks = ["jax"] if args.no_torch else args.frameworks.split(",")
    torch_note = None
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {list(MODELS)}")
        entry: dict[str, Any] = {}
        for objective in args.objectives.split(","):
            runs = {}
            devices = _devices(args.devices, name, args.batch)
            if args.paired and not torch_note and set(frameworks) == {"jax", "torch"}:
                runs = _run_pair({framework: dict(base, framework=framework, model=name, objective=objective,
                                                  devices=devices) for framework in ("jax", "torch")},
                                 args.paired, args.steps, args.timeout)
            for framework in ([] if runs else frameworks):
                if framework == "torch" and torch_note:
                    continue
                runs[framework] = _run_child(dict(base, framework=framework, model=name, objective=objective,
                                                  devices=devices), args.timeout)
                if framework == "torch" and "skipped" in runs[framework]:
                    torch_note = runs.pop(framework)["skipped"]
            if "jax" in runs and "torch" in runs:
                runs["jax_over_torch"] = _ratio(runs["jax"], runs["torch"])
                runs["jax_over_torch_per_cpu_s"] = _ratio(runs["jax"], runs["torch"], "images_per_cpu_s")
            entry[objective] = runs
        results[name] = entry
        if not args.quiet:
            print(json.dumps({"model": name, **entry}), flush=True)
    summary = {
        name: {f"{fw}_{obj}_images_per_s": entry[obj].get(fw, {}).get("images_per_s")
               for obj in entry for fw in frameworks} | {
                   f"jax_{obj}_{key}": entry[obj].get("jax", {}).get(key)
                   for obj in entry for key in ("gflop_per_image", "tflop_per_s", "mfu")} | {
                   f"jax_over_torch_{obj}": entry[obj].get("jax_over_torch") for obj in entry}
        for name, entry in results.items()
    }
    print(json.dumps({
        "benchmark": "train_step", **environment, "settings": base, "torch_note": torch_note,
        "load_1min_end": round(os.getloadavg()[0], 2), "wall_s": round(time.perf_counter() - started, 1),
        "summary": summary, "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()

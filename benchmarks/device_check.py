"""The GPU/TPU device check: one command, at most ~5 minutes on one H200, one JSON file.

Run on the GPU machine (Python 3.12, jax 0.11.2 with CUDA, flax, optax, orbax, torch
preinstalled, no network), from the repository root, with nothing installed or fetched::

    PYTHONPATH=. python benchmarks/device_check.py --out $OUT/device_check.json

(``PYTHONPATH=.`` imports the package from the checkout. ``pyproject.toml`` caps
``jax<0.11``, so ``pip install -e .`` cannot resolve there; ``pip install --no-deps -e .``
works too, and installs nothing else. Do not widen the pins for this: the check records
what breaks under that JAX instead.) On this repository's CPU, inside the test suite::

    .venv/bin/python benchmarks/device_check.py --smoke --out /tmp/device_check_smoke.json

Parts, in order, each with its own time budget (seconds, ``--budget-scale`` scales them);
a part stops starting new items when its budget is spent and says what it skipped:

``tests``         the fast subset of the test suite (:data:`FAST_TESTS`) under this JAX, on
                  its CPU backend, in a subprocess: pass/fail counts (not in ``--smoke``).
``trades_step``   WRN-34-10 TRADES step at batch 128, 256, 512 in float32-highest, TF32
                  (matmul precision "default" on a GPU) and bfloat16: images/s, FLOP/s, MFU,
                  compile time, XLA's buffer plan and the process's peak bytes in use.
``width_memory``  WRN-34-k, k in {1, 5, 10, 15, 20}, batch 128, float32: XLA's buffer plan of
                  the compiled step (compiled on abstract inputs, never run) and whether it
                  fits in the device's memory.
``attacks``       PGD-20 and each stage of ``autoattack-standard`` on WRN-34-10, one batch each:
                  images/s per stage and the cascade's worst case (no point broken early).
``scaling``       the bfloat16 step on 1 device and on all N, batch 128 per device (N > 1 only).
``data_path``     the share of step time spent in host work (the Trainer's numpy gather and
                  transfer of each batch) vs the same steps on a batch already on the device.
``study``         a TRADES width mini-sweep of WRN-16-k on Fashion-MNIST end to end through
                  ``nt-robust study`` (a spec written under the output directory; the synthetic
                  dataset, with a note, when Fashion-MNIST is not on the machine).

FLOPs: :mod:`nt_robust.train.cost` — XLA's count of the step with the attack unrolled, at the
smallest batch, scaled linearly in the batch (the compiled count of the real step is kept
too: with the attack in a ``fori`` loop, the GPU default, XLA counts the loop body once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The fast subset run under the device's JAX before benchmarking (~1 min on 2 slow cores).
FAST_TESTS = ("tests/test_flops.py", "tests/models", "tests/train/test_objectives.py",
              "tests/train/test_optim.py", "tests/train/test_schedules.py", "tests/attacks/test_attack_losses.py")

PRECISIONS = {  # name -> (model.dtype, model.matmul_precision)
    "float32-highest": ("float32", "highest"),
    "tf32": ("float32", "default"),
    "bfloat16": ("bfloat16", "default"),
}

FULL = {
    "model": dict(arch="wrn", depth=34, width=10), "input": (32, 32, 3), "classes": 10,
    "batches": (128, 256, 512), "widths": (20, 1, 5, 15, 10), "width_batch": 128,
    "attack_batch": 128, "attack_overrides": {}, "attack_stages": None, "scaling_batch": 128,
    "min_steps": 3, "min_seconds": 1.0, "data_steps": 10, "train_examples": 50_000, "overrides": [],
    "study": dict(dataset="fashion_mnist", arch="wrn", depth=16, widths=(1, 2), train_subset=4096, epochs=1,
                  batch=128, val=256, test=256, set=[]),
    # 265 s in all: a part starts no item once its budget is spent, but the item in flight (a
    # compile, ~10-40 s) may overrun it; the slack to 300 s is for that and for start-up.
    "budgets": {"tests": 40, "trades_step": 85, "width_memory": 35, "attacks": 35, "scaling": 15,
                "data_path": 10, "study": 45},
}
SMOKE = {
    "model": dict(arch="mlp", depth=1, width=16), "input": (8, 8, 1), "classes": 4,
    "batches": (8,), "widths": (16,), "width_batch": 8,
    "attack_batch": 8, "attack_overrides": {"num_steps": 1, "num_queries": 2, "num_targets": 1},
    "attack_stages": 1,  # the first stage of each protocol (PGD-20, APGD-CE): a compile each
    "scaling_batch": 4, "min_steps": 1, "min_seconds": 0.0, "data_steps": 2, "train_examples": 64,
    "overrides": ["train_attack.num_steps=1"],
    "study": dict(dataset="synthetic", arch="mlp", depth=1, widths=(8,), train_subset=None, epochs=1,
                  batch=64, val=16, test=16,
                  set=["train_attack.num_steps=1", "eval.attack.num_steps=1", "eval.lipschitz=none"]),
    "budgets": {"tests": 0, "trades_step": 60, "width_memory": 30, "attacks": 30, "scaling": 30,
                "data_path": 30, "study": 60},
}


class Budget:
    """Seconds left for one part; ``allows(estimate)`` says whether another item fits."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate: float = 0.0) -> bool:
        return self.left() > estimate


# --------------------------------------------------------------------------- building steps

def model_fields() -> set[str]:
    from nt_robust.models import ModelConfig
    return {f.name for f in dataclasses.fields(ModelConfig)}


def precision_overrides(name: str) -> list[str] | None:
    """Config overrides for precision ``name``; None when this checkout lacks the fields."""
    dtype, matmul = PRECISIONS[name]
    fields = model_fields()
    if "dtype" not in fields or "matmul_precision" not in fields:
        return None
    return [f"model.dtype={dtype!r}", f"model.matmul_precision={matmul!r}"]


def make_config(settings: dict[str, Any], batch: int, precision: str = "tf32", model: dict | None = None,
                objective: str = "trades"):
    from nt_robust.config import load_config
    from nt_robust.train import ExperimentConfig

    model = model or settings["model"]
    overrides = [f"model.{k}={v!r}" if isinstance(v, str) else f"model.{k}={v}" for k, v in model.items()]
    overrides += [f"objective.kind={objective}", "data.crop_padding=0", "data.flip=false",
                  f"train.batch_size={batch}", *settings["overrides"]]
    extra = precision_overrides(precision)
    if extra is None:
        raise RuntimeError("this checkout's ModelConfig has no dtype/matmul_precision fields (issue 12 item 1)")
    return load_config(ExperimentConfig, None, overrides + extra)


def build_step(config, settings: dict[str, Any], batch: int, mesh=None):
    """(jitted step, state on the device(s), images, labels), as the Trainer builds them."""
    import jax
    import numpy as np

    from nt_robust.models import create_model, init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.state import init_key
    from nt_robust.train.step import make_train_step

    shape, classes = tuple(settings["input"]), settings["classes"]
    model = create_model(config.model, classes)
    optimizer = make_optimizer(config.optim, config.train.epochs, 390)

    def init():
        variables = init_variables(model, init_key(0), shape)
        return create_train_state(variables, optimizer, config.objective.lam,
                                  use_ema=config.optim.ema_decay is not None, seed=0)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    step = make_train_step(model, config, optimizer)
    if mesh is None:
        state = jax.jit(init)()
        return jax.jit(step, donate_argnums=0), state, jax.device_put(images), jax.device_put(labels)
    from nt_robust.train.sharding import batch_sharding, global_batch, replicated_sharding
    rep, data = replicated_sharding(mesh), batch_sharding(mesh)
    state = jax.jit(init, out_shardings=rep)()
    jitted = jax.jit(step, in_shardings=(rep, data, data), out_shardings=(rep, rep), donate_argnums=0)
    return jitted, state, global_batch(images, mesh), global_batch(labels, mesh)


def peak_bytes_in_use() -> int | None:
    import jax
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    return (device.memory_stats() or {}).get("peak_bytes_in_use")


def time_compiled(compiled, state, args, min_steps: int, min_seconds: float) -> tuple[Any, dict[str, float]]:
    """One untimed step, then at least ``min_steps`` steps and ``min_seconds``, blocked at the end."""
    import jax

    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        state, metrics = compiled(state, *args)
        steps += 1
        if steps % 4 == 0:
            jax.block_until_ready(metrics)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    return state, {"timed_steps": steps, "seconds_per_step": elapsed / steps,
                   "loss_finite": bool(math.isfinite(float(metrics["loss"])))}


def count_flops(settings: dict[str, Any], model: dict | None = None, objective: str = "trades") -> dict[str, Any]:
    """FLOPs per image of the step (float32, attack unrolled, lowered) at the smallest batch."""
    from nt_robust.train import cost as step_cost
    batch = min(settings["batches"])
    config = make_config(settings, batch, "tf32", model, objective)
    return step_cost.train_step_flops(config, tuple(settings["input"]), settings["classes"], batch)


# --------------------------------------------------------------------------- parts

def part_tests(settings: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The fast test subset under this JAX (CPU backend, so it does not hold GPU memory)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FAST_TESTS]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(5.0, budget.left()))
        output, timed_out, rc = done.stdout + done.stderr, False, done.returncode
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        timed_out, rc = True, None
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", output)}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return {"command": " ".join(command[2:]), "subset": list(FAST_TESTS), "returncode": rc, "timed_out": timed_out,
            "seconds": round(time.perf_counter() - start, 1), "counts": counts, "failures": failures[:40],
            "output_tail": output[-3000:]}


def part_trades_step(settings: dict[str, Any], budget: Budget, state_out: dict[str, Any]) -> dict[str, Any]:
    import jax

    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost

    device = jax.devices()[0]
    counted = count_flops(settings)
    per_image = counted["flops_per_image"]
    results, skipped = [], []
    # The goal first (bfloat16 at 128), then the other precisions at 128, then larger batches.
    order = [(b, p) for b in settings["batches"] for p in ("bfloat16", "tf32", "float32-highest")]
    last_compile = 0.0
    for batch, precision in order:
        if precision_overrides(precision) is None:
            skipped.append({"batch": batch, "precision": precision,
                            "reason": "no model.dtype/model.matmul_precision in this checkout (issue 12 item 1)"})
            continue
        if not budget.allows(last_compile):
            skipped.append({"batch": batch, "precision": precision, "reason": "time budget"})
            continue
        entry: dict[str, Any] = {"batch": batch, "precision": precision}
        try:
            config = make_config(settings, batch, precision)
            jitted, state, images, labels = build_step(config, settings, batch)
            t0 = time.perf_counter()
            lowered = jitted.lower(state, images, labels)
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            last_compile = t2 - t0
            state, timing = time_compiled(compiled, state, (images, labels), settings["min_steps"],
                                          settings["min_seconds"])
            rate = per_image * batch / timing["seconds_per_step"] if per_image else None
            klass = accelerators.precision_class(*step_cost.config_precision(config), device.platform)
            entry.update(timing, trace_lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
                         images_per_s=batch / timing["seconds_per_step"], flops_per_s=rate,
                         peak_class=klass, mfu=accelerators.mfu(rate, device.device_kind, klass),
                         compiled_flops_per_step=step_cost.cost_flops(compiled),
                         xla_memory=step_cost.memory_bytes(compiled), peak_bytes_in_use=peak_bytes_in_use())
            if precision == "bfloat16" and batch == min(settings["batches"]) or "step" not in state_out:
                state_out.update(step=compiled, state=state, batch=batch, precision=precision, config=config)
            else:
                del state
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
        results.append(entry)
    return {"model": settings["model"], "flops": counted, "results": results, "skipped": skipped,
            "note": "flops_per_s = flops_per_image (float32 step, attack unrolled, XLA's lowered count at the "
                    "smallest batch) x images/s; peak_bytes_in_use is the process's running peak "
                    "(monotone over the part), xla_memory the compiled program's own buffer plan"}


def part_width_memory(settings: dict[str, Any], budget: Budget) -> dict[str, Any]:
    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost

    capacity = accelerators.device_memory_bytes()
    results, skipped, last = [], [], 0.0
    for width in settings["widths"]:
        if not budget.allows(last):
            skipped.append({"width": width, "reason": "time budget"})
            continue
        model = dict(settings["model"], width=width)
        entry: dict[str, Any] = {"width": width, "batch": settings["width_batch"], "precision": "tf32"}
        try:
            t0 = time.perf_counter()
            config = make_config(settings, settings["width_batch"], "tf32", model)
            step, state, images, labels = step_cost.abstract_step(config, tuple(settings["input"]), settings["classes"])
            compiled = step.lower(state, images, labels).compile()
            last = time.perf_counter() - t0
            memory = step_cost.memory_bytes(compiled)
            entry.update(seconds=round(last, 2), xla_memory=memory,
                         fits=None if memory is None or capacity is None else memory["peak_bytes"] <= capacity)
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
        results.append(entry)
    return {"device_memory_bytes": capacity, "results": results, "skipped": skipped,
            "note": "compiled on abstract inputs (nothing allocated); fits: XLA's peak plan "
                    "(argument + output + temp - alias) <= the device's bytes_limit"}


def part_attacks(settings: dict[str, Any], budget: Budget) -> dict[str, Any]:
    import jax
    import numpy as np

    from nt_robust.attacks import ModelFn, get_protocol
    from nt_robust.attacks.protocols import _stage_predictions
    from nt_robust.models import create_model, init_variables

    config = make_config(settings, settings["attack_batch"], "tf32")
    model = create_model(config.model, settings["classes"])
    variables = jax.jit(lambda: init_variables(model, jax.random.key(0), tuple(settings["input"])))()
    apply_fn = ModelFn(model, "eval")
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.uniform(0, 1, (settings["attack_batch"], *settings["input"])).astype(np.float32))
    y = jax.device_put(rng.integers(0, settings["classes"], settings["attack_batch"]).astype(np.int32))
    results, skipped, last = {}, [], 0.0
    for name in ("pgd20-0.007", "autoattack-standard"):
        protocol = get_protocol(name, 8 / 255)
        stages = {}
        for stage in protocol.stages[:settings["attack_stages"]]:
            if not budget.allows(last):
                skipped.append(f"{name}/{stage.name}: time budget")
                continue
            fields = {f.name for f in dataclasses.fields(stage.config)}
            stage_config = dataclasses.replace(stage.config, **{k: v for k, v in settings["attack_overrides"].items()
                                                                 if k in fields})
            try:
                t0 = time.perf_counter()
                jax.block_until_ready(_stage_predictions(apply_fn, stage_config, variables, x, y, jax.random.key(0)))
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                jax.block_until_ready(_stage_predictions(apply_fn, stage_config, variables, x, y, jax.random.key(1)))
                seconds = time.perf_counter() - t0
                last = first + seconds
                stages[stage.name] = {"compile_and_first_s": round(first, 2), "seconds": seconds,
                                      "images_per_s": settings["attack_batch"] / seconds}
            except Exception as error:
                stages[stage.name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        rates = [s["images_per_s"] for s in stages.values() if "images_per_s" in s]
        results[name] = {"stages": stages, "all_points_attacked_images_per_s":
                         1 / sum(1 / r for r in rates) if rates and len(rates) == len(protocol.stages) else None}
    return {"batch": settings["attack_batch"], "results": results, "skipped": skipped,
            "note": "each stage on the whole batch of an untrained model (not the cascade, which skips broken "
                    "points): the worst case of a robust model; overrides (smoke only): "
                    f"{settings['attack_overrides']}"}


def part_scaling(settings: dict[str, Any], budget: Budget) -> dict[str, Any]:
    import jax

    n = jax.device_count()
    if n < 2:
        return {"skipped": f"{n} device visible"}
    from nt_robust.train.sharding import data_mesh
    precision = "bfloat16" if precision_overrides("bfloat16") is not None else "tf32"
    results = {}
    for devices in (1, n):
        if not budget.allows():
            results[devices] = {"skipped": "time budget"}
            continue
        batch = settings["scaling_batch"] * devices
        config = make_config(settings, batch, precision)
        jitted, state, images, labels = build_step(config, settings, batch, None if devices == 1 else data_mesh())
        compiled = jitted.lower(state, images, labels).compile()
        _, timing = time_compiled(compiled, state, (images, labels), settings["min_steps"], settings["min_seconds"])
        results[devices] = {"batch": batch, **timing, "images_per_s": batch / timing["seconds_per_step"]}
    if all("images_per_s" in r for r in results.values()):
        results["efficiency"] = results[n]["images_per_s"] / (n * results[1]["images_per_s"])
    return {"precision": precision, "per_device_batch": settings["scaling_batch"],
            "results": {str(k): v for k, v in results.items()}}


def part_data_path(settings: dict[str, Any], budget: Budget, built: dict[str, Any]) -> dict[str, Any]:
    """Host share: the Trainer's per-step numpy gather + transfer (global_batch) against the
    same compiled step fed a batch already on the device."""
    import jax
    import numpy as np

    from nt_robust.train.sharding import data_mesh, global_batch

    if "step" not in built:
        return {"skipped": "no compiled step from trades_step"}
    compiled, state, batch = built["step"], built["state"], built["batch"]
    mesh = data_mesh()
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (settings["train_examples"], *settings["input"]), dtype=np.uint8)
    train_y = rng.integers(0, settings["classes"], settings["train_examples"]).astype(np.int32)
    order = rng.permutation(settings["train_examples"])
    steps = settings["data_steps"]

    def host_batch(i: int):
        rows = order[(i * batch) % (len(order) - batch):][:batch]
        if jax.device_count() > 1:  # the step was compiled for one device; the Trainer's path on one
            return jax.device_put(train_x[rows]), jax.device_put(train_y[rows])
        return global_batch(train_x[rows], mesh), global_batch(train_y[rows], mesh)

    resident = host_batch(0)
    state, _ = compiled(state, *resident)
    # host work alone: gather + transfer, waited for
    t0 = time.perf_counter()
    for i in range(steps):
        jax.block_until_ready(host_batch(i))
    host_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, *resident)
    jax.block_until_ready(metrics)
    device_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for i in range(steps):  # as Trainer._epochs: gather, transfer, dispatch; read metrics one step late
        state, metrics = compiled(state, *host_batch(i))
    jax.block_until_ready(metrics)
    loop_s = (time.perf_counter() - t0) / steps
    built["state"] = state
    return {"batch": batch, "precision": built["precision"], "steps": steps,
            "host_seconds_per_batch": host_s, "device_resident_seconds_per_step": device_s,
            "trainer_path_seconds_per_step": loop_s,
            "host_share_of_step": host_s / (host_s + device_s) if host_s + device_s > 0 else None,
            "slowdown_of_trainer_path": loop_s / device_s - 1 if device_s > 0 else None,
            "note": "host_share_of_step = host work / (host work + device step), if not overlapped; "
                    "slowdown_of_trainer_path: measured with the Trainer's dispatch (overlapping what it can)"}


def part_study(settings: dict[str, Any], budget: Budget, out_dir: Path) -> dict[str, Any]:
    """The mini-sweep through ``nt-robust study`` (in this process: no install needed)."""
    from nt_robust.cli import main as cli_main
    from nt_robust.data import load_dataset

    study = settings["study"]
    note, dataset = None, study["dataset"]
    if dataset != "synthetic":
        try:
            load_dataset(dataset, download=False)
        except Exception as error:
            note = f"{dataset} not found on this machine ({type(error).__name__}); ran on the synthetic dataset"
            dataset = "synthetic"
    spec = write_mini_sweep(out_dir / "mini_sweep", study, dataset)
    root = spec.parent
    argv = ["study", str(spec), "--no-estimate", "--runs-root", str(root / "runs"),
            "--figures-dir", str(root / "figures")]
    start = time.perf_counter()
    code = cli_main(argv)
    seconds = time.perf_counter() - start
    rows = []
    for metrics in sorted((root / "runs").rglob("metrics.jsonl")):
        last = json.loads(metrics.read_text().splitlines()[-1])
        rows.append({"run": metrics.parent.name, **{k: last.get(k) for k in (
            "train_loss", "test_natural_accuracy", "test_robust_accuracy", "train_seconds",
            "train_flops_per_s", "train_mfu")}})
    return {"command": "nt-robust " + " ".join(argv), "exit_code": code, "seconds": round(seconds, 1),
            "dataset": dataset, "note": note, "runs": rows,
            "report": str(root / "figures" / "report.md"), "over_budget": seconds > budget.seconds}


def write_mini_sweep(root: Path, study: dict[str, Any], dataset: str) -> Path:
    """Write the mini-sweep's base config and study spec under ``root``; returns the spec's path."""
    root.mkdir(parents=True, exist_ok=True)
    subset = "" if study["train_subset"] is None or dataset == "synthetic" else f"train_subset = {study['train_subset']}\n"
    (root / "base.toml").write_text(
        f'name = "device_check_mini"\n[data]\ndataset = "{dataset}"\nval_size = {study["val"]}\n{subset}'
        f'crop_padding = 2\nflip = false\n[model]\narch = "{study["arch"]}"\ndepth = {study["depth"]}\n'
        f'width = {study["widths"][0]}\n[objective]\nkind = "trades"\nlam = 6.0\n'
        f'[eval]\nval_examples = {study["val"]}\ntest_examples = {study["test"]}\n'
        f'[train]\nepochs = {study["epochs"]}\nbatch_size = {study["batch"]}\nprogress = false\n')
    widths = ", ".join(str(w) for w in study["widths"])
    spec = root / "study.toml"
    spec.write_text(f'name = "device_check_mini"\nbase_config = "{root / "base.toml"}"\nseeds = [0]\n'
                    f'set = {json.dumps(study["set"])}\n'
                    f'[grid]\n"model.width" = [{widths}]\n"objective.lam" = [6.0]\n')
    return spec


# --------------------------------------------------------------------------- main

def environment() -> dict[str, Any]:
    import importlib.metadata

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib", "tqdm", "torch",
                 "jax-cuda12-plugin", "jax-cuda13-plugin"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "backend": jax.default_backend(), "device_count": len(devices),
            "device_kind": devices[0].device_kind, "cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "command": " ".join([Path(sys.executable).name, *sys.argv])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SMOKE if args.smoke else FULL
    budgets = {k: v * args.budget_scale for k, v in settings["budgets"].items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="device_check_"))
    parts = [p.strip() for p in args.parts.split(",")] if args.parts else list(budgets)
    report: dict[str, Any] = {"check": "device_check", "smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "parts": {}, "budgets_s": budgets}
    started = time.perf_counter()
    if "tests" in parts and not args.smoke and args.tests:
        report["parts"]["tests"] = _guard(lambda: part_tests(settings, Budget(budgets["tests"])))
    import jax  # after the tests' subprocess: the benchmarks own the device from here on

    from nt_robust.cpu.setup import configure_xla_cpu
    from nt_robust.environment import enable_compilation_cache
    configure_xla_cpu()
    enable_compilation_cache()
    report["environment"] = environment()
    report["model_fields_for_precision"] = sorted(model_fields() & {"dtype", "matmul_precision"})
    built: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("trades_step", lambda: part_trades_step(settings, Budget(budgets["trades_step"]), built)),
        ("width_memory", lambda: part_width_memory(settings, Budget(budgets["width_memory"]))),
        ("attacks", lambda: part_attacks(settings, Budget(budgets["attacks"]))),
        ("scaling", lambda: part_scaling(settings, Budget(budgets["scaling"]))),
        ("data_path", lambda: part_data_path(settings, Budget(budgets["data_path"]), built)),
        ("study", lambda: part_study(settings, Budget(budgets["study"]), work)),
    ]
    for name, step in steps:
        if name in parts:
            t0 = time.perf_counter()
            report["parts"][name] = _guard(step)
            report["parts"][name]["part_seconds"] = round(time.perf_counter() - t0, 2)
            _write(out, report)  # a partial file survives a timeout
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    _write(out, report)
    return report


def _guard(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return step()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-4000:]}


def _write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, for CPU and the test suite")
    parser.add_argument("--parts", default=None, help="comma-separated subset of the parts (default: all)")
    parser.add_argument("--no-tests", dest="tests", action="store_false", help="skip the fast test subset")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    parser.add_argument("--work-dir", default=None, help="where the mini-sweep's spec and runs go (default: a temp dir)")
    parser.add_argument("--cpu-devices", type=int, default=None, help="host devices on CPU (the scaling part)")
    args = parser.parse_args()
    if args.cpu_devices:
        import jax
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    report = run(args)
    summary = {name: ("error" if "error" in part else "ok") for name, part in report["parts"].items()}
    print(json.dumps({"out": args.out, "total_seconds": report["total_seconds"], "parts": summary}))


if __name__ == "__main__":
    main()

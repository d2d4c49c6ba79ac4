"""What a study costs before it runs: device-hours per width, FLOPs per step, and whether a
training step fits in memory::

    study = load_study("experiments/study_paper_cifar10.toml")
    print(format_estimate(estimate_cost(study)))                  # this machine: compiled and timed
    print(format_estimate(estimate_cost(study, device="h100")))   # an accelerator: FLOPs and its peak

FLOPs per step always come from ``nt_robust.train.cost.train_step_flops``: the step lowered with
XLA's own convolutions and products and the attack unrolled, the same count whatever
``conv_impl``/``dense_impl`` this machine would run. A run costs
``seconds per step × (epochs × steps per epoch + evaluations × evaluation points × f / batch)``,
with ⌈epochs / ``eval.every_epochs``⌉ evaluations, where
``f = (eval attack steps + 12) / (train attack steps + 2)``: an evaluation point costs about
(attack steps + Lipschitz steps + 2) forward-backward passes, a training example (attack
steps + 2).

**This machine** (no ``device``). Per width the step is compiled as this machine runs it
(its ``conv_impl``, its flags), and timed for ``timed_steps`` steps: on a CPU at the smallest
batch the devices allow once a step passes 2e11 FLOPs, and only while a step is predicted to
take at most ``step_seconds_limit``; wider models get the narrowest measured model's FLOP/s,
scaled by their FLOPs. Memory is XLA's buffer plan of that compile (temporaries scaled by the
batch ratio when compiled smaller).

**An accelerator** (``device``: a ``nt_robust.accelerators.PEAKS`` name such as "h100", "a100",
"tpu-v5e"). Nothing is timed, nothing of this host's CPU machinery is used, and the step is
lowered as the device would run it: XLA's convolutions and products, the configured dtype and
matmul precision. Seconds per step = FLOPs / (``mfu`` × the chip's dense peak at that
precision). Memory is *this host's XLA buffer plan, scaled*: one compile, of the narrowest
width at batch ``b0 = min(8, train.batch_size)`` in float32 (XLA's implementations, the
configured attack loop), scaled to every width ``k`` and to ``train.batch_size`` ``B``::

    peak(k, B) = state(k) + temp(k0, b0) × A(k) / A(k0) × (B / b0) × s

with ``state(k)`` the exact bytes of the training state (parameters, optimizer state, BN
statistics; from shapes), ``temp`` the compiled plan's temporaries, ``A`` the floats in every
layer's output for one example (``registry.estimate_model_size``) and ``s`` = 2/4 when
``model.dtype`` is bfloat16 (activations in 2 bytes), else 1. An accelerator's compiler fuses
and frees differently, so a "fits" within a factor ~2 of the memory is uncertain
(tests/studies/test_cost.py bounds the rule against real compiles).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax

from nt_robust.config import ConfigError, load_config
from nt_robust.studies.sweep import GRID_STAGE, Study
from nt_robust.studies.tables import format_table
from nt_robust.train.config import ExperimentConfig

log = logging.getLogger("nt_robust.studies")

MEMORY_PLAN_BATCH = 8   # b0 above: small enough to compile fast, large enough that activations dominate
CPU_SMALL_BATCH_FLOPS = 2e11   # a CPU times steps over this many FLOPs at the smallest batch


def estimate_cost(study: Study, timed_steps: int = 2, device: str | None = None, mfu: float = 0.4,
                  step_seconds_limit: float = 5.0) -> list[dict[str, Any]]:
    """One row per distinct width of ``study`` (module docstring: how), each with ``model``,
    ``runs``, ``epochs``, ``steps_per_epoch``, ``batch_size``, ``flops_per_step``,
    ``seconds_per_step`` and ``how``, ``peak_bytes``, ``memory_bytes`` and ``fits`` (None when
    unknown), ``memory_how``, ``device``, ``hours_per_run`` and ``hours``."""
    from nt_robust import accelerators

    target = None
    if device is not None:
        target = accelerators.find_device(device)
        if target is None:
            raise ConfigError(f"--device {device!r} is not in the peak table; choose one of "
                              f"{', '.join(p.name for p in accelerators.PEAKS)} (nt_robust/step_cost.py)")
    widths = _configs_by_width(study)
    if not widths:
        return []
    splits = _estimate_splits(widths[0][1])
    counts = flops_by_width([config for _, config, _ in widths], splits)
    if target is not None:
        return _device_estimates(widths, counts, splits, target, mfu)
    return _local_estimates(widths, counts, splits, timed_steps, step_seconds_limit)


def flops_by_width(configs: list[ExperimentConfig], splits) -> list[dict[str, Any]]:
    """``nt_robust.train.cost.train_step_flops`` of each config (with ``state_bytes``), lowered one
    by one, or read from :func:`cached` where this exact step was counted before."""
    from nt_robust.train import cost as step_cost

    def count(config):
        return step_cost.train_step_flops(config, splits.image_shape, splits.num_classes)

    return [{**cached("flops", (step_cost.counting_config(c), splits.image_shape, splits.num_classes), lambda c=c: count(c)),
             "how": "lowered"} for c in configs]


def source_digest() -> str:
    """A digest of nt_robust's Python sources: a cached count is only as good as the code that made it."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached(kind: str, what: Any, compute) -> dict[str, Any]:
    """``compute()`` (a JSON-able dict), kept in ``~/.cache/nt_robust/estimates.json`` under a
    key of ``kind``, ``what`` (configs, shapes), the jax, jaxlib and flax versions and
    :func:`source_digest`, so an estimate run again (or the same width in another study)
    lowers and compiles nothing. ``NT_ROBUST_ESTIMATE_CACHE=off`` turns it off."""
    import hashlib
    import json
    import os

    from nt_robust import storage
    from nt_robust.cpu.machine import cache_dir, package_version

    if os.environ.get("NT_ROBUST_ESTIMATE_CACHE", "").lower() in ("off", "0", "false", "no"):
        return compute()
    text = json.dumps([kind, repr(what), [package_version(p) for p in ("jax", "jaxlib", "flax")], source_digest()])
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = cache_dir() / "estimates.json"
    try:
        entries = storage.read_json(path)
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    if isinstance(entries.get(key), dict):
        return entries[key]
    value = compute()
    try:
        with storage.file_lock(path.with_suffix(".lock")):
            try:
                latest = storage.read_json(path)
            except (OSError, ValueError):
                latest = {}
            storage.write_json(path, {**(latest if isinstance(latest, dict) else {}), key: value})
    except OSError:
        pass  # a read-only cache: count again next time
    return value


def _configs_by_width(study: Study) -> list[tuple[int, ExperimentConfig, int]]:
    """(width, the config of its first run, how many runs) for every distinct width, narrowest first."""
    by_width: dict[int, list] = {}
    for run in study.runs():
        by_width.setdefault(run.width, []).append(run)
    out = []
    for width, runs in sorted(by_width.items()):
        overrides = [o for o in runs[0].overrides if not o.startswith("name=")] if runs[0].stage == GRID_STAGE \
            else list(runs[0].overrides)
        out.append((width, load_config(ExperimentConfig, study.base_config, overrides), len(runs)))
    return out


def _run_hours(config: ExperimentConfig, splits, step_seconds: float) -> float:
    """Hours of one run at ``step_seconds`` per training step (module docstring: the formula)."""
    batch = config.train.batch_size
    eval_points = sum(size if n is None else min(n, size) for size, n in (
        (splits.val, config.eval.val_examples), (splits.test, config.eval.test_examples)))
    eval_factor = (config.eval.attack.num_steps + 12) / (config.train_attack.num_steps + 2)
    # evaluated every eval.every_epochs epochs and after the last: ⌈epochs / every⌉ times
    evaluations = -(-config.train.epochs // config.eval.every_epochs)
    per_run = step_seconds * (config.train.epochs * (splits.train // batch)
                              + evaluations * eval_points * eval_factor / batch)
    return per_run / 3600


def _row(width: int, config: ExperimentConfig, runs: int, splits, flops_per_step, step_seconds: float, how: str,
         peak, capacity, memory_how: str, device: str, **extra) -> dict[str, Any]:
    per_run = _run_hours(config, splits, step_seconds)
    return {"width": width, "model": config.model.label, "runs": runs, "epochs": config.train.epochs,
            "steps_per_epoch": splits.train // config.train.batch_size, "batch_size": config.train.batch_size,
            "flops_per_step": flops_per_step, "seconds_per_step": step_seconds, "how": how,
            "peak_bytes": peak, "memory_bytes": capacity, "memory_how": memory_how,
            "fits": None if peak is None or capacity is None else peak <= capacity,
            "device": device, "hours_per_run": per_run, "hours": runs * per_run, **extra}


def _device_estimates(widths, counts, splits, target, mfu: float) -> list[dict[str, Any]]:
    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost

    capacity = int(target.memory_gib * 2**30)
    platform = "tpu" if target.name.startswith("tpu") else "gpu"
    plan = None
    rows = []
    for (width, config, runs), counted in zip(widths, counts):
        config = step_cost.xla_implementations(config)
        dtype, matmul = step_cost.config_precision(config)
        klass = accelerators.precision_class(dtype, matmul, platform)
        peak_rate = accelerators.peak_flops(target.name, klass)
        if peak_rate is None or counted["flops_per_step"] is None:
            raise ConfigError(f"{target.name} has no published {klass} peak for model.dtype = {dtype!r}: "
                              "estimate on the machine itself, or pick another --device")
        plan = plan or cached("memory_plan", (step_cost.xla_implementations(config), splits.image_shape,
                                              splits.num_classes), lambda: memory_plan(config, splits))
        peak = scaled_peak(plan, config, splits, counted["state_bytes"])
        rows.append(_row(width, config, runs, splits, counted["flops_per_step"],
                         counted["flops_per_step"] / (mfu * peak_rate), f"FLOPs / ({mfu:.0%} of {klass} peak)",
                         peak, capacity, f"this host's XLA buffer plan of {plan['model']} at batch "
                         f"{plan['batch']}, scaled (nt_robust.studies.cost)", target.name,
                         state_bytes=counted["state_bytes"], flops_how=counted["how"]))
    return rows


def memory_plan(config: ExperimentConfig, splits) -> dict[str, Any]:
    """XLA's buffer plan on this host of ``config``'s step with XLA's implementations, in float32,
    at batch ``min(MEMORY_PLAN_BATCH, train.batch_size)``: the base of :func:`scaled_peak`."""
    from nt_robust.train import cost as step_cost

    config = step_cost.xla_implementations(config)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float32"))
    batch = min(MEMORY_PLAN_BATCH, config.train.batch_size)
    step, state, images, labels = step_cost.abstract_step(config, splits.image_shape, splits.num_classes, batch)
    memory = step_cost.memory_bytes(step.lower(state, images, labels).compile())
    return {"model": config.model.label, "batch": batch, "temp_bytes": None if memory is None else memory["temp"],
            "state_bytes": step_cost.state_bytes(state), "activations_per_example": activations_per_example(config, splits)}


def activations_per_example(config: ExperimentConfig, splits) -> int:
    """``A`` of the module docstring: floats in every layer's output for one example (from shapes; cached)."""
    from nt_robust.models.registry import estimate_model_size

    def count():
        return {"activations": estimate_model_size(config.model, splits.num_classes,
                                                   splits.image_shape)["activations_per_example"]}

    return cached("activations", (config.model, splits.image_shape, splits.num_classes), count)["activations"]


def scaled_peak(plan: dict[str, Any], config: ExperimentConfig, splits, state: int) -> float | None:
    """``peak(k, B)`` of the module docstring for ``config`` (width k, ``train.batch_size`` B),
    whose training state takes ``state`` bytes; None when the plan has no temporaries."""
    if plan["temp_bytes"] is None:
        return None
    activations = activations_per_example(config, splits)
    dtype_scale = 0.5 if config.model.dtype in ("bfloat16", "bf16") else 1.0
    temp = (plan["temp_bytes"] * activations / plan["activations_per_example"]
            * config.train.batch_size / plan["batch"] * dtype_scale)
    return state + temp


def _local_estimates(widths, counts, splits, timed_steps: int, step_seconds_limit: float) -> list[dict[str, Any]]:
    import numpy as np

    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost

    local = jax.devices()[0]
    capacity = accelerators.device_memory_bytes(local)
    device = f"{jax.device_count()} x {local.device_kind}"
    rate, rows = None, []
    for (width, config, runs), counted in zip(widths, counts):
        batch = config.train.batch_size
        flops_per_step = counted["flops_per_step"]
        small = local.platform == "cpu" and (flops_per_step or 0) > CPU_SMALL_BATCH_FLOPS
        run_batch = jax.device_count() if small else batch
        step, abstract, images, labels = step_cost.abstract_step(config, splits.image_shape, splits.num_classes, run_batch)
        start = time.time()
        compiled = step.lower(abstract, images, labels).compile()
        compile_seconds = time.time() - start
        memory = step_cost.memory_bytes(compiled)
        peak = None if memory is None else memory["peak_bytes"] + memory["temp"] * (batch / run_batch - 1)
        predicted = None if rate is None or flops_per_step is None else flops_per_step * run_batch / batch / rate
        if predicted is None or predicted <= step_seconds_limit:
            state = _real_state(config, splits, run_batch)
            x = jax.device_put(np.zeros((run_batch, *splits.image_shape), np.uint8))
            y = jax.device_put(np.arange(run_batch, dtype=np.int32) % splits.num_classes)
            state, metrics = compiled(state, x, y)
            jax.block_until_ready(metrics)
            start = time.time()
            for _ in range(timed_steps):
                state, metrics = compiled(state, x, y)
            jax.block_until_ready(metrics)
            measured = (time.time() - start) / timed_steps
            if flops_per_step:
                rate = flops_per_step * run_batch / batch / measured
            step_seconds = measured * batch / run_batch
            how = "measured" if run_batch == batch else f"measured at batch {run_batch}, x {batch // run_batch}"
        else:
            step_seconds = flops_per_step / rate
            how = f"FLOPs / {rate / 1e9:.0f} GFLOP/s measured on a narrower width"
        memory_how = "XLA's buffer plan of the compiled step" + (
            "" if run_batch == batch else f" at batch {run_batch}, temporaries x {batch / run_batch:g}")
        rows.append(_row(width, config, runs, splits, flops_per_step, step_seconds, how, peak, capacity, memory_how,
                         device, compile_seconds=compile_seconds, flops_how=counted["how"]))
    return rows


# Published training and test sizes of the datasets the estimate knows without their files,
# for a cluster spec estimated where the data are not (shapes and classes: DATASET_SHAPES).
PUBLISHED_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "mnist": (60_000, 10_000),
                   "fashion_mnist": (60_000, 10_000)}


def _estimate_splits(config: ExperimentConfig) -> SimpleNamespace:
    """image_shape, num_classes and the train / val / test sizes of ``config.data``: from the
    dataset itself when it is on this machine, else from :data:`PUBLISHED_SIZES` and
    :data:`nt_robust.train.config.DATASET_SHAPES`."""
    from nt_robust.data.errors import DataError
    from nt_robust.data.specs import canonical_name
    from nt_robust.train.config import input_shape
    from nt_robust.train.splits import prepare_splits

    data = config.data
    try:
        splits = prepare_splits(data, sample_seed=config.train.seed)
    except DataError:
        name = canonical_name(data.dataset)
        if name not in PUBLISHED_SIZES:
            raise
        (shape, classes), (train, test) = input_shape(data), PUBLISHED_SIZES[name]
        log.warning("%s is not on this machine: the estimate uses its published sizes", data.dataset)
        train -= data.val_size
        train = train if data.train_subset is None else min(train, data.train_subset)
        return SimpleNamespace(image_shape=shape, num_classes=classes, train=train, val=data.val_size, test=test)
    return SimpleNamespace(image_shape=splits.image_shape, num_classes=splits.num_classes,
                           train=len(splits.train_images), val=len(splits.val_images), test=len(splits.test_images))


def _real_state(config: ExperimentConfig, splits, batch: int):
    from nt_robust.models import create_model
    from nt_robust.train.state import initial_state

    model = create_model(config.model, splits.num_classes)
    return jax.jit(lambda: initial_state(config, model, splits.image_shape, max(1, splits.train // batch)))()


def format_estimate(estimates: list[dict[str, Any]]) -> str:
    """The estimate as text: device-hours in total and per run, FLOPs, memory and fit per width
    (a width that does not fit says by how much)."""
    if not estimates:
        return "Estimated cost: no runs"
    gib = lambda b: "-" if b is None else f"{b / 2**30:.1f}"  # noqa: E731

    def fit(e: dict[str, Any]) -> str:
        if e["fits"] is None:
            return "?"
        return "yes" if e["fits"] else f"NO ({e['peak_bytes'] / e['memory_bytes']:.1f}x the memory)"

    rows = [[e["model"], e["runs"], e["epochs"], e["steps_per_epoch"],
             "-" if e["flops_per_step"] is None else f"{e['flops_per_step'] / 1e9:.4g}",
             f"{e['seconds_per_step']:.3f}", f"{e['hours_per_run']:.2f}", f"{e['hours']:.2f}", gib(e["peak_bytes"]),
             fit(e), e["how"]] for e in estimates]
    total = sum(e["hours"] for e in estimates)
    first = estimates[0]
    fitting = [e["model"] for e in estimates if e["fits"]]
    unfit = [f"{e['model']} (needs {gib(e['peak_bytes'])} GiB, {gib(e['peak_bytes'] - e['memory_bytes'])} GiB more: "
             f"a smaller train.batch_size, model.dtype = bfloat16 or more devices)"
             for e in estimates if e["fits"] is False]
    return (f"Estimated cost on {first['device']}: {total:.2f} device-hours in total\n"
            + format_table(["model", "runs", "epochs", "steps/epoch", "GFLOP/step", "s/step", "h/run", "h total",
                            "peak GiB", "fits", "s/step from"], rows)
            + f"\nAt train.batch_size = {first['batch_size']} on {first['device']} ({gib(first['memory_bytes'])} GiB): "
              + (f"every width fits ({', '.join(fitting)})" if fitting and not unfit else
                 f"fit {', '.join(fitting) or 'none'}; do not fit: {'; '.join(unfit) or 'none'}")
              + f"\nMemory: {first['memory_how']}.\n")

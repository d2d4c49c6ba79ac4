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

This file is the JAX worker and the driver; the timing, memory and process harness is
``harness.py``, the PyTorch side ``torch_reference.py``, the probes ``cpu_probes.py``.
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
``first_step_s`` = the first call after compiling (not timed). FLOPs (JAX only; nt_robust.train.cost):
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
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness & co. also when loaded by path (tests)

from cpu_probes import PROBES  # noqa: E402
from harness import (MODELS, NUM_CLASSES, OBJECTIVES, PeakMemory, configure_jax, cpu_model,  # noqa: E402
                     jax_config, jax_step, malloc_note, measure, run_child, run_pair, version)
from torch_reference import torch_worker  # noqa: E402


# --------------------------------------------------------------------------- JAX worker

def jax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    jax = configure_jax(spec)
    import nt_robust.train.step  # noqa: F401 (imports before the memory baseline)
    from nt_robust.models import count_parameters

    jax.devices()  # start the backend, too
    memory = PeakMemory()
    config = jax_config(spec, MODELS[spec["model"]])
    jitted, state, images, labels, _, variables = jax_step(spec, config)

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
        "trace_lower_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3), **measure(run_step, spec),
        "compile_peak_rss_mb": compile_peak, "step_peak_rss_mb": memory.peak_mb(),
        **buffers, "memory_method": memory.method, "attack_loop": _resolved_loop(spec["loop"]),
        "conv_impl": _resolved_conv_impl(config.model.conv_impl), "dense_impl": _resolved_dense_impl(config.model.dense_impl) if config.model.arch == "mlp" else None,
        "dtype": config.model.dtype,
        "devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": malloc_note(),
    }
    result.update(_flop_rate(counted, result["images_per_s"], spec["batch"], config))
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        result["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        result["memory_method"] = "jax.devices()[0].memory_stats()['peak_bytes_in_use']"
    return result


def _step_flops(compiled, spec, config, jitted, state, images, labels) -> dict[str, Any]:
    """FLOPs of one global step (nt_robust.train.cost.train_step_flops): the step lowered with XLA's
    convolutions and products and the attack unrolled, so every conv_impl / dense_impl, the
    native kernels included (custom calls XLA's cost analysis cannot see), counts the same work."""
    from nt_robust.train import cost as step_cost

    counted = step_cost.train_step_flops(config, tuple(spec["input"]), NUM_CLASSES, spec["batch"])
    return {"flops_per_step": counted["flops_per_step"],
            "flops_source": "lowered with XLA's convolutions and products, attack unrolled"}


def _flop_rate(counted: dict[str, Any], images_per_s: float, batch: int, config) -> dict[str, Any]:
    """``gflop_per_image``, achieved ``tflop_per_s`` and ``mfu`` (None without a peak, e.g. CPU)."""
    import jax

    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost

    per_step = counted.get("flops_per_step")
    if per_step is None:
        return {"gflop_per_image": None, "tflop_per_s": None, "mfu": None, **counted}
    rate = per_step / batch * images_per_s
    device = jax.devices()[0]
    klass = accelerators.precision_class(*step_cost.config_precision(config), device.platform)
    return {"gflop_per_image": round(per_step / batch / 1e9, 4), "tflop_per_s": round(rate / 1e12, 5),
            "mfu": accelerators.mfu(rate, device.device_kind, klass, jax.device_count()), "peak_class": klass, **counted}


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



# --------------------------------------------------------------------------- driver

def _worker_main(spec: dict[str, Any]) -> None:
    if spec["framework"] == "jax":
        result = jax_worker(spec)
    elif spec["framework"] == "torch":
        result = torch_worker(spec)
    else:
        result = PROBES[spec["framework"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


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
                        help="model.conv_impl of the JAX models (auto: measured per machine, nt_robust.cpu.conv)")
    parser.add_argument("--dense-impl", default="auto", choices=("auto", "xla", "native"),
                        help="model.dense_impl of the JAX models (auto: measured per machine, nt_robust.cpu.dense)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="model.dtype (compute dtype) of the JAX models; PyTorch stays float32")
    parser.add_argument("--no-library-xla-flags", action="store_true",
                        help="do not add the XLA:CPU flags nt-robust's CLI adds (configure_xla_cpu)")
    parser.add_argument("--no-library-malloc", action="store_true",
                        help="JAX with glibc's malloc defaults, not the CLI's tuning (nt_robust.cpu.malloc)")
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
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        **{name: os.environ[name] for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF") if name in os.environ}, "load_1min_start": round(os.getloadavg()[0], 2),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.probe:
        first_model = args.models.split(",")[0]
        spec = dict(base, framework=args.probe, model=first_model, objective=args.objectives.split(",")[-1],
                    devices=_devices(args.devices, first_model, args.batch))
        print(json.dumps({"benchmark": "train_step", **environment, **run_child(__file__, spec, args.timeout)}, indent=2))
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
                runs = run_pair(__file__, {framework: dict(base, framework=framework, model=name, objective=objective,
                                                  devices=devices) for framework in ("jax", "torch")},
                                 args.paired, args.steps, args.timeout)
            for framework in ([] if runs else frameworks):
                if framework == "torch" and torch_note:
                    continue
                runs[framework] = run_child(__file__, dict(base, framework=framework, model=name, objective=objective,
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

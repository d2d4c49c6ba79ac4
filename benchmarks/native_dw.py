"""Convolution kernels against XLA:CPU's, per layer and inside the project's training step:
the weight-gradient kernel alone, and everything ``model.conv_impl = "native"`` does
(``nt_robust.cpu.native``: the weight-gradient kernel, and a direct convolution for
forward passes and stride-1 input gradients; C++ built with g++ on first use)::

    .venv/bin/python benchmarks/native_dw.py --layers             # weight gradient ms per layer: XLA, kernel, torch
    .venv/bin/python benchmarks/native_dw.py --models wrn16-1,wrn16-2 --objectives natural,trades \\
        --devices 1,2 --rounds 5                                   # step ms, XLA vs the weight-gradient kernel
    .venv/bin/python benchmarks/native_dw.py --models wrn16-1 --objectives trades --devices 2 \\
        --variants xla,kernel,all --rounds 4                      # and conv_impl = "native"

The step comparison builds the step of ``benchmarks/train_step.py`` (``harness.jax_step``: the project's own,
with its XLA flags and malloc tuning) as (``--variants``): "xla", ``model.conv_impl =
"shifted_matmul"`` with its weight gradient swapped back to XLA's convolution and autodiff's
input gradient (XLA's convolutions throughout); "kernel", the same with the weight-gradient
kernel; "all", ``model.conv_impl = "native"``. The variants are compiled in one process and
their steps alternate in ``--rounds`` rounds, so that the machine's slow spells hit all;
each speed-up over "xla" is the geometric mean of the per-round ratios with a 95 % interval
(``harness.paired_ratio``). Needs g++; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402  (the benchmarks' step, timing and paired-ratio helpers)

VARIANTS = ("xla", "kernel", "all")


def use_weight_gradient(which: str) -> None:
    """Make ``model.conv_impl = "shifted_matmul"`` convolutions run XLA's forward pass and
    autodiff's input gradient with XLA's weight gradient ("xla") or the library's
    weight-gradient kernel ("kernel", float32; ``nt_robust.cpu.native``). The "all"
    variant is ``model.conv_impl = "native"`` itself and needs no patch."""
    import jax
    import jax.numpy as jnp

    import nt_robust.cpu.conv as conv
    from nt_robust.cpu import native as native_conv

    def backward(strides, padding, precision, residuals, g):
        x, kernel = residuals
        dx = jax.vjp(lambda x_: conv._plain(x_, kernel, strides, padding, precision), x)[1](g)[0]
        if which == "kernel" and x.dtype == kernel.dtype == g.dtype == jnp.float32:
            dk = native_conv.weight_gradient(x, g, tuple(kernel.shape), strides, (padding[0][0], padding[1][0]))
        else:
            dk = conv._xla_weight_gradient(x, kernel, g, strides, padding, precision)
        return dx, dk

    conv._conv.defvjp(conv._conv.fwd, backward)  # its forward rule as built, only the backward swapped


def layer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu import native as native_conv

    harness.configure_jax(spec)
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
    except Exception:  # noqa: BLE001 (optional)
        torch = None
    numbers = ("NHWC", "HWIO", "NHWC")
    results = {}
    # (spatial size, in, out, kernel, stride): WRN-16-1's and -2's layers, the stem, a shortcut, and a wide one
    for size, cin, cout, k, stride in [(32, 16, 16, 3, 1), (16, 32, 32, 3, 1), (8, 64, 64, 3, 1), (32, 32, 32, 3, 1),
                                       (16, 64, 64, 3, 1), (8, 128, 128, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
                                       (32, 3, 16, 3, 1), (16, 160, 160, 3, 1)]:
        rng = np.random.default_rng(0)
        pad, out = (k - 1) // 2, size // stride
        x = jnp.asarray(rng.standard_normal((spec["batch"], size, size, cin), np.float32))
        g = jnp.asarray(rng.standard_normal((spec["batch"], out, out, cout), np.float32))
        w = jnp.zeros((k, k, cin, cout), jnp.float32)

        def conv(x, w, stride=stride, pad=pad):
            return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=numbers)

        xla = jax.jit(lambda x, g, conv=conv, w=w: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
        kernel = jax.jit(lambda x, g, shape=w.shape, s=stride, p=pad: native_conv.weight_gradient(x, g, shape, (s, s),
                                                                                                 (p, p)))
        reference, candidate = np.asarray(xla(x, g), np.float64), np.asarray(kernel(x, g), np.float64)
        row = {"max_rel_diff_vs_xla": float(np.max(np.abs(candidate - reference)) / np.max(np.abs(reference)))}
        for name, fn in (("xla_ms", xla), ("kernel_ms", kernel)):
            timing = harness.time_steps(lambda fn=fn: jax.block_until_ready(fn(x, g)), 2, spec["steps"],
                                            spec["min_seconds"])
            row[name] = round(1000 * timing["s_per_step_median"], 2)
        if torch is not None:
            tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
            tg = torch.tensor(np.asarray(g)).permute(0, 3, 1, 2).contiguous()
            timing = harness.time_steps(
                lambda: torch.nn.grad.conv2d_weight(tx, (cout, cin, k, k), tg, stride=stride, padding=pad), 2,
                spec["steps"], spec["min_seconds"])
            row["torch_ms"] = round(1000 * timing["s_per_step_median"], 2)
        results[f"{size}x{size}, {cin}->{cout}, {k}x{k}, stride {stride}"] = row
    return {"layers": results, "threads": os.cpu_count()}  # the kernel on XLA's thread pool, XLA and torch


def step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The variants (``spec["variants"]``, from :data:`VARIANTS`) of one (model, objective,
    devices) step, compiled in this process, timed in alternating rounds."""
    import jax

    if spec["devices"] > 1:
        jax.config.update("jax_num_cpu_devices", spec["devices"])
    harness.configure_jax(spec)
    compiled = {}
    for which in spec["variants"]:
        use_weight_gradient(which)
        variant = dict(spec, conv_impl="native" if which == "all" else "shifted_matmul")
        config = harness.jax_config(variant, harness.MODELS[spec["model"]])
        jitted, state, images, labels, _, _ = harness.jax_step(variant, config)
        started = time.perf_counter()
        program = jitted.lower(state, images, labels).compile()
        compiled[which] = {"program": program, "state": state, "compile_s": round(time.perf_counter() - started, 2),
                           "batch": (images, labels)}
    seconds: dict[str, list[float]] = {which: [] for which in compiled}
    for _ in range(spec["rounds"]):
        for which, entry in compiled.items():
            holder = entry

            def run(holder=holder):
                holder["state"], metrics = holder["program"](holder["state"], *holder["batch"])
                jax.block_until_ready((holder["state"], metrics))

            timing = harness.time_steps(run, 1, spec["steps"], 0.5)
            seconds[which].append(timing["s_per_step_median"])
    result = {"model": spec["model"], "objective": spec["objective"], "devices": jax.device_count(),
              "compile_s": {k: v["compile_s"] for k, v in compiled.items()}}
    for which, values in seconds.items():
        result[f"{which}_ms_per_step"] = round(1000 * sorted(values)[len(values) // 2], 1)
        if which != "xla":  # xla time / variant time = the variant's speed-up
            result[f"{which}_speedup"] = harness.paired_ratio(values, seconds["xla"])
    return result


def _child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit code {done.returncode}", "stderr": done.stderr[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="per-layer weight-gradient timings instead of steps")
    parser.add_argument("--models", default="wrn16-1", help=f"comma list of {list(harness.MODELS)} (conv nets)")
    parser.add_argument("--objectives", default="natural")
    parser.add_argument("--variants", default="xla,kernel",
                        help=f"comma list of {VARIANTS} (xla first: the others' speed-ups are against it)")
    parser.add_argument("--devices", default="2", help="comma list of CPU device counts")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per step comparison")
    parser.add_argument("--steps", type=int, default=3, help="at least this many timed steps per round / layer")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per layer timing")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        result = layer_worker(spec) if spec["what"] == "layers" else step_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.rounds < 2:
        parser.error("--rounds needs at least 2 for an interval")
    variants = args.variants.split(",")
    if variants[0] != "xla" or len(variants) < 2 or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: 'xla' first, then one or more of {VARIANTS[1:]}, got {args.variants!r}")
    base = {"variants": variants, "batch": args.batch, "input": [32, 32, 3], "augment": False, "loop": "auto", "conv_impl": "shifted_matmul",
            "dtype": "float32", "steps": args.steps, "min_seconds": args.min_seconds, "warmup": 1,
            "rounds": args.rounds, "library_xla_flags": True, "library_malloc": True}
    started = time.perf_counter()
    from nt_robust.cpu import native as native_conv
    native_conv.build()  # once, before the workers (which load it from the cache)
    if args.layers:
        results: Any = _child(dict(base, what="layers", devices=1), args.timeout)
    else:
        results = [_child(dict(base, what="step", model=model, objective=objective, devices=int(devices)),
                          args.timeout)
                   for model in args.models.split(",") for objective in args.objectives.split(",")
                   for devices in args.devices.split(",")]
    print(json.dumps({"benchmark": "native_dw", "cpu": harness.cpu_model(), "cores": os.cpu_count(),
                      "versions": {name: harness.version(name) for name in ("jax", "jaxlib", "torch")},
                      "command": " ".join([Path(sys.executable).name, *sys.argv]),
                      "load_1min_end": round(os.getloadavg()[0], 2), "wall_s": round(time.perf_counter() - started, 1),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()

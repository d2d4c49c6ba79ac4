"""Prototype measurement: convolution weight gradients from a hand-written kernel
(``benchmarks/conv_dw_kernel.cc``, an XLA FFI custom call built here with g++) instead of
XLA:CPU's convolution, per layer and inside the project's training step.

XLA:CPU's weight-gradient convolution is what keeps conv-net steps behind PyTorch on CPU
(docs/benchmarks.md). This script asks how much a kernel that reads each image once per
tap block would give back, before anything of the kind goes into the library::

    .venv/bin/python benchmarks/native_dw.py --layers             # ms per layer: XLA, kernel, torch
    .venv/bin/python benchmarks/native_dw.py --models wrn16-1,wrn16-2 --objectives natural,trades \\
        --devices 1,2 --rounds 5                                   # step ms, XLA vs kernel, alternating

    .venv/bin/python benchmarks/native_dw.py --models wrn16-1 --objectives trades --devices 2 \
        --variants xla,kernel,all --rounds 4                      # + the forward kernel

The step comparison builds the step of ``benchmarks/train_step.py`` (the project's own,
with its XLA flags and malloc tuning) with ``model.conv_impl = "shifted_matmul"``, whose
convolution is a ``jax.custom_vjp``, and runs it as (``--variants``): "xla", XLA's
convolutions throughout; "kernel", the same with this weight-gradient kernel; "all", the
weight-gradient kernel plus the direct-convolution kernel of ``benchmarks/native_conv_fwd.py``
for every forward pass and every stride-1 input gradient (strided input gradients stay
XLA's). The variants are compiled in one process and their steps alternate in ``--rounds``
rounds, so that the machine's slow spells hit all; each speed-up over "xla" is the
geometric mean of the per-round ratios with a 95 % interval (``train_step.paired_ratio``).
Under data parallelism the kernels are partitioned over the batch with
``jax.experimental.custom_partitioning`` (each device its shard; the weight gradient then
a ``psum``). Needs g++ and jaxlib's FFI headers (``jax.ffi.include_dir()``); prints one JSON
object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import train_step  # noqa: E402  (the benchmark's step, timing and paired-ratio helpers)

KERNEL_SOURCE = HERE / "conv_dw_kernel.cc"
TARGET = "nt_robust_bench_conv_dw"


def build_kernel(directory: Path, source: Path = KERNEL_SOURCE) -> Path:
    """Compile the kernel ``source`` for this machine (``-march=native``) into ``directory``."""
    import jax

    library = directory / f"lib{source.stem}.so"
    command = ["g++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", str(source), "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"building the kernel failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return library


def register_kernel(library: Path) -> None:
    import jax

    handle = ctypes.cdll.LoadLibrary(str(library))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.NtRobustConvDw), platform="cpu")


def kernel_dw(x, g, kernel_shape: tuple[int, ...], strides: tuple[int, int], pads: tuple[int, int]):
    """dw of an NHWC/HWIO convolution with low padding ``pads`` (the high padding follows from
    the shapes), from the kernel, partitioned over the batch axis under a mesh."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    def call(x, g):
        return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(kernel_shape, jnp.float32))(
            x, g, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pads[0]), pl=np.int64(pads[1]))

    @custom_partitioning
    def dw(x, g):
        return call(x, g)

    def infer(mesh, arg_shapes, result_shape):
        return NamedSharding(mesh, PartitionSpec())

    def partition(mesh, arg_shapes, result_shape):
        spec = arg_shapes[0].sharding.spec
        batch_axes = spec[0] if len(spec) else None
        operands = NamedSharding(mesh, PartitionSpec(batch_axes))

        def lower(x, g):
            partial = call(x, g)
            return jax.lax.psum(partial, batch_axes) if batch_axes is not None else partial

        return mesh, lower, NamedSharding(mesh, PartitionSpec()), (operands, operands)

    dw.def_partition(infer_sharding_from_operands=infer, partition=partition,
                     sharding_rule="b h w c, b i j k -> p q c k")
    return dw(x, g)


VARIANTS = ("xla", "kernel", "all")
_XLA_PLAIN = None  # nt_robust.models.conv._plain as imported, before any patch


def _native_plain(x, kernel, strides, padding, precision=None):
    """The forward kernel of benchmarks/native_conv_fwd.py for float32, XLA's otherwise."""
    import jax.numpy as jnp
    import native_conv_fwd

    if not x.dtype == kernel.dtype == jnp.float32:
        return _XLA_PLAIN(x, kernel, strides, padding, precision)
    out_hw = tuple((size + low + high - k) // s + 1
                   for size, k, s, (low, high) in zip(x.shape[1:3], kernel.shape[:2], strides, padding))
    return native_conv_fwd.kernel_conv_partitioned(x, kernel, strides, (padding[0][0], padding[1][0]), out_hw)


def use_weight_gradient(which: str) -> None:
    """Make ``model.conv_impl = "shifted_matmul"`` convolutions run as: "xla", XLA's forward
    pass, input gradient (autodiff's) and weight gradient; "kernel", the same with the
    weight-gradient kernel; "all", the forward kernel of benchmarks/native_conv_fwd.py for the
    forward pass and for stride-1 input gradients (a forward convolution of the flipped kernel),
    and the weight-gradient kernel (float32 only; XLA's otherwise)."""
    import jax
    import jax.numpy as jnp

    import nt_robust.models.conv as conv

    global _XLA_PLAIN
    if _XLA_PLAIN is None:
        _XLA_PLAIN = conv._plain
    conv._plain = _native_plain if which == "all" else _XLA_PLAIN

    def backward(strides, padding, precision, residuals, g):
        x, kernel = residuals
        native = which != "xla" and x.dtype == kernel.dtype == g.dtype == jnp.float32
        if which == "all" and native and strides == (1, 1):
            flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
            pads = tuple((k - 1 - low, size + low - out) for size, out, k, (low, _)
                         in zip(x.shape[1:3], g.shape[1:3], kernel.shape[:2], padding))  # as _input_gradient's
            dx = _native_plain(g, flipped, (1, 1), pads, precision)
        elif which == "all":
            dx = conv._input_gradient(g, kernel, strides, padding, x.shape[1:3], precision)
        else:
            dx = jax.vjp(lambda x_: _XLA_PLAIN(x_, kernel, strides, padding, precision), x)[1](g)[0]
        if native:
            dk = kernel_dw(x, g, tuple(kernel.shape), strides, (padding[0][0], padding[1][0]))
        else:
            dk = conv._xla_weight_gradient(x, kernel, g, strides, padding, precision)
        return dx, dk

    conv._conv.defvjp(conv._vjp_forward, backward)


def layer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    train_step._configure_jax(spec)
    register_kernel(Path(spec["library"]))
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
    except Exception:  # noqa: BLE001 (optional)
        torch = None
    numbers = ("NHWC", "HWIO", "NHWC")
    results = {}
    # (spatial size, in, out, kernel, stride): WRN-16-k's layers, the stem, a shortcut, and a wide one
    for size, cin, cout, k, stride in [(32, 16, 16, 3, 1), (16, 32, 32, 3, 1), (8, 64, 64, 3, 1), (32, 32, 32, 3, 1),
                                       (32, 16, 32, 3, 2), (32, 16, 32, 1, 2), (32, 3, 16, 3, 1),
                                       (16, 160, 160, 3, 1)]:
        rng = np.random.default_rng(0)
        pad, out = (k - 1) // 2, size // stride
        x = jnp.asarray(rng.standard_normal((spec["batch"], size, size, cin), np.float32))
        g = jnp.asarray(rng.standard_normal((spec["batch"], out, out, cout), np.float32))
        w = jnp.zeros((k, k, cin, cout), jnp.float32)

        def conv(x, w, stride=stride, pad=pad):
            return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=numbers)

        xla = jax.jit(lambda x, g, conv=conv, w=w: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
        kernel = jax.jit(lambda x, g, shape=w.shape, s=stride, p=pad: kernel_dw(x, g, shape, (s, s), (p, p)))
        reference, candidate = np.asarray(xla(x, g), np.float64), np.asarray(kernel(x, g), np.float64)
        row = {"max_rel_diff_vs_xla": float(np.max(np.abs(candidate - reference)) / np.max(np.abs(reference)))}
        for name, fn in (("xla_ms", xla), ("kernel_ms", kernel)):
            timing = train_step._time_steps(lambda fn=fn: jax.block_until_ready(fn(x, g)), 2, spec["steps"],
                                            spec["min_seconds"])
            row[name] = round(1000 * timing["s_per_step_median"], 2)
        if torch is not None:
            tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
            tg = torch.tensor(np.asarray(g)).permute(0, 3, 1, 2).contiguous()
            timing = train_step._time_steps(
                lambda: torch.nn.grad.conv2d_weight(tx, (cout, cin, k, k), tg, stride=stride, padding=pad), 2,
                spec["steps"], spec["min_seconds"])
            row["torch_ms"] = round(1000 * timing["s_per_step_median"], 2)
        results[f"{size}x{size}, {cin}->{cout}, {k}x{k}, stride {stride}"] = row
    return {"layers": results, "kernel_threads": 1, "xla_and_torch_threads": os.cpu_count()}


def step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The variants (``spec["variants"]``, from :data:`VARIANTS`) of one (model, objective,
    devices) step, compiled in this process, timed in alternating rounds."""
    import jax

    import native_conv_fwd

    if spec["devices"] > 1:
        jax.config.update("jax_num_cpu_devices", spec["devices"])
    train_step._configure_jax(spec)
    register_kernel(Path(spec["library"]))
    native_conv_fwd.register_kernel(Path(spec["fwd_library"]))
    config = train_step._jax_config(spec, train_step.MODELS[spec["model"]])
    compiled = {}
    for which in spec["variants"]:
        use_weight_gradient(which)
        jitted, state, images, labels, _, _ = train_step._jax_step(spec, config)
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

            timing = train_step._time_steps(run, 1, spec["steps"], 0.5)
            seconds[which].append(timing["s_per_step_median"])
    result = {"model": spec["model"], "objective": spec["objective"], "devices": jax.device_count(),
              "compile_s": {k: v["compile_s"] for k, v in compiled.items()}}
    for which, values in seconds.items():
        result[f"{which}_ms_per_step"] = round(1000 * sorted(values)[len(values) // 2], 1)
        if which != "xla":  # xla time / variant time = the variant's speed-up
            result[f"{which}_speedup"] = train_step.paired_ratio(values, seconds["xla"])
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
    parser.add_argument("--models", default="wrn16-1", help=f"comma list of {list(train_step.MODELS)} (conv nets)")
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
    with tempfile.TemporaryDirectory(prefix="nt_robust_dw_") as directory:
        base["library"] = str(build_kernel(Path(directory)))
        base["fwd_library"] = str(build_kernel(Path(directory), HERE / "conv_fwd_kernel.cc"))
        if args.layers:
            results: Any = _child(dict(base, what="layers", devices=1), args.timeout)
        else:
            results = [_child(dict(base, what="step", model=model, objective=objective, devices=int(devices)),
                              args.timeout)
                       for model in args.models.split(",") for objective in args.objectives.split(",")
                       for devices in args.devices.split(",")]
    print(json.dumps({"benchmark": "native_dw", "cpu": train_step._cpu_model(), "cores": os.cpu_count(),
                      "versions": {name: train_step._version(name) for name in ("jax", "jaxlib", "torch")},
                      "command": " ".join([Path(sys.executable).name, *sys.argv]),
                      "load_1min_end": round(os.getloadavg()[0], 2), "wall_s": round(time.perf_counter() - started, 1),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()

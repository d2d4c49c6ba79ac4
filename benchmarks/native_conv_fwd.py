"""Prototype measurement: a hand-written direct convolution (``benchmarks/conv_fwd_kernel.cc``,
an XLA FFI custom call built here with g++) against XLA:CPU's and PyTorch's forward pass,
per layer.

A conv net's attack step (PGD, APGD, the TRADES inner maximization) is a forward pass and an
input gradient, and the input gradient of a stride-1 convolution is itself a forward
convolution (of the flipped kernel, ``nt_robust.models.conv``). At WRN-16-1's 16-channel
layers XLA:CPU's convolution is about 1.3x PyTorch's oneDNN (docs/benchmarks.md), which is
most of what keeps WRN-16-1's TRADES steps and evaluation behind. This asks whether a
single-threaded kernel on each device's half of the batch (what two CPU devices give it)
would beat both, before anything of the kind goes into the library::

    .venv/bin/python benchmarks/native_conv_fwd.py --steps 7     # prints one JSON object

Columns (ms, medians): XLA on the whole batch (all cores), the kernel on the whole batch and
on half of it (one thread each), the kernel on the whole batch split over two CPU devices
(``shard_map``: each core runs one half at once, as data parallelism would), PyTorch on the
whole batch (all cores). ``max_rel_diff_vs_xla`` checks the kernel's output.
Needs g++ and jaxlib's FFI headers (``jax.ffi.include_dir()``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import native_dw  # noqa: E402  (its g++ build)
import train_step  # noqa: E402  (timing helpers)

KERNEL_SOURCE = HERE / "conv_fwd_kernel.cc"
TARGET = "nt_robust_bench_conv_fwd"
# (spatial size, in, out, kernel): WRN-16-k's stride-1 layers, the CIFAR stem, a wider one
LAYERS = [(32, 16, 16, 3), (16, 32, 32, 3), (8, 64, 64, 3), (32, 32, 32, 3), (32, 3, 16, 3), (16, 160, 160, 3)]


def register_kernel(library: Path) -> None:
    import jax

    handle = ctypes.cdll.LoadLibrary(str(library))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.NtRobustConvFwd), platform="cpu")


def kernel_conv(x, w, strides: tuple[int, int], pads: tuple[int, int], out_hw: tuple[int, int]):
    """NHWC/HWIO convolution with low padding ``pads`` from the kernel (output ``out_hw``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shape = (x.shape[0], *out_hw, w.shape[3])
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(shape, jnp.float32))(
        x, w, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pads[0]), pl=np.int64(pads[1]))


def kernel_conv_partitioned(x, w, strides: tuple[int, int], pads: tuple[int, int], out_hw: tuple[int, int]):
    """:func:`kernel_conv`, partitioned over the batch axis under a mesh (each device
    convolves its shard; the output stays sharded like ``x``)."""
    import jax
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    @custom_partitioning
    def conv(x, w):
        return kernel_conv(x, w, strides, pads, out_hw)

    def batch_spec(arg_shapes):
        spec = arg_shapes[0].sharding.spec
        return PartitionSpec(spec[0] if len(spec) else None)

    def infer(mesh, arg_shapes, result_shape):
        return NamedSharding(mesh, batch_spec(arg_shapes))

    def partition(mesh, arg_shapes, result_shape):
        sharded = NamedSharding(mesh, batch_spec(arg_shapes))
        return (mesh, lambda x, w: kernel_conv(x, w, strides, pads, out_hw), sharded,
                (sharded, NamedSharding(mesh, PartitionSpec())))

    conv.def_partition(infer_sharding_from_operands=infer, partition=partition,
                       sharding_rule="b h w c, i j c k -> b p q k")
    return conv(x, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    from nt_robust.environment import configure_xla_cpu
    configure_xla_cpu()
    import jax
    jax.config.update("jax_num_cpu_devices", 2)  # the kernel's two-device column
    from jax.sharding import Mesh, PartitionSpec
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
    except Exception:  # noqa: BLE001 (optional)
        torch = None

    def time_ms(fn):
        timing = train_step._time_steps(fn, 2, args.steps, args.min_seconds)
        return round(1000 * timing["s_per_step_median"], 2)

    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="nt_robust_fwd_") as directory:
        register_kernel(native_dw.build_kernel(Path(directory), KERNEL_SOURCE))
        for size, cin, cout, k in LAYERS:
            rng = np.random.default_rng(0)
            pad = (k - 1) // 2
            x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
            w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
            half = x[: args.batch // 2]
            xla = jax.jit(lambda x, w, p=pad: lax.conv_general_dilated(
                x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
            kernel = jax.jit(lambda x, w, p=pad, s=size: kernel_conv(x, w, (1, 1), (p, p), (s, s)))
            mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
            split = jax.jit(jax.shard_map(lambda x, w, p=pad, s=size: kernel_conv(x, w, (1, 1), (p, p), (s, s)),
                                          mesh=mesh, in_specs=(PartitionSpec("batch"), PartitionSpec()),
                                          out_specs=PartitionSpec("batch")))
            x_split = jax.device_put(x, jax.sharding.NamedSharding(mesh, PartitionSpec("batch")))
            reference = np.asarray(xla(x, w), np.float64)
            row = {"max_rel_diff_vs_xla": float(np.max(np.abs(np.asarray(kernel(x, w), np.float64) - reference))
                                                / np.max(np.abs(reference))),
                   "xla_ms": time_ms(lambda: jax.block_until_ready(xla(x, w))),
                   "kernel_ms": time_ms(lambda: jax.block_until_ready(kernel(x, w))),
                   "kernel_half_batch_ms": time_ms(lambda: jax.block_until_ready(kernel(half, w))),
                   "kernel_two_devices_ms": time_ms(lambda: jax.block_until_ready(split(x_split, w)))}
            assert np.array_equal(np.asarray(split(x_split, w)), np.asarray(kernel(x, w)))
            if torch is not None:
                tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
                tw = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous()
                with torch.no_grad():
                    row["torch_ms"] = time_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=pad))
            results[f"{size}x{size}, {cin}->{cout}, {k}x{k}"] = row
            print(json.dumps({results and list(results)[-1]: row}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "native_conv_fwd", "cpu": train_step._cpu_model(), "cores": os.cpu_count(),
                      "batch": args.batch, "kernel_threads": 1, "xla_and_torch_threads": os.cpu_count(),
                      "versions": {name: train_step._version(name) for name in ("jax", "jaxlib", "torch")},
                      "wall_s": round(time.perf_counter() - started, 1), "layers": results}, indent=2))


if __name__ == "__main__":
    main()

"""The direct-convolution kernel of ``model.conv_impl = "native"``
(``nt_robust.models.native_conv``, ``kernels/conv_fwd.cc``) against XLA:CPU's and PyTorch's
forward pass, per layer.

A conv net's attack step (PGD, APGD, the TRADES inner maximization) is a forward pass and an
input gradient, and the input gradient of a stride-1 convolution is itself a forward
convolution (of the flipped kernel, ``nt_robust.models.conv``). At WRN-16-1's 16-channel
layers XLA:CPU's convolution is about 1.3x PyTorch's oneDNN (docs/benchmarks.md), which is
most of what keeps WRN-16-1's TRADES steps and evaluation behind. This asks whether a
single-threaded kernel on each device's half of the batch (what two CPU devices give it)
would beat both::

    .venv/bin/python benchmarks/native_conv_fwd.py --steps 7     # prints one JSON object

Columns (ms, medians): XLA on the whole batch (all cores), the kernel on the whole batch and
on half of it (one thread each), the kernel on the whole batch split over two CPU devices
(a batch-sharded input: each core runs one half at once, as data parallelism does), PyTorch
on the whole batch (all cores). ``max_rel_diff_vs_xla`` checks the kernel's output. Needs g++.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import train_step  # noqa: E402  (timing helpers)

# (spatial size, in, out, kernel): WRN-16-k's stride-1 layers, the CIFAR stem, a wider one
LAYERS = [(32, 16, 16, 3), (16, 32, 32, 3), (8, 64, 64, 3), (32, 32, 32, 3), (32, 3, 16, 3), (16, 160, 160, 3)]


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
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
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

    from nt_robust.models import native_conv

    started = time.perf_counter()
    results = {}
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    for size, cin, cout, k in LAYERS:
        rng = np.random.default_rng(0)
        pad = (k - 1) // 2
        x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
        half = x[: args.batch // 2]
        x_split = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
        xla = jax.jit(lambda x, w, p=pad: lax.conv_general_dilated(
            x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
        kernel = jax.jit(lambda x, w, p=pad, s=size: native_conv.conv_forward(x, w, (1, 1), (p, p), (s, s)))
        reference = np.asarray(xla(x, w), np.float64)
        assert np.array_equal(np.asarray(kernel(x_split, w)), np.asarray(kernel(x, w)))
        row = {"max_rel_diff_vs_xla": float(np.max(np.abs(np.asarray(kernel(x, w), np.float64) - reference))
                                            / np.max(np.abs(reference))),
               "xla_ms": time_ms(lambda: jax.block_until_ready(xla(x, w))),
               "kernel_ms": time_ms(lambda: jax.block_until_ready(kernel(x, w))),
               "kernel_half_batch_ms": time_ms(lambda: jax.block_until_ready(kernel(half, w))),
               "kernel_two_devices_ms": time_ms(lambda: jax.block_until_ready(kernel(x_split, w)))}
        if torch is not None:
            tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
            tw = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous()
            with torch.no_grad():
                row["torch_ms"] = time_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=pad))
        results[f"{size}x{size}, {cin}->{cout}, {k}x{k}"] = row
        print(json.dumps({list(results)[-1]: row}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "native_conv_fwd", "cpu": train_step._cpu_model(), "cores": os.cpu_count(),
                      "batch": args.batch, "kernel_threads": 1, "xla_and_torch_threads": os.cpu_count(),
                      "versions": {name: train_step._version(name) for name in ("jax", "jaxlib", "torch")},
                      "wall_s": round(time.perf_counter() - started, 1), "layers": results}, indent=2))


if __name__ == "__main__":
    main()

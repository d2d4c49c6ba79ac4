"""The direct-convolution kernel of ``conv_impl = "native"`` (``nt_robust.cpu.native``,
``kernels/conv_fwd.cc``) against XLA:CPU's and PyTorch's convolutions, per layer: the forward
pass, and the input gradient of the strided layers.

A conv net's attack step (PGD, APGD, the TRADES inner maximization) is a forward pass and an
input gradient; the input gradient of a convolution is itself a forward convolution of the
flipped kernel over the (for strided layers, dilated) output gradient
(``nt_robust.cpu.conv``), so this kernel runs both. (The weight-gradient kernel, per layer:
``benchmarks/native_dw.py --layers``.)::

    .venv/bin/python benchmarks/native_conv_fwd.py --steps 7     # prints one JSON object

Columns (ms, medians, batch 128): XLA's convolution (for the strided input gradients, the one
``conv_impl = "flipped_dx"`` runs), the kernel on one device (spread over XLA's thread pool),
the kernel with the batch split over two CPU devices (what data parallelism does), PyTorch
(NCHW, every core). ``max_rel_diff_vs_xla`` checks the kernel's values. Needs g++.
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

import harness  # noqa: E402  (timing helpers)

# (spatial size, in, out, kernel): WRN-16-k's stride-1 layers, the CIFAR stem, a wider one
LAYERS = [(32, 16, 16, 3), (16, 32, 32, 3), (8, 64, 64, 3), (32, 32, 32, 3), (16, 64, 64, 3), (8, 128, 128, 3),
          (32, 3, 16, 3), (16, 160, 160, 3)]
# (input size, in, out, kernel) of WRN-16-k's stride-2 layers (3x3 and the 1x1 shortcuts)
STRIDED = [(32, 16, 32, 3), (16, 32, 64, 3), (32, 32, 64, 3), (16, 64, 128, 3), (32, 32, 64, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    from nt_robust.cpu.setup import configure_xla_cpu
    configure_xla_cpu()
    import jax
    jax.config.update("jax_num_cpu_devices", 2)  # the kernel's two-device column
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import jax.numpy as jnp
    import numpy as np
    from nt_robust.cpu import conv
    from nt_robust.cpu import native as native_conv

    torch = harness.optional_torch()

    def time_ms(fn):
        return harness.median_ms(fn, args.steps, args.min_seconds)

    rel_diff = harness.max_rel_diff

    started = time.perf_counter()
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    split = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(0)
    forward, strided = {}, {}
    for size, cin, cout, k in LAYERS:
        pad = (k - 1) // 2
        padding = ((pad, pad), (pad, pad))
        x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
        x_split = jax.device_put(x, split)
        xla = jax.jit(lambda x, w, p=padding: conv._plain(x, w, (1, 1), p))
        kernel = jax.jit(lambda x, w, p=pad, s=size: native_conv.conv_forward(x, w, (1, 1), (p, p), (s, s)))
        name = f"{size}x{size}, {cin}->{cout}, {k}x{k}"
        forward[name] = {"max_rel_diff_vs_xla": rel_diff(kernel(x, w), xla(x, w)),
                         "xla_ms": time_ms(lambda: jax.block_until_ready(xla(x, w))),
                         "kernel_ms": time_ms(lambda: jax.block_until_ready(kernel(x, w))),
                         "kernel_two_devices_ms": time_ms(lambda: jax.block_until_ready(kernel(x_split, w)))}
        if torch is not None:
            tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
            tw = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous()
            with torch.no_grad():
                forward[name]["torch_ms"] = time_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=pad))
        print(json.dumps({name: forward[name]}), file=sys.stderr, flush=True)
    for size, cin, cout, k in STRIDED:
        pad = (k - 1) // 2
        padding = ((pad, pad), (pad, pad))
        out = (size + 2 * pad - k) // 2 + 1
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
        g = jnp.asarray(rng.standard_normal((args.batch, out, out, cout), np.float32))
        xla = jax.jit(lambda g, w, p=padding, s=size: conv._input_gradient(g, w, (2, 2), p, (s, s), None))
        kernel = jax.jit(lambda g, w, p=padding, s=size: conv._native_input_gradient(g, w, (2, 2), p, (s, s), None))
        name = f"{size}x{size}, {cin}->{cout}, {k}x{k}, stride 2"
        strided[name] = {"max_rel_diff_vs_xla": rel_diff(kernel(g, w), xla(g, w)),
                         "xla_ms": time_ms(lambda: jax.block_until_ready(xla(g, w))),
                         "kernel_ms": time_ms(lambda: jax.block_until_ready(kernel(g, w)))}
        if torch is not None:
            tw = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous()
            tg = torch.tensor(np.asarray(g)).permute(0, 3, 1, 2).contiguous()
            shape = (args.batch, cin, size, size)
            with torch.no_grad():
                strided[name]["torch_ms"] = time_ms(lambda: torch.nn.grad.conv2d_input(
                    shape, tw, tg, stride=2, padding=pad))
        print(json.dumps({name: strided[name]}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "native_conv_fwd", "cpu": harness.cpu_model(), "cores": os.cpu_count(),
                      "batch": args.batch, "threads": os.cpu_count(),
                      "versions": {name: harness.version(name) for name in ("jax", "jaxlib", "torch")},
                      "wall_s": round(time.perf_counter() - started, 1), "forward": forward,
                      "strided_input_gradient": strided}, indent=2))


if __name__ == "__main__":
    main()

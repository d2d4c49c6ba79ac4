"""The matrix-product kernel of ``dense_impl = "native"`` (``nt_robust.cpu.dense``,
``kernels/matmul.cc``) against XLA:CPU's and PyTorch's products, per dense layer: the three
products a training step asks of it (the forward pass ``x W``, the input gradient ``g W^T``,
the weight gradient ``x^T g``), each alone, and the layer's forward pass with both gradients
in one jitted function (what ``dense_impl = "auto"`` times).

An MLP's attack step (PGD, APGD, the TRADES inner maximization) is a forward pass and an input
gradient per layer; its first layer (3072 inputs on CIFAR-10) is most of the work::

    .venv/bin/python benchmarks/native_matmul.py --steps 15     # prints one JSON object

Columns (ms, medians): XLA's product, the kernel (on XLA's thread pool), PyTorch (every
core; absent without torch). ``max_rel_diff_vs_xla`` checks the kernel's values. Needs g++.
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

# (batch, inputs, outputs): the CIFAR MLP-2x256's layers, a 500-image evaluation batch, a wider MLP
LAYERS = [(128, 3072, 256), (128, 256, 256), (128, 256, 10), (500, 3072, 256), (128, 3072, 1024)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    from nt_robust.cpu.setup import configure_xla_cpu
    configure_xla_cpu()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu import native as native_conv
    from nt_robust.cpu.dense import native_dot_general

    torch = harness.optional_torch()

    def time_ms(fn):
        return harness.median_ms(fn, args.steps, args.min_seconds, digits=3)

    numbers = (((1,), (0,)), ((), ()))
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    layers = {}
    for batch, inputs, outputs in LAYERS:
        x = jnp.asarray(rng.standard_normal((batch, inputs), np.float32))
        w = jnp.asarray(rng.standard_normal((inputs, outputs), np.float32))
        g = jnp.asarray(rng.standard_normal((batch, outputs), np.float32))
        products = {  # name: (XLA, kernel, operands, PyTorch)
            "forward x W": (lambda x, w: x @ w, lambda x, w: native_conv.matmul(x, w), (x, w),
                            lambda x, w: x @ w),
            "input gradient g W^T": (lambda g, w: g @ w.T, lambda g, w: native_conv.matmul(g, w, transpose_b=True),
                                     (g, w), lambda g, w: g @ w.T),
            "weight gradient x^T g": (lambda x, g: x.T @ g, lambda x, g: native_conv.matmul(x, g, transpose_a=True),
                                      (x, g), lambda x, g: x.T @ g),
        }
        entry = {}
        for name, (xla_fn, kernel_fn, operands, torch_fn) in products.items():
            xla, kernel = jax.jit(xla_fn), jax.jit(kernel_fn)
            entry[name] = {"max_rel_diff_vs_xla": harness.max_rel_diff(kernel(*operands), xla(*operands)),
                           "xla_ms": time_ms(lambda: jax.block_until_ready(xla(*operands))),
                           "kernel_ms": time_ms(lambda: jax.block_until_ready(kernel(*operands)))}
            if torch is not None:
                tensors = [torch.tensor(np.asarray(a)) for a in operands]
                with torch.no_grad():
                    entry[name]["torch_ms"] = time_ms(lambda: torch_fn(*tensors))
        for impl, dot_general in (("xla", lax.dot_general), ("kernel", native_dot_general)):
            layer = jax.jit(lambda x, w, g, dot_general=dot_general: (
                lambda out, vjp: (out, vjp(g)))(*jax.vjp(lambda x, w: dot_general(x, w, numbers), x, w)))
            entry.setdefault("layer: forward + both gradients", {})[f"{impl}_ms"] = time_ms(
                lambda: jax.block_until_ready(layer(x, w, g)))
        name = f"{batch} x {inputs} -> {outputs}"
        layers[name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "native_matmul", "cpu": harness.cpu_model(), "cores": os.cpu_count(),
                      "threads": os.cpu_count(), "native_build_key": native_conv.build_key(),
                      "versions": {name: harness.version(name) for name in ("jax", "jaxlib", "torch")},
                      "wall_s": round(time.perf_counter() - started, 1), "layers": layers}, indent=2))


if __name__ == "__main__":
    main()

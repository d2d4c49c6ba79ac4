"""Unrolled vs ``lax.fori_loop`` attack loops: compile time and attack throughput.

Runs the TRADES training attack (ℓ∞, 10 KL steps by default) on an MLP and a small CNN
(the TRADES SmallCNN layout, conv 32-32-pool-64-64-pool, dense 200-200) on CIFAR-shaped
batches, for each loop form, and prints one JSON object::

    .venv/bin/python benchmarks/attack_loop.py                       # batch 128, 10 steps
    .venv/bin/python benchmarks/attack_loop.py --models cnn --steps 20 --min-seconds 5

``images_per_s`` counts clean images attacked per second (one attack = ``steps``
forward+backward passes); ``compile_s`` is trace + lower + XLA compile of the jitted attack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nt_robust.attacks import TRADES_TRAIN, pgd, resolve_loop  # noqa: E402


class MLP(nn.Module):
    width: int = 256

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for channels in (32, 64):
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.relu(nn.Dense(200)(x))
        return nn.Dense(10)(x)


def bench(model: nn.Module, loop: str, batch: int, steps: int, min_seconds: float) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    variables = model.init(jax.random.key(0), x[:1])
    config = dataclasses.replace(TRADES_TRAIN, num_steps=steps, loop=loop)

    # Variables are an argument (as in a train step), not compile-time constants.
    attack = jax.jit(lambda v, x, y, k: pgd(lambda z: model.apply(v, z), x, y, k, config))
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = attack.lower(variables, x, y, key).compile()
    compile_s = time.perf_counter() - start

    compiled(variables, x, y, key).block_until_ready()  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < min_seconds:
        compiled(variables, x, y, jax.random.fold_in(key, runs)).block_until_ready()
        runs += 1
    elapsed = time.perf_counter() - start
    return {"loop": loop, "compile_s": round(compile_s, 3), "runs": runs,
            "s_per_attack": round(elapsed / runs, 4), "images_per_s": round(batch * runs / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--loops", default="unroll,fori")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()

    models = {"mlp": MLP(), "cnn": SmallCNN()}
    results = {name: [bench(models[name], loop, args.batch, args.steps, args.min_seconds)
                      for loop in args.loops.split(",")]
               for name in args.models.split(",")}
    device = jax.devices()[0]
    print(json.dumps({
        "benchmark": "attack_loop", "attack": f"TRADES_TRAIN (linf, KL, {args.steps} steps)",
        "batch": args.batch, "input": [32, 32, 3], "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)), "auto_loop": resolve_loop("auto"),
        "jax": jax.__version__, "cpu": platform.processor() or platform.machine(),
        "prng_impl": str(jax.config.jax_default_prng_impl), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()

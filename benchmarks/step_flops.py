"""FLOPs per image of the benchmarked training steps, for every convolution / dense-layer
implementation: one JSON row per (model, objective), with the count under each
implementation (they must agree: nt_robust.train.cost counts the step with XLA's own
convolutions and products) and, beside it, what XLA's cost analysis sees when the step is
lowered the way the native CPU kernels run it (custom calls it cannot count)::

    .venv/bin/python benchmarks/step_flops.py                      # mlp, cnn, wrn16-1, wrn16-2
    .venv/bin/python benchmarks/step_flops.py --models wrn16-1 --batch 128

Counts only (nothing is compiled or timed), so the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402  (the benchmarks' models)

# name -> ModelConfig fields: four of benchmarks/harness.py's models
MODELS = {name: harness.MODELS[name] for name in ("mlp", "cnn", "wrn16-1", "wrn16-2")}
IMPLS = {"mlp": [("dense_impl", "xla"), ("dense_impl", "native")],
         "cnn": [("conv_impl", "xla"), ("conv_impl", "shifted_matmul"), ("conv_impl", "native")],
         "wrn16-1": [("conv_impl", "xla"), ("conv_impl", "shifted_matmul"), ("conv_impl", "native")],
         "wrn16-2": [("conv_impl", "xla"), ("conv_impl", "shifted_matmul"), ("conv_impl", "native")]}


def rows(models: list[str], batch: int, shape=(32, 32, 3), classes: int = 10):
    from nt_robust.train import cost as step_cost
    from nt_robust.config import load_config
    from nt_robust.train import ExperimentConfig

    for name in models:
        for objective in ("natural", "trades"):
            counts, raw = {}, None
            for field, impl in IMPLS[name]:
                overrides = [f"model.{k}={v!r}" if isinstance(v, str) else f"model.{k}={v}"
                             for k, v in MODELS[name].items()]
                config = load_config(ExperimentConfig, None, [
                    *overrides, f"model.{field}={impl!r}", f"objective.kind={objective}", "data.crop_padding=0",
                    "data.flip=false", f"train.batch_size={batch}"])
                counts[impl] = step_cost.train_step_flops(config, shape, classes)["flops_per_step"] / batch
                if impl == "native" and shutil.which("g++"):
                    unrolled = dataclasses.replace(
                        config, train_attack=dataclasses.replace(config.train_attack, loop="unroll"))
                    step, state, images, labels = step_cost.abstract_step(unrolled, shape, classes, batch)
                    raw = step_cost.cost_flops(step.lower(state, images, labels)) / batch
            yield {"model": name, "objective": objective, "batch": batch,
                   "gflop_per_image": {impl: round(c / 1e9, 6) for impl, c in counts.items()},
                   "all_equal": len(set(counts.values())) == 1,
                   "native_kernels_as_xla_sees_them_gflop_per_image": None if raw is None else round(raw / 1e9, 6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,wrn16-1,wrn16-2")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    for row in rows(args.models.split(","), args.batch):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`nt-robust study SPEC --estimate --device D` against a hand computation, and its wall time.

The hand computation counts multiply-adds from the architecture's definition
(tests/test_flops.py's ``wrn_count``, written without nt_robust.train.cost): a TRADES step with K
attack steps is 2 × ((2K + 7)·M − 2·M₁) FLOPs per image (M multiply-adds per forward pass,
M₁ in the first layer), and a run costs
``epochs × FLOPs / (mfu × peak) × (steps per epoch + eval points × (eval steps + 12) / (K + 2) / batch)``
(nt_robust/studies/cost.py). Elementwise work is left out of the hand count, so the
estimate should sit slightly above it::

    .venv/bin/python benchmarks/estimate_vs_hand_count.py                     # the paper study on an H100
    .venv/bin/python benchmarks/estimate_vs_hand_count.py --device a100 --spec experiments/study_paper_cifar10.toml

Prints one JSON object: per width the estimate's and the hand count's GFLOP per step and
device-hours, their ratio, the totals, and the estimate's wall time: with the estimate cache
off (everything lowered and compiled), then twice with it on (filling it, then reading it).
Run it with ``XDG_CACHE_HOME`` pointing at an empty folder for a cold cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the hand count lives with the FLOP tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "study_paper_cifar10.toml"))
    parser.add_argument("--device", default="h100")
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()

    from test_flops import wrn_count

    from nt_robust import accelerators
    from nt_robust.train import cost as step_cost
    from nt_robust.environment import describe_cpu
    from nt_robust.studies import cost
    from nt_robust.studies.sweep import load_study

    study = load_study(Path(args.spec))
    timings = {}
    for label, setting in (("cold", "off"), ("filling_the_cache", "on"), ("cached", "on")):
        os.environ["NT_ROBUST_ESTIMATE_CACHE"] = setting
        start = time.perf_counter()
        rows = cost.estimate_cost(study, device=args.device, mfu=args.mfu)
        timings[f"{label}_wall_s"] = round(time.perf_counter() - start, 1)
    splits = cost._estimate_splits(cost._configs_by_width(study)[0][1])
    target = accelerators.find_device(args.device)
    out = []
    for (width, config, runs), row in zip(cost._configs_by_width(study), rows):
        if config.model.arch != "wrn" or config.objective.kind != "trades":
            raise SystemExit(f"the hand count covers TRADES WideResNets; {config.model.label} is not one")
        counts = wrn_count(config.model.depth, width, *splits.image_shape, splits.num_classes)
        k, batch = config.train_attack.num_steps, config.train.batch_size
        hand_flops = 2 * ((2 * k + 7) * counts["macs"] - 2 * counts["stem_macs"]) * batch
        dtype, matmul = step_cost.config_precision(config)
        peak = accelerators.peak_flops(target.name, accelerators.precision_class(dtype, matmul, "gpu"))
        hand_hours = runs * cost._run_hours(config, splits, hand_flops / (args.mfu * peak))
        out.append({"model": row["model"], "estimate_gflop_per_step": round(row["flops_per_step"] / 1e9, 1),
                    "hand_gflop_per_step": round(hand_flops / 1e9, 1), "estimate_hours": round(row["hours"], 2),
                    "hand_hours": round(hand_hours, 2), "ratio": round(row["hours"] / hand_hours, 4),
                    "peak_gib": round(row["peak_bytes"] / 2**30, 1), "fits": row["fits"]})
    total, hand = sum(r["hours"] for r in rows), sum(r["hand_hours"] for r in out)
    print(json.dumps({"device": args.device, "mfu": args.mfu, "widths": out, "estimate_hours": round(total, 1),
                      "hand_hours": round(hand, 1), "ratio": round(total / hand, 4), **timings,
                      "cpu": describe_cpu(), "load_average": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

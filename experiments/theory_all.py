"""Regenerate every theory figure and JSON in figures/theory/, then the summary table.

    python experiments/theory_all.py --preset cpu     # 2 CPU cores (see docs/theory.md for the runtime)
    python experiments/theory_all.py --preset gpu     # wider widths, more seeds
    python experiments/theory_all.py --preset smoke --out /tmp/theory   # a minute-scale check

Writes timing.json (wall and CPU seconds per stage) next to the results. With ``--only``,
the other stages' entries of an existing timing.json are kept (each entry records the
date it was measured) and the totals are their sum.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import theory_bound_growth  # noqa: E402
import theory_conv  # noqa: E402
import theory_init_gradients  # noqa: E402
import theory_lazy  # noqa: E402
import theory_memory  # noqa: E402
import theory_ntk_convergence  # noqa: E402
import theory_report  # noqa: E402
import theory_trades  # noqa: E402

from nt_robust.storage import read_json, write_json  # noqa: E402

STAGES = {module.EXPERIMENT.name: module.EXPERIMENT
          for module in (theory_init_gradients, theory_ntk_convergence, theory_bound_growth, theory_lazy,
                         theory_trades, theory_memory, theory_conv)}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu", "smoke"))
    parser.add_argument("--out", default="figures/theory")
    parser.add_argument("--only", nargs="*", choices=sorted(STAGES), help="run only these stages")
    args = parser.parse_args(argv)
    timing = {"preset": args.preset, "cpu_count": os.cpu_count(), "stages": {}}
    timing_path = f"{args.out}/timing.json"
    if args.only and os.path.exists(timing_path):
        previous = read_json(timing_path)
        if previous.get("preset") == args.preset:
            timing["stages"] = {k: v for k, v in previous["stages"].items() if k not in args.only}
    start_wall, start_cpu = time.time(), _cpu_seconds()
    for name, experiment in STAGES.items():
        if args.only and name not in args.only:
            continue
        wall, cpu = time.time(), _cpu_seconds()
        experiment.main(["--preset", args.preset, "--out", args.out])
        timing["stages"][name] = {"wall_s": time.time() - wall, "cpu_s": _cpu_seconds() - cpu,
                                  "date": time.strftime("%Y-%m-%d")}
        print(f"== {name}: {timing['stages'][name]}", flush=True)
        write_json(timing_path, {**timing, "partial": True})  # an interrupted run keeps what it measured
    if args.only:
        timing["total_wall_s"] = sum(v["wall_s"] for v in timing["stages"].values())
        timing["total_cpu_s"] = sum(v["cpu_s"] for v in timing["stages"].values())
        timing["note"] = "stages measured in separate runs (--only); totals are their sum"
    else:
        timing["total_wall_s"], timing["total_cpu_s"] = time.time() - start_wall, _cpu_seconds() - start_cpu
    write_json(timing_path, timing)
    theory_report.main(["--out", args.out])
    return timing


if __name__ == "__main__":
    main()

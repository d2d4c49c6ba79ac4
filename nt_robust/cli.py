"""``nt-robust``: a thin command line over the library.

    nt-robust train --config experiments/quick_fmnist.toml --set objective.lam=12
    nt-robust eval runs/quick_fmnist --checkpoint best_test --attack cw20
    nt-robust eval runs/quick_fmnist --protocol autoattack-standard
    nt-robust study experiments/study_quick_fmnist.toml
    nt-robust train --config experiments/quick_fmnist.toml --cpu-devices 2   # one XLA device per core
    nt-robust info
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from nt_robust.config import ConfigError, load_config
from nt_robust.environment import configure_xla_cpu, enable_compilation_cache, set_cpu_devices


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING)
    ours = logging.getLogger("nt_robust")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every file it writes at INFO
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nt-robust", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    cpu = argparse.ArgumentParser(add_help=False)
    cpu.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                     help="split the CPU into N XLA devices and shard training batches over them (one per "
                          "core is fastest for conv nets; default $NT_ROBUST_CPU_DEVICES, else 1)")

    train = commands.add_parser("train", help="train (or resume) one run", parents=[cpu])
    train.add_argument("--config", help="TOML file (see experiments/); defaults if omitted")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set objective.lam=12 (repeatable)")
    train.add_argument("--run-dir", help="run directory (default: runs/<name>)")
    train.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    dist = train.add_argument_group("multi-process (hosts) training")
    dist.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (auto-detects TPU pods, SLURM, ...)")
    dist.add_argument("--coordinator", help="host:port of process 0 (explicit cluster)")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)
    dist.add_argument("--cpu-collectives", choices=["gloo", "mpi"], help="cross-process collectives on CPU")

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint with an attack", parents=[cpu])
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", default="best_test", choices=["best_test", "best_val", "latest"])
    evaluate.add_argument("--attack", default=None,
                          help="preset: pgd20, pgd20-0.003, cw20, fgsm (default: the run's eval.attack)")
    evaluate.add_argument("--split", default="test", choices=["test", "val"])
    evaluate.add_argument("--examples", type=int, default=None, help="first N examples (default: all)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override eval settings, e.g. --set eval.attack.restarts=5")
    evaluate.add_argument("--protocol", default=None,
                          help="named protocol: autoattack-standard, autoattack-2020, pgd20-0.007, pgd20-0.003, "
                               "cw20 (resumable; results in RUN_DIR/eval/<checkpoint>_<split>_<protocol>_eps<eps>.json)")
    evaluate.add_argument("--eps", type=float, default=None, help="override epsilon (default: the run's eval.attack.eps)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="protocol batch size (default: eval.batch_size)")

    study = commands.add_parser("study", help="width × λ sweeps: run, list, estimate, report", parents=[cpu])
    study.add_argument("spec", help="study spec TOML (see experiments/study_*.toml)")
    study.add_argument("--list", action="store_true", help="list the runs with their index and status")
    study.add_argument("--index", type=int, help="run only this run (a cluster job array's task id)")
    study.add_argument("--stage", choices=["grid", "war", "attacks"],
                       help="run only this stage (attacks: the spec's [attack_check], after grid and war)")
    study.add_argument("--estimate", action="store_true", help="time a few steps per width, print the cost, stop")
    study.add_argument("--no-estimate", action="store_true", help="skip the cost estimate before running")
    study.add_argument("--report", action="store_true", help="only aggregate, draw figures and write the report")
    study.add_argument("--runs-root", help="where run directories go (default runs/studies/<name>)")
    study.add_argument("--figures-dir", help="where figures and report.md go (default figures/<name>)")

    commands.add_parser("info", help="versions and devices", parents=[cpu])
    return parser


def _train(args: argparse.Namespace) -> int:
    from nt_robust.train import ExperimentConfig
    from nt_robust.config import to_dict

    config = load_config(ExperimentConfig, args.config, args.overrides)
    if args.dry_run:
        print(json.dumps(to_dict(config), indent=2))
        return 0
    if args.distributed or args.coordinator:
        from nt_robust.train.sharding import initialize_distributed
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.cpu_collectives)
    else:
        from nt_robust.train.sharding import initialize_distributed_from_env
        initialize_distributed_from_env()
    from nt_robust.studies.tables import format_run_table
    from nt_robust.train import train

    summary = train(config, args.run_dir or Path("runs") / config.name)
    print(format_run_table([summary]))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nt_robust.train.evaluate_run import evaluate_run

    result = evaluate_run(args.run_dir, checkpoint=args.checkpoint, attack=args.attack, split=args.split,
                          examples=args.examples, overrides=args.overrides, progress=True,
                          protocol=args.protocol, eps=args.eps, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def _study(args: argparse.Namespace) -> int:
    from nt_robust.studies.pipeline import build_report, estimate_cost, format_estimate, run_study, study_summary
    from nt_robust.studies.sweep import load_study, run_index
    from nt_robust.studies.tables import format_table

    study = load_study(args.spec, args.runs_root)
    if args.list:
        rows = [[r.index, r.stage, r.name, "finished" if study.is_finished(r) else
                 ("started" if study.run_dir(r).exists() else "pending")] for r in study.runs()]
        print(format_table(["index", "stage", "run", "status"], rows))
        return 0
    if args.index is not None:
        run_index(study, args.index)
        return 0
    if args.estimate or not (args.report or args.no_estimate or args.stage == "attacks"):
        print(format_estimate(estimate_cost(study)), flush=True)
        if args.estimate:
            return 0
    if not args.report:
        run_study(study, args.stage)
    report = build_report(study, args.figures_dir)
    print(study_summary(study))
    print(f"report: {report}")
    return 0


def _info() -> int:
    from nt_robust.environment import environment_info

    print(json.dumps(environment_info(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        set_cpu_devices(args.cpu_devices)  # both before anything starts the backend
        configure_xla_cpu()                # (info too, so that it shows the flags train uses)
        if args.command != "info":
            enable_compilation_cache()
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "study":
            return _study(args)
        return _info()
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as error:
        # Our errors say what went wrong and how to fix it; a traceback only with -v.
        if args.verbose:
            raise
        print(f"nt-robust: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

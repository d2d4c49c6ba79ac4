"""nt-robust: a thin command line over the library (``nt-robust -h``; the parser is
:mod:`nt_robust.cli_parser`). Each command is a handler in ``COMMANDS`` that parses, calls
the library and prints::

    nt-robust train --config experiments/quick_fmnist.toml --set objective.lam=12
    nt-robust eval runs/quick_fmnist --attack cw20          # at the run's eps, best_val checkpoint
    nt-robust compare runs/quick_fmnist runs/other
    nt-robust study experiments/study_quick_fmnist.toml
    nt-robust info

    main(["compare", "runs/quick_fmnist"])   # the same from Python: returns the exit status

Every command first sets up logging, the CPU devices and XLA's flags (before anything starts
JAX's backend); every error ends in :func:`_report_error` (exit status 2, no traceback unless
-v or NT_ROBUST_DEBUG=1); Ctrl-C exits 130 and SIGTERM 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from nt_robust.cli_parser import build_parser, unknown_arguments_message
from nt_robust.config import ConfigError, load_config, toml_kind
from nt_robust.gpu_check import check_gpu_used
from nt_robust.topology import describe_topology

# Nothing here imports JAX at module level: `nt-robust -h` and `--version` answer without it
# (tests/test_cli_startup.py); every command imports what it needs.

log = logging.getLogger("nt_robust.cli")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not to the stream it was
    created with: a caller of :func:`main` in its own process (a notebook, a test capturing
    output) may replace and close that stream, and every later record would fail on it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING)
    ours = logging.getLogger("nt_robust")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every file it writes at INFO
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:  # and each failure of its worker threads with a traceback; our error names the cause
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Future exception was never retrieved": the same
        _quiet_cancelled_writes()


def _quiet_cancelled_writes() -> None:
    """After a failed save (a full disk), TensorStore's callbacks of the writes it cancelled
    find orbax's event loop closed and print ``RuntimeError: Event loop is closed`` (through
    sys.excepthook, from its own threads), a dozen tracebacks after our message. Those say
    nothing: they are dropped (-v shows them); every other error is reported as usual."""
    def cancelled(value: BaseException | None) -> bool:
        return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)

    previous_excepthook, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, traceback) -> None:
        if not cancelled(value):
            previous_excepthook(kind, value, traceback)

    def unraisablehook(unraisable) -> None:
        if not cancelled(unraisable.exc_value):
            previous_unraisable(unraisable)

    if not getattr(previous_excepthook, "nt_robust_quiet", False):  # once per process
        excepthook.nt_robust_quiet = True
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _exit_even_if_threads_linger(code: int, grace_seconds: float = 3.0) -> None:
    """A failed command must end: library threads that outlive an error (orbax's commit
    threads wait up to 300 s for each other) would keep the interpreter alive, so a daemon
    timer ends the process after ``grace_seconds`` if they are still there."""
    import os
    import threading

    if any(not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        def end() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

        timer = threading.Timer(grace_seconds, end)
        timer.daemon = True
        timer.start()


def _kind(path: Path) -> str | None:
    """"study" (a study spec), "train" (an experiment config) or None, from its top-level keys."""
    from nt_robust.studies.sweep import STUDY_KEYS
    from nt_robust.train import ExperimentConfig

    return toml_kind(path, {"study": STUDY_KEYS, "train": [f.name for f in dataclasses.fields(ExperimentConfig)]})


def _train(args: argparse.Namespace) -> int:
    from nt_robust.config import to_dict
    from nt_robust.train import ExperimentConfig, RunConfigMismatchError
    from nt_robust.train.config import config_warnings
    from nt_robust.train.extend import annotate_summary, extend_run, resume_config
    from nt_robust.train.memory_budget import check_memory

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.run is not None:
        target = Path(args.run)
        if target.is_file() or target.suffix == ".toml":
            if _kind(target) == "study":
                raise ConfigError(f"{target} is a study spec, not a run directory: did you mean "
                                  f"`nt-robust study {target}`?")
            raise ConfigError(f"{target} is a config file, not a run directory: did you mean "
                              f"`nt-robust train --config {target}`?")
        if args.config or args.run_dir:
            raise ConfigError(f"give either a run directory ({target}) or --config / --run-dir, not both")
        run_dir = target
        if args.extend_epochs is not None:
            config = extend_run(target, args.extend_epochs, args.overrides, dry_run=args.dry_run)
        else:
            config = resume_config(target, args.overrides)
    elif args.extend_epochs is not None:
        raise ConfigError("--extend-epochs needs the run directory: `nt-robust train RUN_DIR --extend-epochs N`")
    else:  # as cli_devices.models_to_train loaded it to choose the CPU devices, if it did
        config = getattr(args, "loaded_config", None) or load_config(ExperimentConfig, args.config, args.overrides)
    for warning in config_warnings(config):
        print(f"nt-robust: warning: {warning}", file=sys.stderr, flush=True)
    layout = describe_topology(config, args)  # --topology / --hosts with --dry-run: the run laid out there
    if args.dry_run:
        print(layout or check_memory(config, args.no_memory_check, dry_run=True), file=sys.stderr, flush=True)
        print(json.dumps(to_dict(config), indent=2))
        return 0
    from nt_robust.train.sharding import initialize_distributed, initialize_distributed_from_env

    if args.distributed or args.coordinator:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.cpu_collectives)
    else:
        initialize_distributed_from_env()
    log.info(check_memory(config, args.no_memory_check))
    from nt_robust.studies.tables import format_run_table
    from nt_robust.train import train

    run_dir = run_dir or Path("runs") / config.name
    try:
        summary = train(config, run_dir)
    except RunConfigMismatchError as error:
        if "train.epochs:" not in str(error):
            raise
        raise RunConfigMismatchError(
            f"{error} To train a finished run for more epochs, extend it explicitly: `nt-robust train {run_dir} "
            "--extend-epochs N` (piecewise and constant schedules; recorded in RUN_DIR/extensions.json).") from None
    print(format_run_table([annotate_summary(run_dir, summary)]))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nt_robust.evaluate import describe_result, evaluate_run

    if args.readings:
        from nt_robust.train.readings import fill_readings, missing_readings

        missing = missing_readings(args.run_dir)
        written = fill_readings(args.run_dir)
        print(f"{args.run_dir}: " + (f"computed {', '.join(f'{r}_{s}' for r, s in missing)} ({len(written)} files)"
                                     if written else "both readings (final, best_val) already stored"))
        return 0
    result = evaluate_run(args.run_dir, checkpoint=args.checkpoint, attack=args.attack, split=args.split,
                          examples=args.examples, overrides=args.overrides, progress=True,
                          protocol=args.protocol, eps=args.eps, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    print(describe_result(result), file=sys.stderr, flush=True)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from nt_robust.studies.tables import compare_runs

    print(compare_runs(args.runs, args.split))
    return 0


def _plot(args: argparse.Namespace) -> int:
    if args.out is None and len(args.runs) > 1:
        raise ConfigError("several runs: say where the figure goes with --out FILE.png")
    from nt_robust.studies.figures import plot_runs

    out = Path(args.out) if args.out else Path(args.runs[0]) / "curves.png"
    print(plot_runs(args.runs, out, args.split))
    return 0


def _study(args: argparse.Namespace) -> int:
    from nt_robust.studies.cost import estimate_cost, format_estimate
    from nt_robust.studies.pieces import check_piece, format_pieces, run_piece
    from nt_robust.studies.pipeline import build_report, run_study, study_summary
    from nt_robust.studies.sweep import load_study, run_index
    from nt_robust.studies.tables import format_table

    spec = Path(args.spec)
    if spec.is_dir():
        raise ConfigError(f"{spec} is a directory, not a study spec"
                          + (f": for a run, try `nt-robust compare {spec}` or `nt-robust plot {spec}`"
                             if (spec / "config.json").exists() else " (see experiments/study_*.toml)"))
    if _kind(spec) == "train":
        raise ConfigError(f"{spec} is a training config, not a study spec: did you mean `nt-robust train --config "
                          f"{spec}`? (a study spec names a base_config and a [grid]; see experiments/study_*.toml)")
    study = getattr(args, "loaded_study", None) or load_study(spec, args.runs_root)  # see cli_devices
    if args.emit:
        from nt_robust.studies.cluster import emit_from_args

        print(emit_from_args(study, args), end="")
        return 0
    if args.distributed:  # a multi-host run (the jobs --emit writes for --nodes N, TPU slices)
        from nt_robust.train.sharding import initialize_distributed
        initialize_distributed()
    if args.list:
        rows = [[r.index, r.stage, r.name, "finished" if study.is_finished(r) else
                 ("started" if study.run_dir(r).exists() else "pending")] for r in study.runs()]
        print(format_table(["index", "stage", "run", "status"], rows))
        return 0
    if args.index is not None:
        run_index(study, args.index)
        return 0
    check_piece(args.pieces, args.piece, need_piece=not args.estimate)
    if args.estimate or not (args.report or args.no_estimate or args.stage == "attacks"):
        estimates = estimate_cost(study, device=args.device, mfu=args.mfu)
        print(format_estimate(estimates), flush=True)
        if args.pieces:
            print(format_pieces(study, args.pieces, estimates), flush=True)
        if args.estimate:
            return 0
    if args.piece is not None:
        skipped = run_piece(study, args.pieces, args.piece, (args.stage,) if args.stage else None)
        if skipped:
            print(f"piece {args.piece} of {args.pieces}: "
                  + "; ".join(f"{len(names)} run(s) {what}: {', '.join(names)}" for what, names in skipped.items()))
            return 1
        left = [r.name for r in study.runs() if r.stage != "attacks" and not study.is_finished(r)]
        if left:
            print(f"piece {args.piece} of {args.pieces} finished; {len(left)} runs of {study.name} are not "
                  "(the report follows once every piece has run, or ask for it with --report)")
            return 0
    if not args.report:
        run_study(study, args.stage)
    report = build_report(study, args.figures_dir)
    print(study_summary(study))
    print(f"report: {report}")
    return 0


def _map(args: argparse.Namespace) -> int:
    from nt_robust import storage
    from nt_robust.studies.map_report import render_results_block, replace_block
    from nt_robust.studies.regime_map import build_map, load_regime, write_map
    from nt_robust.studies.sweep import load_study

    if args.from_json:
        if args.specs:
            raise ConfigError("give study specs or --from-json MAP_JSON, not both")
        if not args.results_doc:
            raise ConfigError("--from-json only rewrites a document: add --results-doc docs/results.md")
        doc = Path(args.results_doc)
        storage.write_text(doc, replace_block(doc.read_text(), render_results_block(storage.read_json(Path(args.from_json)))))
        print(f"rewrote the generated block of {doc} from {args.from_json}")
        return 0
    if not args.specs:
        raise ConfigError("nt-robust map needs study specs (experiments/regime_*.toml) or --from-json MAP_JSON")
    # A pattern the shell did not expand (quoted, or no shell) is expanded here.
    specs = [Path(p) for s in args.specs for p in (sorted(glob.glob(s)) if glob.has_magic(s) and not Path(s).exists()
                                                   else [s])]
    if not specs:
        raise ConfigError(f"no study spec matches {' '.join(args.specs)}")
    not_studies = [str(s) for s in specs if s.exists() and _kind(s) != "study"]
    if not_studies:
        raise ConfigError(f"not study specs: {', '.join(not_studies)} (the map reads study specs such as "
                          "experiments/regime_*.toml)")
    regimes = [load_regime(load_study(spec, runs_parent=args.runs_root)) for spec in specs]
    if len({r.name for r in regimes}) != len(regimes):
        raise ConfigError("two specs name the same study: give each regime once")
    result = build_map(regimes)
    paths = write_map(result, Path(args.out))
    if args.results_doc:
        doc = Path(args.results_doc)
        storage.write_text(doc, replace_block(doc.read_text(), render_results_block(result)))
    for regime in result["regimes"]:
        print(f"{regime['label']:<32} {regime['status']:<9} {regime['runs_finished']}/{regime['runs_total']} runs")
    print(f"map: {paths[1]}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from nt_robust.export import export_run

    if args.format == "torchscript":
        from nt_robust.export.torchscript import export_torchscript

        result = export_torchscript(args.run_dir, args.checkpoint, args.out, dry_run=args.dry_run)
        print(f"wrote {result['torchscript']}: TorchScript (torch.jit.load; NCHW input in [0, 1]), logits match ours "
              f"to {result['max_logit_difference']:.2g}")
        return 0
    result = export_run(args.run_dir, checkpoint=args.checkpoint, format=args.format, out=args.out,
                        dry_run=args.dry_run, allow_few_points=args.allow_few_points)
    info, details = result["info"], result["details"]
    match = ("" if result["max_logit_difference"] is None
             else f"; logits match ours to {result['max_logit_difference']:.2g}")
    print(f"{'would write' if args.dry_run else 'wrote'} {result['state_dict']}: {len(result['keys'])} tensors, "
          f"{result['format']} layout, checkpoint {args.checkpoint} ({details['checkpoint_selection']})"
          f"{match}")
    print(f"{result['model_info']}: {details['threat_model']} eps {info['eps']}, clean_acc {info['clean_acc'] or '-'}, "
          f"autoattack_acc {info['autoattack_acc'] or '- (no autoattack-standard evaluation on >= 1000 points)'} "
          f"on {details['num_examples']} points")
    return 0


def _import(args: argparse.Namespace) -> int:
    from nt_robust.export.importer import import_state_dict

    result = import_state_dict(args.source, args.out, dataset=args.dataset, eps=args.eps, norm=args.norm,
                               layout=args.layout, depth=args.depth, width=args.width, overrides=args.overrides)
    print(f"imported {args.source} (sha256 {result['sha256'][:12]}..., {result['layout']} layout, "
          f"{'DMWideResNet' if result['layout'] == 'dm_wide_resnet' else 'WideResNet'}-{result['depth']}-"
          f"{result['width']}, {result['num_classes']} classes) into {args.out}; "
          f"evaluate it with `nt-robust eval {args.out}`")
    return 0


def _study_imported(args: argparse.Namespace) -> int:
    from nt_robust.studies.imported import imported_study_command

    return imported_study_command(args)


def _info(args: argparse.Namespace) -> int:
    from nt_robust.environment import environment_info

    print(json.dumps(environment_info(), indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train, "eval": _eval, "study": _study, "map": _map, "compare": _compare, "plot": _plot,
    "export": _export, "import": _import, "study-imported": _study_imported, "info": _info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nt-robust`` with ``argv`` (default: the command line); returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.command]
        command.error(unknown_arguments_message(extra, command, args.command,
                                                sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose)
    try:
        from nt_robust.cli_devices import set_cpu_devices_for
        from nt_robust.cpu.malloc import tune_malloc
        from nt_robust.cpu.setup import configure_xla_cpu
        from nt_robust.environment import enable_compilation_cache
        from nt_robust.signals import raise_terminated

        if argv is None:
            tune_malloc()       # before XLA's threads exist (nt_robust.cpu.malloc)
            signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM stops like Ctrl-C (nt_robust.signals)
        set_cpu_devices_for(args, own_process=argv is None)  # both before anything starts the backend
        configure_xla_cpu()     # (info too, so that it shows the flags train uses)
        if args.command != "info":
            enable_compilation_cache()
        check_gpu_used(args)    # an NVIDIA GPU visible but JAX on the CPU: refused without --allow-cpu
        return COMMANDS[args.command](args)
    except Exception as error:  # noqa: BLE001 - the one CLI error handler (see _report_error)
        return _report_error(error, args.verbose, own_process=argv is None)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: training says where it resumes from
        signum = getattr(interrupt, "signum", signal.SIGINT)
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"nt-robust: {what}{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr, flush=True)
        code = 128 + int(signum)  # 130 after Ctrl-C, 143 after SIGTERM: what a shell reports for either
        if argv is None:
            _exit_even_if_threads_linger(code)
        return code


DEBUG_ENV = "NT_ROBUST_DEBUG"


def _report_error(error: Exception, verbose: bool, own_process: bool) -> int:
    """Every failed command ends here: ``nt-robust: error: <type>: <message>`` on stderr and
    exit status 2, never a traceback, unless -v or NT_ROBUST_DEBUG=1 asks for one. Our errors
    name the file or field and the fix; anything else (a bug) says how to see its traceback."""
    import os
    import traceback

    debug = verbose or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    if debug:
        traceback.print_exception(error)
    ours = isinstance(error, (ConfigError, OSError, ValueError, RuntimeError, ArithmeticError, KeyError))
    message = f"nt-robust: error: {type(error).__name__}: {error}"
    if not ours and not debug:
        message += f" (unexpected; rerun with -v or {DEBUG_ENV}=1 for the traceback, and please report it)"
    print(message, file=sys.stderr, flush=True)
    if own_process:  # the command line, not a caller in this process
        _exit_even_if_threads_linger(2)
    return 2


if __name__ == "__main__":
    sys.exit(main())

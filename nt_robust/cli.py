"""nt-robust: a thin command line over the library.

    nt-robust train --config experiments/quick_fmnist.toml --set objective.lam=12
    nt-robust eval runs/quick_fmnist --attack cw20          # at the run's eps, best_val checkpoint
    nt-robust eval runs/quick_fmnist --protocol autoattack-standard
    nt-robust compare runs/quick_fmnist runs/other
    nt-robust plot runs/quick_fmnist --out curves.png
    nt-robust study experiments/study_quick_fmnist.toml
    nt-robust export runs/quick_fmnist                     # PyTorch state_dict + model_info
    nt-robust train --config experiments/quick_fmnist.toml --cpu-devices 2   # one XLA device per core
    nt-robust info
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

from nt_robust.config import ConfigError, load_config

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


EXAMPLES = {
    "train": """examples:
  nt-robust train --config experiments/quick_fmnist.toml
  nt-robust train --config experiments/quick_fmnist.toml --set objective.lam=12 --set model.width=64
  nt-robust train --config experiments/quick_fmnist.toml --dry-run      # check config, size and memory
  nt-robust train runs/quick_fmnist                      # resume an interrupted run with its own config
  nt-robust train runs/quick_fmnist --extend-epochs 5    # 5 more epochs for a finished run (recorded)

Any config field is set with --set SECTION.FIELD=VALUE (see nt_robust/train/config.py).""",
    "eval": """examples:
  nt-robust eval runs/quick_fmnist                              # the run's own attack, at its eps
  nt-robust eval runs/quick_fmnist --attack cw20 --examples 500  # a preset, at the run's eps
  nt-robust eval runs/quick_fmnist --protocol autoattack-standard --eps 0.05
  nt-robust eval runs/quick_fmnist --attack pgd20 --set eval.attack.restarts=5 --checkpoint best_test

eps and the norm are the run's eval.attack.eps and .norm for every attack, preset and protocol
unless --eps (or --set eval.attack.eps=... / eval.attack.norm=...) says otherwise; a preset or
protocol not defined for that norm is refused. The norm, eps and the checkpoint's selection rule
are printed (stderr) and recorded. Results: RUN_DIR/eval/<checkpoint>_<split>_<name>_eps<eps>_n<N>.json""",
    "study": """examples:
  nt-robust study experiments/study_quick_fmnist.toml --estimate   # cost per width, then stop
  nt-robust study experiments/study_quick_fmnist.toml              # run everything, then report
  nt-robust study experiments/study_quick_fmnist.toml --list       # runs and their status
  nt-robust study experiments/study_quick_fmnist.toml --emit slurm --partition gpu --gpus-per-task 1 > submit.sh
  nt-robust study experiments/study_quick_fmnist.toml --emit k8s --gpus-per-task 1 > study.yaml""",
    "map": """examples:
  nt-robust map experiments/regime_*.toml                        # figures/regime_map/ (map.md, map.json, figures)
  nt-robust map experiments/regime_mlp_n1000.toml experiments/study_quick_fmnist.toml --out figures/my_map
  nt-robust map experiments/regime_*.toml --results-doc docs/results.md   # + its generated claim table
  nt-robust map --from-json figures/regime_map/map.json --results-doc docs/results.md   # the table only

Reads the finished runs of every study spec (its runs_root, or runs/studies/<name>), never trains;
a regime with unfinished runs is drawn from what has finished and marked partial.""",
    "compare": """examples:
  nt-robust compare runs/quick_fmnist
  nt-robust compare runs/studies/quick_fmnist/*                    # every run of a study
  nt-robust compare runs/a runs/b --split val""",
    "plot": """examples:
  nt-robust plot runs/quick_fmnist                        # writes runs/quick_fmnist/curves.png
  nt-robust plot runs/a runs/b --out figures/a_vs_b.png
  nt-robust plot runs/quick_fmnist --split val --out val.png""",
    "import": """examples:
  nt-robust import Carmon2019Unlabeled.pt runs/imported/carmon           # RobustBench zoo file, CIFAR-10, 8/255
  nt-robust import wrn.pt runs/imported/wrn --dataset cifar100 --eps 0.5 --norm l2
  nt-robust eval runs/imported/carmon --protocol autoattack-standard --examples 1000""",
    "export": """examples:
  nt-robust export runs/wrn                      # RUN/export/best_val_robustbench.pt (+ .json model_info)
  nt-robust export runs/wrn --checkpoint best_test --out wrn.pt
  nt-robust export runs/quick_fmnist --format torch     # MLP / SmallCNN: their own layout
  nt-robust export runs/wrn --dry-run            # check the checkpoint and the layout, write nothing

Tensor-only state_dict: torch.load(path, weights_only=True). WideResNets default to RobustBench's
WideResNet layout (load_state_dict(sd, strict=True)); the MLP and SmallCNN to their own (format
torch). Needs torch (pip install -e ".[torch]").""",
    "info": """examples:
  nt-robust info
  nt-robust info --cpu-devices 2""",
}
CHECKPOINT_HELP = ("which checkpoint: best_val (default; the epoch with the highest validation robust accuracy), "
                   "best_test (highest test robust accuracy: the paper's protocol, optimistic when evaluated on "
                   "test) or latest")


class _Parser(argparse.ArgumentParser):
    """No prefix matching of long options (``--dry`` is not ``--dry-run``), examples verbatim."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def _exact_number(text: str) -> float:
    """--eps: a number or an exact fraction ("8/255"), kept with its text."""
    from nt_robust.config import parse_exact
    try:
        return parse_exact(text, "--eps")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("nt_robust")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from nt_robust import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nt-robust", description=__doc__.split("\n")[0],
                     epilog="examples:\n" + "\n".join("  " + line.strip() for line in __doc__.splitlines()[2:]
                                                     if line.strip()))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"nt-robust {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpu = _Parser(add_help=False)
    cpu.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                     help="split the CPU into N XLA devices and shard training batches over them (default "
                          "$NT_ROBUST_CPU_DEVICES, else for train and study one per core when every run is a "
                          "conv net, else 1; a resumed run keeps its count)")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=EXAMPLES[name], **kwargs)

    train = command("train", "train (or resume, or extend) one run", parents=[cpu])
    train.add_argument("run", nargs="?", metavar="RUN_DIR",
                       help="an existing run directory: resume it with its own config (instead of --config)")
    train.add_argument("--config", help="TOML file (see experiments/); defaults if omitted")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set objective.lam=12 (repeatable)")
    train.add_argument("--run-dir", help="run directory (default: runs/<name>)")
    train.add_argument("--dry-run", action="store_true",
                       help="validate, estimate parameters and memory, print the resolved config, then stop")
    train.add_argument("--extend-epochs", type=int, metavar="N",
                       help="train the finished run RUN_DIR for N more epochs (piecewise or constant learning "
                            "rate schedules only; recorded in RUN_DIR/extensions.json)")
    train.add_argument("--no-memory-check", action="store_true",
                       help="train even when the memory estimate exceeds the memory available")
    dist = train.add_argument_group("multi-process (hosts) training")
    dist.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() (auto-detects TPU pods, SLURM, ...)")
    dist.add_argument("--coordinator", help="host:port of process 0 (explicit cluster)")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)
    dist.add_argument("--cpu-collectives", choices=["gloo", "mpi"], help="cross-process collectives on CPU")

    evaluate = command("eval", "evaluate a run's checkpoint with an attack or a protocol", parents=[cpu])
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--checkpoint", default="best_val", choices=["best_val", "best_test", "latest"],
                          help=CHECKPOINT_HELP)
    evaluate.add_argument("--attack", default=None,
                          help="preset at the run's eps and norm: pgd20, cw20 (20 steps of eps/4), fgsm (step eps); "
                               "the published absolute l-inf steps: pgd20-paper, pgd20-0.003, cw20-paper, "
                               "trades-train (default: the run's eval.attack); --set eval.attack.FIELD=... applies "
                               "on top")
    evaluate.add_argument("--readings", action="store_true",
                          help="only compute the final and best_val readings (eval/final_*.npz, eval/best_val_*.npz) "
                               "a finished run lacks, from its checkpoints, as training evaluates (no retraining)")
    evaluate.add_argument("--split", default="test", choices=["test", "val"])
    evaluate.add_argument("--examples", type=int, default=None,
                          help="first N examples (default: all; more than the split has is clipped, with a warning)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override eval settings, e.g. --set eval.attack.restarts=5; one that cannot take "
                               "effect is refused")
    evaluate.add_argument("--protocol", default=None,
                          help="named protocol, at the run's eps and norm (resumable): l-inf and l2: apgd, pgd20; "
                               "l-inf only: autoattack-standard, autoattack-2020, pgd20-0.007, pgd20-0.003, cw20, "
                               "cw20-authors")
    evaluate.add_argument("--eps", type=_exact_number, default=None,
                          help="override epsilon, a number or an exact fraction such as 8/255 (default: the run's "
                               "eval.attack.eps)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: eval.batch_size)")

    study = command("study", "width × λ sweeps: run, list, estimate, report", parents=[cpu])
    study.add_argument("spec", help="study spec TOML (see experiments/study_*.toml)")
    study.add_argument("--list", action="store_true", help="list the runs with their index and status")
    study.add_argument("--index", type=int, help="run only this run (a cluster job array's task id)")
    study.add_argument("--pieces", type=int, metavar="K",
                       help="split the runs round-robin into K pieces (with K = the number of seeds a piece is a "
                            "seed); with --estimate, print each piece's cost")
    study.add_argument("--piece", type=int, metavar="I", help="run only piece I of --pieces K (0 <= I < K)")
    study.add_argument("--stage", choices=["grid", "war", "attacks"],
                       help="run only this stage (attacks: the spec's [attack_check], after grid and war)")
    study.add_argument("--estimate", action="store_true", help="time a few steps per width, print the cost, stop")
    study.add_argument("--no-estimate", action="store_true", help="skip the cost estimate before running")
    study.add_argument("--device", default=None,
                       help="estimate for this accelerator from FLOPs and its peak (h100, h200, a100, v100, tpu-v4, "
                            "tpu-v5e, tpu-v5p; nt_robust/flops.py) instead of timing this machine")
    study.add_argument("--mfu", type=float, default=0.4, help="with --device: the utilization assumed (default 0.4)")
    study.add_argument("--report", action="store_true", help="only aggregate, draw figures and write the report")
    study.add_argument("--runs-root", help="where run directories go (default runs/studies/<name>)")
    study.add_argument("--figures-dir", help="where figures and report.md go (default figures/<name>)")
    cluster = study.add_argument_group("cluster jobs (--emit; see nt_robust/studies/cluster.py)")
    cluster.add_argument("--emit", choices=["slurm", "k8s"],
                         help="print a Slurm submission script (job arrays: grid, then WAR afterok, then report) "
                              "or a Kubernetes Indexed Job manifest, and stop")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-task", type=int, metavar="N", help="GPUs per run")
    cluster.add_argument("--cpus-per-task", type=int, metavar="N", help="CPU cores per run")
    cluster.add_argument("--time", metavar="HH:MM:SS", help="time limit per run")
    cluster.add_argument("--mem", metavar="M", help="memory per run, e.g. 32G")
    cluster.add_argument("--image", default="python:3.11", help="k8s: container image with the environment")
    cluster.add_argument("--volume-claim", metavar="PVC",
                         help="k8s: PersistentVolumeClaim holding the repository, data and runs")

    regime_map = command("map", "the regime map: slopes vs log width and claim verdicts across studies")
    regime_map.add_argument("specs", nargs="*", metavar="SPEC", help="study specs (experiments/regime_*.toml, ...)")
    regime_map.add_argument("--results-doc", metavar="MD",
                            help="also rewrite the generated block of this Markdown file (docs/results.md) from map.json")
    regime_map.add_argument("--from-json", metavar="MAP_JSON",
                            help="read this map.json instead of the specs' runs (with --results-doc: no runs needed)")
    regime_map.add_argument("--out", default="figures/regime_map", help="output folder (default figures/regime_map)")
    regime_map.add_argument("--runs-root", metavar="DIR",
                            help="read each study's runs from DIR/<study name> (default: the spec's own runs_root)")

    compare = command("compare", "table of runs: every checkpoint rule, and their evaluations")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--split", default="test", choices=["test", "val"], help="metrics of this split")

    plot = command("plot", "per-epoch curves of one or more runs, as an image")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="image file, .png or .pdf (default RUN_DIR/curves.png; needed for several runs)")
    plot.add_argument("--split", default="test", choices=["test", "val"], help="metrics of this split")

    export = command("export", "a run's checkpoint as a PyTorch state_dict and a RobustBench model_info JSON")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--checkpoint", default="best_val", choices=["best_val", "best_test", "latest"],
                        help=CHECKPOINT_HELP)
    export.add_argument("--format", choices=["robustbench", "torch", "torchscript"], default=None,
                        help="key layout: robustbench (RobustBench's WideResNet; the default for a WideResNet) "
                             "or torch (our exported module's; the default for the MLP and SmallCNN); torchscript: "
                             "a TorchScript file that loads without any class (torch.jit.load)")
    export.add_argument("--out", help="the .pt file (default RUN_DIR/export/<checkpoint>_<format>.pt); "
                                      "model_info goes next to it as .json")
    export.add_argument("--allow-few-points", action="store_true",
                        help="fill autoattack_acc from an autoattack-standard result on fewer than 1000 points")
    export.add_argument("--dry-run", action="store_true",
                        help="restore the checkpoint, check the layout, print what would be written, write nothing")

    imports = command("import", "a PyTorch WideResNet state_dict (RobustBench's layout or our export) as an "
                                "evaluation-ready directory")
    imports.add_argument("source", metavar="STATE_DICT", help="the .pt file (torch.save of a state_dict)")
    imports.add_argument("out", metavar="OUT_DIR", help="the directory to write (new or empty); then "
                                                        "`nt-robust eval OUT_DIR` as for a trained run")
    imports.add_argument("--dataset", default="cifar10", help="the dataset it was trained on (default cifar10)")
    imports.add_argument("--eps", default="8/255", help="eval.attack.eps, a number or a fraction (default 8/255)")
    imports.add_argument("--norm", default="linf", choices=["linf", "l2"], help="eval.attack.norm (default linf)")
    imports.add_argument("--layout", choices=["robustbench", "torch"], default=None,
                         help="key layout (default: detected; torch = with mean/std buffers)")
    imports.add_argument("--depth", type=int, default=None, help="check the depth (default: read from the keys)")
    imports.add_argument("--width", type=int, default=None, help="check the width (default: read from the shapes)")
    imports.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="more config settings for the directory, e.g. --set eval.batch_size=128")

    __import__("nt_robust.studies.imported", fromlist=["_"]).add_imported_study_command(commands)
    command("info", "versions and devices", parents=[cpu])
    parser.commands = commands.choices  # for suggestions on unknown options
    return parser


def _config_fields() -> list[str]:
    """Every config field, dotted (``train.epochs``, ``eval.attack.eps``, ...)."""
    import dataclasses
    from nt_robust.train import ExperimentConfig

    def walk(instance: Any, prefix: str) -> list[str]:
        found = []
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            path = f"{prefix}{f.name}"
            found += walk(value, path + ".") if dataclasses.is_dataclass(value) else [path]
        return found
    return walk(ExperimentConfig(), "")


def _suggestion(flag: str, value: str | None, parser: argparse.ArgumentParser, command: str) -> str | None:
    """The closest option of ``parser`` to unknown ``flag``, else the config field it names."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    name = flag.split("=", 1)[0]
    normal = "--" + name.lstrip("-").replace("_", "-").lower()
    if normal in options:
        return normal
    close = difflib.get_close_matches(normal, options, n=1, cutoff=0.8)
    if close:
        return close[0]
    if command not in ("train", "eval"):
        return None
    key = name.lstrip("-").replace("-", "_").lower()
    fields = [f for f in _config_fields() if command == "train" or f.startswith("eval.")]
    matches = [f for f in fields if f == key or f.rsplit(".", 1)[-1] == key]
    if not matches:
        leaves = {f.rsplit(".", 1)[-1]: f for f in fields}
        matches = [leaves[m] for m in difflib.get_close_matches(key, leaves, n=1, cutoff=0.8)]
    if not matches:
        close = difflib.get_close_matches(normal, options, n=1, cutoff=0.6)
        return close[0] if close else None
    shown = value if value is not None else "VALUE"
    return " or ".join(f"--set {m}={shown}" for m in matches)


def _unknown_arguments_message(extra: list[str], parser: argparse.ArgumentParser, command: str,
                               argv: Sequence[str]) -> str:
    hints = []
    argv = list(argv)
    for token in extra:
        if not token.startswith("-"):
            continue
        after = argv[argv.index(token) + 1] if token in argv and argv.index(token) + 1 < len(argv) else None
        value = token.split("=", 1)[1] if "=" in token else (
            after if after is not None and not after.startswith("-") else None)
        suggestion = _suggestion(token, value, parser, command)
        if suggestion:
            hints.append(f"{token.split('=', 1)[0]}: did you mean {suggestion}?")
    return f"unrecognized arguments: {' '.join(extra)}" + "".join(f"\n  {h}" for h in hints)


def _toml_kind(path: Path) -> str | None:
    """"study" (a study spec), "train" (an experiment config) or None, from its top-level keys."""
    import dataclasses
    from nt_robust.train import ExperimentConfig

    try:
        with open(path, "rb") as handle:
            keys = set(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if keys & {"grid", "base_config", "runs_root", "seeds", "set", "attack_check"}:
        return "study"
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)}
    if keys and keys <= sections and keys - {"name"}:
        return "train"
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def _available_memory() -> tuple[int | None, str, bool]:
    """(bytes free for one run, where, whether model replicas share it): the host's available
    RAM on the CPU backend (every CPU device holds a replica there), else the first
    accelerator's memory limit. None when unknown."""
    import jax

    if jax.default_backend() == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this host's available memory", True
        except OSError:
            pass
        return None, "this host", True
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (None if limit is None else int(limit)), f"{jax.local_devices()[0].device_kind}", False


def _check_size(config: Any, skip: bool = False, dry_run: bool = False) -> str:
    """Estimate parameters and memory from shapes before anything is allocated; refuse
    (ConfigError) a run that cannot fit, naming the numbers and the likely mistake. A dry
    run only says it would be refused here (the config may be meant for a larger machine)."""
    import jax
    from nt_robust.models.registry import width_hint
    from nt_robust.train.config import estimate_training_memory

    estimate = estimate_training_memory(config)
    available, where, shared = _available_memory()
    replicas = jax.local_device_count()
    need = (estimate["weights_bytes"] * (replicas if shared else 1)
            + estimate["activation_bytes"] // (1 if shared else replicas))
    line = (f"{config.model.label}: {estimate['parameters']:,} parameters; training needs roughly {_gib(need)} "
            f"({_gib(estimate['weights_bytes'])} weights, gradients and momentum"
            f"{f' x {replicas} CPU devices' if shared and replicas > 1 else ''}, "
            f"{_gib(estimate['activation_bytes'])} activations at train.batch_size = {config.train.batch_size})")
    if available is not None and need > available and not skip:
        hint = width_hint(config.model)
        message = (f"{line}, more than {where} ({_gib(available)}). "
                   + (f"{hint}. " if hint else "Lower model.width, model.depth or train.batch_size. ")
                   + "(--no-memory-check trains anyway.)")
        if not dry_run:
            raise ConfigError(message)
        return f"warning: training would be refused here: {message}"
    return line


def _train(args: argparse.Namespace) -> int:
    from nt_robust.train import ExperimentConfig, RunConfigMismatchError
    from nt_robust.config import to_dict
    from nt_robust.train.config import config_warnings
    from nt_robust.train.extend import annotate_summary, extend_run, resume_config

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.run is not None:
        target = Path(args.run)
        if target.is_file() or target.suffix == ".toml":
            if _toml_kind(target) == "study":
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
    else:  # as _models_to_train loaded it to choose the CPU devices, if it did
        config = getattr(args, "loaded_config", None) or load_config(ExperimentConfig, args.config, args.overrides)
    for warning in config_warnings(config):
        print(f"nt-robust: warning: {warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(_check_size(config, args.no_memory_check, dry_run=True), file=sys.stderr, flush=True)
        print(json.dumps(to_dict(config), indent=2))
        return 0
    if args.distributed or args.coordinator:
        from nt_robust.train.sharding import initialize_distributed
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.cpu_collectives)
    else:
        from nt_robust.train.sharding import initialize_distributed_from_env
        initialize_distributed_from_env()
    log.info(_check_size(config, args.no_memory_check))
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
    summary = annotate_summary(run_dir, summary)
    print(format_run_table([summary]))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from nt_robust.train.evaluate_run import describe_result, evaluate_run

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


def _run_label(run_dir: Path, config: dict[str, Any], labels: list[str]) -> str:
    name = config.get("name") or run_dir.name
    return name if name not in labels else str(run_dir)


def _read_run(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    from nt_robust import io

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are made by "
                                "`nt-robust train`")
    return run_dir, io.read_json(run_dir / "config.json")


def _compare(args: argparse.Namespace) -> int:
    from nt_robust import io
    from nt_robust.studies.tables import COLUMNS, format_table

    rules = (("final", "final"), ("best_val", "selected_by_val_robust_accuracy"),
             ("best_test (paper)", "selected_by_test_robust_accuracy_paper_protocol"))
    split, rows, evaluations, labels = args.split, [], [], []
    for path in args.runs:
        run_dir, config = _read_run(path)
        label = _run_label(run_dir, config, labels)
        labels.append(label)
        fields = [label, config["model"]["arch"], config["model"]["width"], config["objective"]["kind"],
                  f"{config['objective']['lam']:g}",
                  config["eval"]["attack"].get("eps_text") or repr(config["eval"]["attack"]["eps"])]  # ε exactly
        if (run_dir / "summary.json").exists():
            summary = io.read_json(run_dir / "summary.json")
            records = [(name, summary.get(key)) for name, key in rules]
        else:
            metrics = io.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            evaluated = [r for r in metrics if f"{split}_robust_accuracy" in r]
            records = [(f"latest of {config['train']['epochs']} (unfinished)", evaluated[-1] if evaluated else None)]
        for name, record in records:
            if record and f"{split}_natural_accuracy" in record:
                rows.append([*fields, name, record["epoch"], *(record.get(f"{split}_{m}") for _, m in COLUMNS)])
        for result_path in sorted((run_dir / "eval").glob("*.json")):
            result = io.read_json(result_path)
            if not isinstance(result, dict) or "robust_accuracy" not in result or "checkpoint" not in result:
                continue
            evaluations.append([label, result.get("protocol") or result.get("attack_name"), repr(result.get("eps")),
                                result["checkpoint"], result.get("split"), result.get("num_examples"),
                                result.get("natural_accuracy"), result["robust_accuracy"]])
    if not rows and not evaluations:
        raise FileNotFoundError(f"none of {', '.join(map(str, args.runs))} has evaluated an epoch on the "
                                f"{split} split yet")
    header = ["run", "arch", "width", "objective", "lam", "eval eps", "checkpoint", "epoch",
              *(f"{split} {name}" for name, _ in COLUMNS)]
    print(format_table(header, rows))
    if evaluations:
        print("\nevaluations (nt-robust eval; RUN_DIR/eval/*.json):")
        print(format_table(["run", "attack", "eps", "checkpoint", "split", "examples", "natural", "robust"],
                           evaluations))
    print("\ncheckpoint: final = last epoch; best_val = highest validation robust accuracy; best_test = highest "
          "test robust accuracy (the paper's protocol, optimistic on test)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from nt_robust import io

    if args.out is None and len(args.runs) > 1:
        raise ConfigError("several runs: say where the figure goes with --out FILE.png")
    curves, labels = {}, []
    for path in args.runs:
        run_dir, config = _read_run(path)
        label = _run_label(run_dir, config, labels)
        labels.append(label)
        metrics = io.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        if not metrics:
            raise FileNotFoundError(f"{run_dir} has no finished epoch yet (no metrics.jsonl rows)")
        curves[f"{label} ({config['model']['arch']} w{config['model']['width']}, "
               f"λ={config['objective']['lam']:g}, "
               f"ε={config['eval']['attack'].get('eps_text') or format(config['eval']['attack']['eps'], 'g')})"] = metrics
    out = Path(args.out) if args.out else Path(args.runs[0]) / "curves.png"
    print(plot_run_curves(curves, out, args.split))
    return 0


def plot_run_curves(curves: dict[str, list[dict[str, Any]]], out: Path, split: str = "test") -> Path:
    """One line per run of per-epoch natural and robust accuracy, perturbation stability
    (on ``split``) and training loss; written atomically to ``out`` (format from its suffix)."""
    import io as _io
    from nt_robust import io
    from matplotlib.ticker import MaxNLocator
    from nt_robust.studies.figures import METRIC_LABELS, STYLE, plt

    panels = [(f"{split}_natural_accuracy", f"{split} {METRIC_LABELS['natural_accuracy']}"),
              (f"{split}_robust_accuracy", f"{split} {METRIC_LABELS['robust_accuracy']}"),
              (f"{split}_perturbation_stability", f"{split} {METRIC_LABELS['perturbation_stability']}"),
              ("train_loss", "training loss")]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), layout="constrained")
        for label, rows in curves.items():
            for (key, title), ax in zip(panels, axes):
                points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
                ax.set(xlabel="epoch", ylabel=title)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(3, len(curves)))
        buffer = _io.BytesIO()
        fig.savefig(buffer, format=out.suffix.lstrip(".") or "png", bbox_inches="tight")
        plt.close(fig)
    io.write_bytes(out, buffer.getvalue())
    return out


def _study(args: argparse.Namespace) -> int:
    from nt_robust.studies.cost import estimate_cost, format_estimate
    from nt_robust.studies.pieces import check_piece, format_pieces, piece_runs
    from nt_robust.studies.pipeline import build_report, run_study, study_summary
    from nt_robust.studies.sweep import load_study, run_index
    from nt_robust.studies.tables import format_table

    spec = Path(args.spec)
    if spec.is_dir():
        raise ConfigError(f"{spec} is a directory, not a study spec"
                          + (f": for a run, try `nt-robust compare {spec}` or `nt-robust plot {spec}`"
                             if (spec / "config.json").exists() else " (see experiments/study_*.toml)"))
    if _toml_kind(spec) == "train":
        raise ConfigError(f"{spec} is a training config, not a study spec: did you mean `nt-robust train --config "
                          f"{spec}`? (a study spec names a base_config and a [grid]; see experiments/study_*.toml)")
    study = getattr(args, "loaded_study", None) or load_study(spec, args.runs_root)  # see _models_to_train
    if args.emit:
        from nt_robust.studies.cluster import Resources, emit

        resources = Resources(partition=args.partition, gpus_per_task=args.gpus_per_task,
                              cpus_per_task=args.cpus_per_task, time=args.time, mem=args.mem,
                              image=args.image, volume_claim=args.volume_claim)
        print(emit(study, args.emit, resources), end="")
        return 0
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
        stages = (args.stage,) if args.stage else None
        from nt_robust.train.loop import TrainingDivergedError
        from nt_robust.train.run_dir import RunDirectoryLockedError

        diverged, busy = [], []
        for run in piece_runs(study, args.pieces, args.piece, stages):
            try:
                run_index(study, run.index)
            except TrainingDivergedError as error:   # one run's fate; the piece goes on
                print(f"{run.name} (index {run.index}) diverged, the piece goes on: {error}", file=sys.stderr)
                diverged.append(run.name)
            except RunDirectoryLockedError as error:  # another sitting trains it (e.g. --index): leave it
                print(f"{run.name} (index {run.index}) skipped: {error}", file=sys.stderr)
                busy.append(run.name)
        if diverged or busy:
            print(f"piece {args.piece} of {args.pieces}: "
                  + "; ".join(f"{len(names)} run(s) {what}: {', '.join(names)}" for what, names in
                              (("diverged", diverged), ("trained by another process, skipped", busy)) if names))
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
    from nt_robust.studies.regime_map import build_map, load_regime, write_map
    from nt_robust.studies.sweep import load_study

    import glob

    from nt_robust import io
    from nt_robust.studies.map_report import render_results_block, replace_block

    if args.from_json:
        if args.specs:
            raise ConfigError("give study specs or --from-json MAP_JSON, not both")
        if not args.results_doc:
            raise ConfigError("--from-json only rewrites a document: add --results-doc docs/results.md")
        doc = Path(args.results_doc)
        io.write_text(doc, replace_block(doc.read_text(), render_results_block(io.read_json(Path(args.from_json)))))
        print(f"rewrote the generated block of {doc} from {args.from_json}")
        return 0
    if not args.specs:
        raise ConfigError("nt-robust map needs study specs (experiments/regime_*.toml) or --from-json MAP_JSON")
    # A pattern the shell did not expand (quoted, or no shell) is expanded here.
    specs = [Path(p) for s in args.specs for p in (sorted(glob.glob(s)) if glob.has_magic(s) and not Path(s).exists()
                                                   else [s])]
    if not specs:
        raise ConfigError(f"no study spec matches {' '.join(args.specs)}")
    not_studies = [str(s) for s in specs if s.exists() and _toml_kind(s) != "study"]
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
        io.write_text(doc, replace_block(doc.read_text(), render_results_block(result)))
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


def _info() -> int:
    from nt_robust.environment import environment_info

    print(json.dumps(environment_info(), indent=2))
    return 0


def _set_cpu_devices(args: argparse.Namespace, own_process: bool) -> None:
    """--cpu-devices N, else $NT_ROBUST_CPU_DEVICES, else for train and study on the command
    line the automatic choice (environment.auto_cpu_devices; a resumed run keeps the count it
    started with). A caller of ``main(argv)`` in its own process keeps that process's devices."""
    import os

    from nt_robust.environment import auto_cpu_devices, set_cpu_devices

    if getattr(args, "cpu_devices", None) is not None:
        set_cpu_devices(args.cpu_devices, source="--cpu-devices")
        return
    if (os.environ.get("NT_ROBUST_CPU_DEVICES", "").strip() or args.command not in ("train", "study")
            or not own_process):
        set_cpu_devices()
        return
    started = _started_run_devices(args)
    if started is not None:
        set_cpu_devices(started, source="the count the run started with (its environment.json)")
        return
    models = _models_to_train(args)
    if models:
        set_cpu_devices(auto_cpu_devices(models), source="auto: one per core for conv nets, else 1")


def _started_run_devices(args: argparse.Namespace) -> int | None:
    """The CPU device count a resumed run (train RUN_DIR) was started with, where recorded."""
    from nt_robust import io
    from nt_robust.train.run_dir import RunDirectory

    if args.command != "train" or args.run is None:
        return None
    try:
        environment = io.read_json(RunDirectory(args.run).environment_path)
    except (OSError, ValueError):
        return None
    count = environment.get("device_count") if environment.get("backend") == "cpu" else None
    return count if isinstance(count, int) and count >= 1 else None


def _models_to_train(args: argparse.Namespace) -> list[tuple[str, int, int]] | None:
    """(arch, train batch, eval batch) of every run the command will train; None where the
    config cannot be read here (the command itself then says why). What it loads is kept on
    ``args`` (``loaded_config``, ``loaded_study``) for the command, which then does not load it again."""
    from nt_robust.train import ExperimentConfig

    def row(config: ExperimentConfig) -> tuple[str, int, int]:
        return config.model.arch, config.train.batch_size, config.eval.batch_size

    try:
        if args.command == "train":
            if args.run is not None:
                return None  # a run directory without a recorded device count: JAX's default
            args.loaded_config = load_config(ExperimentConfig, args.config, args.overrides)  # reused by _train
            return [row(args.loaded_config)]
        from nt_robust.studies.sweep import load_study

        study = args.loaded_study = load_study(Path(args.spec), args.runs_root)  # reused by _study
        return [row(load_config(ExperimentConfig, study.base_config, list(run.overrides)))
                for run in study.grid_runs()] or None
    except Exception:  # noqa: BLE001 - any problem is reported by the command, with its own message
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.command]
        command.error(_unknown_arguments_message(extra, command, args.command,
                                                 sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose)
    try:
        from nt_robust.environment import configure_xla_cpu, enable_compilation_cache
        from nt_robust.host_memory import tune_malloc

        if argv is None:
            tune_malloc()       # before XLA's threads exist (nt_robust.host_memory)
        _set_cpu_devices(args, own_process=argv is None)  # both before anything starts the backend
        configure_xla_cpu()     # (info too, so that it shows the flags train uses)
        if args.command != "info":
            enable_compilation_cache()
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "study":
            return _study(args)
        if args.command == "map":
            return _map(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "export":
            return _export(args)
        if args.command == "import":
            return _import(args)
        if args.command == "study-imported":
            return __import__("nt_robust.studies.imported", fromlist=["_"]).imported_study_command(args)
        return _info()
    except Exception as error:  # noqa: BLE001 - the one CLI error handler (see _report_error)
        return _report_error(error, args.verbose, own_process=argv is None)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: training says where it resumes from
        import signal

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

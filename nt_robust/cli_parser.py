r"""The ``nt-robust`` argument parser: commands, options, examples, and typo suggestions.

    parser = build_parser()
    args, extra = parser.parse_known_args(["train", "--config", "experiments/quick_fmnist.toml"])
    unknown_arguments_message(["--epochs"], parser.commands["train"], "train", ["train", "--epochs", "3"])
    # 'unrecognized arguments: --epochs\n  --epochs: did you mean --set train.epochs=3?'

Nothing here imports JAX: ``nt-robust -h`` and ``--version`` answer without it
(tests/test_cli_startup.py). :mod:`nt_robust.cli` runs the commands.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any, Sequence

from nt_robust.config import ConfigError
from nt_robust.gpu_check import add_gpu_check_arguments
from nt_robust.topology import add_topology_arguments

SUMMARY = "nt-robust: a thin command line over the library."
OVERVIEW = """\
nt-robust train --config experiments/quick_fmnist.toml --set objective.lam=12
nt-robust eval runs/quick_fmnist --attack cw20          # at the run's eps, best_val checkpoint
nt-robust eval runs/quick_fmnist --protocol autoattack-standard
nt-robust compare runs/quick_fmnist runs/other
nt-robust plot runs/quick_fmnist --out curves.png
nt-robust study experiments/study_quick_fmnist.toml
nt-robust export runs/quick_fmnist                     # PyTorch state_dict + model_info
nt-robust train --config experiments/quick_fmnist.toml --cpu-devices 2   # one XLA device per core
nt-robust info"""


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
  nt-robust study experiments/study_quick_fmnist.toml --emit k8s --image REGISTRY/nt-robust:TAG --gpus-per-task 1 > study.yaml""",
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
    "study-imported": """examples:
  nt-robust study-imported experiments/zoo_widths.toml                 # runs/imported_studies/<name>/
  nt-robust study-imported experiments/zoo_widths.toml --out runs/zoo   # report.md, claims.json, results.json

The spec lists `nt-robust import` directories (or state_dicts) of several widths; each is
evaluated on the same test images, and claims 1-4 are judged with intervals over those images
(one checkpoint per width: no seed spread; the report says so).""",
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


def build_parser() -> argparse.ArgumentParser:
    """The whole ``nt-robust`` parser; ``parser.commands`` maps each command to its subparser."""
    parser = _Parser(prog="nt-robust", description=SUMMARY,
                     epilog="examples:\n" + "\n".join("  " + line for line in OVERVIEW.splitlines()))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"nt-robust {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpu = _Parser(add_help=False)
    cpu.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                     help="split the CPU into N XLA devices and shard training batches over them (default "
                          "$NT_ROBUST_CPU_DEVICES, else for train and study one per core when every run is a "
                          "conv net, else 1; a resumed run keeps its count)")
    add_gpu_check_arguments(cpu)

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
    add_topology_arguments(train)
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
                            "tpu-v5e, tpu-v5p; nt_robust/accelerators.py) instead of timing this machine")
    study.add_argument("--mfu", type=float, default=0.4, help="with --device: the utilization assumed (default 0.4)")
    study.add_argument("--report", action="store_true", help="only aggregate, draw figures and write the report")
    study.add_argument("--runs-root", help="where run directories go (default runs/studies/<name>)")
    study.add_argument("--figures-dir", help="where figures and report.md go (default figures/<name>)")
    from nt_robust.studies.cluster import add_emit_arguments
    add_emit_arguments(study)  # --emit and its options, --distributed

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

    imported = command("study-imported", "a width study over imported checkpoints (nt-robust import directories "
                                         "or state_dicts)")
    imported.add_argument("spec", metavar="SPEC", help="the study's TOML spec ([study] and [[model]] tables)")
    imported.add_argument("--out", default=None, help="the study directory (default runs/imported_studies/<name>)")

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


def unknown_arguments_message(extra: list[str], parser: argparse.ArgumentParser, command: str,
                              argv: Sequence[str]) -> str:
    """argparse's "unrecognized arguments" error, with the option or ``--set`` field each
    unknown flag most likely meant."""
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


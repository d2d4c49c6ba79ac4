"""How many XLA:CPU devices a command runs on, decided before anything starts JAX's backend::

    args = build_parser().parse_args(["train", "--config", "experiments/quick_fmnist.toml"])
    set_cpu_devices_for(args, own_process=True)   # one device per core for a conv net, else 1

--cpu-devices N wins, else $NT_ROBUST_CPU_DEVICES, else, for ``train`` and ``study`` on the
command line, the automatic choice (:func:`nt_robust.cpu.devices.auto_cpu_devices`); a
resumed run keeps the count it started with.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nt_robust.config import load_config


def set_cpu_devices_for(args: argparse.Namespace, own_process: bool) -> None:
    """Set the CPU device count for the command ``args`` (see the module docstring). A caller
    of ``cli.main(argv)`` in its own process (``own_process`` False) keeps that process's devices."""
    from nt_robust.cpu.devices import auto_cpu_devices, set_cpu_devices

    if getattr(args, "cpu_devices", None) is not None:
        set_cpu_devices(args.cpu_devices, source="--cpu-devices")
        return
    if (os.environ.get("NT_ROBUST_CPU_DEVICES", "").strip() or args.command not in ("train", "study")
            or not own_process):
        set_cpu_devices()
        return
    started = started_run_devices(args)
    if started is not None:
        set_cpu_devices(started, source="the count the run started with (its environment.json)")
        return
    models = models_to_train(args)
    if models:
        set_cpu_devices(auto_cpu_devices(models), source="auto: one per core for conv nets, else 1")


def started_run_devices(args: argparse.Namespace) -> int | None:
    """The CPU device count a resumed run (train RUN_DIR) was started with, where recorded."""
    from nt_robust import storage
    from nt_robust.train.run_dir import RunDirectory

    if args.command != "train" or args.run is None:
        return None
    try:
        environment = storage.read_json(RunDirectory(args.run).environment_path)
    except (OSError, ValueError):
        return None
    count = environment.get("device_count") if environment.get("backend") == "cpu" else None
    return count if isinstance(count, int) and count >= 1 else None


def models_to_train(args: argparse.Namespace) -> list[tuple[str, int, int]] | None:
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
            args.loaded_config = load_config(ExperimentConfig, args.config, args.overrides)  # reused by train
            return [row(args.loaded_config)]
        from nt_robust.studies.sweep import load_study

        study = args.loaded_study = load_study(Path(args.spec), args.runs_root)  # reused by study
        return [row(load_config(ExperimentConfig, study.base_config, list(run.overrides)))
                for run in study.grid_runs()] or None
    except Exception:  # noqa: BLE001 - any problem is reported by the command, with its own message
        return None

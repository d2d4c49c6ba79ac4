"""Resume a run from its own directory, and extend a finished run by more epochs, on the record::

    config = resume_config("runs/quick_fmnist")          # the config it ran with
    config = extend_run("runs/quick_fmnist", 5)          # then train(config, "runs/quick_fmnist")

An extension is explicit (``nt-robust train RUN_DIR --extend-epochs N``) because the
learning-rate schedule is a function of ``train.epochs``. It is allowed only where the
rate of the epochs already run does not change: "piecewise" (milestones are absolute
epochs, and milestones past the old end take effect in the new epochs, as they would
have in a run planned that long) and "constant". "cosine" and "late_halving" stretch with
``train.epochs``: the epochs already run would have had another rate, so the extended run
would be a run of no schedule; that is refused, with what to do instead.

What an extension leaves: ``RUN_DIR/config.json`` with the new ``train.epochs``;
``RUN_DIR/extensions.json``, one record per extension (epochs before and after, when,
milestones that take effect, where the earlier summary went); the earlier
``summary.json`` moved to ``summary.epochs<E>.json``, so the run counts as unfinished
until its new epochs are trained (an interrupted extension resumes with
``nt-robust train RUN_DIR``); and, once finished, the summary's ``extensions`` list.
Single process only (it rewrites files of the run directory before training starts).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from pathlib import Path
from typing import Any

from nt_robust import storage
from nt_robust.config import ConfigError, apply_overrides, build
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.run_dir import ADDED_FIELDS, added_field_value

EXTENSIONS = "extensions.json"
SCHEDULES_THAT_EXTEND = ("piecewise", "constant")


def _stored_config(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/config.json, else (deleted) the config recorded in its newest checkpoint."""
    path = run_dir / "config.json"
    if not path.exists():
        recorded = _checkpoint_config(run_dir)
        if recorded is not None:
            logging.getLogger("nt_robust.train").warning(
                "%s is missing: using the config recorded in the run's newest checkpoint (it is written again)", path)
            return recorded
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); start a run with "
                                "`nt-robust train --config FILE`")
    return storage.read_json(path)


def _checkpoint_config(run_dir: Path) -> dict[str, Any] | None:
    """The config in the record of the newest step of RUN_DIR/checkpoints/latest, if any
    (the training then checks that step's digest and this config against it)."""
    latest = run_dir / "checkpoints" / "latest"
    steps = sorted((int(p.name) for p in latest.iterdir() if p.name.isdigit()), reverse=True) if latest.is_dir() else []
    for step in steps:
        try:
            config = storage.read_json(latest / str(step) / "record" / "metadata").get("config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, dict):
            return config
    return None


def _as_it_ran(data: dict[str, Any]) -> dict[str, Any]:
    """Fields added after the run was made get the behaviour it ran with (see run_dir.ADDED_FIELDS)."""
    overrides = []
    for path in ADDED_FIELDS:
        node: Any = data
        for key in path.split(".")[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path.split(".")[-1] not in node:
            overrides.append(f"{path}={added_field_value(path, data)}")
    return apply_overrides(data, overrides)


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config ``run_dir`` was made with (plus ``overrides``, which must not change results)."""
    return build(ExperimentConfig, apply_overrides(_as_it_ran(_stored_config(Path(run_dir))), list(overrides)))


def extend_run(run_dir: str | Path, extra_epochs: int, overrides: list[str] | tuple[str, ...] = (),
               dry_run: bool = False) -> ExperimentConfig:
    """Make the finished run ``run_dir`` a run of ``extra_epochs`` more epochs (see the module
    docstring); returns the config to train it with. ``dry_run``: check and return, change nothing."""
    run_dir = Path(run_dir)
    if isinstance(extra_epochs, bool) or not isinstance(extra_epochs, int) or extra_epochs < 1:
        raise ConfigError(f"--extend-epochs must be an integer >= 1, got {extra_epochs!r}")
    stored = _stored_config(run_dir)
    config = resume_config(run_dir, overrides)
    epochs, optim = config.train.epochs, config.optim
    if any(o.split("=", 1)[0].strip() == "train.epochs" for o in overrides):
        raise ConfigError("--extend-epochs sets train.epochs itself: drop --set train.epochs=...")
    if not (run_dir / "summary.json").exists():
        raise ConfigError(f"{run_dir} has not finished its {epochs} epochs: finish it first with "
                          f"`nt-robust train {run_dir}`, then extend it")
    if optim.schedule not in SCHEDULES_THAT_EXTEND:
        raise ConfigError(
            f"{run_dir} uses optim.schedule = {optim.schedule!r}, whose learning rate at every step depends on "
            f"train.epochs: {epochs + extra_epochs} epochs would have trained the first {epochs} at other rates, so "
            f"the extended run would follow no schedule. Train a new run planned that long instead: "
            f"`nt-robust train --config FILE --set train.epochs={epochs + extra_epochs} --set name=...` "
            f"(extensions work for the {' and '.join(SCHEDULES_THAT_EXTEND)} schedules)")
    new_epochs = epochs + extra_epochs
    extended = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=new_epochs))
    if dry_run:
        return extended
    if optim.schedule != "piecewise":
        now_in_effect = []
    elif optim.milestone_convention == "trades":   # m decays from 1-based epoch m on
        now_in_effect = [m for m in optim.milestones if epochs < m <= new_epochs]
    else:                                           # "legacy": after m full epochs
        now_in_effect = [m for m in optim.milestones if epochs <= m < new_epochs]
    previous_summary = f"summary.epochs{epochs}.json"
    record = {"from_epochs": epochs, "to_epochs": new_epochs,
              "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "schedule": optim.schedule, "milestones_now_in_effect": now_in_effect,
              "previous_summary": previous_summary}
    path = run_dir / EXTENSIONS
    history = storage.read_json(path) if path.exists() else []
    storage.write_json(path, [*history, record])
    stored = {**stored, "train": {**stored.get("train", {}), "epochs": new_epochs}}
    storage.write_json(run_dir / "config.json", stored)
    os.replace(run_dir / "summary.json", run_dir / previous_summary)
    return extended


def annotate_summary(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Add the run's extensions (if any) to a finished run's summary.json; returns the summary."""
    run_dir = Path(run_dir)
    path = run_dir / EXTENSIONS
    if not path.exists() or "stopped_at_step" in summary or not (run_dir / "summary.json").exists():
        return summary
    stored, extensions = storage.read_json(run_dir / "summary.json"), storage.read_json(path)
    if stored.get("extensions") == extensions:
        return stored  # a reprinted run: nothing to add, nothing rewritten
    summary = {**stored, "extensions": extensions}
    storage.write_json(run_dir / "summary.json", summary)
    return summary

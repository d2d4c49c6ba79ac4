"""Experiment tracking: every metrics row of a run, as it is appended to ``metrics.jsonl``,
also to TensorBoard and/or Weights & Biases (offline), when the config asks::

    train.tensorboard = true   # RUN_DIR/tensorboard/: event files, no TensorFlow (tensorboardX)
    train.wandb = true         # RUN_DIR/wandb/: an offline W&B run (wandb.init(mode="offline"))

    trackers = open_trackers(config.train, run_dir, to_dict(config), rows)   # rows: those finished
    trackers.write(row)        # after each epoch's row reached metrics.jsonl
    trackers.close()

Each row's numbers become scalars at the row's ``step`` (the optimizer step at the end of its
epoch), under the row's own keys (``train_loss``, ``val_robust_accuracy``, ...); None and
non-numbers are left out. The config goes in as text (``config``, as JSON).

Resume: like ``metrics.jsonl``, the tracking files are derived from the checkpoint. Each
attempt (every start or resume of ``nt-robust train``) opens a new TensorBoard event file,
writes the config and every row the restored checkpoint holds into it, then deletes the event
files of earlier attempts, and appends each new row as its epoch ends. So the directory holds
one file with exactly the rows of ``metrics.jsonl``: none twice (an epoch redone after a crash
is not doubled) and none lost (a row written to the checkpoint but not yet to TensorBoard is
written by the next attempt). The file starts with a restart marker at step 0 (tensorboardX's
``purge_step``), so a TensorBoard left running across a resume drops the points it had read
and shows the rebuilt ones. W&B: each attempt is its own offline run under ``RUN_DIR/wandb/``
holding every row up to its end (the checkpoint's rows are logged again at its start); the
newest one is the whole run (``wandb sync`` it).

Only process 0 writes. The packages are optional (``pip install -e ".[tracking]"``); with an
option on and its package missing, :func:`check_available` says which to install.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any, Protocol

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
EVENT_FILE_PREFIX = "events.out.tfevents."

# option -> (module to import, what to install)
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX>=2.6,<3"), "wandb": ("wandb", "wandb>=0.17,<1")}


class TrackingUnavailableError(RuntimeError):
    """A tracking option is on but its package is not installed."""


def check_available(loop: Any) -> None:
    """Raise :class:`TrackingUnavailableError` naming the package to install when
    ``loop.tensorboard`` or ``loop.wandb`` (a ``LoopConfig``) is on and its package is missing."""
    for option, (module, requirement) in PACKAGES.items():
        if getattr(loop, option, False) and importlib.util.find_spec(module) is None:
            raise TrackingUnavailableError(
                f"train.{option} = true writes with the {module} package, which is not installed: "
                f"pip install '{requirement}' (or pip install -e \".[tracking]\"), or set train.{option} = false "
                f"(--set train.{option}=false)")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers (bools, None and text left out), as floats."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def config_text(config: dict[str, Any]) -> str:
    """The config as JSON, indented as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "\n".join("    " + line for line in json.dumps(config, indent=2, sort_keys=True).splitlines())


class Writer(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardWriter:
    """One attempt's event file in ``log_dir`` (module docstring: what a resume does)."""

    def __init__(self, log_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        from tensorboardX import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        earlier = sorted(log_dir.glob(EVENT_FILE_PREFIX + "*"))
        # a unique suffix: two attempts within one second would otherwise share a file name
        self.writer = SummaryWriter(str(log_dir), purge_step=0, filename_suffix=f".{uuid.uuid4().hex[:8]}")
        self.writer.add_text("config", config_text(config), global_step=0)
        for row in rows:
            self._add(row)
        self.writer.flush()
        for path in earlier:  # only once this attempt's file holds every row they held
            path.unlink(missing_ok=True)

    def _add(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def write(self, row: dict[str, Any]) -> None:
        self._add(row)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """One attempt's offline W&B run in ``RUN_DIR/wandb/`` (never uploads; ``wandb sync`` does)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        import wandb

        self.run = wandb.init(mode="offline", dir=str(run_dir), project="nt_robust", name=run_dir.name,
                              group=str(config.get("name", run_dir.name)), config=config)
        for row in rows:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        self.run.log(scalars(row), step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The writers a run's config asks for; ``write`` and ``close`` go to each."""

    def __init__(self, writers: list[Writer] | None = None) -> None:
        self.writers = writers or []

    def write(self, row: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(row)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def open_trackers(loop: Any, run_dir: str | Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> Trackers:
    """The writers ``loop`` (a ``LoopConfig``) asks for in ``run_dir``, each holding ``config``
    and the ``rows`` finished so far; an empty :class:`Trackers` when none is on."""
    check_available(loop)
    run_dir = Path(run_dir)
    writers: list[Writer] = []
    try:
        if loop.tensorboard:
            writers.append(TensorBoardWriter(run_dir / TENSORBOARD_DIR, config, rows))
        if loop.wandb:
            (run_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
            writers.append(WandbWriter(run_dir, config, rows))
    except BaseException:
        Trackers(writers).close()
        raise
    return Trackers(writers)

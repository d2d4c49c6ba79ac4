"""What a resume checks and rebuilds from a checkpoint's record (besides the state): the
config it was written with, and the metrics rows of the epochs finished by then::

    state, record = checkpoints.restore("latest", state)
    check_record(run, record, to_dict(config), resumed)     # RunConfigMismatchError if another config
    rows = rows_at(run, record, progress.epoch)              # metrics.jsonl rewritten if it differs
    warn_if_other_device_count(run)

A record holds ``progress``, ``rows`` (every finished epoch's metrics row), ``config`` and
``config_hash`` (:meth:`nt_robust.train.loop.Trainer._record`). Records written before
those fields existed fall back to ``config.json`` and ``metrics.jsonl``, and say so.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from nt_robust import storage
from nt_robust.train.run_dir import RunConfigMismatchError, RunDirectory, config_differences, config_hash

log = logging.getLogger("nt_robust.train")


def check_record(run: RunDirectory, record: dict[str, Any], config: dict[str, Any], resumed: bool) -> None:
    """Refuse a checkpoint written under another config than ``config`` (config.json may be
    gone; ``resumed``: it is there, and :meth:`RunDirectory.claim` has checked it)."""
    saved = record.get("config")
    if saved is None:  # written before checkpoints held their config
        if not resumed:
            raise RunConfigMismatchError(
                f"{run.checkpoint_dir} holds checkpoints written before checkpoints recorded their config, and "
                f"{run.config_path} is gone, so nothing says which config made them. Put the run's config.json "
                f"back (from a backup), or delete {run.checkpoint_dir} to train this config from step 0, or train "
                "it in another run directory.")
        log.info("%s: its checkpoints predate config records; checked against config.json only", run.root)
        return
    if record.get("config_hash") == config_hash(config):
        return
    allowed = ("train.epochs",) if extended_from(run, saved) else ()
    differences = config_differences(saved, config, allowed)
    if differences:
        raise RunConfigMismatchError(
            f"{run.root}'s checkpoints were written with a different config "
            f"({'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}: checkpoint -> this config). "
            "Resume it with its own config (`nt-robust train RUN_DIR`), give this run another name "
            "(--set name=...) or --run-dir, or delete that directory.")


def extended_from(run: RunDirectory, saved: dict[str, Any]) -> bool:
    """Whether RUN_DIR/extensions.json records an extension from the checkpoint's train.epochs
    (train/extend.py checked that the schedule allows it): the one change of train.epochs allowed."""
    from nt_robust.train.extend import EXTENSIONS

    path = run.root / EXTENSIONS
    epochs = saved.get("train", {}).get("epochs") if isinstance(saved.get("train"), dict) else None
    return path.exists() and any(e.get("from_epochs") == epochs for e in storage.read_json(path))


def warn_if_other_device_count(run: RunDirectory) -> None:
    """Warn when a run resumes on another number of devices than it started on: its
    reductions then sum in another order, so it is no longer bitwise the run it would have been."""
    try:
        started = storage.read_json(run.environment_path).get("device_count")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(started, int) and started != jax.device_count():
        log.warning("%s was started on %d device(s) and resumes on %d: it continues correctly, but not bit for bit "
                    "as it would have on %d (resume with --cpu-devices %d for that)", run.root, started,
                    jax.device_count(), started, started)


def rows_at(run: RunDirectory, record: dict[str, Any] | None, epoch: int, write: bool = True) -> list[dict[str, Any]]:
    """The metrics rows of the ``epoch`` epochs finished at the restored checkpoint, from its
    record; ``write``: metrics.jsonl is rewritten from them where it differs (a row lost, one
    past the checkpoint, a damaged file). For a record without rows, metrics.jsonl's rows up
    to ``epoch``."""
    if record is not None and "rows" in record:
        rows = [dict(r) for r in record["rows"]]
        try:
            on_disk = run.read_metrics()
        except ValueError as error:
            log.warning("%s; rebuilding it from the checkpoint", error)
            on_disk = None
        if on_disk != rows and write:
            if on_disk is not None and len(on_disk) != len(rows):
                log.info("%s: %d row(s) on disk, %d in the checkpoint: rewritten from the checkpoint",
                         run.metrics_path, len(on_disk), len(rows))
            run.write_metrics(rows)
        return rows
    rows = [r for r in run.read_metrics() if r["epoch"] <= epoch]
    if len(rows) < epoch:
        log.warning("%s lacks %d of the %d finished epochs' rows and the checkpoint predates rows in records: those "
                    "epochs' metrics are lost (the weights are not)", run.metrics_path, epoch - len(rows), epoch)
    return rows

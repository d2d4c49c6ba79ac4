"""The training loop: epochs of sharded train steps, per-epoch evaluation, checkpoints.

    from nt_robust.train import train
    summary = train(config, "runs/my_run")      # resumes if runs/my_run holds this config

Everything a resume needs is in the checkpoint (the state, plus the epoch, the position
within it, the epoch's running sums, the best results so far, every finished epoch's
metrics row and the config); the data order of an epoch is a function of (seed, epoch).
So a run killed at any point and resumed ends with the same numbers as one that was
never interrupted, and loses no metrics row: ``metrics.jsonl`` is written after the
checkpoint that holds its rows and rebuilt from the checkpoint on resume (rows past it are
dropped), so ``summary.json``'s ``final`` is always the row of the last epoch's weights.
A checkpoint whose record names another config than the one given is refused
(:class:`RunConfigMismatchError`), even where ``config.json`` is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust import storage
from nt_robust.accelerators import mfu, precision_class
from nt_robust.config import to_dict
from nt_robust.environment import environment_info
from nt_robust.metrics import summarize
from nt_robust.models import count_parameters, create_model
from nt_robust.signals import raise_terminated
from nt_robust.train.checkpoints import Checkpointer
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.cost import config_precision, jitted_step_flops
from nt_robust.train.splits import Splits, epoch_order, prepare_splits
from nt_robust.train.evaluation import Evaluator
from nt_robust.train.optim import make_optimizer, make_schedule
from nt_robust.train.precision import precision_record
from nt_robust.train.progress import progress_bar
from nt_robust.train.records import check_record, rows_at, warn_if_other_device_count
from nt_robust.train.restore import restore_run
from nt_robust.train.run_dir import (RunDirectory, RunDirectoryLockedError, RunDirectoryNotWritableError, RunLock,
                                     config_hash)
from nt_robust.train.sharding import (batch_sharding, check_divisible, data_mesh, global_batch, process_rows,
                                      replicate, replicated_sharding)
from nt_robust.train.state import TrainState, initial_state, model_variables
from nt_robust.train.step import make_train_step
from nt_robust.train.tracking import Trackers, check_available, open_trackers
from nt_robust.train.war import WarController, epoch_ratio, reference_ratio

log = logging.getLogger("nt_robust.train")

TRAIN_METRICS = ("loss", "natural_loss", "regularizer", "accuracy", "grad_norm")


class TrainingDivergedError(FloatingPointError):
    """The loss or the parameters stopped being finite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; the message says where the run resumes
    from, ``signum`` which signal it was (the CLI exits 128 + signum: 130 or 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass
class Progress:
    """The host-side part of the training state, saved in every checkpoint's record."""

    epoch: int = 0                    # the epoch in progress (0-based)
    batch: int = 0                    # next batch within it
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    steps_in_sums: int = 0
    epoch_seconds: float = 0.0
    best_val: dict[str, Any] | None = None
    best_test: dict[str, Any] | None = None
    war_state: dict[str, float] | None = None


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _prefixed(prefix: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in summary.items()}


# Row fields measured by the wall clock: they differ between two runs of one config, so
# comparisons of runs (resume tests, reproducibility checks) leave them out.
WALL_CLOCK_FIELDS = ("train_seconds", "eval_seconds", "epoch_seconds", "train_flops_per_s", "train_mfu")


class Trainer:
    """Holds what one run needs; :func:`train` is the usual entry point."""

    step_flops: dict[str, Any] | None = None   # train.cost.jitted_step_flops, after the first step

    def __init__(self, config: ExperimentConfig, run_dir: str | Path):
        self.config = config
        self.is_main = jax.process_index() == 0
        self.run = RunDirectory(run_dir)
        check_divisible(config.train.batch_size, "train.batch_size")
        check_available(config.train)  # on every process: all stop, not process 0 alone
        self.trackers = Trackers()
        self.mesh = data_mesh()
        self.splits: Splits = prepare_splits(config.data, sample_seed=config.train.seed)
        self.steps_per_epoch = len(self.splits.train_images) // config.train.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size = {config.train.batch_size} exceeds the "
                             f"{len(self.splits.train_images)} training examples")
        self.model = create_model(config.model, self.splits.num_classes)
        self.optimizer = make_optimizer(config.optim, config.train.epochs, self.steps_per_epoch)
        self.schedule = make_schedule(config.optim, config.train.epochs, self.steps_per_epoch)
        rep, batch = replicated_sharding(self.mesh), batch_sharding(self.mesh)
        self.train_step = jax.jit(make_train_step(self.model, config, self.optimizer),
                                  in_shardings=(rep, batch, batch), out_shardings=(rep, rep),
                                  donate_argnums=0)
        self.all_finite = jax.jit(_all_finite)
        # the same parameters in eval.dtype (float32 by default, whatever model.dtype trained them)
        self.eval_model = create_model(config.model, self.splits.num_classes, dtype=config.eval.dtype)
        self.evaluator = Evaluator(self.eval_model, config.eval, self.mesh, seed=config.train.seed,
                                   num_classes=self.splits.num_classes)
        self.war = None
        if config.war.enabled:
            ratio = config.war.target_ratio or reference_ratio(config.war.reference_run, config.war.mode)
            self.war = WarController(config.war, base_lam=config.objective.lam, target_ratio=ratio)

    def initial_state(self) -> TrainState:
        return replicate(initial_state(self.config, self.model, self.splits.image_shape, optimizer=self.optimizer),
                         self.mesh)

    def restore(self, kind: str = "latest") -> tuple[TrainState, dict[str, Any]]:
        """The state saved in checkpoint ``kind`` ("latest", "best_val" or "best_test")."""
        restored = restore_run(self.run.root, kind, self.config, replicated_sharding(self.mesh))
        return restored.state, restored.record

    def fit(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the end (or until ``stop_after_steps`` optimizer steps, for tests).
        SIGTERM is handled as Ctrl-C while it trains (a save in progress finishes first)."""
        lock = self._lock()
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread else None
        try:
            return self._fit(stop_after_steps)
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            if lock is not None:
                lock.release()

    def _lock(self) -> RunLock | None:
        """Process 0 (the only writer of the run directory) takes its exclusive lock; in a
        multi-process job every process learns whether it got it, so all stop together."""
        lock, failure = None, None
        if self.is_main:
            try:
                lock = self.run.lock()
            except (RunDirectoryLockedError, RunDirectoryNotWritableError) as error:
                failure = error
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            locked = bool(multihost_utils.broadcast_one_to_all(np.int32(failure is None)))  # process 0's
            if not locked and failure is None:
                raise RunDirectoryLockedError(f"process 0 could not lock {self.run.root}: see its error")
        if failure is not None:
            raise failure
        return lock

    def _fit(self, stop_after_steps: int | None) -> dict[str, Any]:
        config, run = self.config, self.run
        config_dict = to_dict(config)
        environment = {**environment_info(config.model.conv_impl, config.model.dense_impl),
                       "precision": precision_record(config)}
        resumed = run.claim(config_dict, environment, write=False)  # checks only: nothing is written yet
        state = self.initial_state()
        checkpoints = Checkpointer(run.checkpoint_dir, keep=config.train.keep_checkpoints)
        progress = Progress()
        try:
            restored = checkpoints.restore("latest", state)
            if restored is not None:
                check_record(run, restored[1], config_dict, resumed)
        except BaseException:
            checkpoints.close()
            raise
        if self.is_main:
            run.claim(config_dict, environment, write=True)
        record = None
        if restored is not None:
            state, record = restored
            progress = Progress(**record["progress"])
            log.info("resuming %s at epoch %d, batch %d (step %d)", run.root, progress.epoch + 1,
                     progress.batch, int(state.step))
            if resumed:
                warn_if_other_device_count(run)
        elif resumed:
            log.info("%s has a config but no checkpoint yet: starting from scratch", run.root)
        rows = rows_at(run, record, progress.epoch, write=self.is_main)
        already_finished = progress.epoch >= config.train.epochs
        self._log_start(state)
        try:
            if self.is_main:  # the tracking files are rebuilt from the checkpoint's rows (tracking.py)
                self.trackers = open_trackers(config.train, run.root, config_dict, rows)
            state = self._epochs(state, progress, rows, checkpoints, stop_after_steps)
        except KeyboardInterrupt as interrupt:
            step = checkpoints.latest_step()
            where = (f"its last checkpoint is step {step} in {run.checkpoint_dir / 'latest'}" if step is not None
                     else "it has no checkpoint yet, so it restarts from step 0")
            signum = getattr(interrupt, "signum", signal.SIGINT)
            how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
            raise TrainingInterrupted(
                f"training of {run.root} {how}; {where}. Run the same command again to resume exactly "
                "from there.", signum) from None
        finally:
            checkpoints.close()
            self.trackers.close()
        if progress.epoch < config.train.epochs:
            return {"stopped_at_step": int(state.step)}
        if already_finished and run.summary_path.exists():
            try:  # a finished run is reported from its own summary, never rewritten (item 5 of issue 36)
                summary = storage.read_json(run.summary_path)
                if isinstance(summary, dict) and summary.get("final") is not None:
                    return summary
            except ValueError as error:
                log.warning("%s; rebuilding it from the last checkpoint", error)
        return self._finish(state, progress, rows)

    def _record(self, progress: Progress, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint holds besides the state: the progress, every finished epoch's
        metrics row (metrics.jsonl is rebuilt from them) and the config with its hash."""
        config = to_dict(self.config)
        return {"progress": dataclasses.asdict(progress), "rows": rows, "config": config,
                "config_hash": config_hash(config)}

    def _log_start(self, state: TrainState) -> None:
        c = self.config
        log.info("%s %s on %s: %d train / %d val / %d test examples, %d steps per epoch, %s params",
                 c.objective.kind, c.model.label, c.data.dataset, len(self.splits.train_images),
                 len(self.splits.val_images), len(self.splits.test_images), self.steps_per_epoch,
                 f"{count_parameters(state.params):,}")
        log.info("lam = %g, train attack eps = %r, eval attack eps = %r, %d device(s) on %d process(es) [%s]",
                 c.objective.lam, c.train_attack.eps, c.eval.attack.eps, jax.device_count(),
                 jax.process_count(), jax.default_backend())

    def _epochs(self, state: TrainState, progress: Progress, rows: list[dict[str, Any]],
                checkpoints: Checkpointer, stop_after_steps: int | None) -> TrainState:
        config, splits = self.config, self.splits
        batch_size, epochs = config.train.batch_size, config.train.epochs
        rows_of_process = process_rows(batch_size)
        every = config.train.checkpoint_every_steps
        run_start, first_epoch = time.time(), progress.epoch
        while progress.epoch < epochs:
            epoch_start = time.time() - progress.epoch_seconds
            order = epoch_order(config.train.seed, progress.epoch, len(splits.train_images))
            bar = progress_bar(self.steps_per_epoch, progress.batch, f"epoch {progress.epoch + 1}/{epochs}",
                               enabled=config.train.progress and self.is_main)
            pending = None
            while progress.batch < self.steps_per_epoch:
                indices = order[progress.batch * batch_size:(progress.batch + 1) * batch_size][rows_of_process]
                batch = (global_batch(splits.train_images[indices], self.mesh),
                         global_batch(splits.train_labels[indices], self.mesh))
                state, metrics = self.train_step(state, *batch)
                if self.step_flops is None:
                    self.step_flops = self._count_step_flops(state, batch)
                if pending is not None:  # read step i-1 while step i runs
                    self._accumulate(progress, pending, bar)
                progress.batch += 1
                step = progress.epoch * self.steps_per_epoch + progress.batch  # == state.step, without a sync
                pending = (metrics, step)
                bar.update(1)
                # (not at the epoch's last batch: the epoch-end checkpoint follows, at the same step)
                at_checkpoint = every and step % every == 0 and progress.batch < self.steps_per_epoch
                at_stop = stop_after_steps is not None and step >= stop_after_steps
                if at_checkpoint or at_stop:
                    self._accumulate(progress, pending, bar)
                    pending = None
                    progress.epoch_seconds = time.time() - epoch_start
                    self._check_params(state, progress)
                    checkpoints.save("latest", state, self._record(progress, rows))
                if at_stop:
                    bar.close()
                    return state
            if pending is not None:
                self._accumulate(progress, pending, bar)
            bar.close()
            self._check_params(state, progress)
            train_seconds = time.time() - epoch_start
            row = self._end_of_epoch(state, progress, rows, checkpoints, train_seconds)
            if self.war is not None:
                state = self._war_update(state, progress, row)
            rows.append(row)
            progress.epoch, progress.batch = progress.epoch + 1, 0
            progress.sums, progress.steps_in_sums, progress.epoch_seconds = {}, 0, 0.0
            # The row goes into the checkpoint first: an interruption after the save loses
            # nothing (the resume rewrites metrics.jsonl from it), one before it redoes the epoch.
            checkpoints.save("latest", state, self._record(progress, rows))
            if self.is_main:
                self.run.write_metrics(rows)
                self.trackers.write(row)
            seconds_per_epoch = (time.time() - run_start) / (progress.epoch - first_epoch)
            remaining = (epochs - progress.epoch) * seconds_per_epoch
            log.info("epoch %d/%d  %s  (%.0f s; about %s left)", progress.epoch, epochs,
                     self._describe(row), row["epoch_seconds"], _duration(remaining))
        return state

    def _war_update(self, state: TrainState, progress: Progress, row: dict[str, Any]) -> TrainState:
        lam = float(state.lam)
        lam_next, progress.war_state = self.war.update(progress.war_state, progress.epoch + 1,
                                                       row["train_natural_loss"], row["train_regularizer"], lam)
        row.update(war_ratio=epoch_ratio(lam, row["train_natural_loss"], row["train_regularizer"], self.war.config.mode),
                   war_target_ratio=self.war.target_ratio, lam_next=lam_next)
        return state.replace(lam=replicate(np.float32(lam_next), self.mesh))

    def _accumulate(self, progress: Progress, pending: tuple[dict[str, jax.Array], int], bar: Any) -> None:
        metrics, step = pending
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
            raise TrainingDivergedError(
                f"the training loss became {values['loss']} at step {step} (epoch {progress.epoch + 1}); "
                f"nothing after the last good checkpoint was saved ({self.run.checkpoint_dir / 'latest'}). "
                "Lower optim.lr or objective.lam in a new run (--set name=... or --run-dir: this directory keeps "
                "its config, so a resume with another lr is refused), or check the data.")
        for name in TRAIN_METRICS:
            progress.sums[name] = progress.sums.get(name, 0.0) + values[name]
        progress.steps_in_sums += 1
        bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['accuracy']:.3f}", refresh=False)

    def _check_params(self, state: TrainState, progress: Progress) -> None:
        if not bool(self.all_finite((state.params, state.batch_stats))):
            raise TrainingDivergedError(
                f"parameters stopped being finite in epoch {progress.epoch + 1} (step {int(state.step)}); "
                f"the last good checkpoint in {self.run.checkpoint_dir / 'latest'} was kept. "
                "Lower optim.lr or objective.lam in a new run (--set name=... or --run-dir: this directory keeps "
                "its config, so a resume with another lr is refused).")

    def _evaluate(self, state: TrainState) -> dict[str, dict[str, np.ndarray]]:
        return self.evaluator.splits(model_variables(state, use_ema=self.config.optim.ema_decay is not None),
                                     self.splits)

    def _end_of_epoch(self, state: TrainState, progress: Progress, rows: list[dict[str, Any]],
                      checkpoints: Checkpointer, train_seconds: float) -> dict[str, Any]:
        config = self.config
        epoch = progress.epoch + 1
        n = max(1, progress.steps_in_sums)
        row: dict[str, Any] = {"epoch": epoch, "step": int(state.step),
                               "lr": float(self.schedule(int(state.step) - 1)), "lam": float(state.lam),
                               **{f"train_{k}": v / n for k, v in progress.sums.items()},
                               "train_seconds": train_seconds}
        if epoch % config.eval.every_epochs == 0 or epoch == config.train.epochs:
            eval_start = time.time()
            results = self._evaluate(state)
            row["eval_seconds"] = time.time() - eval_start
            for split, per_example in results.items():
                row.update(_prefixed(split, summarize(per_example)))
            for selection, split in (("best_val", "val"), ("best_test", "test")):
                if split not in results:
                    continue
                best = getattr(progress, selection)
                robust = row[f"{split}_robust_accuracy"]
                if best is None or robust > best[f"{split}_robust_accuracy"]:
                    setattr(progress, selection, {k: v for k, v in row.items() if k.startswith(("epoch", "val_", "test_"))})
                    checkpoints.save(selection, state, self._record(progress, rows))
                    if self.is_main:
                        for name, per_example in results.items():
                            self.run.save_eval(f"{selection}_{name}", per_example)
            if self.is_main and epoch == config.train.epochs:
                for name, per_example in results.items():
                    self.run.save_eval(f"final_{name}", per_example)
        row["epoch_seconds"] = train_seconds + row.get("eval_seconds", 0.0)
        row.update(self._flop_rate(train_seconds))
        return row

    def _count_step_flops(self, state: TrainState, batch: tuple[jax.Array, jax.Array]) -> dict[str, Any]:
        """FLOPs of one global step from XLA's cost analysis (nt_robust.train.cost); never fails a run."""
        try:
            return jitted_step_flops(self.train_step, (state, *batch), self.config,
                                     self.splits.image_shape, self.splits.num_classes)
        except Exception as error:  # accounting only
            log.warning("no FLOP count for the training step: %s", error)
            return {"flops_per_step": None}

    def _flop_rate(self, train_seconds: float) -> dict[str, Any]:
        """``train_flops_per_s`` (step FLOPs × steps per epoch / the epoch's training seconds) and
        ``train_mfu`` (over the devices' dense peak at the configured precision; None on CPU)."""
        per_step = (self.step_flops or {}).get("flops_per_step")
        if per_step is None or train_seconds <= 0:
            return {"train_flops_per_s": None, "train_mfu": None}
        rate = per_step * self.steps_per_epoch / train_seconds
        device = jax.devices()[0]
        precision = precision_class(*config_precision(self.config), device.platform)
        return {"train_flops_per_s": rate,
                "train_mfu": mfu(rate, device.device_kind, precision, jax.device_count())}

    @staticmethod
    def _describe(row: dict[str, Any]) -> str:
        parts = [f"loss {row['train_loss']:.4f}"]
        for split in ("val", "test"):
            if f"{split}_natural_accuracy" in row:
                parts.append(f"{split} nat {row[f'{split}_natural_accuracy']:.3f} "
                             f"rob {row[f'{split}_robust_accuracy']:.3f} "
                             f"stab {row[f'{split}_perturbation_stability']:.3f}")
        return " | ".join(parts)

    def _finish(self, state: TrainState, progress: Progress, rows: list[dict[str, Any]]) -> dict[str, Any]:
        config = self.config
        summary = {
            "name": config.name,
            "model": config.model.label,
            "objective": config.objective.kind,
            "lam": config.objective.lam,
            "lam_final": float(state.lam),
            "war": config.war.enabled,
            "war_mode": config.war.mode if config.war.enabled else None,
            "war_target_ratio": None if self.war is None else self.war.target_ratio,
            "width": config.model.width,
            "arch": config.model.arch,
            "dataset": config.data.dataset,
            "seed": config.train.seed,
            "epochs": config.train.epochs,
            "steps": int(state.step),
            "train_attack_eps": config.train_attack.eps,
            "eval_attack": config.eval.attack.to_dict(),
            "lipschitz": None if self.evaluator.lipschitz is None else self.evaluator.lipschitz.to_dict(),
            "data": self.splits.metadata,
            "final": rows[-1] if rows else None,
            "config_hash": config_hash(to_dict(config)),
            "selected_by_val_robust_accuracy": progress.best_val,
            "selected_by_test_robust_accuracy_paper_protocol": progress.best_test,
            "train_seconds_total": sum(r.get("epoch_seconds", 0.0) for r in rows),
            "devices": jax.device_count(),
            "backend": jax.default_backend(),
            "precision": precision_record(config),
        }
        if self.is_main:
            self.run.write_summary(summary)
        return summary


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def train(config: ExperimentConfig, run_dir: str | Path, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns its summary."""
    return Trainer(config, run_dir).fit(stop_after_steps)


"""Evaluate a finished (or running) run's checkpoint with any attack or protocol::

    result = evaluate_run("runs/quick_fmnist", checkpoint="best_test", attack="cw20")
    result = evaluate_run("runs/quick_fmnist", protocol="autoattack-standard", examples=1000)

Writes ``RUN_DIR/eval/<checkpoint>_<split>_<attack>.json`` (summary, exact ε, attack
settings) and ``.npz`` (per-example arrays) atomically. A protocol (see
:mod:`nt_robust.attacks.protocols`) writes ``<checkpoint>_<split>_<protocol>_eps<ε>.json``
/ ``.npz``; while it runs, every finished batch is saved under ``….partial/``, so an
interrupted evaluation resumes where it stopped, and a finished one with the same
settings is returned without recomputing. ε is the run's ``eval.attack.eps`` unless
``eps`` (or ``--set eval.attack.eps=…``) says otherwise. Sanity flags
(:mod:`nt_robust.attacks.sanity`) are computed on the first 64 points, printed, and stored.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from nt_robust import io
import jax
import numpy as np

from nt_robust.attacks import CW20, FGSM, PGD20, AttackConfig
from nt_robust.attacks.protocols import BatchStore, ModelFn, get_protocol, run_protocol
from nt_robust.attacks.sanity import format_flags, sanity_flags
from nt_robust.config import ConfigError, apply_overrides, build
from nt_robust.metrics import summarize
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.loop import Trainer
from nt_robust.train.state import model_variables

ATTACKS: dict[str, AttackConfig] = {
    "pgd20": PGD20,
    "pgd20-0.003": dataclasses.replace(PGD20, step_size=0.003),
    "cw20": CW20,
    "fgsm": FGSM(PGD20.eps),
}


def protocol_result_stem(run_dir: str | Path, checkpoint: str, split: str, protocol: str, eps: float) -> Path:
    """Where a protocol's result lives: ``RUN_DIR/eval/<checkpoint>_<split>_<protocol>_eps<ε>``
    (+ ``.json`` / ``.npz``; built by hand because with_suffix would cut "eps0.1" at its dot)."""
    return Path(run_dir) / "eval" / f"{checkpoint}_{split}_{protocol}_eps{float(eps)!r}"


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are made by "
                                "`nt-robust train`")
    return build(ExperimentConfig, apply_overrides(io.read_json(path), list(overrides)))


SANITY_POINTS = 64


def _sanity(trainer: Trainer, variables: Any, images: np.ndarray, labels: np.ndarray, eps: float, seed: int,
            bn_mode: str, result: Any = None, show: bool = True) -> list[dict[str, Any]]:
    x = images[:SANITY_POINTS]
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    flags = sanity_flags(ModelFn(trainer.model, bn_mode), variables, x, labels[:SANITY_POINTS],
                         jax.random.key(seed), eps, bn_mode=bn_mode, result=result)
    if show:
        print("sanity checks:\n" + format_flags(flags), file=sys.stderr, flush=True)  # stdout: the JSON
    return [f.to_dict() for f in flags]


def evaluate_run(run_dir: str | Path, checkpoint: str = "best_test", attack: str | None = None,
                 split: str = "test", examples: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                 progress: bool = False, protocol: str | None = None, eps: float | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Evaluate checkpoint ``checkpoint`` of ``run_dir`` on ``split``; see the module docstring.

    ``attack`` (a PGD preset) and ``protocol`` are exclusive; with neither, the run's own
    ``eval.attack``. ``eps`` overrides ε for either; ``batch_size`` (protocols only) defaults
    to ``eval.batch_size``.
    """
    if attack is not None and protocol is not None:
        raise ConfigError("choose either an attack preset or a protocol, not both")
    for override in overrides:
        if not override.startswith("eval."):
            raise ConfigError(f"eval may only override eval.* settings (the model must match the "
                              f"checkpoint), got {override!r}")
    config = load_run_config(run_dir, overrides)
    if attack is not None:
        if attack not in ATTACKS:
            raise ConfigError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, attack=ATTACKS[attack]))
    if eps is not None:
        config = dataclasses.replace(config, eval=dataclasses.replace(
            config.eval, attack=dataclasses.replace(config.eval.attack, eps=eps)))
    if protocol is not None:
        get_protocol(protocol, config.eval.attack.eps)  # fail on a bad name before loading anything
    trainer = Trainer(config, run_dir)
    state, record = trainer.restore(checkpoint)
    variables = model_variables(state, use_ema=config.optim.ema_decay is not None)
    splits = trainer.splits
    images, labels = ((splits.test_images, splits.test_labels) if split == "test"
                      else (splits.val_images, splits.val_labels))
    if protocol is not None:
        return _evaluate_protocol(trainer, variables, int(state.step), images, labels, run_dir, checkpoint,
                                  split, examples, protocol, batch_size or config.eval.batch_size, progress)
    per_example = trainer.evaluator(variables, images, labels, examples, progress=progress)
    attack_name = attack or "config"
    result = {
        **summarize(per_example),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "epoch": record["progress"]["epoch"] if checkpoint == "latest" else None,
        "step": int(state.step),
        "split": split,
        "attack_name": attack_name,
        "attack": config.eval.attack.to_dict(),
        "lipschitz": None if trainer.evaluator.lipschitz is None else trainer.evaluator.lipschitz.to_dict(),
        "bn_mode": config.eval.bn_mode,
        "seed": config.train.seed,
        "sanity_flags": _sanity(trainer, variables, images, labels, config.eval.attack.eps,
                                config.train.seed, config.eval.bn_mode, show=progress),
    }
    stem = Path(run_dir) / "eval" / f"{checkpoint}_{split}_{attack_name}"
    io.save_arrays(Path(f"{stem}.npz"), per_example)   # not with_suffix: "pgd20-0.003" has a dot
    io.write_json(Path(f"{stem}.json"), result)
    return result


def _evaluate_protocol(trainer: Trainer, variables: Any, step: int, images: np.ndarray, labels: np.ndarray,
                       run_dir: str | Path, checkpoint: str, split: str, examples: int | None, name: str,
                       batch_size: int, progress: bool) -> dict[str, Any]:
    config = trainer.config
    protocol = get_protocol(name, config.eval.attack.eps)
    if examples is not None:
        images, labels = images[:examples], labels[:examples]
    fingerprint = {"protocol": protocol.to_dict(), "checkpoint": checkpoint, "step": step, "split": split,
                   "num_examples": int(len(labels)), "seed": config.train.seed, "batch_size": batch_size,
                   "bn_mode": config.eval.bn_mode}
    stem = protocol_result_stem(run_dir, checkpoint, split, name, protocol.eps)
    json_path, npz_path = Path(f"{stem}.json"), Path(f"{stem}.npz")
    store = BatchStore(Path(f"{stem}.partial"), fingerprint)
    if json_path.exists() and npz_path.exists():
        previous = io.read_json(json_path)
        if previous.get("fingerprint") == store.fingerprint:
            if progress:
                print(f"{json_path} is finished with these settings: not recomputed", file=sys.stderr, flush=True)
            return previous
    report = None
    if progress:
        if store.done:
            print(f"resuming {name}: {len(store.done)} batch(es) already done", file=sys.stderr, flush=True)

        def report(done: int, total: int) -> None:
            print(f"{name} (eps={protocol.eps!r}): batch {done}/{total}", file=sys.stderr, flush=True)

    result = run_protocol(protocol, ModelFn(trainer.model, config.eval.bn_mode), variables, images, labels,
                          seed=config.train.seed, batch_size=batch_size, store=store, progress=report)
    summary = {
        **result.summary(),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "step": step,
        "split": split,
        "bn_mode": config.eval.bn_mode,
        "fingerprint": store.fingerprint,
        "sanity_flags": _sanity(trainer, variables, images, labels, protocol.eps, config.train.seed,
                                config.eval.bn_mode, result=result, show=progress),
    }
    io.save_arrays(npz_path, result.per_example)
    io.write_json(json_path, summary)
    store.clear()
    return summary

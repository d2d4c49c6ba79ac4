"""Evaluate a finished (or running) run's checkpoint with any attack::

    result = evaluate_run("runs/quick_fmnist", checkpoint="best_test", attack="cw20")

Writes ``RUN_DIR/eval/<checkpoint>_<split>_<attack>.json`` (summary, exact ε, attack
settings) and ``.npz`` (per-example arrays) atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nt_robust import io
from nt_robust.attacks import CW20, FGSM, PGD20, AttackConfig
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


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are made by "
                                "`nt-robust train`")
    return build(ExperimentConfig, apply_overrides(io.read_json(path), list(overrides)))


def evaluate_run(run_dir: str | Path, checkpoint: str = "best_test", attack: str | None = None,
                 split: str = "test", examples: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                 progress: bool = False) -> dict[str, Any]:
    for override in overrides:
        if not override.startswith("eval."):
            raise ConfigError(f"eval may only override eval.* settings (the model must match the "
                              f"checkpoint), got {override!r}")
    config = load_run_config(run_dir, overrides)
    if attack is not None:
        if attack not in ATTACKS:
            raise ConfigError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, attack=ATTACKS[attack]))
    trainer = Trainer(config, run_dir)
    state, record = trainer.restore(checkpoint)
    variables = model_variables(state, use_ema=config.optim.ema_decay is not None)
    splits = trainer.splits
    images, labels = ((splits.test_images, splits.test_labels) if split == "test"
                      else (splits.val_images, splits.val_labels))
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
    }
    stem = Path(run_dir) / "eval" / f"{checkpoint}_{split}_{attack_name}"
    io.save_arrays(stem.with_suffix(".npz"), per_example)
    io.write_json(stem.with_suffix(".json"), result)
    return result

"""A run's checkpoint restored without a Trainer: its config, models and weights, and no data::

    run = restore_run("runs/wrn", "best_val")        # the config read from runs/wrn/config.json
    logits = run.model.apply(run.variables, images, train=False)
    run.eval_model, run.step, run.record, run.image_shape, run.num_classes

This is what evaluating (:mod:`nt_robust.evaluate`) and exporting (:mod:`nt_robust.export`)
a run need, and what :meth:`nt_robust.train.Trainer.restore` does. Nothing here loads the
dataset, builds an optimizer step or reads another run (a WAR run's reference stays
unread). The arrays land on ``sharding`` (default: this process's first device, whatever
devices the run trained on).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from nt_robust import storage
from nt_robust.config import ConfigError, apply_overrides, build
from nt_robust.models import create_model
from nt_robust.train.checkpoints import Checkpointer
from nt_robust.train.config import ExperimentConfig, input_shape
from nt_robust.train.state import TrainState, initial_state, model_variables

# How each checkpoint was chosen; printed and recorded next to every number.
SELECTION_RULES = {
    "best_val": "epoch with the highest validation robust accuracy (held-out selection)",
    "best_test": "epoch with the highest test robust accuracy (the paper's protocol; optimistic on the test split)",
    "latest": "last saved checkpoint (no selection)",
}
IMPORTED_RULE = "imported weights (nt-robust import; every checkpoint name holds them, no selection)"


def selection_rule(run_dir: str | Path, checkpoint: str) -> str:
    """How ``checkpoint`` of ``run_dir`` was chosen (an imported directory: not chosen)."""
    return IMPORTED_RULE if (Path(run_dir) / "imported.json").exists() else SELECTION_RULES[checkpoint]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/config.json`` as written (a dict); a clear error where there is none."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are made by "
                                "`nt-robust train`")
    return storage.read_json(path)


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The run's ``ExperimentConfig``, with ``--set``-style ``overrides`` applied and validated."""
    return build(ExperimentConfig, apply_overrides(read_run_config(run_dir), list(overrides)))


def abstract_state(config: ExperimentConfig, model: nn.Module, image_shape: tuple[int, int, int],
                   sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """The training state's structure, shapes and dtypes (nothing allocated), each array placed
    on ``sharding`` (default: this process's first device): what a checkpoint is restored into."""
    # Without a target sharding orbax would ask for the writer's topology and refuse on another one.
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda: initial_state(config, model, image_shape))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """One checkpoint of a run: ``state`` (the whole TrainState) and ``record`` as saved."""

    run_dir: Path
    checkpoint: str
    config: ExperimentConfig
    model: nn.Module              # at model.dtype, as trained
    state: TrainState
    record: dict[str, Any]
    image_shape: tuple[int, int, int]
    num_classes: int

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``model.apply``: the EMA weights when the run kept them."""
        return model_variables(self.state, use_ema=self.config.optim.ema_decay is not None)

    @property
    def step(self) -> int:
        return int(self.state.step)

    @functools.cached_property
    def eval_model(self) -> nn.Module:
        """The same parameters computed in ``eval.dtype`` (float32 unless set)."""
        return create_model(self.config.model, self.num_classes, dtype=self.config.eval.dtype)


def restore_run(run_dir: str | Path, checkpoint: str = "best_val", config: ExperimentConfig | None = None,
                sharding: jax.sharding.Sharding | None = None) -> RestoredRun:
    """Checkpoint ``checkpoint`` ("best_val", "best_test" or "latest") of ``run_dir``.
    ``config``: the run's config as already loaded (e.g. with ``eval.*`` overrides; the
    model, optimizer and data sections must be the run's), else read from ``config.json``.
    ``sharding``: where every array goes (the Trainer passes its replicated mesh sharding)."""
    if checkpoint not in SELECTION_RULES:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; choose one of {sorted(SELECTION_RULES)}")
    config = config or load_run_config(run_dir)
    image_shape, num_classes = input_shape(config.data)
    model = create_model(config.model, num_classes)
    directory = Path(run_dir) / "checkpoints"
    checkpoints = Checkpointer(directory, keep=config.train.keep_checkpoints, writer=False)
    try:
        restored = checkpoints.restore(checkpoint, abstract_state(config, model, image_shape, sharding))
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{directory / checkpoint} holds no checkpoint yet (best_val needs "
                                "data.val_size > 0; best_test needs eval.test_examples > 0)")
    state, record = restored
    return RestoredRun(Path(run_dir), checkpoint, config, model, state, record, tuple(image_shape), num_classes)

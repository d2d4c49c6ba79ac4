"""Orbax checkpoints of the full :class:`TrainState` plus a JSON record per checkpoint.

Layout under ``RUN_DIR/checkpoints``: ``latest/`` (the ``keep`` most recent, written at
epoch ends and every ``checkpoint_every_steps``), ``best_val/`` and ``best_test/`` (one
each). Orbax writes into a temporary directory and renames it when complete, so a crash
never leaves a half checkpoint that a resume would pick up::

    checkpoints = Checkpointer(run_dir / "checkpoints", keep=2)
    checkpoints.save("latest", state, {"epoch": 3, ...})
    state, record = checkpoints.restore("latest", abstract_state)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

KINDS = ("latest", "best_val", "best_test")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model/optimizer the config describes."""


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self._managers = {
            kind: ocp.CheckpointManager(
                self.directory / kind,
                options=ocp.CheckpointManagerOptions(max_to_keep=keep if kind == "latest" else 1, create=True),
            )
            for kind in KINDS
        }

    def latest_step(self, kind: str = "latest") -> int | None:
        return self._managers[kind].latest_step()

    def save(self, kind: str, state: Any, record: dict[str, Any]) -> None:
        step = int(state.step)
        manager = self._managers[kind]
        if kind != "latest" and manager.latest_step() == step:
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    record=ocp.args.JsonSave(record)), force=True)
        manager.wait_until_finished()

    def restore(self, kind: str, like_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The checkpoint of ``kind`` (latest step unless given) restored into the structure,
        shapes and shardings of ``like_state``, or None if there is none."""
        manager = self._managers[kind]
        abstract_state = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / kind / str(step)} does not match the model and optimizer "
                f"of this config ({type(error).__name__}: {str(error)[:300]}). It was written by a "
                "different model/width/optimizer: point to the run directory that made it, or start "
                "a new run with another name.") from None
        return restored["state"], dict(restored["record"])

    def close(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()
            manager.close()

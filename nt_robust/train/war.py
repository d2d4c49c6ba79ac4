"""WAR's λ controller (our reconstruction, in two readings; see :class:`WarConfig`)::

    ratio = reference_ratio("runs/width16_lam6", mode=config.war.mode)   # the small model's
    controller = WarController(config.war, base_lam=config.objective.lam, target_ratio=ratio)
    lam_next, state = controller.update(state_dict, epoch, natural_loss, regularizer, lam)

The controller is a pure function of its small state dict (kept in every checkpoint's
record), so a resumed run takes the same λ path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nt_robust import storage
from nt_robust.train.config import WarConfig


def epoch_ratio(lam: float, natural_loss: float, regularizer: float, mode: str = "weighted_ratio") -> float:
    """One epoch's ratio of mean training terms: ρ = λ · R_rob / R_nat ("weighted_ratio")
    or r = R_rob / R_nat ("unweighted_ratio")."""
    weight = lam if mode == "weighted_ratio" else 1.0
    return weight * regularizer / max(natural_loss, 1e-12)


def reference_ratio(run_dir: str | Path, mode: str = "weighted_ratio") -> float:
    """ρ_s or r_s of a finished (small-model) run: the mean of its per-epoch ratios."""
    rows = storage.read_jsonl(Path(run_dir) / "metrics.jsonl")
    if not rows:
        raise FileNotFoundError(f"war.reference_run {run_dir} has no metrics.jsonl: train the small model first")
    ratios = [epoch_ratio(r["lam"], r["train_natural_loss"], r["train_regularizer"], mode) for r in rows]
    return sum(ratios) / len(ratios)


class WarController:
    def __init__(self, config: WarConfig, base_lam: float, target_ratio: float):
        self.config = config
        self.target_ratio = target_ratio
        self.min_lam = base_lam if config.min_lam is None else config.min_lam
        self.max_lam = config.max_lam

    def update(self, state: dict[str, Any] | None, epoch: int, natural_loss: float,
               regularizer: float, lam: float) -> tuple[float, dict[str, Any]]:
        """After epoch ``epoch`` (1-based) with mean training terms, the λ for the next
        epoch and the controller's new state."""
        m = self.config.momentum
        if not state:
            state = {"natural": natural_loss, "regularizer": regularizer}
        else:
            state = {"natural": m * state["natural"] + (1 - m) * natural_loss,
                     "regularizer": m * state["regularizer"] + (1 - m) * regularizer}
        if epoch < self.config.warmup_epochs:
            return lam, state
        if state["regularizer"] <= 0 or not math.isfinite(state["regularizer"]):
            # No robust term left to weigh: reading A's λ = ρ_s·R_nat/R_rob is unbounded; reading
            # B's ratio is 0 < r_s, which lowers λ.
            return (self.max_lam if self.config.mode == "weighted_ratio" else self.min_lam), state
        if self.config.mode == "weighted_ratio":
            proposal = self.target_ratio * state["natural"] / state["regularizer"]
        else:
            ratio = epoch_ratio(1.0, state["natural"], state["regularizer"], "unweighted_ratio")
            proposal = lam * (ratio / self.target_ratio) ** self.config.gain
        return min(max(proposal, self.min_lam), self.max_lam), state

"""The one way every consumer (attacks, objectives, metrics, theory) calls a model.

A model is seen as a pure function of its input: ``logits = logits_fn(x)`` with ``x`` a
float batch in [0, 1], NHWC. Whether BatchNorm uses running statistics or the batch's own
statistics while this function is evaluated is an explicit choice, ``bn_mode``::

    logits_fn = make_logits_fn(model, variables, bn_mode="eval")
    logits = logits_fn(x)            # (N, num_classes)

``bn_mode="eval"`` (running statistics) is what TRADES and the paper's code use during
attacks and evaluation. ``bn_mode="train"`` normalizes with the batch's statistics but
throws the updated running averages away, so an attack never changes the model.
The logits are float32 whatever the model's compute dtype (``model.dtype``), so every loss
on them is; ``x`` stays float32 too (the model casts its own copy).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import flax.linen as nn
import jax

from nt_robust.models.layers import float32_logits

LogitsFn = Callable[[jax.Array], jax.Array]
BNMode = Literal["eval", "train"]
BN_MODES: tuple[str, ...] = ("eval", "train")


def make_logits_fn(model: nn.Module, variables: Any, bn_mode: BNMode = "eval") -> LogitsFn:
    """Close ``model.apply`` over ``variables`` and a BatchNorm mode."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if bn_mode == "eval":
        return lambda x: float32_logits(model.apply(variables, x, train=False))

    def train_mode_logits(x: jax.Array) -> jax.Array:
        logits, _discarded_stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return float32_logits(logits)

    return train_mode_logits

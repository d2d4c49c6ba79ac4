"""Optimizer and learning-rate schedules (docs/paper.md §4)::

    optimizer = make_optimizer(config.optim, epochs=100, steps_per_epoch=391)
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from nt_robust.train.config import OptimConfig


def make_schedule(config: OptimConfig, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate as a function of the optimizer step."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, decay_steps=max(1, epochs * steps_per_epoch))
    if config.schedule == "piecewise":
        boundaries = {int(m) * steps_per_epoch: config.decay for m in config.milestones if m < epochs}
        return optax.piecewise_constant_schedule(config.lr, boundaries)
    start_epoch = int(round(config.late_halving_start * epochs))

    def late_halving(step):
        epoch = step // steps_per_epoch
        halvings = jnp.maximum(0, epoch - start_epoch + 1)
        return config.lr * 0.5 ** halvings

    return late_halving


def make_optimizer(config: OptimConfig, epochs: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD + momentum with PyTorch-style weight decay (added to the gradient before momentum)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(make_schedule(config, epochs, steps_per_epoch), momentum=config.momentum or None,
                  nesterov=config.nesterov),
    )

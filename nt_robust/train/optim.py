"""Optimizer and learning-rate schedules (docs/paper.md §4)::

    optimizer = make_optimizer(config.optim, epochs=100, steps_per_epoch=391)
    epoch_rates(config.optim, epochs=100)   # the rate of each 1-based epoch, [0.1, 0.1, ...]

Epochs are 1-based here, as in the reference code (``for epoch in range(1, epochs + 1)``):
optimizer step ``s`` belongs to epoch ``s // steps_per_epoch + 1``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from nt_robust.train.config import OptimConfig


def late_halving_rates(lr: float, epochs: int, start: float = 0.75) -> list[float]:
    """The authors' ``lr_early_stop`` (tabrisweapon/A-temp-project, train_cifar10.py) for
    1-based epochs 1..``epochs``: from epoch ⌊start·E⌋ on the rate is
    lr · 0.5^trunc((epoch − (start − 0.01)·E) / P) with P = ⌊E/100⌋ (their code has start
    0.75, offset 0.74·E). When E < 100 their P is 0 and their code raises
    ZeroDivisionError; we use P = max(1, ⌊E/100⌋), i.e. halve every epoch. ``trunc`` rounds
    toward zero like Python's ``int``, so an epoch just below the offset gets no halving::

        late_halving_rates(0.1, 100)[73:77]   # epochs 74..77: [0.1, 0.05, 0.025, 0.0125]
    """
    period = max(1, epochs // 100)
    first = int(epochs * start)
    offset = epochs * (start - 0.01)   # == epochs * 0.74 bitwise for start = 0.75 (tests check it)
    return [lr if epoch < first else lr * 0.5 ** int((epoch - offset) / period) for epoch in range(1, epochs + 1)]


def _legacy_late_halving(config: OptimConfig, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """This code's rule before issue 11 (kept bit for bit so old runs resume unchanged):
    halve every epoch from 0-based epoch round(start·E) on, one epoch after the authors'."""
    start_epoch = int(round(config.late_halving_start * epochs))

    def late_halving(step):
        epoch = step // steps_per_epoch
        halvings = jnp.maximum(0, epoch - start_epoch + 1)
        return config.lr * 0.5 ** halvings

    return late_halving


def make_schedule(config: OptimConfig, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate as a function of the (0-based) optimizer step; see OptimConfig for the
    schedules and their conventions."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, decay_steps=max(1, epochs * steps_per_epoch))
    if config.schedule == "piecewise":
        if config.milestone_convention == "trades":
            # TRADES' `if epoch >= m` on 1-based epochs: the decay starts with the first step of epoch m.
            boundaries = {(int(m) - 1) * steps_per_epoch: config.decay for m in config.milestones if m <= epochs}
        else:
            boundaries = {int(m) * steps_per_epoch: config.decay for m in config.milestones if m < epochs}
        return optax.piecewise_constant_schedule(config.lr, boundaries)
    if config.late_halving_rule == "legacy":
        return _legacy_late_halving(config, epochs, steps_per_epoch)
    rates = jnp.asarray(late_halving_rates(config.lr, epochs, config.late_halving_start), dtype=jnp.float32)

    def late_halving(step):
        return rates[jnp.clip(step // steps_per_epoch, 0, epochs - 1)]

    return late_halving


def epoch_rates(config: OptimConfig, epochs: int, steps_per_epoch: int = 1) -> list[float]:
    """The rate at the first step of each 1-based epoch 1..``epochs`` (every schedule but
    "cosine" is constant within an epoch)."""
    schedule = make_schedule(config, epochs, steps_per_epoch)
    return [float(np.asarray(schedule(epoch * steps_per_epoch))) for epoch in range(epochs)]


def make_optimizer(config: OptimConfig, epochs: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD + momentum with PyTorch-style weight decay (added to the gradient before momentum)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(make_schedule(config, epochs, steps_per_epoch), momentum=config.momentum or None,
                  nesterov=config.nesterov),
    )

"""The complete training state: everything an exact resume needs, as one pytree, and the
one function that builds it at step 0::

    state = initial_state(config, model, image_shape=(32, 32, 3), steps_per_epoch=391)
    shapes = jax.eval_shape(lambda: initial_state(config, model, (32, 32, 3)))   # no allocation

Data order and per-step randomness are functions of (seed, step), so the state carries
no RNG stream: ``seed`` and ``step`` are enough to reproduce the rest of the run. The seed
is an array, not a compile-time constant, so runs that differ only in seed or λ share
one compiled program (and the persistent compilation cache).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from nt_robust.models import init_variables
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.optim import make_optimizer


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array                 # int32 scalar, optimizer steps taken
    params: Any
    batch_stats: Any                # BatchNorm running statistics ({} for models without BN)
    opt_state: optax.OptState
    ema_params: Any                 # exponential moving average of params (None when off)
    lam: jax.Array                  # float32 scalar, current robust weight (WAR may move it)
    seed: jax.Array                 # int32 scalar, root of the per-step randomness


def create_train_state(variables: Any, optimizer: optax.GradientTransformation, lam: float,
                       use_ema: bool, seed: int = 0) -> TrainState:
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None,
        lam=jnp.asarray(lam, jnp.float32),
        seed=jnp.asarray(seed, jnp.int32),
    )


def init_key(seed: int) -> jax.Array:
    """The key that initializes the model's parameters."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def initial_state(config: ExperimentConfig, model: nn.Module, image_shape: Sequence[int],
                  steps_per_epoch: int = 1, optimizer: optax.GradientTransformation | None = None) -> TrainState:
    """The training state of ``config`` at step 0: ``model``'s parameters drawn from
    :func:`init_key` of ``train.seed``, the optimizer's state, EMA weights when
    ``optim.ema_decay`` is set, λ = ``objective.lam``. ``optimizer`` defaults to
    ``make_optimizer(config.optim, train.epochs, steps_per_epoch)``; the state's structure
    does not depend on ``steps_per_epoch`` (only the schedule's values do), so 1 serves
    where only shapes are needed (restoring a checkpoint, counting FLOPs)."""
    optimizer = optimizer or make_optimizer(config.optim, config.train.epochs, steps_per_epoch)
    variables = init_variables(model, init_key(config.train.seed), tuple(image_shape))
    return create_train_state(variables, optimizer, config.objective.lam,
                              use_ema=config.optim.ema_decay is not None, seed=config.train.seed)


def model_variables(state: TrainState, use_ema: bool = False) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` for ``model.apply``; EMA weights when asked and kept."""
    params = state.ema_params if use_ema and state.ema_params is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables

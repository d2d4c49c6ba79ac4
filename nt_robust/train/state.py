"""The complete training state: everything an exact resume needs, as one pytree.

Data order and per-step randomness are functions of (seed, step), so the state carries
no RNG stream: ``seed`` and ``step`` are enough to reproduce the rest of the run. The seed
is an array, not a compile-time constant, so runs that differ only in seed or λ share
one compiled program (and the persistent compilation cache).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


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


def model_variables(state: TrainState, use_ema: bool = False) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` for ``model.apply``; EMA weights when asked and kept."""
    params = state.ema_params if use_ema and state.ema_params is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables

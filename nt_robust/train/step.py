"""One training step: augment -> inner maximization -> objective -> SGD update.

    train_step = make_train_step(model, config, optimizer)
    state, metrics = train_step(state, images_uint8, labels)     # jit it with shardings

Randomness is ``fold_in(step_key_root(seed), step)``: the same config and seed give the same step
on any number of devices. The attack sees the model with stopped gradients and
BatchNorm in ``objective.attack_bn_mode``; the objective then runs both forward passes in
training mode, clean first and adversarial second, each updating the running statistics
(as the TRADES code does).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nt_robust.attacks import pgd
from nt_robust.data import augment_batch, to_float
from nt_robust.models import make_logits_fn
from nt_robust.objectives import objective_terms
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.state import TrainState, model_variables

TrainStep = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def forward_train(model: nn.Module, params: Any, batch_stats: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """Training-mode forward pass; returns logits and the updated BatchNorm statistics."""
    if not batch_stats:
        return model.apply({"params": params}, x, train=True), batch_stats
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
    return logits, updates["batch_stats"]


def init_key(seed: int) -> jax.Array:
    """The key that initializes the model's parameters."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def step_key_root(seed: int | jax.Array) -> jax.Array:
    """Step ``s`` draws its augmentation and attack randomness from ``fold_in(root, s)``."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def make_train_step(model: nn.Module, config: ExperimentConfig,
                    optimizer: optax.GradientTransformation) -> TrainStep:
    objective, data = config.objective, config.data
    ema_decay = config.optim.ema_decay

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        key = jax.random.fold_in(step_key_root(state.seed), state.step)
        augment_key, attack_key = jax.random.split(key)
        x = augment_batch(augment_key, to_float(images), crop_padding=data.crop_padding, flip=data.flip)

        x_adv = None
        if objective.kind != "natural":
            frozen = jax.lax.stop_gradient(model_variables(state))
            logits_fn = make_logits_fn(model, frozen, objective.attack_bn_mode)
            x_adv = jax.lax.stop_gradient(pgd(logits_fn, x, labels, attack_key, config.train_attack))

        def loss_fn(params):
            clean_logits, stats = forward_train(model, params, state.batch_stats, x)
            adv_logits = None
            if x_adv is not None:
                adv_logits, stats = forward_train(model, params, stats, x_adv)
            terms = objective_terms(objective.kind, state.lam, clean_logits, adv_logits, labels,
                                    objective.clip_regularizer)
            return terms.total, (terms, stats, clean_logits)

        (_, (terms, batch_stats, clean_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema_params=ema_params)
        metrics = {
            "loss": terms.total,
            "natural_loss": terms.natural,
            "regularizer": terms.regularizer,
            "accuracy": jnp.mean(jnp.argmax(clean_logits, -1) == labels),
            "grad_norm": optax.tree.norm(grads),
            "lam": state.lam,
        }
        return new_state, metrics

    return train_step

"""One training step: augment -> inner maximization -> objective -> SGD update.

    train_step = make_train_step(model, config, optimizer)
    state, metrics = train_step(state, images_uint8, labels)     # jit it with shardings

Randomness is ``fold_in(step_key_root(seed), step)``: the same config and seed give the same step
on any number of devices. The attack sees the model with stopped gradients and
BatchNorm in ``objective.attack_bn_mode``; the objective then runs its forward passes in
training mode, each updating the BatchNorm running statistics, in the order
``objective.bn_passes`` names (:func:`training_passes`): "authors" (default) as the paper's
authors' code — trades: clean, adversarial; pgd_at: adversarial, clean — or "trades" as
the TRADES code — clean, adversarial, clean (pgd_at: clean, adversarial). The loss and
gradients do not depend on the order; only the running statistics do.
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
from nt_robust.models.layers import float32_logits
from nt_robust.objectives import objective_terms
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.state import TrainState, model_variables

TrainStep = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def forward_train(model: nn.Module, params: Any, batch_stats: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """Training-mode forward pass; returns logits (float32 whatever ``model.dtype``) and the
    updated BatchNorm statistics (float32)."""
    if not batch_stats:
        return float32_logits(model.apply({"params": params}, x, train=True)), batch_stats
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
    return float32_logits(logits), updates["batch_stats"]


def pass_order(kind: str, bn_passes: str) -> tuple[str, ...]:
    """The training-mode passes of objective ``kind`` in the order ``bn_passes`` makes them::

        pass_order("trades", "trades")   # ("clean", "adversarial", "clean"): TRADES' trades_loss
        pass_order("pgd_at", "authors")  # ("adversarial", "clean"): the authors' madry_loss
    """
    if kind == "natural":
        return ("clean",)
    if bn_passes == "trades":
        return ("clean", "adversarial", "clean") if kind == "trades" else ("clean", "adversarial")
    if bn_passes == "authors":
        return ("adversarial", "clean") if kind == "pgd_at" else ("clean", "adversarial")
    raise ValueError(f"objective.bn_passes must be 'authors' or 'trades', got {bn_passes!r}")


def training_passes(model: nn.Module, params: Any, batch_stats: Any, x: jax.Array, x_adv: jax.Array | None,
                    order: tuple[str, ...]) -> tuple[jax.Array, jax.Array | None, Any]:
    """Training-mode forward passes in ``order`` (from :func:`pass_order`), each updating the
    BatchNorm running statistics; returns (clean logits, adversarial logits, statistics).

    A training-mode pass normalizes with its own batch's statistics, so its logits do not
    depend on the running statistics it is given: a repeated clean pass (TRADES' third) gives
    the first clean pass's logits, and the loss uses those; it only updates the statistics
    once more. Without BatchNorm the order is moot and a repeated pass is skipped."""
    logits: dict[str, jax.Array] = {}
    for name in order:
        if name in logits and not batch_stats:
            continue
        out, batch_stats = forward_train(model, params, batch_stats, x if name == "clean" else x_adv)
        logits.setdefault(name, out)
    return logits["clean"], logits.get("adversarial"), batch_stats


def step_key_root(seed: int | jax.Array) -> jax.Array:
    """Step ``s`` draws its augmentation and attack randomness from ``fold_in(root, s)``."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def make_train_step(model: nn.Module, config: ExperimentConfig,
                    optimizer: optax.GradientTransformation) -> TrainStep:
    objective, data = config.objective, config.data
    ema_decay = config.optim.ema_decay
    order = pass_order(objective.kind, objective.bn_passes)

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
            clean_logits, adv_logits, stats = training_passes(model, params, state.batch_stats, x, x_adv, order)
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

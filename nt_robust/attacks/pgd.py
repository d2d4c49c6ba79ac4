"""Projected gradient ascent (PGD, FGSM) on a model seen as a pure ``logits_fn``.

    from nt_robust.attacks import PGD20, FGSM, pgd, make_attack

    x_adv = pgd(logits_fn, x, y, key, PGD20)                   # traceable, not jitted
    x_adv = jax.jit(pgd, static_argnums=(0, 4))(logits_fn, x, y, key, PGD20)
    attack = jax.jit(make_attack(logits_fn, PGD20))            # fn(x, y, key) -> x_adv
    x_fgsm = pgd(logits_fn, x, y, None, FGSM(0.031))           # no random start: no key

An attack is a loss (:mod:`.losses`), a start, a step rule and a projection
(:mod:`.parts`) run for ``num_steps`` iterations of::

    g = ∇ₓ Σ_i loss(logits_fn(x_adv)_i, target_i)     # sum: each example's step is its own
    x_adv = project(x_adv + step(g), x, ε)            # projection includes the [0, 1] clip

:func:`projected_ascent` is that loop for any per-example objective (the local Lipschitz
estimates in :mod:`nt_robust.metrics` reuse it).

Restarts: restart ``r`` draws its start from ``restart_key(key, r)`` =
``jax.random.fold_in(key, r)``, so restart ``r`` is the same whatever ``restarts`` is.
Selection criterion: for each example, the final point of the restart with the highest
attack loss (the config's own loss) at that point; ties keep the earlier restart. No
preference is given to misclassified points, so for CE a correctly classified point with
a higher CE can win over a misclassified one; with the CW loss, highest margin implies
misclassified whenever any restart misclassifies.

Inside a jitted train step, call :func:`pgd` directly with a ``logits_fn`` closed over
the traced parameters; the result is wrapped in ``stop_gradient``, so the training loss
never differentiates through the attack.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nt_robust.attacks.config import AttackConfig
from nt_robust.attacks.losses import LOSSES
from nt_robust.attacks.loops import run_loop
from nt_robust.attacks.parts import PROJECTIONS, STEP_RULES, make_start
from nt_robust.models.apply import BNMode, LogitsFn, make_logits_fn

Objective = Callable[[jax.Array], jax.Array]  # x_adv -> per-example value (N,) to maximize
Attack = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


class AscentResult(NamedTuple):
    """What one projected-ascent run leaves: the final point and what was seen on the way."""

    x_adv: jax.Array        # final iterate, in B(x, ε) ∩ [0, 1]
    loss: jax.Array         # objective at x_adv, per example
    max_grad_l1: jax.Array  # max over the steps of ‖∇ₓ objective‖₁ at each iterate (0 if no steps)


def _per_example_l1(v: jax.Array) -> jax.Array:
    return jnp.sum(jnp.abs(v), axis=tuple(range(1, v.ndim)))


def projected_ascent(objective: Objective, x: jax.Array, x_start: jax.Array, *, norm: str,
                     eps: float, step_size: float, num_steps: int, loop: str = "auto") -> AscentResult:
    """Run ``num_steps`` of steepest ascent on ``objective`` from ``x_start`` (already projected).

    The gradient is that of ``sum(objective(x_adv))``: as long as the objective treats
    examples independently, each example follows its own gradient.
    """
    step_rule, project = STEP_RULES[norm], PROJECTIONS[norm]
    gradient = jax.grad(lambda x_adv: jnp.sum(objective(x_adv)))

    def step(_, carry):
        x_adv, max_grad_l1 = carry
        grad = gradient(x_adv)
        x_adv = project(x_adv + step_rule(grad, eps, step_size), x, eps)
        return x_adv, jnp.maximum(max_grad_l1, _per_example_l1(grad))

    init = (x_start, jnp.zeros(x.shape[:1], x.dtype))
    x_adv, max_grad_l1 = run_loop(0, num_steps, step, init, loop)
    x_adv = jax.lax.stop_gradient(x_adv)
    return AscentResult(x_adv, objective(x_adv), jax.lax.stop_gradient(max_grad_l1))


def restart_key(key: jax.Array, restart: int | jax.Array) -> jax.Array:
    """The key restart ``restart`` draws its random start from."""
    return jax.random.fold_in(key, restart)


def attack_objective(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, loss: str) -> Objective:
    """``x_adv -> loss(logits_fn(x_adv), target)`` with the target the loss needs:
    the labels for "ce"/"cw", the clean logits ``logits_fn(x)`` for "kl"."""
    loss_fn = LOSSES[loss]
    target = jax.lax.stop_gradient(logits_fn(x)) if loss == "kl" else y
    return lambda x_adv: loss_fn(logits_fn(x_adv), target)


def _one_restart(objective: Objective, x: jax.Array, key: jax.Array | None, restart: int | jax.Array,
                 config: AttackConfig) -> AscentResult:
    start_key = None if config.start == "none" else restart_key(key, restart)
    start = make_start(config.start, config.norm, config.start_std)
    x_start = PROJECTIONS[config.norm](start(start_key, x, config.eps), x, config.eps)
    return projected_ascent(objective, x, x_start, norm=config.norm, eps=config.eps,
                            step_size=config.step_size, num_steps=config.num_steps, loop=config.loop)


def pgd_restart(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None,
                config: AttackConfig, restart: int = 0) -> AscentResult:
    """Restart number ``restart`` of the attack alone (its start key: ``restart_key(key, restart)``)."""
    objective = attack_objective(logits_fn, x, y, config.loss)
    return _one_restart(objective, x, key, restart, config)


def pgd_with_loss(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None,
                  config: AttackConfig) -> tuple[jax.Array, jax.Array]:
    """Like :func:`pgd`, also returning the per-example attack loss at ``x_adv``."""
    if key is None and config.start != "none":
        raise ValueError(f"start={config.start!r} is random: pass a PRNG key")
    objective = attack_objective(logits_fn, x, y, config.loss)
    first = _one_restart(objective, x, key, 0, config)

    def keep_worst(restart, best):
        best_x, best_loss = best
        candidate = _one_restart(objective, x, key, restart, config)
        better = candidate.loss > best_loss
        mask = better.reshape(better.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, candidate.x_adv, best_x), jnp.where(better, candidate.loss, best_loss)

    return run_loop(1, config.restarts, keep_worst, (first.x_adv, first.loss), config.loop)


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None,
        config: AttackConfig) -> jax.Array:
    """Adversarial examples for ``x`` (float NHWC in [0, 1]) with integer labels ``y``.

    Traceable (no jit inside): call it from your own jitted function, or jit it with
    ``static_argnums=(0, 4)``. ``key`` may be None only when ``config.start == "none"``.
    """
    return pgd_with_loss(logits_fn, x, y, key, config)[0]


def make_attack(logits_fn: LogitsFn, config: AttackConfig) -> Attack:
    """``fn(x, y, key) -> x_adv`` for a fixed model and config, ready for ``jax.jit``."""

    def attack(x: jax.Array, y: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return pgd(logits_fn, x, y, key, config)

    return attack


def attack_model(model: nn.Module, variables: Any, x: jax.Array, y: jax.Array, key: jax.Array | None,
                 config: AttackConfig, bn_mode: BNMode = "eval") -> jax.Array:
    """:func:`pgd` against ``model.apply(variables, ...)`` with BatchNorm in ``bn_mode``.

    With ``bn_mode="train"`` the batch statistics couple the examples of a batch, so an
    example's adversarial point depends on the rest of the batch.
    """
    return pgd(make_logits_fn(model, variables, bn_mode), x, y, key, config)

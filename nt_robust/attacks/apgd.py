"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that halves itself.

    from nt_robust.attacks.apgd import APGDConfig, apgd

    result = apgd(logits_fn, x, y, key, APGDConfig(eps=8 / 255))                  # APGD-CE
    result = apgd(logits_fn, x, y, key, APGDConfig(eps=8 / 255, loss="dlr"))      # APGD-DLR
    result = apgd(logits_fn, x, y, key, APGDConfig(eps=8 / 255, loss="targeted_dlr",
                                                   num_targets=9))               # APGD-T
    result.x_adv, result.fooled, result.loss      # (N, ...), (N,) bool, (N,) best loss

Traceable: jit it with ``static_argnums=(0, 4)``. One run, per example (all state is
per example; the schedule below is fixed in advance, so nothing depends on the data on
the Python side):

- start ``x + ε·t/‖t‖`` (ℓ∞: ``t ~ U(-1, 1)``; ℓ2: ``t ~ N(0, I)``), clipped to [0, 1];
  step size ``η = 2ε``;
- ``z = P(x_k + η·s(∇))``, ``x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1}))`` with
  ``a = 1`` at the first step and the momentum ``a = 0.75`` afterwards, ``s`` the sign
  (ℓ∞) or the normalized gradient (ℓ2), ``P`` the projection onto the ball and [0, 1];
- checkpoints after ``w_1 = ⌊0.22·T⌋`` steps, then windows shrinking by ``⌊0.03·T⌋`` down
  to ``⌊0.06·T⌋``. At a checkpoint an example halves its step and goes back to its best
  point (and that point's gradient) if the loss rose in at most ``ρ = 75%`` of the window's
  steps, or if its step was not halved at the previous checkpoint and its best loss has
  not improved since. As in the published code, the first window compares the first
  step's loss to 0.

Returned per example: a misclassified point if any iterate was misclassified (the last
one seen), otherwise the highest-loss iterate. Restarts and target classes are run for
all examples; a later run replaces an earlier one only where the earlier one failed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks.losses import cross_entropy, dlr, targeted_dlr
from nt_robust.attacks.loops import LOOPS, run_loop
from nt_robust.attacks.parts import NORMS, PROJECTIONS, normalized_l2_step
from nt_robust.config import check_choice, check_int, check_real
from nt_robust.models.apply import LogitsFn

APGD_LOSSES: tuple[str, ...] = ("ce", "dlr", "targeted_dlr")
TargetedLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (logits, y, target) -> (N,)


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGDConfig:
    """One APGD attack (hashable: a static argument of ``jax.jit``).

    ``loss``: "ce", "dlr" or "targeted_dlr" (targets: the classes ranked 2 … ``num_targets``+1
    by the clean logits, one run each). ``restarts`` random starts per target (AutoAttack's
    standard version: 1). ``loop``: see :mod:`nt_robust.attacks.loops` (default "fori": one
    copy of the step keeps compiles short at 100 steps).
    """

    eps: float
    norm: str = "linf"
    loss: str = "ce"
    num_steps: int = 100
    restarts: int = 1
    num_targets: int = 9
    rho: float = 0.75
    momentum: float = 0.75
    loop: str = "fori"

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("loss", self.loss, APGD_LOSSES)
        check_choice("loop", self.loop, LOOPS)
        for name in ("num_steps", "restarts", "num_targets"):
            check_int(name, getattr(self, name), minimum=1)
        object.__setattr__(self, "eps", check_real("eps", self.eps, minimum=0))

    @property
    def runs(self) -> int:
        """Number of single APGD runs: restarts × targets."""
        return self.restarts * (self.num_targets if self.loss == "targeted_dlr" else 1)


class APGDResult(NamedTuple):
    x_adv: jax.Array   # in B(x, ε) ∩ [0, 1]
    fooled: jax.Array  # (N,) bool: x_adv is misclassified
    loss: jax.Array    # (N,) best loss seen (of the run that produced x_adv)


def checkpoint_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(is_checkpoint, window)``, both ``(num_steps,)``: whether step ``i`` (0-based) ends
    a window, and the window's length (the steps since the previous checkpoint)."""
    first, shrink, minimum = (max(int(f * num_steps), 1) for f in (0.22, 0.03, 0.06))
    is_checkpoint, window = np.zeros(num_steps, bool), np.zeros(num_steps, np.float32)
    i, k = -1, first
    while i + k < num_steps:
        i += k
        is_checkpoint[i], window[i] = True, k
        k = max(k - shrink, minimum)
    return is_checkpoint, window


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _random_start(key: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
    axes = tuple(range(1, x.ndim))
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
        t = t / jnp.maximum(jnp.max(jnp.abs(t), axis=axes, keepdims=True), 1e-12)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
        t = t / jnp.maximum(jnp.sqrt(jnp.sum(t * t, axis=axes, keepdims=True)), 1e-12)
    return jnp.clip(x + eps * t, 0.0, 1.0)


def apgd_run(logits_fn: LogitsFn, loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
             x_start: jax.Array, config: APGDConfig) -> APGDResult:
    """One APGD run from ``x_start`` maximizing ``loss_fn(logits)`` (per example)."""
    eps, project = config.eps, PROJECTIONS[config.norm]
    direction = jnp.sign if config.norm == "linf" else (lambda g: normalized_l2_step(g, eps, 1.0))

    def loss_and_grad(x_adv):
        def total(z):
            logits = logits_fn(z)
            per_example = loss_fn(logits)
            return jnp.sum(per_example), (per_example, logits)
        (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x_adv)
        return loss, jnp.argmax(logits, axis=-1) != y, grad

    is_checkpoint, window = (jnp.asarray(a) for a in checkpoint_schedule(config.num_steps))
    loss0, fooled0, grad0 = loss_and_grad(x_start)
    n = x.shape[0]
    state = dict(
        x_adv=x_start, x_prev=x_start, grad=grad0, step=jnp.full((n,), 2.0 * eps, x.dtype),
        x_best=x_start, grad_best=grad0, loss_best=loss0, x_fooled=x_start, fooled=fooled0,
        loss_prev=jnp.zeros_like(loss0), increases=jnp.zeros_like(loss0),
        best_at_check=loss0, reduced_at_check=jnp.ones((n,), bool))

    def step(i, s):
        s = dict(s)
        a = jnp.where(i > 0, config.momentum, 1.0).astype(x.dtype)
        x_adv, momentum = s["x_adv"], s["x_adv"] - s["x_prev"]
        z = project(x_adv + _expand(s["step"], x) * direction(s["grad"]), x, eps)
        new = project(x_adv + a * (z - x_adv) + (1 - a) * momentum, x, eps)
        loss, fooled, grad = loss_and_grad(new)
        s["x_prev"], s["x_adv"], s["grad"] = x_adv, new, grad
        s["x_fooled"] = jnp.where(_expand(fooled, x), new, s["x_fooled"])
        s["fooled"] = s["fooled"] | fooled
        s["increases"] = s["increases"] + (loss > s["loss_prev"]).astype(loss.dtype)
        s["loss_prev"] = loss
        better = loss > s["loss_best"]
        s["x_best"] = jnp.where(_expand(better, x), new, s["x_best"])
        s["grad_best"] = jnp.where(_expand(better, x), grad, s["grad_best"])
        s["loss_best"] = jnp.where(better, loss, s["loss_best"])
        # Checkpoint (a no-op mask on other steps, so the loop body is one fixed graph).
        check = is_checkpoint[i]
        oscillating = s["increases"] <= window[i] * config.rho
        stalled = ~s["reduced_at_check"] & (s["best_at_check"] >= s["loss_best"])
        reduce = check & (oscillating | stalled)
        s["reduced_at_check"] = jnp.where(check, reduce, s["reduced_at_check"])
        s["best_at_check"] = jnp.where(check, s["loss_best"], s["best_at_check"])
        s["increases"] = jnp.where(check, 0.0, s["increases"])
        s["step"] = jnp.where(reduce, s["step"] / 2, s["step"])
        s["x_adv"] = jnp.where(_expand(reduce, x), s["x_best"], s["x_adv"])
        s["grad"] = jnp.where(_expand(reduce, x), s["grad_best"], s["grad"])
        return s

    s = run_loop(0, config.num_steps, step, state, config.loop)
    x_out = jnp.where(_expand(s["fooled"], x), s["x_fooled"], s["x_best"])
    return APGDResult(jax.lax.stop_gradient(x_out), s["fooled"], jax.lax.stop_gradient(s["loss_best"]))


def _merge(best: APGDResult, new: APGDResult, x: jax.Array) -> APGDResult:
    """Keep ``best`` where it fooled the model; otherwise take ``new`` if it fooled the
    model or reached a higher loss (losses of different targets are compared as numbers)."""
    take = ~best.fooled & (new.fooled | (new.loss > best.loss))
    return APGDResult(jnp.where(_expand(take, x), new.x_adv, best.x_adv), best.fooled | new.fooled,
                      jnp.where(take, new.loss, best.loss))


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, config: APGDConfig) -> APGDResult:
    """APGD with ``config.restarts`` random starts (and, for "targeted_dlr", every target).

    Run ``r`` (target rank ``2 + r // restarts`` when targeted) starts from ``fold_in(key, r)``.
    The runs are a ``fori_loop``: one compiled copy of the attack whatever their number.
    """
    y = y.astype(jnp.int32)
    ranked = None
    if config.loss == "targeted_dlr":
        clean_logits = jax.lax.stop_gradient(logits_fn(x))
        if config.num_targets + 1 > clean_logits.shape[-1]:
            raise ValueError(f"num_targets={config.num_targets} needs at least {config.num_targets + 1} "
                             f"classes, the model has {clean_logits.shape[-1]}")
        ranked = jax.lax.top_k(clean_logits, config.num_targets + 1)[1]   # (N, targets + 1)

    def one_run(run):
        if config.loss == "ce":
            loss_fn = lambda logits: cross_entropy(logits, y)  # noqa: E731
        elif config.loss == "dlr":
            loss_fn = lambda logits: dlr(logits, y)  # noqa: E731
        else:
            target = jnp.take(ranked, 1 + run // config.restarts, axis=1)
            loss_fn = lambda logits: targeted_dlr(logits, y, target)  # noqa: E731
        x_start = _random_start(jax.random.fold_in(key, run), x, config.eps, config.norm)
        return apgd_run(logits_fn, loss_fn, x, y, x_start, config)

    first = one_run(0)
    if config.runs == 1:
        return first
    return jax.lax.fori_loop(1, config.runs, lambda run, best: _merge(best, one_run(run), x), first)

"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), ℓ∞ and ℓ2, in JAX.

    from nt_robust.attacks.fab import FABConfig, fab

    result = fab(logits_fn, x, y, key, FABConfig(eps=8 / 255))                  # FAB-T
    result = fab(logits_fn, x, y, key, FABConfig(eps=8 / 255, targeted=False))  # FAB
    result.x_adv, result.fooled, result.norm   # x_adv = x where no point within ε was found
    result = fab(logits_fn, x, y, key, FABConfig(eps=0.5, norm="l2"))      # FAB-T in ℓ2

FAB looks for the *smallest* perturbation that changes the decision. Each step
linearizes the decision boundary towards one class (the target, or for the untargeted
version the class whose linearized boundary is closest), projects both the current
iterate and the original point onto that hyperplane within the box [0, 1]
(:func:`project_onto_hyperplane_box`; in ℓ2 :func:`project_onto_hyperplane_box_l2`), and moves to a convex combination of the two,
extrapolated by ``eta``, with the weight of the original point
``min(‖δ_iter‖ / (‖δ_iter‖ + ‖δ_orig‖), alpha_max)``. Whenever the iterate is
misclassified it is recorded if it is the closest so far and pulled back towards the
original point by ``beta``. A point counts as broken when its closest misclassified
iterate lies within ε. Restarts after the first start from ``x + min(r, ε)·t/‖t‖/2``
(ℓ∞: ``t ~ U(-1, 1)``; ℓ2: ``t ~ N(0, I)``; ``r`` the closest distance so far). Targeted
runs aim at the classes ranked 2 … ``num_targets`` + 1 by the clean logits, one run each.

The ℓ2 version is the original's (AutoAttack's ``FABAttack`` with ``norm="L2"``): every
distance and the weights of the convex combination are ℓ2 norms, the distance to a
linearized boundary is ``|f| / ‖∇f‖₂`` (the dual norm; ℓ∞ uses ‖∇f‖₁), and each step
projects onto hyperplane ∩ box in ℓ2.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nt_robust.attacks.loops import LOOPS, run_loop
from nt_robust.config import check_choice, check_int, check_real
from nt_robust.models.apply import LogitsFn

_FAR = 1e10  # "no adversarial point found yet"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FABConfig:
    """One FAB attack (hashable: a static argument of ``jax.jit``). Defaults: AutoAttack's
    (100 steps, alpha_max 0.1, eta 1.05, beta 0.9, 9 targets, 1 restart)."""

    eps: float
    norm: str = "linf"
    targeted: bool = True
    num_steps: int = 100
    restarts: int = 1
    num_targets: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    loop: str = "fori"

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, ("linf", "l2"), "the norms FAB is implemented for")
        check_choice("loop", self.loop, LOOPS)
        for name in ("num_steps", "restarts", "num_targets"):
            check_int(name, getattr(self, name), minimum=1)
        object.__setattr__(self, "eps", check_real("eps", self.eps, minimum=0))


class FABResult(NamedTuple):
    x_adv: jax.Array   # closest misclassified point if within ε, else x itself
    fooled: jax.Array  # (N,) bool: x_adv is misclassified and within ε
    norm: jax.Array    # (N,) distance (ℓ∞ or ℓ2) of the closest misclassified point found (1e10: none)


BISECTION_STEPS = 32  # halvings of [0, max room]: the interval ends 2^-32 of the box apart


def project_onto_hyperplane_box(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``d`` of smallest ‖d‖∞ with ``w·(t + d) = b`` and ``t + d ∈ [0, 1]^D``, per row.

    ``t``, ``w``: (N, D); ``b``: (N,). Moving every coordinate by ``λ`` (clipped at the box)
    in the direction that closes the gap changes ``w·d`` by ``R(λ) = Σ_i |w_i|·min(λ, p_i)``,
    ``p_i`` the room left in the box; R is piecewise linear and increasing. Bisection brackets
    the smallest λ reaching the gap (:data:`BISECTION_STEPS` halvings), then λ is solved
    exactly on R's linear piece there. (Sorting ``p``, the textbook route, is what XLA:CPU
    runs slowest: 30 ms of a 256 x 784 projection's 31.) Where even the whole box cannot
    close the gap, the box corner (the best effort) is returned.
    """
    gap = jnp.sum(w * t, axis=1) - b
    w = w * jnp.where(gap >= 0, 1.0, -1.0)[:, None]     # now the gap w·t − b is >= 0
    gap = jnp.abs(gap)
    upward = w < 0                                     # coordinates that must increase
    limit = jnp.where(upward, 1.0 - t, -t)             # the box edge in the useful direction
    room = jnp.abs(limit)
    weight = jnp.abs(w)
    reachable = jnp.sum(weight * room, axis=1) >= gap

    def halve(_, bracket):
        low, high = bracket
        middle = (low + high) / 2
        reached = jnp.sum(weight * jnp.minimum(middle[:, None], room), axis=1) >= gap
        return jnp.where(reached, low, middle), jnp.where(reached, middle, high)

    low, high = jax.lax.fori_loop(0, BISECTION_STEPS, halve,
                                  (jnp.zeros_like(gap), jnp.max(room, axis=1)))
    # On (low, high] R is linear up to breakpoints closer than the bracket: coordinates with
    # room <= low are clipped, the rest move by λ.
    clipped = room <= low[:, None]
    filled = jnp.sum(jnp.where(clipped, weight * room, 0.0), axis=1)
    moving = jnp.sum(jnp.where(clipped, 0.0, weight), axis=1)
    lam = jnp.clip((gap - filled) / jnp.maximum(moving, 1e-30), low, high)
    d = jnp.where(reachable[:, None], jnp.sign(limit) * jnp.minimum(lam[:, None], room), limit)
    return jnp.where(w != 0, d, 0.0)


BISECTION_STEPS_L2 = 64  # ℓ2 breakpoints room/|w| span more than [0, 1]: run to float32's resolution


def project_onto_hyperplane_box_l2(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``d`` of smallest ‖d‖₂ with ``w·(t + d) = b`` and ``t + d ∈ [0, 1]^D``, per row.

    The minimizer is ``d_i = ±min(λ·|w_i|, p_i)`` (KKT: a multiple of ``w`` clipped at the
    box), ``p_i`` the room left in the useful direction. ``w·d`` then changes by
    ``R(λ) = Σ_i |w_i|·min(λ|w_i|, p_i)``, piecewise linear and increasing with breakpoints
    ``p_i / |w_i|``: bisection (:data:`BISECTION_STEPS_L2` halvings) brackets the smallest λ
    reaching the gap and λ is solved exactly on the linear piece there, as in
    :func:`project_onto_hyperplane_box`. Where the box cannot close the gap, the box corner.
    """
    gap = jnp.sum(w * t, axis=1) - b
    w = w * jnp.where(gap >= 0, 1.0, -1.0)[:, None]
    gap = jnp.abs(gap)
    limit = jnp.where(w < 0, 1.0 - t, -t)
    room, weight = jnp.abs(limit), jnp.abs(w)
    reachable = jnp.sum(weight * room, axis=1) >= gap
    active = weight > 0
    breakpoint = jnp.where(active, room / jnp.where(active, weight, 1.0), 0.0)

    def halve(_, bracket):
        low, high = bracket
        middle = (low + high) / 2
        reached = jnp.sum(weight * jnp.minimum(middle[:, None] * weight, room), axis=1) >= gap
        return jnp.where(reached, low, middle), jnp.where(reached, middle, high)

    low, high = jax.lax.fori_loop(0, BISECTION_STEPS_L2, halve,
                                  (jnp.zeros_like(gap), jnp.max(breakpoint, axis=1)))
    clipped = breakpoint <= low[:, None]
    filled = jnp.sum(jnp.where(clipped, weight * room, 0.0), axis=1)
    moving = jnp.sum(jnp.where(clipped, 0.0, weight * weight), axis=1)
    lam = jnp.clip((gap - filled) / jnp.maximum(moving, 1e-30), low, high)
    d = jnp.where(reachable[:, None], jnp.sign(limit) * jnp.minimum(lam[:, None] * weight, room), limit)
    return jnp.where(active, d, 0.0)


HYPERPLANE_PROJECTIONS = {"linf": project_onto_hyperplane_box, "l2": project_onto_hyperplane_box_l2}


def _norm(v: jax.Array, norm: str) -> jax.Array:
    """Per-row ℓ∞ or ℓ2 norm of ``(N, D)`` rows."""
    return jnp.max(jnp.abs(v), axis=1) if norm == "linf" else jnp.sqrt(jnp.sum(v * v, axis=1))


def _boundary(logits_fn: LogitsFn, x1: jax.Array, y: jax.Array, target: jax.Array | None):
    """``(f, g)``: the linearized boundaries at ``x1`` (N, M) and their gradients (N, M, D)."""
    flat_shape = x1.shape

    def logits_of_flat(z):
        return logits_fn(z.reshape(flat_shape))

    flat = x1.reshape(x1.shape[0], -1)
    logits, vjp = jax.vjp(logits_of_flat, flat)
    num_classes = logits.shape[-1]
    if target is not None:
        diff = jnp.take_along_axis(logits, target[:, None], 1) - jnp.take_along_axis(logits, y[:, None], 1)
        cotangent = jax.nn.one_hot(target, num_classes) - jax.nn.one_hot(y, num_classes)
        return diff, vjp(cotangent.astype(logits.dtype))[0][:, None, :]
    jacobian = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(
        jnp.eye(num_classes, dtype=logits.dtype))                        # (K, N, D)
    jacobian = jnp.swapaxes(jacobian, 0, 1)                               # (N, K, D)
    diff = logits - jnp.take_along_axis(logits, y[:, None], 1)
    grad = jacobian - jnp.take_along_axis(jacobian, y[:, None, None], 1)
    diff = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), _FAR, diff)  # never the label itself
    return diff, grad


def fab_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, x_start: jax.Array,
            target: jax.Array | None, config: FABConfig) -> tuple[jax.Array, jax.Array]:
    """One FAB run: ``(closest misclassified point, its distance or 1e10)`` per example."""
    n = x.shape[0]
    x0 = x.reshape(n, -1)
    project = HYPERPLANE_PROJECTIONS[config.norm]

    def predicts_wrong(z):
        return jnp.argmax(logits_fn(z), axis=-1) != y

    def step(_, carry):
        x1, best, best_norm = carry
        diff, grad = _boundary(logits_fn, x1, y, target)
        dual = (jnp.sum(jnp.abs(grad), axis=-1) if config.norm == "linf"
                else jnp.sqrt(jnp.sum(grad * grad, axis=-1)))        # the dual norm of the gradient
        distance = jnp.abs(diff) / (1e-12 + dual)
        closest = jnp.argmin(distance, axis=1)
        w = jnp.take_along_axis(grad, closest[:, None, None], 1)[:, 0]
        b = jnp.sum(w * x1.reshape(n, -1), axis=1) - jnp.take_along_axis(diff, closest[:, None], 1)[:, 0]
        flat1 = x1.reshape(n, -1)
        d1 = project(flat1, w, b)
        d2 = project(x0, w, b)
        a1 = jnp.maximum(_norm(d1, config.norm), 1e-8)
        a2 = jnp.maximum(_norm(d2, config.norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, config.alpha_max)[:, None]
        flat1 = jnp.clip((flat1 + config.eta * d1) * (1 - alpha) + (x0 + config.eta * d2) * alpha, 0.0, 1.0)
        x1 = flat1.reshape(x.shape)
        wrong = predicts_wrong(x1)
        norm = _norm(flat1 - x0, config.norm)
        closer = wrong & (norm < best_norm)
        best = jnp.where(closer[:, None], flat1, best)
        best_norm = jnp.where(closer, norm, best_norm)
        flat1 = jnp.where(wrong[:, None], x0 + (flat1 - x0) * config.beta, flat1)
        return flat1.reshape(x.shape), best, best_norm

    init = (x_start, x0, jnp.full((n,), _FAR, x.dtype))
    _, best, best_norm = run_loop(0, config.num_steps, step, init, config.loop)
    return best.reshape(x.shape), best_norm


def fab(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, config: FABConfig) -> FABResult:
    """FAB (targeted or not) with restarts; points misclassified from the start are returned
    as they are (norm 0). Run ``r`` (target rank ``2 + r // restarts`` when targeted; a
    random start unless ``r % restarts == 0``) uses ``fold_in(key, r)``. The runs are a
    ``fori_loop``: one compiled copy whatever their number."""
    y = y.astype(jnp.int32)
    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    wrong_from_start = jnp.argmax(clean_logits, axis=-1) != y
    ranked = None
    runs = config.restarts
    if config.targeted:
        if config.num_targets + 1 > clean_logits.shape[-1]:
            raise ValueError(f"num_targets={config.num_targets} needs at least {config.num_targets + 1} classes")
        ranked = jax.lax.top_k(clean_logits, config.num_targets + 1)[1]
        runs *= config.num_targets
    expand = (slice(None),) + (None,) * (x.ndim - 1)

    def one_run(run, carry):
        best, best_norm = carry
        target = None if ranked is None else jnp.take(ranked, 1 + run // config.restarts, axis=1)
        run_key = jax.random.fold_in(key, run)
        if config.norm == "linf":
            t = jax.random.uniform(run_key, x.shape, x.dtype, -1.0, 1.0)
        else:
            t = jax.random.normal(run_key, x.shape, x.dtype)
        t = t / jnp.maximum(_norm(t.reshape(x.shape[0], -1), config.norm)[expand], 1e-12)
        random_start = jnp.clip(x + (jnp.minimum(best_norm, config.eps)[expand] * t) / 2, 0.0, 1.0)
        x_start = jnp.where(run % config.restarts == 0, x, random_start)
        candidate, norm = fab_run(logits_fn, x, y, x_start, target, config)
        closer = norm < best_norm
        return jnp.where(closer[expand], candidate, best), jnp.where(closer, norm, best_norm)

    init = (x, jnp.where(wrong_from_start, 0.0, _FAR).astype(x.dtype))
    best, best_norm = jax.lax.fori_loop(0, runs, one_run, init)
    fooled = best_norm <= config.eps
    x_adv = jnp.where(fooled[expand], best, x)
    return FABResult(jax.lax.stop_gradient(x_adv), fooled, best_norm)

"""The parts an attack is built from: random starts, step rules and projections.

All three act on whole batches (NHWC or any ``(N, ...)`` shape) and treat every example
independently; norms are taken per example over all its non-batch axes::

    start = make_start("uniform", norm="linf")
    x_adv = project_linf(start(key, x, eps), x, eps)           # always project a start
    x_adv = project_linf(x_adv + sign_step(grad, eps, 0.007), x, eps)

Projections also clip to the image box [0, 1]: every point an attack produces is a
valid image within ε of ``x``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

StartFn = Callable[[jax.Array | None, jax.Array, float], jax.Array]
StepFn = Callable[[jax.Array, float, float], jax.Array]
ProjectFn = Callable[[jax.Array, jax.Array, float], jax.Array]

PIXEL_MIN, PIXEL_MAX = 0.0, 1.0
NORMS: tuple[str, ...] = ("linf", "l2")
STARTS: tuple[str, ...] = ("uniform", "gaussian", "none")


def _per_example_l2(v: jax.Array) -> jax.Array:
    """ℓ2 norm over all non-batch axes, shaped to broadcast against ``v``."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, and 0 where the denominator is 0."""
    nonzero = denominator > 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), 0)


# Starts: StartFn(key, x, eps) -> x0 (not yet projected).

def no_start(key: jax.Array | None, x: jax.Array, eps: float) -> jax.Array:
    """Start at the clean point (FGSM, deterministic PGD)."""
    del key, eps
    return x


def uniform_linf_start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """``x + U(-ε, ε)`` independently per coordinate: uniform in the ℓ∞ ball."""
    return x + jax.random.uniform(key, x.shape, x.dtype, minval=-eps, maxval=eps)


def uniform_l2_start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """Uniform in the ℓ2 ball: a uniform direction times radius ``ε·U^(1/d)``.

    ``d`` is the number of coordinates per example; the ``1/d`` power makes the density
    uniform in volume (for images it puts almost every start near the sphere).
    """
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, x.shape, x.dtype)
    direction = _safe_divide(direction, _per_example_l2(direction))
    dim = math.prod(x.shape[1:])
    radius_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    radius = eps * jax.random.uniform(radius_key, radius_shape, x.dtype) ** (1.0 / dim)
    return x + radius * direction


def gaussian_start(std: float) -> StartFn:
    """``x + std·N(0, I)`` (TRADES uses std = 0.001); ε only enters through projection."""

    def start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
        del eps
        return x + std * jax.random.normal(key, x.shape, x.dtype)

    return start


def make_start(start: str, norm: str, std: float = 0.001) -> StartFn:
    """The StartFn named by ``start`` ("uniform" | "gaussian" | "none") for ``norm``."""
    if start == "none":
        return no_start
    if start == "gaussian":
        return gaussian_start(std)
    if start == "uniform":
        return {"linf": uniform_linf_start, "l2": uniform_l2_start}[norm]
    raise ValueError(f"start must be one of {STARTS}, got {start!r}")


# Step rules: StepFn(grad, eps, step_size) -> delta, an ascent direction scaled by step size.

def sign_step(grad: jax.Array, eps: float, step_size: float) -> jax.Array:
    """ℓ∞ steepest ascent: ``step_size · sign(grad)`` (coordinates with zero gradient stay)."""
    del eps
    return step_size * jnp.sign(grad)


def normalized_l2_step(grad: jax.Array, eps: float, step_size: float) -> jax.Array:
    """ℓ2 steepest ascent: ``step_size · grad / ‖grad‖₂`` per example; 0 for a zero gradient."""
    del eps
    return step_size * _safe_divide(grad, _per_example_l2(grad))


# Projections: ProjectFn(x_adv, x, eps) -> x_adv in B(x, ε) ∩ [0, 1]^d.

def project_linf(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """Clip to the ℓ∞ ball around ``x``, then to the image box."""
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), PIXEL_MIN, PIXEL_MAX)


def project_l2(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """Rescale ``x_adv - x`` onto the ℓ2 ball, then clip to the image box.

    Clipping after the rescale keeps the point in the ball: ``x`` is in the box, so
    clipping only shrinks each coordinate of the perturbation.
    """
    delta = x_adv - x
    norm = _per_example_l2(delta)
    scale = jnp.where(norm > eps, eps / jnp.where(norm > 0, norm, 1), 1)
    return jnp.clip(x + scale * delta, PIXEL_MIN, PIXEL_MAX)


STEP_RULES: dict[str, StepFn] = {"linf": sign_step, "l2": normalized_l2_step}
PROJECTIONS: dict[str, ProjectFn] = {"linf": project_linf, "l2": project_l2}

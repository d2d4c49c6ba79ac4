"""Full-batch gradient descent in the lazy (NTK) regime, and its infinite-width prediction.

Binary labels y ∈ {−1, +1}, scalar output f, losses averaged over the n training points:
MSE ``(f − y)²/2`` or logistic cross-entropy ``log(1 + e^{−y f})`` (= two-class softmax CE
on the logits [0, f] with 0 for class −1)::

    from nt_robust.theory import lazy_training as lt
    lr = lt.learning_rate(kernel_spec, x_train)            # η = n / λ_max(Θ): each param. its own
    params_T, losses = lt.train_full_batch(spec, params0, x_train, y, "mse", lr, steps=200)
    pred = lt.kernel_gd(theta_xx, theta_tx, f0_x, f0_t, y, "mse", lr, steps=200)
    pred.coef   # the trained function is f₀(u) + Θ(u, X)·coef (see gradients.KernelModel)

Training a linear model f₀ + ⟨∇θf₀, θ − θ₀⟩ by GD moves f(X) by −(η/n) Θ ℓ'(f(X)) per step,
and any test point by −(η/n) Θ(u, X) ℓ'(f(X)); :func:`kernel_gd` runs exactly that with
the infinite-width Θ. For MSE, :func:`nt_mse_prediction` gives nt's continuous-time
closed form for cross-checking.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nt_robust.theory.kernels import KernelSpec, ntk
from nt_robust.theory.networks import MLPSpec, Params, scalar_fn, sphere_scale

LOSSES = ("mse", "ce")


def loss_value(kind: str, f: jax.Array, y: jax.Array) -> jax.Array:
    """Mean loss of scalar outputs ``f`` against ±1 labels."""
    if kind == "mse":
        return 0.5 * jnp.mean((f - y) ** 2)
    if kind == "ce":
        return jnp.mean(jax.nn.softplus(-y * f))
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def loss_derivative(kind: str, f: jax.Array, y: jax.Array) -> jax.Array:
    """∂ℓ/∂f per example (not divided by n)."""
    if kind == "mse":
        return f - y
    return -y * jax.nn.sigmoid(-y * f)


def learning_rate(spec: KernelSpec, x_train: jax.Array, fraction: float = 0.5) -> float:
    """``fraction · 2n/λ_max(Θ)``: GD on the MSE is stable below 2n/λ_max.

    In NTK parameterization it is width-free. The standard-parameterization NTK has a
    width-free first-layer term d·u·u' (inputs √d·u, d = 784) next to the m-proportional
    rest, so this rate falls like 1/m only for m ≫ d: measured ∝ m^(−0.32) over 64…1024 at
    depth 2 (figures/theory/summary.md).
    """
    scale = sphere_scale(x_train.shape[1])
    theta = ntk(spec, scale * x_train)
    lam_max = float(jnp.linalg.eigvalsh(theta)[-1])
    return fraction * 2 * x_train.shape[0] / lam_max


def normalized_kernel_difference(spec: KernelSpec, x_train: jax.Array) -> float:
    """max |Θ/λ_max(Θ) − Θ'/λ_max(Θ')| / max |Θ'/λ_max(Θ')|: ``spec`` vs its NTK parameterization.

    GD with η = n/λ_max(Θ) sees Θ only through Θ/λ_max(Θ); where this is small the two
    parameterizations train (in the kernel regime) the same function from the same init.
    With inputs √d·u the standard NTK is ≈ (d/W_std²)·(first-layer term) + (m/W_std²)·(the
    rest), so it is nearly proportional to the NTK-parameterization kernel at m ≈ d.
    """
    scale = sphere_scale(x_train.shape[1])
    a = ntk(spec, scale * x_train)
    b = ntk(dataclasses.replace(spec, parameterization="ntk"), scale * x_train)
    a, b = a / jnp.linalg.eigvalsh(a)[-1], b / jnp.linalg.eigvalsh(b)[-1]
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def train_full_batch(spec: MLPSpec, params0: Params, x_train: jax.Array, y: jax.Array, loss: str,
                     lr: float, steps: int) -> tuple[Params, jax.Array]:
    """Plain full-batch GD for ``steps`` steps; returns final params and the loss per step.

    Compiled once per (spec, loss, steps, shapes): seeds and learning rates reuse it.
    """
    return _train(spec, loss, steps, params0, x_train, y, jnp.asarray(lr, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _train(spec: MLPSpec, loss: str, steps: int, params: Params, x_train: jax.Array, y: jax.Array,
           lr: jax.Array) -> tuple[Params, jax.Array]:
    def objective(p: Params) -> jax.Array:
        return loss_value(loss, scalar_fn(spec, p)(x_train), y)

    def step(p, _):
        value, grads = jax.value_and_grad(objective)(p)
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grads), value

    return jax.lax.scan(step, params, None, length=steps)


class KernelPrediction(NamedTuple):
    f_train: jax.Array   # (n,) after `steps` steps
    f_test: jax.Array    # (n_test,)
    coef: jax.Array      # (n,): f_T(u) = f_0(u) + Θ(u, X)·coef


def kernel_gd(theta_train: jax.Array, theta_test_train: jax.Array, f0_train: jax.Array, f0_test: jax.Array,
              y: jax.Array, loss: str, lr: float, steps: int) -> KernelPrediction:
    """Discrete-time gradient descent of the linearized model with kernel Θ (any loss)."""
    n = y.shape[0]

    def step(carry, _):
        f_train, coef = carry
        delta = -(lr / n) * loss_derivative(loss, f_train, y)
        return (f_train + theta_train @ delta, coef + delta), None

    (f_train, coef), _ = jax.lax.scan(step, (f0_train, jnp.zeros_like(f0_train)), None, length=steps)
    return KernelPrediction(f_train, f0_test + theta_test_train @ coef, coef)


def nt_mse_prediction(theta_train: jax.Array, theta_test_train: jax.Array, f0_train: jax.Array,
                      f0_test: jax.Array, y: jax.Array, lr: float, steps: int) -> tuple[jax.Array, jax.Array]:
    """neural-tangents' continuous-time MSE solution at time η·steps: (f_train, f_test)."""
    from nt_robust.theory.nt_compat import nt

    predict = nt.predict.gradient_descent_mse(theta_train, y[:, None], learning_rate=lr)
    f_train, f_test = predict(steps, f0_train[:, None], f0_test[:, None], theta_test_train)
    return f_train[:, 0], f_test[:, 0]

"""The NTK-regime prediction next to measurements on the study engine's trained models
(docs/theory.md §13; ``experiments/theory_trained.py``)::

    from nt_robust.theory.conv import analytic_grad_sq_diag
    from nt_robust.theory.trained import mlp_arch, predicted_grad_l1, logit_grad_l1, lipschitz_measures
    twin = mlp_arch(depth=2)                                   # the Flax MLP's infinite-width twin
    with jax.enable_x64(True):
        diag = analytic_grad_sq_diag(twin, x64)               # (N, d) E[(∂f_k/∂x_j)²] at init, width → ∞
    one_logit = predicted_grad_l1(diag)                        # (N,) E‖∇ₓf_k‖₁ at init, width → ∞
    l1 = logit_grad_l1(model, variables, x)                    # (N, K) ‖∇ₓf_k‖₁ of a finite (trained) model
    m = lipschitz_measures(model, variables, x, key, yang, trades_grad)   # both estimators, per image

**What is predicted.** At infinite width the network at initialization is a Gaussian
process and so is its input gradient: coordinate j of ∇ₓf_k is N(0, diag_j) with diag the
diagonal of ∂²K/∂x∂x′ (NNGP kernel K; computed by propagating the gradient's covariance with
the NNGP's, :mod:`nt_robust.theory.grad_cov`), the same law for every logit k and independent
across logits. Hence E‖∇ₓf_k‖₁ = √(2/π) Σ_j √diag_j, a number that does not depend on
width. In the lazy (NTK) regime training moves the weights by O(1/√width), so the trained
network's input gradient is predicted to stay at its initial size: flat in width.

**What is measured**, per test image: the Yang et al. and "trades_grad" local-Lipschitz
estimates the study reports (``nt_robust.metrics``), and Σ_k ‖∇ₓf_k‖₁. For a locally
linear f the Yang ratio max_{‖δ‖∞ ≤ ε} ‖Jδ‖₁ / ‖δ‖∞ lies between max_k ‖∇ₓf_k‖₁ and
Σ_k ‖∇ₓf_k‖₁ (the triangle inequality, and δ = ε·sign ∇f_k), so the prediction of the
Yang estimate at init is the band [E‖∇ₓf_k‖₁, K · E‖∇ₓf_k‖₁].

The MLP twin (:func:`mlp_stax`) has the Flax MLP's law exactly in the limit: every Dense
layer has weight variance 1/(3 · fan_in) (``models.layers.linear_init``, PyTorch's default)
and zero biases at init. The BatchNorm WideResNet has no such twin (its stem is not
widened and its init is fan-out): its prediction is the BN-free analogue's
(:func:`nt_robust.theory.conv.wrn_stax`, docs/theory.md §12), which §12 found 210–1,600×
above the BN WRN at init.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.metrics import LipschitzConfig, local_lipschitz
from nt_robust.theory import grad_cov

LINEAR_INIT_VARIANCE = 1.0 / 3.0  # models.layers.linear_init: variance_scaling(1/3, fan_in)


def mlp_arch(depth: int = 2, width: int = 1, out_dim: int = 1,
             W_std: float = math.sqrt(LINEAR_INIT_VARIANCE)) -> grad_cov.Layer:
    """The Flax :class:`~nt_robust.models.small.MLP`'s infinite-width twin as a
    :mod:`~nt_robust.theory.grad_cov` architecture: Flatten, ``depth`` × (Dense, ReLU), Dense,
    every weight of variance W_std²/fan_in, no biases (Flax initializes them to 0)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    hidden = (grad_cov.Dense(width, W_std=W_std), grad_cov.Relu()) * depth
    return grad_cov.Serial((grad_cov.Flatten(), *hidden, grad_cov.Dense(out_dim, W_std=W_std)))


def mlp_stax(depth: int = 2, width: int = 1, out_dim: int = 1,
             W_std: float = math.sqrt(LINEAR_INIT_VARIANCE)) -> tuple[Callable, Callable, Callable]:
    """``(init_fn, apply_fn, kernel_fn)`` of :func:`mlp_arch` in stax: the stax MLP whose
    infinite-width limit is the Flax MLP's at init. ``kernel_fn`` does not depend on ``width``."""
    return grad_cov.to_stax(mlp_arch(depth, width, out_dim, W_std))


def predicted_grad_l1(diag: jax.Array | np.ndarray) -> np.ndarray:
    """E‖∇ₓf_k‖₁ per image from the per-coordinate gradient variances ``diag`` (N, d):
    √(2/π) Σ_j √diag_j (E|g| = σ√(2/π) for g ~ N(0, σ²))."""
    diag = np.asarray(diag, np.float64)
    return math.sqrt(2.0 / math.pi) * np.sum(np.sqrt(np.clip(diag, 0.0, None)), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _logit_grad_l1(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
    def per_image(xi: jax.Array) -> jax.Array:
        jacobian = jax.jacrev(lambda v: model.apply(variables, v[None], train=False)[0])(xi)   # (K, H, W, C)
        return jnp.sum(jnp.abs(jacobian.reshape(jacobian.shape[0], -1)), axis=-1)
    return jax.lax.map(per_image, x)


def logit_grad_l1(model: nn.Module, variables: Any, x: jax.Array) -> np.ndarray:
    """(N, K): ‖∇ₓf_k(x)‖₁ for every image and logit, BatchNorm in eval mode (pixel units).
    Compiled once per model (module), whatever the variables."""
    return np.asarray(_logit_grad_l1(model, variables, jnp.asarray(x)), np.float64)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _lipschitz(model: nn.Module, variables: Any, x: jax.Array, key: jax.Array, config: LipschitzConfig) -> jax.Array:
    return local_lipschitz(lambda v: model.apply(variables, v, train=False), x, key, config)


def lipschitz_measures(model: nn.Module, variables: Any, x: jax.Array, key: jax.Array,
                       yang: LipschitzConfig, trades_grad: LipschitzConfig) -> dict[str, np.ndarray]:
    """Per image: ``yang`` and ``trades_grad`` estimates (the study's two estimators, with the
    given settings), ``sum_l1`` = Σ_k ‖∇ₓf_k‖₁ and ``max_l1`` = max_k ‖∇ₓf_k‖₁. Compiled
    once per model and settings."""
    yang_key, trades_key = jax.random.split(key)
    x = jnp.asarray(x)
    l1 = logit_grad_l1(model, variables, x)
    return {"yang": np.asarray(_lipschitz(model, variables, x, yang_key, yang), np.float64),
            "trades_grad": np.asarray(_lipschitz(model, variables, x, trades_key, trades_grad), np.float64),
            "sum_l1": l1.sum(axis=1), "max_l1": l1.max(axis=1)}

"""Closed-form NNGP and NTK of fully connected ReLU networks (the arc-cosine recursion).

Our own implementation, independent of neural-tangents, so that nt can be checked
against it. Conventions are nt's ``stax.Dense`` / ``stax.Relu`` conventions (docs/theory.md):
a network of ``depth`` Dense layers (``depth - 1`` hidden ReLU layers, then a linear
read-out) with ``W_std``, ``b_std`` and

    Σ¹(x, x') = W_std² x·x'/d + b_std²,
    Σˡ⁺¹ = W_std² E[φ(u)φ(v)] + b_std²,     Σ̇ˡ⁺¹ = E[φ'(u)φ'(v)],   (u, v) ~ N(0, Σˡ)
    NTK param.:      Θ¹ = Σ¹,        Θˡ⁺¹ = Σˡ⁺¹ + W_std² Σ̇ˡ⁺¹ Θˡ
    standard param.: Θ¹ = x·x' + 1,  Θˡ⁺¹ = n_l E[φφ'] + 1 + W_std² Σ̇ˡ⁺¹ Θˡ

(``+ 1`` only with a bias; ``n_l`` is the width of hidden layer l, so the standard-
parameterization NTK grows linearly with width — exactly what nt computes).
Example::

    from nt_robust.theory.kernels import KernelSpec, relu_kernels
    spec = KernelSpec(depth=3, W_std=2**0.5, b_std=0.1)
    nngp, ntk = relu_kernels(spec, x1, x2)            # (n1, n2) each
    spec_sp = KernelSpec(depth=3, parameterization="standard", width=1024)

The arc-cosine functions carry custom derivatives that stay finite on the diagonal
(ρ = 1), so ``jax.grad``/``jax.hessian`` of these kernels at x' = x are usable
(:func:`nt_robust.theory.gradients.kernel_grad_sq_norm`). That limit is right only where
the tangent of ρ vanishes to second order, i.e. for the mixed derivative ∂²K/∂x∂x' of the
NNGP. The NTK itself has a cusp at x' = x (it contains κ₀(ρ), and
κ₀(ρ) = 1/2 − θ/(2π) with θ ∝ |x − x'| near the diagonal), so ∂Θ(x, x')/∂x at x = x' does
not exist; there the custom derivative returns the mean of the two one-sided slopes, not a
gradient. :class:`nt_robust.theory.gradients.KernelModel` refuses gradients there.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("ntk", "standard")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A ReLU MLP's infinite-width description. ``width`` matters only for the standard NTK."""

    depth: int = 2
    W_std: float = math.sqrt(2.0)
    b_std: float | None = 0.1
    parameterization: str = "ntk"
    width: int | None = None

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}")
        if self.parameterization == "standard" and self.depth > 1 and self.width is None:
            raise ValueError("the standard-parameterization NTK depends on the width: pass width=")


# Normalized arc-cosine functions of the correlation ρ:
#   κ₁(ρ) = (sin θ + (π − θ) cos θ)/(2π) = E[φ(u)φ(v)] for unit variances, θ = arccos ρ
#   κ₀(ρ) = (π − θ)/(2π)                   = E[φ'(u)φ'(v)],  and κ₁' = κ₀.
# κ₀'(ρ) = 1/(2π√(1−ρ²)) is infinite at ρ = 1; there it only ever multiplies a tangent of
# ρ that vanishes to second order on the diagonal (∂ρ/∂x' = 0 at x' = x), so the limit of
# the product is 0 and we define it so (docs/theory.md, "gradient at initialization").
# That holds for ∂²K/∂x∂x' of the NNGP, not for ∂Θ/∂x of the NTK: κ₀ itself has a cusp at
# ρ = 1 (κ₀ = 1/2 − θ/(2π), θ = arccos ρ ∝ |x − x'|), so Θ(·, x') is not differentiable at
# x' and the 0 here is not its derivative (KernelModel.grads refuses such points).

def _clip_corr(rho: jax.Array) -> jax.Array:
    return jnp.clip(rho, -1.0, 1.0)


@jax.custom_jvp
def arccos_kappa0(rho: jax.Array) -> jax.Array:
    """E[1(u>0)1(v>0)] for standard normals with correlation ρ."""
    return (jnp.pi - jnp.arccos(_clip_corr(rho))) / (2 * jnp.pi)


@arccos_kappa0.defjvp
def _kappa0_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    rho = _clip_corr(rho)
    interior = jnp.abs(rho) < 1.0
    slope = jnp.where(interior, 1.0 / (2 * jnp.pi * jnp.sqrt(jnp.where(interior, 1 - rho**2, 1.0))), 0.0)
    return arccos_kappa0(rho), slope * drho


@jax.custom_jvp
def arccos_kappa1(rho: jax.Array) -> jax.Array:
    """E[relu(u)relu(v)] for standard normals with correlation ρ."""
    rho = _clip_corr(rho)
    theta = jnp.arccos(rho)
    return (jnp.sqrt(jnp.maximum(1 - rho**2, 0.0)) + (jnp.pi - theta) * rho) / (2 * jnp.pi)


@arccos_kappa1.defjvp
def _kappa1_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    return arccos_kappa1(rho), arccos_kappa0(rho) * drho


def _relu_step(cov_xx: jax.Array, cov_yy: jax.Array, cov_xy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for (u, v) ~ N(0, [[cov_xx, cov_xy], [cov_xy, cov_yy]])."""
    norm = jnp.sqrt(cov_xx * cov_yy)
    rho = cov_xy / norm
    return norm * arccos_kappa1(rho), arccos_kappa0(rho)


def relu_kernels(spec: KernelSpec, x1: jax.Array, x2: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(NNGP, NTK) of the scalar output between rows of ``x1`` (n1, d) and ``x2`` (n2, d)."""
    nngp_, ntk_, _ = _recursion(spec, x1, x2)
    return nngp_, ntk_


def layer_correlations(spec: KernelSpec, x1: jax.Array, x2: jax.Array | None = None) -> jax.Array:
    """The correlations ρˡ that each ReLU layer's arc-cosine functions see, (depth − 1, n1, n2).

    ρˡ = 1 exactly where the two inputs give the same pre-activations (x1 = x2 with a bias;
    x1 a positive multiple of x2 without one): the NTK has a cusp there (κ₀ is not
    differentiable at ρ = 1), see :class:`nt_robust.theory.gradients.KernelModel`.
    """
    _, _, rhos = _recursion(spec, x1, x2)
    x1 = x1.reshape(x1.shape[0], -1)
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    return jnp.stack(rhos) if rhos else jnp.zeros((0, x1.shape[0], n2), x1.dtype)


def _recursion(spec: KernelSpec, x1: jax.Array, x2: jax.Array | None):
    x2 = x1 if x2 is None else x2
    x1, x2 = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
    d = x1.shape[1]
    b2 = 0.0 if spec.b_std is None else spec.b_std**2
    bias_ntk = 0.0 if spec.b_std is None else 1.0
    w2 = spec.W_std**2
    # Layer 1: pre-activation covariances (diagonals kept separately for the correlations).
    dot = x1 @ x2.T
    s11 = w2 * jnp.sum(x1 * x1, axis=1) / d + b2
    s22 = w2 * jnp.sum(x2 * x2, axis=1) / d + b2
    s12 = w2 * dot / d + b2
    ntk = s12 if spec.parameterization == "ntk" else dot + bias_ntk
    rhos = []
    for _ in range(spec.depth - 1):
        e11 = s11 / 2  # E[φ(u)²] = Σ/2 for the ReLU
        e22 = s22 / 2
        rhos.append(s12 / jnp.sqrt(s11[:, None] * s22[None, :]))
        e12, dot_deriv = _relu_step(s11[:, None], s22[None, :], s12)
        if spec.parameterization == "ntk":
            new_s12 = w2 * e12 + b2
            ntk = new_s12 + w2 * dot_deriv * ntk
        else:
            new_s12 = w2 * e12 + b2
            ntk = spec.width * e12 + bias_ntk + w2 * dot_deriv * ntk
        s11, s22, s12 = w2 * e11 + b2, w2 * e22 + b2, new_s12
    return s12, ntk, rhos


def nngp(spec: KernelSpec, x1: jax.Array, x2: jax.Array | None = None) -> jax.Array:
    """The NNGP kernel (the output covariance at initialization), (n1, n2)."""
    return relu_kernels(spec, x1, x2)[0]


def ntk(spec: KernelSpec, x1: jax.Array, x2: jax.Array | None = None) -> jax.Array:
    """The neural tangent kernel, (n1, n2)."""
    return relu_kernels(spec, x1, x2)[1]


def nt_stax_mlp(spec: KernelSpec, width: int = 512, out_dim: int = 1):
    """The same network in neural-tangents' stax: ``(init_fn, apply_fn, kernel_fn)``.

    For tests and comparisons; imports neural-tangents (through the shim) only when called.
    """
    from nt_robust.theory.nt_compat import stax

    layers = []
    for _ in range(spec.depth - 1):
        layers += [stax.Dense(width, W_std=spec.W_std, b_std=spec.b_std, parameterization=spec.parameterization),
                   stax.Relu()]
    layers.append(stax.Dense(out_dim, W_std=spec.W_std, b_std=spec.b_std, parameterization=spec.parameterization))
    return stax.serial(*layers)

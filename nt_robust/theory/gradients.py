"""Input gradients of finite networks and of kernel predictors, and what the kernel says.

    from nt_robust.theory.gradients import input_grads, kernel_grad_sq_norm, KernelModel
    g = input_grads(f, u)                          # (N, d): ∇ₓf at each row (f: (N, d) -> (N,))
    expected = kernel_grad_sq_norm(spec, u)        # (N,): E‖∇f(u)‖² at init from the NNGP kernel
    model = KernelModel(spec, x_train, coef)       # f(u) = Θ(u, X_train) · coef (+ optional f₀)
    model.grads(u_test)                            # autodiff through the kernel (refused at
                                                   # training points: the NTK has a cusp there)

Everything works on unit-sphere inputs ``u`` (N, d) with the network fed √d·u, exactly as
:func:`nt_robust.theory.networks.scalar_fn` does; gradients are with respect to u.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

import numpy as np

from nt_robust.theory.kernels import KernelSpec, layer_correlations, relu_kernels
from nt_robust.theory.networks import sphere_scale

ScalarFn = Callable[[jax.Array], jax.Array]


def input_grads(f: ScalarFn, u: jax.Array) -> jax.Array:
    """∇ᵤ f(u) per row, (N, d). ``f`` must treat rows independently (no batch statistics)."""
    return jax.grad(lambda v: jnp.sum(f(v)))(u)


def grad_norms(f: ScalarFn, u: jax.Array) -> dict[str, jax.Array]:
    """Per-example ‖∇f‖₂ and ‖∇f‖₁ (the ℓ∞-threat dual norm); a KernelModel's own checked grads."""
    g = (f.grads(u) if isinstance(f, KernelModel) else input_grads(f, u)).reshape(u.shape[0], -1)
    return {"l2": jnp.linalg.norm(g, axis=1), "l1": jnp.sum(jnp.abs(g), axis=1)}


def _sphere_kernel(spec: KernelSpec, which: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Scalar k(a, b) between two single unit-sphere points a, b of shape (d,)."""

    def k(a: jax.Array, b: jax.Array) -> jax.Array:
        scale = sphere_scale(a.shape[0])
        return relu_kernels(spec, scale * a[None], scale * b[None])[which][0, 0]

    return k


def kernel_grad_sq_norm(spec: KernelSpec, u: jax.Array) -> jax.Array:
    """tr ∂²K(x, x')/∂x∂x' at x' = x for each row of ``u``: E‖∇f(u)‖² at initialization, (N,).

    K is the NNGP kernel (the covariance of f at initialization). Computed by autodiff
    of our closed form; the arc-cosine functions' custom derivatives make the diagonal
    x' = x well defined (docs/theory.md derives the limit and the closed value
    d·W_std²(W_std²/2)^(depth−1), which tests/theory checks this against).
    """
    k = _sphere_kernel(spec, 0)
    mixed = jax.jacfwd(jax.grad(k, argnums=1), argnums=0)

    def one(a: jax.Array) -> jax.Array:
        return jnp.trace(mixed(a, a))

    return jax.lax.map(one, u.reshape(u.shape[0], -1))


@functools.partial(jax.jit, static_argnums=0)
def _max_correlation(spec: KernelSpec, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.max(layer_correlations(spec, a, b), axis=0)


def closed_form_grad_sq_norm(spec: KernelSpec, in_dim: int) -> float:
    """E‖∇ᵤf(u)‖² at initialization in closed form: d·W_std²·(W_std²/2)^(depth−1).

    Exact at every width (not only in the limit) and independent of u and of b_std; the
    derivation is in docs/theory.md.
    """
    return in_dim * spec.W_std**2 * (spec.W_std**2 / 2) ** (spec.depth - 1)


@dataclasses.dataclass(frozen=True)
class KernelModel:
    """A kernel predictor ``f(u) = f₀(u) + Θ(u, X)·coef`` (f₀ optional) with its input gradient.

    ``which`` picks the kernel: "ntk" (gradient-descent training in the kernel regime) or
    "nngp" (Bayesian posterior mean). ``x_train`` are unit-sphere points (n, d).
    """

    spec: KernelSpec
    x_train: jax.Array
    coef: jax.Array
    f0: ScalarFn | None = None
    which: str = "ntk"

    def kernel(self, u: jax.Array) -> jax.Array:
        scale = sphere_scale(self.x_train.shape[1])
        nngp, ntk = relu_kernels(self.spec, scale * u.reshape(u.shape[0], -1), scale * self.x_train)
        return ntk if self.which == "ntk" else nngp

    def __call__(self, u: jax.Array) -> jax.Array:
        out = self.kernel(u) @ self.coef
        return out if self.f0 is None else out + self.f0(u)

    def grads(self, u: jax.Array) -> jax.Array:
        """∇ᵤ f(u) per row by autodiff through the kernel, (N, d).

        Raises ValueError for an NTK model at a point that coincides with a training point
        (see :meth:`check_differentiable`): the NTK Θ(u, xᵢ) has a cusp at u = xᵢ, so f has
        no gradient there, only two different one-sided directional derivatives.
        """
        self.check_differentiable(u)
        return input_grads(self, u)

    def check_differentiable(self, u: jax.Array) -> None:
        """Refuse rows of ``u`` at which the NTK predictor is not differentiable.

        Θ(u, xᵢ) contains κ₀(ρ) = 1/2 − arccos(ρ)/(2π) at each layer's correlation ρ between
        u and xᵢ, and arccos(ρ) ∝ |u − xᵢ| as ρ → 1: a cusp at u = xᵢ (wherever coefᵢ ≠ 0).
        The custom derivative of κ₀ returns 0 at ρ = 1, so autodiff there yields the mean of
        the two one-sided slopes, which is not a derivative. A row is refused when
        1 − ρ ≤ 64·(machine epsilon of the computation) at some layer, i.e. when ρ rounds to
        within a few dozen ulps of 1: there the computed 1 − ρ² is mostly rounding error and
        the slope 1/(2π√(1 − ρ²)) (or its cut-off to 0) is meaningless. Further out the
        function is differentiable and autodiff is exact up to rounding. The NNGP (κ₁,
        whose cusp term is ∝ |u − xᵢ|³) is differentiable everywhere and is not checked.
        """
        if self.which != "ntk" or self.spec.depth < 2:
            return
        scale = sphere_scale(self.x_train.shape[1])
        flat = u.reshape(u.shape[0], -1)
        rho = np.asarray(_max_correlation(self.spec, scale * flat, scale * self.x_train))
        tol = 64 * float(jnp.finfo(jnp.result_type(flat, self.x_train)).eps)
        bad = np.argwhere((1 - rho <= tol) & (np.asarray(self.coef) != 0)[None, :])
        if bad.size:
            pairs = ", ".join(f"test row {i} = training point {j}" for i, j in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError(
                f"KernelModel.grads: the NTK predictor has no gradient at training points ({pairs}{more}): "
                "Θ(u, xᵢ) has a cusp at u = xᵢ (κ₀(ρ) is not differentiable at ρ = 1), so the one-sided "
                "directional derivatives differ. Evaluate gradients off the training set.")

"""Perturbation stability of a binary ReLU MLP: certified lower bound vs PGD (ℓ∞ threat).

For the score g (class = sign g, margin |g|) and u' ∈ B = B∞(u, ε) ∩ [0, 1]^d, the mean
value inequality along the segment [u, u'] (g is continuous and piecewise linear) gives

    |g(u') − g(u)| ≤ ‖u' − u‖∞ · sup_{v ∈ B} ‖∇g(v)‖₁ ≤ ε · G(u),

where G(u) is a *certified* upper bound of that sup: interval arithmetic through the
network over B marks each ReLU as surely off (upper pre-activation bound < 0) or possibly
on; on B every gradient √d·W₁D₁W₂⋯W_L has D_l ≤ D̄_l, so |∇g(v)| ≤ √d|W₁|D̄₁|W₂|⋯|W_L|
entrywise, whose ℓ1 norm is G(u). Hence

    certified stable(u)  ⇐  |g(u)| > ε·G(u),
    P(|g| > ε·G) ≤ true stability ≤ PGD-measured stability

(PGD only finds some flips, so it over-estimates stability). The "estimated" variant
replaces G by the largest ‖∇g‖₁ seen at u and at the PGD point: not certified (a lower
bound of the sup), reported for comparison only::

    from nt_robust.theory.stability import stability_report
    report = stability_report(spec, params, u, eps=0.002, key=jax.random.key(0))
    report["certified"], report["pgd"], report["estimated"]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nt_robust.attacks import AttackConfig, pgd
from nt_robust.theory.gradients import input_grads
from nt_robust.theory.networks import MLPSpec, Params, binary_logits, effective_layers, scalar_fn, sphere_scale


def certified_grad_l1_bound(spec: MLPSpec, params: Params, u: jax.Array, eps: float) -> jax.Array:
    """G(u) ≥ sup_{v ∈ B∞(u, ε) ∩ [0,1]^d} ‖∇g(v)‖₁ per row, (N,), by interval arithmetic."""
    u = u.reshape(u.shape[0], -1)
    scale = sphere_scale(u.shape[1])
    lo, hi = jnp.clip(u - eps, 0.0, 1.0) * scale, jnp.clip(u + eps, 0.0, 1.0) * scale
    layers = effective_layers(spec, params)
    maybe_on = []
    for w, b in layers[:-1]:
        center, radius = (lo + hi) / 2, (hi - lo) / 2
        pre_c, pre_r = center @ w + b, radius @ jnp.abs(w)
        pre_lo, pre_hi = pre_c - pre_r, pre_c + pre_r
        maybe_on.append((pre_hi > 0).astype(u.dtype))
        lo, hi = jax.nn.relu(pre_lo), jax.nn.relu(pre_hi)
    # Backward with absolute values: v ← D̄_l · (|W_{l+1}| v), starting from |W_L|.
    v = jnp.broadcast_to(jnp.abs(layers[-1][0][:, 0]), (u.shape[0], layers[-1][0].shape[0]))
    for (w, _), mask in zip(reversed(layers[:-1]), reversed(maybe_on)):
        v = (v * mask) @ jnp.abs(w).T
    return scale * jnp.sum(v, axis=1)


def spectral_grad_l2_bound(spec: MLPSpec, params: Params) -> jax.Array:
    """√d·∏ₗ‖Wₗ‖₂ ≥ ‖∇g(v)‖₂ at every input v: the usual worst-case (Lipschitz) bound.

    ∇g = √d·W₁D₁W₂⋯D_{L−1}W_L with 0/1 diagonals D, and ‖D‖₂ ≤ 1. Unlike G(u) above it does
    not depend on u or ε. Each ‖W‖₂ is the square root of the largest eigenvalue of the
    smaller Gram matrix (float32: exact up to ~1e-6 relative rounding). For Gaussian layers
    ‖W₁‖₂ ≈ W_std(1 + √(m/d)) and ‖Wₗ‖₂ ≈ 2W_std for the m×m ones, so the product grows like
    (√d + √m)/√d — only once m is comparable with d, and with an exponent that does not
    depend on the depth (docs/theory.md 8.3). The ℓ1 analogue is √d times this.
    """
    norms = []
    for w, _ in effective_layers(spec, params):
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        norms.append(jnp.sqrt(jnp.linalg.eigvalsh(gram)[-1]))
    return sphere_scale(params[0]["w"].shape[0]) * jnp.prod(jnp.stack(norms))


def pgd_flip_attack(spec: MLPSpec, params: Params, u: jax.Array, eps: float, key: jax.Array,
                    num_steps: int = 20, restarts: int = 1) -> jax.Array:
    """PGD (ℓ∞, uniform start, step ε/4) that tries to change the *predicted* class."""
    logits_fn = lambda v: binary_logits(scalar_fn(spec, params)(v))  # noqa: E731
    pred = jnp.argmax(logits_fn(u), axis=-1)
    config = AttackConfig(norm="linf", eps=eps, step_size=eps / 4, num_steps=num_steps, loss="cw",
                          start="uniform", restarts=restarts, loop="fori")
    return pgd(logits_fn, u, pred, key, config)


def stability_report(spec: MLPSpec, params: Params, u: jax.Array, eps: float, key: jax.Array,
                     num_steps: int = 20, restarts: int = 1) -> dict[str, jax.Array]:
    """Certified / PGD / estimated stability (means) and the per-example pieces.

    Compiled once per (spec, eps, num_steps, restarts, shapes); params and data are traced.
    """
    return _report(spec, float(eps), int(num_steps), int(restarts), params, u, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _report(spec: MLPSpec, eps: float, num_steps: int, restarts: int, params: Params, u: jax.Array,
            key: jax.Array) -> dict[str, jax.Array]:
    g = scalar_fn(spec, params)
    clean = g(u)
    u_adv = pgd_flip_attack(spec, params, u, eps, key, num_steps, restarts)
    adv = g(u_adv)
    bound = certified_grad_l1_bound(spec, params, u, eps)
    grad_l1 = jnp.maximum(jnp.sum(jnp.abs(input_grads(g, u)), axis=1),
                          jnp.sum(jnp.abs(input_grads(g, u_adv)), axis=1))
    margin = jnp.abs(clean)
    return {
        "certified": jnp.mean(margin > eps * bound),
        "pgd": jnp.mean(jnp.sign(adv) == jnp.sign(clean)),
        "estimated": jnp.mean(margin > eps * grad_l1),
        "margin": margin, "certified_bound": bound, "grad_l1_seen": grad_l1,
    }

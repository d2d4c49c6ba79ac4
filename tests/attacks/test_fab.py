"""FAB: the exact hyperplane-and-box projection, and minimal distances on linear models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks.fab import FABConfig, fab, project_onto_hyperplane_box
from test_apgd import assert_fooled_matches_margin, assert_valid, images, linear_model, margin_slack, worst_margin


def _bisect_radius(t, w, b, iters=60):
    """Smallest λ whose box-clipped move closes the gap (brute force, per row)."""
    gap = np.abs(t @ w - b)
    sign = np.where(t @ w - b >= 0, 1.0, -1.0)
    ws = w * sign
    room = np.where(ws < 0, 1 - t, t)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if np.sum(np.abs(ws) * np.minimum(mid, room)) >= gap:
            hi = mid
        else:
            lo = mid
    return hi


def test_projection_is_feasible_and_minimal():
    rng = np.random.default_rng(0)
    t = rng.uniform(size=(20, 30)).astype(np.float32)
    w = rng.normal(size=(20, 30)).astype(np.float32)
    w[:, :3] = 0.0  # zero weights must not move
    b = (np.sum(t * w, 1) + rng.normal(size=20)).astype(np.float32)
    d = np.asarray(project_onto_hyperplane_box(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    z = t + d
    reachable = np.array([np.sum(np.abs(w[i]) * np.where(w[i] * np.sign(t[i] @ w[i] - b[i]) < 0, 1 - t[i], t[i]))
                          >= abs(t[i] @ w[i] - b[i]) for i in range(20)])
    assert reachable.sum() >= 10
    assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
    assert np.all(d[:, :3] == 0)
    np.testing.assert_allclose(np.sum(z * w, 1)[reachable], b[reachable], atol=1e-3)
    for i in np.flatnonzero(reachable):
        assert np.max(np.abs(d[i])) == pytest.approx(_bisect_radius(t[i], w[i], b[i]), abs=1e-5)


def _minimal_distance(x, y, w, b):
    """Exact ℓ∞ distance to the decision boundary of a binary linear model, by bisection on ε."""
    flat, w, b, y = np.asarray(x).reshape(len(x), -1), np.asarray(w), np.asarray(b), np.asarray(y)
    v = (w[:, 1 - y] - w[:, y]).T                                  # (N, d): w_other - w_y
    offset = b[1 - y] - b[y]
    lo, hi = np.zeros(len(x)), np.ones(len(x))
    for _ in range(40):
        mid = ((lo + hi) / 2)[:, None]
        end = np.where(v > 0, np.clip(flat + mid, 0, 1), np.clip(flat - mid, 0, 1))
        broken = np.sum(end * v, axis=1) + offset > 0
        hi, lo = np.where(broken, mid[:, 0], hi), np.where(broken, lo, mid[:, 0])
    return hi


def test_fab_finds_the_minimal_distance_of_a_binary_linear_model():
    logits_fn, w, b = linear_model(2)
    x = images(12)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.1
    result = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0),
                                                   FABConfig(eps=eps, targeted=False, num_steps=10))
    exact = _minimal_distance(x, y, w, b)
    found = np.asarray(result.norm)
    assert np.all(found >= exact - 1e-4)                 # never below the true minimum
    np.testing.assert_allclose(found[exact < 0.9], exact[exact < 0.9], rtol=0.06, atol=1e-3)
    assert_valid(result.x_adv, x, eps)
    assert_fooled_matches_margin(result.fooled, result.x_adv, y, w, b)


def test_fab_targeted_with_restarts_on_multiclass_linear_model():
    logits_fn, w, b = linear_model(10)
    x = images(48)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.1
    config = FABConfig(eps=eps, targeted=True, num_steps=10, num_targets=3, restarts=2)
    result = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(3), config)
    assert_valid(result.x_adv, x, eps)
    worst = np.asarray(worst_margin(x, y, w, b, eps))
    fooled = np.asarray(result.fooled)
    assert not np.any(fooled & (worst < -margin_slack(w, b)))
    assert fooled[worst > 0.05].mean() > 0.8

"""FAB: the exact hyperplane-and-box projection, and minimal distances on linear models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks.fab import FABConfig, fab, project_onto_hyperplane_box
from test_apgd import (assert_valid, images, linear_model, margin_slack, relu_net,
                       worst_margin)


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


def _sorted_breakpoint_projection(t, w, b):
    """The same projection the textbook way, in float64 numpy: sort the rooms, walk the
    breakpoints of R(λ) to the linear piece that reaches the gap, solve it there.

    Returns it with a per-row bound on a float32 computation's error: the gap and the
    filled part are float32 sums of D terms (each within D·u·Σ|terms|, u = 2⁻²⁴), their
    difference is divided by the weight still moving, and the rooms 1 − t are rounded (u)."""
    u, n = 2.0 ** -24, t.shape[1]
    out, bound = np.zeros_like(t, np.float64), np.zeros(len(t))
    for i in range(len(t)):
        ti, wi, bi = t[i].astype(np.float64), w[i].astype(np.float64), float(b[i])
        gap = float(ti @ wi - bi)
        ws = wi * (1.0 if gap >= 0 else -1.0)
        gap = abs(gap)
        limit = np.where(ws < 0, 1.0 - ti, -ti)
        room, weight = np.abs(limit), np.abs(ws)
        if np.sum(weight * room) < gap:
            out[i], bound[i] = np.where(ws != 0, limit, 0.0), u
            continue
        order = np.argsort(room, kind="stable")
        filled, left = 0.0, float(np.sum(weight))
        for j in order:  # breakpoint room[j]: everything below it is clipped
            if filled + room[j] * left >= gap:
                break
            filled += weight[j] * room[j]
            left -= weight[j]
        lam = (gap - filled) / left
        out[i] = np.where(ws != 0, np.sign(limit) * np.minimum(lam, room), 0.0)
        sums = np.sum(np.abs(wi * ti)) + abs(bi) + np.sum(weight * room)
        bound[i] = n * u * sums / left + 2 * u * lam + u + np.max(room) * 2.0 ** -32  # (bisection bracket)
    return out, bound


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_equals_the_sorted_breakpoint_solution(seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=(64, 200)).astype(np.float32)
    t[:, :20] = np.round(t[:, :20] * 4) / 4  # tied rooms, and coordinates already at the box edge
    w = rng.normal(size=(64, 200)).astype(np.float32)
    w[:, 20:25] = 0.0
    b = (np.sum(t * w, 1) + rng.normal(size=64) * rng.choice([0.1, 3.0, 30.0], size=64)).astype(np.float32)
    got = np.asarray(project_onto_hyperplane_box(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    want, bound = _sorted_breakpoint_projection(t, w, b)
    assert np.all(np.abs(got - want) <= bound[:, None]), np.max(np.abs(got - want) / bound[:, None])


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
    broken = np.asarray(result.fooled)
    assert np.all(np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))[broken] != np.asarray(y)[broken])


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


def test_fab_untargeted_restarts_first_from_x_then_random_starts_each_with_its_own_key():
    # autoattack-2020 runs untargeted FAB with 5 restarts, as the published loop: run 0 from x,
    # run r >= 1 from x + min(r_best, ε)·t/‖t‖∞/2, t ~ U(-1, 1) drawn from fold_in(key, r). A point
    # still robust before run r has r_best > ε, so its start radius is ε/2; a point is fooled iff
    # some run found a misclassified point within ε.
    from nt_robust.attacks.fab import fab_run
    logits_fn = relu_net(10, seed=5)   # on a linear model FAB lands on the same point from any start
    x = images(64, seed=4)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.15
    config = FABConfig(eps=eps, targeted=False, num_steps=1, restarts=5)   # weak: the starts matter (33 -> 40 here)
    k = jax.random.key(11)
    result = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, k, config)
    one = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, k, FABConfig(eps=eps, targeted=False, num_steps=1))
    norms = []
    for r in range(5):
        t = jax.random.uniform(jax.random.fold_in(k, r), x.shape, x.dtype, -1.0, 1.0)
        t = t / jnp.max(jnp.abs(t), axis=(1, 2, 3), keepdims=True)
        start = x if r == 0 else jnp.clip(x + eps * t / 2, 0.0, 1.0)
        norms.append(np.asarray(fab_run(logits_fn, x, y, start, None, config)[1]))
    fooled = np.stack(norms) <= eps
    np.testing.assert_array_equal(result.fooled, fooled.any(0))
    np.testing.assert_array_equal(one.fooled, fooled[0])      # restarts=1 is run 0 alone
    assert fooled.any(0).sum() > fooled[0].sum()              # the random restarts break more points
    assert np.all(np.asarray(result.norm) <= np.asarray(one.norm) * (1 + 1e-3))   # run 0 compiled twice: rounding
    assert_valid(result.x_adv, x, eps)
    broken = np.asarray(result.fooled)
    assert np.all(np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))[broken] != np.asarray(y)[broken])

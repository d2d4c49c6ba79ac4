"""FAB in ℓ2: the hyperplane-and-box projection against a float64 sorted-breakpoint solution, and
minimal ℓ2 distances of a linear model against a float64 bisection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks.fab import FABConfig, fab, project_onto_hyperplane_box_l2
from test_apgd import images, linear_model
from test_apgd_l2 import assert_valid_l2, worst_gain_l2


def _sorted_breakpoint_projection_l2(t, w, b):
    """argmin ‖d‖₂ s.t. w·(t + d) = b, t + d ∈ [0, 1]^D in float64 numpy: d_i = ±min(λ|w_i|, p_i);
    walk the sorted breakpoints p_i/|w_i| of R(λ) = Σ |w_i|·min(λ|w_i|, p_i) to the piece
    reaching the gap and solve it there.

    Returns it with a per-row bound on a float32 computation's error (u = 2⁻²⁴): the gap and
    the filled part are float32 sums of D terms (each within D·u·Σ|terms|), the moving weight
    Σ w_i² is within (D + 1)·u relatively, so λ = (gap − filled)/moving is within
    δλ = D·u·S/moving + (D + 3)·u·λ (S the sums of absolute terms); a coordinate λ|w_i| is then
    within |w_i|·δλ + u, plus the bisection bracket (64 halvings of the largest breakpoint)."""
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
        active = weight > 0
        bp = np.where(active, room / np.where(active, weight, 1.0), 0.0)
        order = [j for j in np.argsort(bp, kind="stable") if active[j]]
        filled, moving = 0.0, float(np.sum(weight ** 2))
        for j in order:  # everything with a breakpoint below bp[j] is clipped
            if filled + bp[j] * moving >= gap:
                break
            filled += weight[j] * room[j]
            moving -= weight[j] ** 2
        lam = (gap - filled) / moving
        out[i] = np.where(active, np.sign(limit) * np.minimum(lam * weight, room), 0.0)
        sums = np.sum(np.abs(wi * ti)) + abs(bi) + np.sum(weight * room)
        dlam = n * u * sums / moving + (n + 3) * u * lam + np.max(bp) * 2.0 ** -64
        bound[i] = np.max(weight) * dlam + 2 * u
    return out, bound


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_projection_equals_the_sorted_breakpoint_solution(seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=(64, 200)).astype(np.float32)
    t[:, :20] = np.round(t[:, :20] * 4) / 4   # coordinates at the box edge, tied rooms
    w = rng.normal(size=(64, 200)).astype(np.float32)
    w[:, 20:25] = 0.0                          # zero weights never move
    w[:, 25:30] *= 1e-4                        # breakpoints far above the others
    b = (np.sum(t * w, 1) + rng.normal(size=64) * rng.choice([0.1, 3.0, 30.0, 300.0], size=64)).astype(np.float32)
    got = np.asarray(project_onto_hyperplane_box_l2(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    want, bound = _sorted_breakpoint_projection_l2(t, w, b)
    reachable = bound > 2.0 ** -24
    assert 10 <= reachable.sum() < 64                  # both cases occur
    assert np.all(got[:, 20:25] == 0)
    assert np.all(np.abs(got - want) <= bound[:, None]), np.max(np.abs(got - want) / bound[:, None])
    z = t + got
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6


def _minimal_l2_distance(x, y, w, b):
    """Exact ℓ2 distance (within the box) to the boundary of a binary linear model: the smallest
    ε whose worst case crosses it, by float64 bisection on ε."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    w, b, y = np.asarray(w, np.float64), np.asarray(b, np.float64), np.asarray(y)
    v = (w[:, 1 - y] - w[:, y]).T
    offset = flat @ w[:, 1] - flat @ w[:, 0]
    margin = np.where(y == 0, offset + b[1] - b[0], -(offset + b[1] - b[0]))   # z_other − z_y at x
    lo, hi = np.zeros(len(x)), np.full(len(x), float(np.sqrt(flat.shape[1])))
    for _ in range(60):
        mid = (lo + hi) / 2
        broken = margin + worst_gain_l2(flat, v, mid) > 0
        hi, lo = np.where(broken, mid, hi), np.where(broken, lo, mid)
    return hi


def test_fab_l2_finds_the_minimal_l2_distance_of_a_binary_linear_model():
    logits_fn, w, b = linear_model(2)
    x = images(12)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.9   # the exact distances run from 0.79 to 1.36: some points break, some do not
    result = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0),
                                                   FABConfig(eps=eps, norm="l2", targeted=False, num_steps=10))
    exact = _minimal_l2_distance(x, y, w, b)
    found = np.asarray(result.norm)
    assert np.all(found >= exact * (1 - 1e-5) - 1e-6)        # never below the true minimum
    near = exact < 2.0
    assert near.sum() >= 6
    np.testing.assert_allclose(found[near], exact[near], rtol=0.06, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(result.fooled), found <= eps)
    assert_valid_l2(result.x_adv, x, eps)
    broken = np.asarray(result.fooled)
    assert broken.any() and not broken.all()
    assert np.all(np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))[broken] != np.asarray(y)[broken])


def test_fab_l2_targeted_restarts_start_within_the_l2_ball():
    logits_fn, w, b = linear_model(10)
    x = images(32)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.5
    config = FABConfig(eps=eps, norm="l2", targeted=True, num_steps=10, num_targets=3, restarts=2)
    result = jax.jit(fab, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(3), config)
    assert_valid_l2(result.x_adv, x, eps)
    fooled = np.asarray(result.fooled)
    assert fooled.any()
    assert np.all(np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))[fooled] != np.asarray(y)[fooled])
    with pytest.raises(ValueError, match="linf.*l2"):
        FABConfig(eps=eps, norm="l1")

"""APGD against closed-form worst cases of linear models, plus the helpers the other attack tests share."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks.apgd import APGDConfig, apgd, checkpoint_schedule

EPS = 0.1

# Linear test models whose worst case inside B∞(x, ε) ∩ [0, 1]^d has a closed form
# (the other attack tests import these helpers from here).

def linear_model(num_classes: int, shape=(4, 4, 1), seed: int = 0):
    """``(logits_fn, W, b)`` with ``logits = flatten(x) @ W + b``."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    w = jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(num_classes,)) * 0.1, jnp.float32)
    return (lambda x: x.reshape(x.shape[0], -1) @ w + b), w, b


def relu_net(num_classes: int, shape=(4, 4, 1), hidden: int = 32, seed: int = 0):
    """``logits_fn`` of a random one-hidden-layer ReLU net (where an attack's start matters)."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(int(np.prod(shape)), hidden)), jnp.float32)
    b1 = jnp.asarray(rng.normal(size=hidden) * 0.5, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(hidden, num_classes)), jnp.float32)
    return lambda x: jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2


def images(n: int, shape=(4, 4, 1), seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n,) + shape), jnp.float32)


def worst_margin(x: jax.Array, y: jax.Array, w: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    """``max_j max_{x'} z_j(x') - z_y(x')`` over j ≠ y: each coordinate of x' goes to the end of
    ``[max(x - ε, 0), min(x + ε, 1)]`` that the sign of ``w_j - w_y`` favours."""
    flat = x.reshape(x.shape[0], -1)
    lo, hi = jnp.clip(flat - eps, 0, 1), jnp.clip(flat + eps, 0, 1)
    v = w[None, :, :] - w.T[y][:, :, None]                       # (N, d, K): w_j - w_y
    best = jnp.sum(jnp.where(v > 0, hi[:, :, None], lo[:, :, None]) * v, axis=1) + b - b[y][:, None]
    best = jnp.where(jax.nn.one_hot(y, w.shape[1], dtype=bool), -jnp.inf, best)
    return jnp.max(best, axis=1)


def margin64(x_adv, y, w, b) -> np.ndarray:
    """``max_{j≠y} z_j − z_y`` at ``x_adv``, in float64 (exact for these purposes)."""
    z = np.asarray(x_adv, np.float64).reshape(len(y), -1) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    rows, y = np.arange(len(y)), np.asarray(y)
    label = z[rows, y].copy()
    z[rows, y] = -np.inf
    return z.max(1) - label


def margin_slack(w, b, tol: float = 1e-6) -> float:
    """How far a float32 margin of the linear model can sit from ``margin64`` or ``worst_margin``:
    each float32 logit (d products and a bias, any summation order, x ∈ [0, 1]) is within
    γ·(‖w_j‖₁ + |b_j|) of exact, γ = (d + 1)·u, u = 2⁻²⁴, so a margin within twice that; and a point up
    to ``tol`` outside B∞(x, ε) (what :func:`assert_valid` allows) adds ``tol``·‖w_j − w_y‖₁ ≤ 2·``tol``·max_j ‖w_j‖₁."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    gamma = (w.shape[0] + 1) * 2.0 ** -24
    return 2 * gamma * float(np.max(np.abs(w).sum(0) + np.abs(b))) + tol * 2 * float(np.max(np.abs(w).sum(0)))


def assert_fooled_matches_margin(fooled, x_adv, y, w, b) -> None:
    """``fooled`` is "misclassified at x_adv" wherever the exact margin is clear of float32 rounding
    (an argmax recomputed in another program could flip only inside that band)."""
    margin, slack = margin64(x_adv, y, w, b), margin_slack(w, b)
    decided = np.abs(margin) > slack
    assert decided.mean() > 0.9, (decided.mean(), slack)
    np.testing.assert_array_equal(np.asarray(fooled)[decided], margin[decided] > 0)


def assert_valid(x_adv, x, eps: float, tol: float = 1e-6) -> None:
    """Every point within ε of x (ℓ∞) and inside [0, 1]."""
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x.shape
    assert np.all(np.isfinite(x_adv))
    assert np.max(np.abs(x_adv - x)) <= eps + tol
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_checkpoint_schedule_matches_published_fractions():
    is_check, window = checkpoint_schedule(100)
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (windows 22, 19, 16, ... down to 6)
    assert list(np.flatnonzero(is_check) + 1) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert list(window[is_check]) == [22, 19, 16, 13, 10, 7, 6, 6]


def test_apgd_ce_reaches_closed_form_worst_case_on_binary_linear_model():
    logits_fn, w, b = linear_model(2)
    x = images(16)
    y = jnp.argmax(logits_fn(x), axis=1)
    result = jax.jit(apgd, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0),
                                                    APGDConfig(eps=EPS, num_steps=10))
    assert_valid(result.x_adv, x, EPS)
    worst = worst_margin(x, y, w, b, EPS)
    worst_ce = jax.nn.softplus(worst)  # two classes: CE = softplus(z_other - z_y)
    np.testing.assert_allclose(result.loss, worst_ce, rtol=1e-4, atol=1e-5)
    # fooled ⇔ worst > 0 where |worst| clears float32 rounding (all points, checked).
    decided = np.abs(np.asarray(worst)) > margin_slack(w, b)
    assert decided.all()
    np.testing.assert_array_equal(result.fooled, worst > 0)


@pytest.mark.parametrize("loss", ["ce", "dlr", "targeted_dlr"])
def test_apgd_breaks_exactly_the_breakable_points_of_a_linear_model(loss):
    logits_fn, w, b = linear_model(10)
    x = images(64)
    y = jnp.argmax(logits_fn(x), axis=1)
    config = APGDConfig(eps=EPS, loss=loss, num_steps=20, num_targets=3, restarts=2 if loss == "dlr" else 1)
    result = jax.jit(apgd, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(1), config)
    assert_valid(result.x_adv, x, EPS)
    worst = np.asarray(worst_margin(x, y, w, b, EPS))
    fooled = np.asarray(result.fooled)
    assert_fooled_matches_margin(fooled, result.x_adv, y, w, b)
    assert not np.any(fooled & (worst < -margin_slack(w, b)))  # never an unbreakable point
    clear = worst > 0.05
    assert clear.sum() > 10
    if loss == "targeted_dlr":  # only the 3 runner-up classes are tried
        assert fooled[clear].mean() > 0.8
    else:
        assert np.all(fooled[clear])


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_restarts_keep_each_points_best_run_each_from_its_own_key(loss):
    # autoattack-2020 runs APGD-CE and APGD-DLR with 5 restarts. Restart r starts from
    # fold_in(key, r); a point is fooled iff some restart fooled it (the published loop
    # re-attacks only the points still robust, which gives the same set).
    from nt_robust.attacks.apgd import _random_start, apgd_run
    from nt_robust.attacks.losses import cross_entropy, dlr
    logits_fn = relu_net(10, seed=3)   # on a linear model one step of 2ε reaches the same vertex from any start
    x = images(96, seed=4)
    y = jnp.argmax(logits_fn(x), axis=1)
    config = APGDConfig(eps=EPS, loss=loss, num_steps=1, restarts=5)   # one step: the start matters
    k = jax.random.key(7)
    result = jax.jit(apgd, static_argnums=(0, 4))(logits_fn, x, y, k, config)
    loss_fn = (lambda z: cross_entropy(z, y)) if loss == "ce" else (lambda z: dlr(z, y))
    singles = [apgd_run(logits_fn, loss_fn, x, y, _random_start(jax.random.fold_in(k, r), x, EPS, "linf"), config)
               for r in range(5)]
    fooled = np.stack([np.asarray(s.fooled) for s in singles])
    np.testing.assert_array_equal(result.fooled, fooled.any(0))
    assert fooled.any(0).sum() > fooled[0].sum()              # later restarts break more points
    assert_valid(result.x_adv, x, EPS)
    broken = np.asarray(result.fooled)
    assert np.all(np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))[broken] != np.asarray(y)[broken])
    # Not fooled anywhere: the highest loss over the restarts.
    robust = ~fooled.any(0)
    best = np.max(np.stack([np.asarray(s.loss) for s in singles]), 0)
    np.testing.assert_allclose(np.asarray(result.loss)[robust], best[robust], rtol=1e-5, atol=1e-6)  # jit vs eager rounding

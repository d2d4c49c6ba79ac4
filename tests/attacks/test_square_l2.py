"""Square in ℓ2: the windows, the start and one proposal against a float64 NumPy replay of the
original's L2 algorithm (slices and loops, the same random draws), and the attack on a linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks.square import SquareConfig, square
from nt_robust.attacks.square_l2 import (_inverse_square_sums, _normalized_window, l2_proposal, l2_start,
                                         start_tiles, window_side)
from test_apgd import images, linear_model, margin_slack
from test_apgd_l2 import assert_valid_l2, worst_margin_l2

U = 2.0 ** -24


def _rectangles(a, b):
    """The published nested rectangles, as loops: rectangle k around the centre adds 1/(k+1)²."""
    delta = np.zeros((a, b))
    ca, cb = a // 2 + 1, b // 2 + 1
    top, left = ca - 1, cb - 1
    for k in range(max(ca, cb)):
        delta[max(top, 0):min(top + 2 * k + 1, a), max(left, 0):min(left + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
        top, left = top - 1, left - 1
    norm = np.sqrt(np.sum(delta ** 2))
    return delta / norm if norm > 0 else delta


def _eta(s, flip):
    delta = np.zeros((s, s))
    delta[:s // 2] = _rectangles(s // 2, s)
    delta[s // 2:] = -_rectangles(s - s // 2, s)
    delta /= np.sqrt(np.sum(delta ** 2))
    return delta.T if flip else delta


def _normalize(d):
    return d / (1e-12 + np.sqrt(np.sum(d ** 2, axis=(1, 2, 3), keepdims=True)))


def _start64(x, eps, signs, flips):
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    side, offset, rows, cols = start_tiles(h, w)
    delta = np.zeros_like(x)
    for e in range(n):
        for i in range(rows):
            for j in range(cols):
                tile, top, left = i * cols + j, offset + i * side, offset + j * side
                delta[e, top:top + side, left:left + side, :] += (_eta(side, flips[e, tile])[:, :, None]
                                                                   * signs[e, tile][None, None, :])
    return np.clip(x + _normalize(delta) * eps, 0, 1)


def _proposal64(x, x_best, eps, s, corner1, corner2, signs, flips):
    x, x_best = np.asarray(x, np.float64), np.asarray(x_best, np.float64)
    n, h, w, c = x.shape
    delta = x_best - x
    out, cond = np.zeros_like(delta), np.ones(n)
    for e in range(n):
        d = delta[e]
        (t1, l1), (t2, l2) = corner1[:, e], corner2[:, e]
        win1 = d[t1:t1 + s, l1:l1 + s]
        mask = np.zeros((h, w, 1))
        mask[t1:t1 + s, l1:l1 + s] = mask[t2:t2 + s, l2:l2 + s] = 1
        image_norm, both_norm = np.sqrt(np.sum(d ** 2)), np.sqrt(np.sum((d * mask) ** 2))
        old = win1 / (1e-12 + np.sqrt(np.sum(win1 ** 2, axis=(0, 1), keepdims=True)))
        pattern = _eta(s, flips[e])[:, :, None] * signs[e][None, None, :]
        new = pattern + old
        new_norm = np.sqrt(np.sum(new ** 2, axis=(0, 1), keepdims=True))
        cond[e] = np.max((1 + np.sqrt(np.sum(old ** 2, axis=(0, 1)))) / new_norm[0, 0])
        new = new / (1e-12 + new_norm) * np.sqrt(max(eps ** 2 - image_norm ** 2, 0) / c + both_norm ** 2)
        d = d.copy()
        d[t2:t2 + s, l2:l2 + s] = 0
        d[t1:t1 + s, l1:l1 + s] = new
        out[e] = d
    return np.clip(x + _normalize(out) * eps, 0, 1), cond


@pytest.mark.parametrize("side", range(1, 13))
def test_window_pattern_is_the_published_nested_rectangles(side):
    sums = _inverse_square_sums(16)
    r, c = np.arange(side)[:, None], np.arange(side)[None, :]
    got = np.asarray(_normalized_window(jnp.asarray(r), jnp.asarray(c), side, sums, (0, 1)))
    got_t = np.asarray(_normalized_window(jnp.asarray(c), jnp.asarray(r), side, sums, (0, 1)))
    for g, want in ((got, _eta(side, False)), (got_t, _eta(side, True))):
        # float32 partial sums of 1/j² (side terms), then two normalizations over s² cells
        assert np.all(np.abs(g - want) <= 4 * (side * side + 3) * U * np.abs(want).max() + U)


def test_start_and_proposals_replay_the_published_l2_steps_in_float64():
    rng = np.random.default_rng(0)
    n, h, w, c = 6, 10, 10, 3   # (the published start tiles 10 x 10 exactly: 5 x 5 windows of side 2)
    d, eps = h * w * c, 0.7
    x = rng.uniform(size=(n, h, w, c)).astype(np.float32)
    x[:, :3] = np.round(x[:, :3])                    # pixels at the box edge: clipping bites
    _, _, rows, cols = start_tiles(h, w)
    signs = rng.choice([-1.0, 1.0], size=(n, rows * cols, c)).astype(np.float32)
    flips = rng.uniform(size=(n, rows * cols)) < 0.5
    start = np.asarray(l2_start(jnp.asarray(x), eps, jnp.asarray(signs), jnp.asarray(flips)))
    # A chain of normalizations, each (sum of <= D squares, sqrt, divide) within (D + 3)·u relative.
    assert np.max(np.abs(start - _start64(x, eps, signs, flips))) <= 4 * (d + 3) * U * eps + 2 * U
    assert_valid_l2(start, x, eps)
    x_best = start
    for step, s in enumerate([3, 5, 7, 9, 10]):     # 10 = H: an even side, the whole image
        c1 = np.stack([rng.integers(0, h - s + 1, n), rng.integers(0, w - s + 1, n)])
        c2 = np.stack([rng.integers(0, h - s + 1, n), rng.integers(0, w - s + 1, n)])
        sg = rng.choice([-1.0, 1.0], size=(n, c)).astype(np.float32)
        fl = rng.uniform(size=n) < 0.5
        got = np.asarray(l2_proposal(jnp.asarray(x), jnp.asarray(x_best), eps, jnp.int32(s), jnp.asarray(c1),
                                     jnp.asarray(c2), jnp.asarray(sg), jnp.asarray(fl)))
        want, cond = _proposal64(x, x_best, eps, s, c1, c2, sg, fl)
        # Six normalizations in a row, amplified where η·sign and the old window cancel (cond).
        bound = 8 * (d + 3) * U * eps * cond[:, None, None, None] + 2 * U
        assert np.all(np.abs(got - want) <= bound), (step, np.max(np.abs(got - want) / bound))
        assert_valid_l2(got, x, eps)
        x_best = got


def test_window_side_follows_the_published_rule():
    sides = [int(window_side(jnp.float32(p), 32, 32)) for p in (0.8, 0.4, 0.05, 0.001)]
    # round(√(p·1024)) = 29, 20 -> 21 (odd), 7, 1 -> 3 (at least 3)
    assert sides == [29, 21, 7, 3]
    assert int(window_side(jnp.float32(0.8), 6, 8)) == 6      # round(√38.4) = 6 -> 7, clipped to the height


def test_square_l2_breaks_breakable_points_only_and_stays_in_the_l2_ball():
    logits_fn, w, b = linear_model(10, shape=(8, 8, 2))
    x = images(64, shape=(8, 8, 2))
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.5
    config = SquareConfig(eps=eps, norm="l2", num_queries=1000)
    result = jax.jit(square, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0), config)
    assert_valid_l2(result.x_adv, x, eps)
    worst = worst_margin_l2(x, y, w, b, eps)
    fooled = np.asarray(result.fooled)
    assert not np.any(fooled & (worst < -margin_slack(w, b)))     # never an unbreakable point
    pred = np.asarray(jnp.argmax(logits_fn(result.x_adv), 1))
    assert np.all(pred[fooled] != np.asarray(y)[fooled])
    clear = worst > 1.0
    assert clear.sum() > 10
    # A linear model's ℓ2 worst case is one dense direction, which local windows reach slowly:
    # of these 50 points 50% fall in 100 queries, 66% in 500, 82% in 2000 (seed 0).
    assert fooled[clear].mean() > 0.7, fooled[clear].mean()
    queries = np.asarray(result.queries)
    assert queries.max() <= 1001 and np.all(queries[~fooled] == 1001)
    with pytest.raises(ValueError, match="at least 5 pixels"):
        square(logits_fn, images(2, shape=(4, 4, 1)), jnp.zeros(2, jnp.int32), jax.random.key(0),
               SquareConfig(eps=eps, norm="l2", num_queries=2))

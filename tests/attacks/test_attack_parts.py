"""Starts, step rules, projections and loop forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks import (make_start, normalized_l2_step, project_l2, project_linf, run_loop,
                               sign_step)

EPS = 0.05


def _images(seed, shape=(16, 4, 4, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _noise(seed, shape=(16, 4, 4, 3)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _linf(v):
    return np.abs(np.asarray(v)).reshape(len(v), -1).max(-1)


def _l2(v):
    return np.sqrt((np.asarray(v, np.float64) ** 2).reshape(len(v), -1).sum(-1))


def test_linf_projection_lands_in_ball_and_box_and_is_idempotent():
    x = _images(0)
    far = x + 0.3 * _noise(1)
    projected = project_linf(far, x, EPS)
    assert _linf(projected - x).max() <= EPS + 1e-6
    assert float(projected.min()) >= 0 and float(projected.max()) <= 1
    np.testing.assert_array_equal(project_linf(projected, x, EPS), projected)


def test_l2_projection_lands_in_ball_and_box_and_keeps_inner_points():
    x = 0.25 + 0.5 * _images(0)
    far = x + 0.3 * _noise(1)
    projected = project_l2(far, x, EPS)
    assert _l2(projected - x).max() <= EPS + 1e-6
    assert float(projected.min()) >= 0 and float(projected.max()) <= 1
    inner = x + 0.5 * (projected - x)
    np.testing.assert_allclose(project_l2(inner, x, EPS), inner, atol=1e-7)


@pytest.mark.parametrize("start, norm", [("uniform", "linf"), ("uniform", "l2"), ("gaussian", "linf"), ("none", "l2")])
def test_starts_stay_near_x(start, norm):
    x = _images(2)
    x0 = make_start(start, norm, std=0.001)(jax.random.key(3, impl="rbg"), x, EPS)
    if start == "none":
        np.testing.assert_array_equal(x0, x)
    elif start == "gaussian":
        assert 0.0008 < float(jnp.std(x0 - x)) < 0.0012
    elif norm == "linf":
        assert _linf(x0 - x).max() <= EPS + 1e-6 and _linf(x0 - x).min() > 0.8 * EPS
    else:  # uniform in a 48-dim ball: the radius is eps * U^(1/48), almost always near eps
        assert _l2(x0 - x).max() <= EPS + 1e-6 and np.median(_l2(x0 - x)) > 0.9 * EPS


def test_step_rules_and_zero_gradient_guard():
    grad = jnp.stack([jnp.zeros((2, 2, 1)), jnp.full((2, 2, 1), -3.0)])
    np.testing.assert_allclose(sign_step(grad, EPS, 0.01)[1], -0.01)
    l2_step = normalized_l2_step(grad, EPS, 0.01)
    assert np.all(np.isfinite(l2_step))
    np.testing.assert_array_equal(l2_step[0], 0)
    np.testing.assert_allclose(_l2(l2_step)[1], 0.01, rtol=1e-6)


def test_run_loop_forms_agree():
    body = lambda i, carry: carry * 2 + i  # noqa: E731
    assert run_loop(0, 5, body, 1, "unroll") == int(run_loop(0, 5, body, jnp.int32(1), "fori"))
    assert run_loop(3, 3, body, 7, "unroll") == 7

"""Input gradients: kernel formula at init, and the kernel predictor vs finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.theory.gradients import (KernelModel, closed_form_grad_sq_norm, grad_norms, input_grads,
                                        kernel_grad_sq_norm)
from nt_robust.theory.kernels import KernelSpec
from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn


def _sphere(n, d, seed):
    u = jax.random.uniform(jax.random.key(seed), (n, d))
    return u / jnp.linalg.norm(u, axis=1, keepdims=True)


@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_kernel_autodiff_gives_closed_form(depth, parameterization):
    spec = KernelSpec(depth, 2**0.5, 0.1, parameterization, width=128)
    u = _sphere(3, 50, 0)
    np.testing.assert_allclose(kernel_grad_sq_norm(spec, u), closed_form_grad_sq_norm(spec, 50), rtol=1e-4)


def test_finite_width_average_matches_kernel():
    """Depth 2: E‖∇f‖² equals the kernel value at every width; 200 inits pin it to ~2%."""
    spec = MLPSpec(2, 64)
    u = _sphere(4, 30, 1)
    sq = jax.vmap(lambda k: grad_norms(scalar_fn(spec, init_params(spec, k, 30)), u)["l2"] ** 2)(
        jax.random.split(jax.random.key(2), 200))
    expected = closed_form_grad_sq_norm(spec.kernel_spec(), 30)
    assert abs(float(jnp.mean(sq)) / expected - 1) < 0.05


@pytest.mark.parametrize("depth,width,w_std,parameterization",
                         [(3, 32, 2**0.5, "ntk"), (5, 16, 1.2, "standard")])
def test_gradient_norm_identity_at_depth_by_monte_carlo(depth, width, w_std, parameterization):
    """E‖∇ᵤf‖² = d·W²(W²/2)^(L−1) exactly, at every width (here narrow), depth ≥ 3, W_std ≠ √2.

    One sample per initialization: the mean of ‖∇f‖² over 4 fixed points (its expectation is
    the identity's value, which does not depend on the point); N i.i.d. inits from a fixed
    key. The tolerance is 5 standard errors of the mean with the sample variance (two-sided
    false-alarm probability 6e-7 under the CLT), and the test only has power if that band is
    narrow, so it also asserts 5·SE < 8% of the value: a wrong power of W²/2 changes the
    value by ≥ 28% (W = 1.2), a missing W² or d by far more. (Compilation, not the 12,000
    samples, is most of the time.)
    """
    d, n = 30, 12000
    spec = MLPSpec(depth, width, parameterization, W_std=w_std)
    u = _sphere(4, d, 11)
    sq = jax.jit(jax.vmap(lambda k: jnp.mean(grad_norms(scalar_fn(spec, init_params(spec, k, d)), u)["l2"] ** 2)))(
        jax.random.split(jax.random.key(12), n))
    sq = np.asarray(sq, np.float64)
    expected = closed_form_grad_sq_norm(spec.kernel_spec(), d)
    se = sq.std(ddof=1) / np.sqrt(n)
    assert 5 * se < 0.08 * expected, (se, expected)
    assert abs(sq.mean() - expected) < 5 * se, (sq.mean(), expected, se)


@pytest.mark.parametrize("which", ["ntk", "nngp"])
def test_kernel_predictor_gradient_matches_finite_differences(which):
    spec = KernelSpec(3, 2**0.5, 0.1)
    x_train, u = _sphere(12, 20, 3), _sphere(3, 20, 4)
    coef = jax.random.normal(jax.random.key(5), (12,))
    net = MLPSpec(3, 32)
    model = KernelModel(spec, x_train, coef, f0=scalar_fn(net, init_params(net, jax.random.key(6), 20)), which=which)
    direction = jax.random.normal(jax.random.key(7), u.shape)
    h = 1e-3
    with jax.enable_x64(True):
        fd = (model(u.astype(jnp.float64) + h * direction) - model(u.astype(jnp.float64) - h * direction)) / (2 * h)
    analytic = jnp.sum(model.grads(u) * direction, axis=1)
    np.testing.assert_allclose(analytic, fd, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(fd))))


def test_input_grads_are_per_example():
    spec = MLPSpec(2, 16)
    f = scalar_fn(spec, init_params(spec, jax.random.key(0), 10))
    u = _sphere(3, 10, 8)
    whole = input_grads(f, u)
    for i in range(3):
        np.testing.assert_allclose(whole[i], input_grads(f, u[i:i + 1])[0], rtol=1e-5, atol=1e-6)


def _cusp_model(which):
    """A float64 kernel predictor on 6 training points (call inside jax.enable_x64)."""
    x_train = _sphere(6, 20, 3).astype(jnp.float64)
    coef = jax.random.normal(jax.random.key(5), (6,), jnp.float64)
    return KernelModel(KernelSpec(3, 2**0.5, 0.1), x_train, coef, which=which)


def _one_sided(model, u, v, h):
    """(f(u + hv) − f(u))/h and (f(u) − f(u − hv))/h: the right and left slopes along v."""
    f = jax.jit(lambda w: model(w)[0])  # one compile instead of op-by-op float64 dispatch
    f0 = f(u)
    return float((f(u + h * v) - f0) / h), float((f0 - f(u - h * v)) / h)


def test_ntk_predictor_gradient_is_refused_at_a_training_point():
    """The NTK has a cusp at u = xᵢ: the one-sided slopes (the truth) differ, autodiff's value
    is neither (it is their mean, from κ₀'·dρ := 0), and grads refuses the point."""
    with jax.enable_x64(True):
        model = _cusp_model("ntk")
        u = model.x_train[1:2]
        v = jax.random.normal(jax.random.key(7), u.shape, jnp.float64)
        right, left = _one_sided(model, u, v, 1e-6)
        right_10, left_10 = _one_sided(model, u, v, 1e-5)
        # The one-sided differences converge like O(h): their change between h = 1e-5 and
        # 1e-6 bounds their error; the gap between the two sides is ~1000x larger than that.
        fd_error = max(abs(right - right_10), abs(left - left_10))
        assert abs(right - left) > 1000 * fd_error, (right, left, fd_error)
        naive = float(jnp.sum(jax.jit(lambda w: input_grads(model, w))(u) * v))  # bypasses the check
        assert abs(naive - (right + left) / 2) < 10 * fd_error  # the mean of the sides, a non-gradient
        with pytest.raises(ValueError, match="cusp"):
            model.grads(u)
        with pytest.raises(ValueError, match="training point"):
            grad_norms(model, jnp.concatenate([_sphere(2, 20, 9).astype(jnp.float64), u]))
    with pytest.raises(ValueError, match="cusp"):  # float32: rounds to ρ ≈ 1 within a few ulps
        KernelModel(KernelSpec(3, 2**0.5, 0.1), _sphere(6, 20, 3), jnp.ones(6)).grads(_sphere(6, 20, 3)[:1])


def test_gradients_next_to_a_training_point_and_nngp_at_it_match_finite_differences():
    """Off the cusp the NTK predictor is smooth and grads is exact; the NNGP predictor (κ₁'s
    cusp term is ∝ |u − xᵢ|³) is differentiable at the training point itself."""
    with jax.enable_x64(True):
        ntk_model, nngp_model = _cusp_model("ntk"), _cusp_model("nngp")
        x = ntk_model.x_train[1:2]
        v = jax.random.normal(jax.random.key(7), x.shape, jnp.float64)
        w = jax.random.normal(jax.random.key(8), x.shape, jnp.float64)
        near = x + 0.05 * w / jnp.linalg.norm(w)  # 1 − ρ ≈ 1e-3 ≫ the 64-ulp refusal band
        for model, u in ((ntk_model, near), (nngp_model, x)):
            h, f = 1e-5, jax.jit(lambda w, model=model: model(w)[0])
            central = float((f(u + h * v) - f(u - h * v)) / (2 * h))
            # Central differences err by h²·|f'''|/6; f''' near the cusp grows like 1/r² at
            # distance r = 0.05, so the error is ~1e-10·|f|/r² ≈ 1e-7 here; rounding adds
            # eps64·|f|/h ≈ 1e-10. rtol 1e-5 is far above both and far below an O(1) bug.
            np.testing.assert_allclose(float(jnp.sum(model.grads(u) * v)), central, rtol=1e-5, atol=1e-8)

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

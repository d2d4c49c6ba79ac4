"""Our arc-cosine NNGP/NTK vs neural-tangents (analytic and empirical): the shim's alarm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.theory.kernels import KernelSpec, nt_stax_mlp, relu_kernels
from nt_robust.theory.networks import MLPSpec, apply, init_params
from nt_robust.theory.nt_compat import NTK_IMPL, NTK_IMPL_VP, nt


def _points(n, d, seed):
    return jax.random.normal(jax.random.key(seed), (n, d))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("b_std", [None, 0.1])
def test_closed_form_equals_nt_analytic(parameterization, depth, b_std):
    spec = KernelSpec(depth, math.sqrt(2.0), b_std, parameterization, width=300)
    x1, x2 = _points(6, 20, 0), _points(4, 20, 1)
    ours = relu_kernels(spec, x1, x2)
    theirs = nt_stax_mlp(spec, width=300)[2](x1, x2, ("nngp", "ntk"))
    for a, b in zip(ours, (theirs.nngp, theirs.ntk)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_finite_network_matches_nt_stax_apply():
    spec = MLPSpec(depth=3, width=64)
    x = _points(5, 12, 2)
    params = init_params(spec, jax.random.key(3), 12)
    stax_params = [(p["w"], p["b"]) for p in params]
    stax_params = [stax_params[0], (), stax_params[1], (), stax_params[2]]
    _, stax_apply, _ = nt_stax_mlp(spec.kernel_spec(), width=64)
    np.testing.assert_allclose(apply(spec, params, x), stax_apply(stax_params, x)[:, 0], rtol=1e-5, atol=1e-5)


def _empirical_ntks(spec, x, seeds, implementation=NTK_IMPL):
    """nt's empirical NTK of ``len(seeds)`` independent initializations, (S, n, n), one compile."""
    f = lambda p, v: apply(spec, p, v)[:, None]  # noqa: E731
    kernel_fn = nt.empirical_ntk_fn(f, trace_axes=(), implementation=implementation)
    one = lambda key: kernel_fn(x, None, init_params(spec, key, x.shape[1]))[..., 0, 0]  # noqa: E731
    return jax.jit(jax.vmap(one))(jnp.stack([jax.random.key(s) for s in seeds]))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_empirical_ntk_error_shrinks_like_inverse_sqrt_width(parameterization):
    x = _points(8, 16, 4)
    widths, seeds = [64, 128, 256, 512, 1024], range(3)
    log_w, log_err = [], []
    for width in widths:
        spec = MLPSpec(3, width, parameterization)
        exact = relu_kernels(spec.kernel_spec(), x)[1]
        for emp in _empirical_ntks(spec, x, seeds):
            log_w.append(math.log(width))
            log_err.append(math.log(float(jnp.linalg.norm(emp - exact) / jnp.linalg.norm(exact))))
    slope = np.polyfit(log_w, log_err, 1)[0]
    assert -0.8 < slope < -0.3, slope  # theory: -1/2


def test_ntk_implementations_agree():
    spec = MLPSpec(3, 64)
    x = _points(4, 16, 5)
    a = _empirical_ntks(spec, x, [0], NTK_IMPL)
    b = _empirical_ntks(spec, x, [0], NTK_IMPL_VP)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("w_std,b_std", [(1.0, 0.3), (1.8, None)])
def test_closed_form_equals_nt_analytic_in_float64_with_the_diagonal(parameterization, w_std, b_std):
    """W_std ≠ √2, x2 containing x1's rows (so ρ = 1 on those pairs), depth 4, float64.

    Tolerance: both sides evaluate the same formula in float64; the only ill-conditioned
    step is arccos near ρ = 1, where a few-ulp error δ in ρ moves θ by up to √(2δ) ≈ 4e-8
    and κ₀ by θ/(2π) ≈ 7e-9 relative to κ₀(1) = 1/2, compounding over 3 ReLU layers: 1e-7.
    Any convention difference (W_std, b_std, the standard NTK's width term) is O(1).
    """
    with jax.enable_x64(True):
        spec = KernelSpec(4, w_std, b_std, parameterization, width=300)
        x1 = _points(5, 20, 0).astype(jnp.float64)
        x2 = jnp.concatenate([x1[:3], _points(3, 20, 1).astype(jnp.float64)])
        ours = relu_kernels(spec, x1, x2)
        theirs = nt_stax_mlp(spec, width=300)[2](x1, x2, ("nngp", "ntk"))
        for a, b in zip(ours, (theirs.nngp, theirs.ntk)):
            assert a.dtype == b.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=0)
            np.testing.assert_allclose(jnp.diagonal(a[:, :3]), jnp.diagonal(b[:, :3]), rtol=1e-7, atol=0)

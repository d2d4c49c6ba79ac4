"""The infinite-width input-gradient variance propagated layer by layer (nt_robust.theory.grad_cov)
against closed forms, Monte-Carlo averages (of Gaussian vectors and of finite networks),
neural-tangents' NNGP kernel and second differences of it, and its invariances (issue 40)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.theory import grad_cov
from nt_robust.theory.conv import stax_init, stax_input_grads, wrn_arch, wrn_stax
from nt_robust.theory.grad_cov import (Conv, Dense, Flatten, GlobalAvgPool, Identity, Relu, Serial, Sum, grad_sq_diag,
                                       grad_sq_norm, nngp_diag, relu_pair_moments)
from nt_robust.theory.gradients import closed_form_grad_sq_norm
from nt_robust.theory.kernels import KernelSpec
from nt_robust.theory.trained import LINEAR_INIT_VARIANCE, mlp_arch


def _images(n, size, seed, channels=1):
    return np.random.default_rng(seed).random((n, size, size, channels))


def _small_conv(W_std=1.4, b_std=None):
    """The WRN's ingredients at a fraction of its compile time: a conv, a residual block
    (FanOut, Identity, FanInSum), a block whose stride-2 branch is summed with a strided 1x1
    shortcut, global average pooling, a dense readout."""
    conv = lambda stride, size=3: Conv(6, size, stride, W_std, b_std)  # noqa: E731
    return Serial((conv(1), Sum((Serial((Relu(), conv(1))), Identity())), Relu(),
                   Sum((Serial((conv(2), Relu(), conv(1))), conv(2, 1))), Relu(), GlobalAvgPool(), Dense(1, 1.0)))


def _mlp(dense_layers, W_std, b_std=None):
    layers = [Flatten()]
    for _ in range(dense_layers - 1):
        layers += [Dense(1, W_std, b_std), Relu()]
    return Serial((*layers, Dense(1, W_std, b_std)))


def test_flax_mlp_twin_is_one_over_108_d_at_every_pixel():
    # W² = 1/3, three Dense layers, no bias: E[(∂f/∂x_j)²] = (W²/d)(W²/2)² = 1/(108 d), for every
    # image (on the real images of issue 40 the kernel's second derivative was off by up to 1 %).
    x = _images(3, 14, 0)
    x[0] = 0.0
    x[0, 3:11, 4:10] = 0.7   # a flat patch on a zero background, like a Fashion-MNIST image
    with jax.enable_x64(True):
        diag = np.asarray(grad_sq_diag(mlp_arch(2), jnp.asarray(x)))
        scaled = np.asarray(grad_sq_diag(mlp_arch(2), jnp.asarray(x * (1 + 1e-12))))
    assert diag.shape == (3, 196)
    np.testing.assert_allclose(diag, 1 / (108 * 196), rtol=1e-12)
    np.testing.assert_allclose(scaled, 1 / (108 * 196), rtol=1e-12)
    assert LINEAR_INIT_VARIANCE == 1 / 3


@pytest.mark.parametrize("dense_layers", [1, 2, 3, 5])
def test_bias_free_mlp_gradient_norm_is_the_closed_form(dense_layers):
    # stax's Dense divides by fan-in (Σ¹ = W² x·x′/d), so with the pixels as input
    # E‖∇ₓf‖² = W²(W²/2)^(L−1); the d·W²(W²/2)^(L−1) of gradients.closed_form_grad_sq_norm is for
    # x = √d·u and ∇ᵤ (networks.scalar_fn): the same with std = 1/√d. A bias changes neither.
    d = 20
    x = np.random.default_rng(1).standard_normal((4, d))
    with jax.enable_x64(True):
        for w2 in (2.0, 1 / 3, 1.7):
            arch = _mlp(dense_layers, math.sqrt(w2))
            np.testing.assert_allclose(grad_sq_norm(arch, jnp.asarray(x, jnp.float64)), w2 * (w2 / 2) ** (dense_layers - 1),
                                       rtol=1e-12)
            u = x / np.linalg.norm(x, axis=1, keepdims=True)
            spec = KernelSpec(depth=dense_layers, W_std=math.sqrt(w2), b_std=None)
            np.testing.assert_allclose(grad_sq_norm(arch, jnp.asarray(u, jnp.float64), std=1 / math.sqrt(d)),
                                       closed_form_grad_sq_norm(spec, d), rtol=1e-12)
            biased = grad_sq_norm(_mlp(dense_layers, math.sqrt(w2), 0.3), jnp.asarray(x, jnp.float64))
            np.testing.assert_allclose(biased, w2 * (w2 / 2) ** (dense_layers - 1), rtol=1e-12)


def test_bias_free_nets_are_invariant_under_scaling_the_input():
    # f(c·x) = c·f(x) for c > 0 without biases, so ∇f(c·x) = ∇f(x): the variance may not move,
    # also where positions see identical pixels (a flat band: pairs at correlation exactly 1).
    x = _images(2, 6, 2)
    x[1, :3] = 0.5   # a flat band: positions whose receptive fields see identical pixels
    arch = _small_conv()
    with jax.enable_x64(True):
        base = np.asarray(grad_sq_diag(arch, jnp.asarray(x)))
        for c in (1 + 1e-12, 3.7, 0.01):
            np.testing.assert_allclose(grad_sq_diag(arch, jnp.asarray(c * x)), base, rtol=1e-12, atol=0)
    assert base.min() > 0


def test_the_result_does_not_depend_on_the_lax_map_batch_size():
    x = _images(2, 4, 3)
    x[0, 2:] = 0.5
    arch = _small_conv()
    with jax.enable_x64(True):
        results = [np.asarray(grad_sq_diag(arch, jnp.asarray(x), 0.3, 0.4, batch_size=b)) for b in (1, 5, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-13, atol=0)
    # issue 40's 3-layer MLP with biases (W² = 2, b = 0.1): 2·1²/d per pixel at every batch size
    with jax.enable_x64(True):
        for b in (1, 7, 64):
            np.testing.assert_allclose(grad_sq_diag(_mlp(3, W_std=math.sqrt(2), b_std=0.1), jnp.asarray(x), batch_size=b),
                                       2.0 / x[0].size, rtol=1e-12)


def test_nngp_is_neural_tangents_kernel():
    # the same covariance recursion as stax (padding, strides, 1/fan-in, residual sums, pooling;
    # wrn_arch(10) too, to 5e-16 on 6x6 images, but nt's WRN kernel compiles for a minute)
    z = np.random.default_rng(4).standard_normal((3, 5, 5, 2))
    with jax.enable_x64(True):
        for arch in (_small_conv(), _small_conv(b_std=0.2)):
            expected = np.diag(np.asarray(grad_cov.to_stax(arch)[2](jnp.asarray(z, jnp.float64), None, "nngp")))
            np.testing.assert_allclose(nngp_diag(arch, jnp.asarray(z, jnp.float64)), expected, rtol=1e-12)


def test_gradient_variance_matches_second_differences_of_neural_tangents_kernel():
    """E[(f(x + t e_j) − f(x))²]/t² = [K(x+te, x+te) − 2K(x+te, x) + K(x, x)]/t² → E[(∂_j f)²] with
    an O(t) error (the |t|³ terms of the ReLU kernels), from nt's kernel: the propagated value
    must lie within the change of the quotient from t to t/2 (twice it, for the O(t) model's
    tail), per coordinate. Dropping the terms with C (κ₀·G alone, as an NTK-style backward
    pass would) fails this test."""
    arch = _small_conv(b_std=0.1)
    kernel_fn = grad_cov.to_stax(arch)[2]
    with jax.enable_x64(True):
        x = jnp.asarray(_images(1, 4, 1)[0])
        mean, std = 0.4, 0.3
        predicted = np.asarray(grad_sq_diag(arch, x[None], mean, std)[0])
        k = lambda a, b: kernel_fn(((a - mean) / std)[None], ((b - mean) / std)[None], "nngp")[0, 0]  # noqa: E731

        @jax.jit
        def quotient(t):
            steps = t * jnp.eye(x.size, dtype=x.dtype).reshape(x.size, *x.shape)
            return (jax.vmap(lambda s: k(x + s, x + s) - 2 * k(x + s, x))(steps) + k(x, x)) / t**2

        coarse, fine = np.asarray(quotient(2e-3)), np.asarray(quotient(1e-3))
    assert predicted.min() > 0
    np.testing.assert_array_less(np.abs(predicted - fine), 2 * np.abs(coarse - fine) + 1e-9 * predicted)


def _gaussian_moments(cov, n, seed):
    """Monte-Carlo (mean, standard error) of φ(a)φ(b), φ(a)φ′(b)Y, φ′(a)Xφ′(b)Y for (a, b, X, Y) ~ N(0, cov)."""
    a, b, x, y = (np.random.default_rng(seed).standard_normal((n, 4)) @ np.linalg.cholesky(cov).T).T
    samples = (np.maximum(a, 0) * np.maximum(b, 0), np.maximum(a, 0) * (b > 0) * y, (a > 0) * x * (b > 0) * y)
    return [(s.mean(), s.std() / math.sqrt(n)) for s in samples]


@pytest.mark.parametrize("rho", [0.3, -0.6, 0.97, 0.99999])
def test_relu_pair_moments_are_the_gaussian_expectations(rho):
    # (a, b, X, Y) = L·g, g ~ N(0, I₄): corr(a, b) = rho, X and Y generic; 400k samples, 4 SE
    rng = np.random.default_rng(7)
    lower = np.zeros((4, 4))
    lower[0, 0], lower[1, :2] = 1.3, 0.8 * np.array([rho, math.sqrt(1 - rho**2)])
    lower[2:] = rng.standard_normal((2, 4))
    cov = lower @ lower.T
    with jax.enable_x64(True):
        got = [float(v) for v in relu_pair_moments(*(jnp.asarray(cov[i, j]) for i, j in
                                                      ((0, 0), (1, 1), (0, 1), (0, 3), (1, 3), (0, 2), (1, 2), (2, 3),
                                                       (2, 2), (3, 3))))]
    for value, (mean, se) in zip(got, _gaussian_moments(cov, 400_000, 8)):
        assert abs(value - mean) < 4 * se, (rho, value, mean, se)


def test_relu_pair_moments_on_a_degenerate_pair_are_the_limit():
    # b = a exactly (two positions that see the same pixels): E[1(a>0) X Y] = E[XY]/2 by a → −a
    with jax.enable_x64(True):
        nngp, cross, tangent = relu_pair_moments(*map(jnp.asarray, (2.0, 2.0, 2.0, 0.4, 0.4, 0.7, 0.7, 0.3, 1.1, 0.9)))
    np.testing.assert_allclose([nngp, cross, tangent], [1.0, 0.2, 0.15], rtol=1e-15)


def test_wrn_analogue_matches_finite_inits_within_four_standard_errors():
    # 300 inits of the WRN-10-2 analogue (32-128 channels) on two 4x4 images: the mean of
    # ‖∇ₓf‖² over inits (float32 networks) against the float64 prediction; the finite-width bias
    # measured at 6x6 is ≤ 2.5 % against a ~2.5 % standard error here.
    x, mean, std = _images(2, 4, 5), 0.4, 0.3
    with jax.enable_x64(True):
        predicted = np.asarray(grad_sq_norm(wrn_arch(10), jnp.asarray(x), mean, std))
    init_fn, apply_fn, _ = wrn_stax(10, 2)
    xf = jnp.asarray(x, jnp.float32)
    per_init = np.array([np.sum(np.asarray(stax_input_grads(apply_fn, stax_init(init_fn, s, (1, 4, 4, 1)), xf, mean,
                                                             std), np.float64).reshape(2, -1) ** 2, axis=1)
                         for s in range(300)])
    se = per_init.std(axis=0, ddof=1) / math.sqrt(len(per_init))
    assert np.all(np.abs(per_init.mean(axis=0) - predicted) < 4 * se), (per_init.mean(axis=0), predicted, se)
    assert np.all(se < 0.05 * predicted)


def test_a_kernel_fn_or_a_bad_input_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="architecture"):
        grad_sq_diag(wrn_stax(10, 1)[2], jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="batch_size"):
        grad_sq_diag(_small_conv(), jnp.zeros((1, 4, 4, 1)), batch_size=0)
    with pytest.raises(ValueError, match="end with one value"):
        grad_sq_diag(Serial((Conv(4), Relu())), jnp.ones((1, 4, 4, 1)))

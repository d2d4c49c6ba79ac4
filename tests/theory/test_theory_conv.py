"""Conv-net theory (nt_robust.theory.conv): the stax analogue against its limit, our Flax
models' empirical NTK against a hand-built J·Jᵀ, and the |W|-product bound against exact and
actual gradients. The gradient prediction is tested in test_theory_grad_cov.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.cpu.ops import conv_function
from nt_robust.models.small import MLP, SmallCNN
from nt_robust.models.wide_resnet import WideResNet
from nt_robust.theory.conv import (abs_product_bound, flax_empirical_ntk, kernel_distance,
                                   model_input_grads, smallcnn_abs_product_bound,
                                   stax_abs_product_bound, stax_empirical_ntk, stax_init, stax_input_grads, wrn_stax)
from nt_robust.theory.data import downsample_images
from nt_robust.theory.nt_compat import NTK_IMPL_VP
from nt_robust.theory.scaling import fit_log_mean


def _images(n, size, seed, channels=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, channels))


def _generic_variables(model, x, seed, dtype=np.float32):
    """Variables in the shapes of ``model.init`` with generic values drawn by numpy: kernels
    N(0, 1/fan_in), biases and BN means small, BN scales near 1, BN variances in [0.5, 1.5].
    The identities tested below hold for any weights; jax's own initializers would cost a
    compile per parameter shape (most of this file's time)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
        elif name == "scale":
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif name == "var":
            value = 0.5 + rng.uniform(size=shape)
        else:  # bias, mean
            value = 0.1 * rng.standard_normal(shape)
        return jnp.asarray(value, dtype)

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_analogue_empirical_ntk_approaches_the_analytic_one_like_inverse_sqrt_width():
    """Relative error of one init's empirical NTK against the analytic one, 24 inits at each of
    k = 1, 2, 4 (16k-64k channels): its 95% seed interval for the exponent (scaling.fit_log_mean)
    must exclude 0 and contain -1/2, the fluctuation of a sum over ~k channels. The errors are
    heavy-tailed at 4x4 images (8 inits leave an interval that contains 0); their mean over 16
    inits matches the kernel to 4%, so there is no bias to fit around."""
    z = _images(4, 4, 0) - 0.5
    exact = np.asarray(jax.jit(wrn_stax(10, 1)[2], static_argnames="get")(z, None, "ntk"))
    widths, seeds, errors = [], [], []
    for width in (1, 2, 4):
        init_fn, apply_fn, _ = wrn_stax(10, width)
        for seed in range(24):
            emp = np.asarray(stax_empirical_ntk(apply_fn, stax_init(init_fn, seed, z.shape), z))
            widths.append(width), seeds.append(seed)
            errors.append(np.linalg.norm(emp - exact) / np.linalg.norm(exact))
    fit = fit_log_mean(widths, seeds, errors)
    assert fit["ci95"][1] < 0 and fit["ci95"][0] <= -0.5 <= fit["ci95"][1], fit


def _jjt(f, params, x):
    """Θ = J·Jᵀ with J = ∂f(x)/∂θ flattened by hand from jax.jacrev (the independent truth)."""
    jac = jax.jit(jax.jacrev(lambda p: f(p, x)[:, 0]))(params)
    flat = jnp.concatenate([leaf.reshape(x.shape[0], -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=1)
    return flat @ flat.T


def test_flax_empirical_ntk_equals_jjt_and_is_symmetric_psd():
    """The WRN (BatchNorm in eval mode with statistics away from (0, 1)); the SmallCNN goes
    through the same flax_empirical_ntk code."""
    with jax.enable_x64(True):
        model = WideResNet(depth=10, width=1, num_classes=3, dtype=jnp.float64)  # XLA's convolutions
        x = jnp.asarray(_images(3, 4, 2), jnp.float64)
        variables = _generic_variables(model, x, 0, np.float64)  # BN statistics away from (0, 1), as after training
        theta = np.asarray(flax_empirical_ntk(model, variables, x))
        rest = {k: v for k, v in variables.items() if k != "params"}
        f = lambda p, v: model.apply({"params": p, **rest}, v, train=False)  # noqa: E731
        np.testing.assert_allclose(theta, np.asarray(_jjt(f, variables["params"], x)), rtol=1e-10)
    np.testing.assert_allclose(theta, theta.T, rtol=1e-12)
    assert np.linalg.eigvalsh(theta).min() >= -1e-10 * np.abs(theta).max()


@pytest.mark.parametrize("conv_impl", ["shifted_matmul", "flipped_dx", "auto"])
def test_forward_mode_ntk_is_refused_for_the_custom_vjp_convs_with_the_fix(conv_impl):
    model = SmallCNN(width=1, num_classes=3, conv=conv_function(conv_impl))
    x = _images(2, 4, 3)
    variables = _generic_variables(model, x, 0)
    with pytest.raises(ValueError, match="conv_impl='xla'"):
        flax_empirical_ntk(model, variables, x, implementation=NTK_IMPL_VP)


def _positive(variables, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.abs(a) + 0.01 * rng.uniform(size=a.shape).astype(np.float32),
                                  variables)


def test_abs_product_bound_is_exact_for_a_net_whose_relus_are_all_active():
    """All weights and BN scales > 0, BN means and biases 0, a positive input: every ReLU is
    active, so ∇ₓf *is* the |W| product and the bound equals ‖∇ₓf‖₁ computed by autodiff."""
    x = _images(1, 4, 4) + 0.1
    for model in (MLP(width=8, depth=2, num_classes=3), WideResNet(depth=10, width=1, num_classes=3)):
        variables = _positive(_generic_variables(model, x, 0), 5)
        variables = jax.tree_util.tree_map_with_path(
            lambda p, a: jnp.zeros_like(a) if p[-1].key in ("bias", "mean") else a, variables)
        actual = float(jnp.sum(jnp.abs(model_input_grads(model, variables, x))))
        np.testing.assert_allclose(abs_product_bound(model, variables, x.shape[1:], std=1.0), actual, rtol=1e-5)


def test_bounds_hold_at_random_points_for_every_network():
    x = _images(16, 4, 6)
    std = 0.3
    wrn = WideResNet(depth=10, width=1, num_classes=3)
    v = _generic_variables(wrn, x, 0)
    wrn_std = WideResNet(depth=10, width=1, num_classes=3, input_mean=(0.5,), input_std=(std,))
    g = model_input_grads(wrn_std, v, x).reshape(16, -1)
    assert float(jnp.max(jnp.sum(jnp.abs(g), 1))) <= abs_product_bound(wrn, v, x.shape[1:], std)

    cnn = SmallCNN(width=1, num_classes=3, input_mean=(0.5,), input_std=(std,))
    v = _generic_variables(cnn, x, 1)
    g = model_input_grads(cnn, v, x).reshape(16, -1)
    assert float(jnp.max(jnp.sum(jnp.abs(g), 1))) <= smallcnn_abs_product_bound(v["params"], x.shape[1:], std)

    init_fn, apply_fn, _ = wrn_stax(10, 1)
    params = stax_init(init_fn, 2, x.shape)
    g = stax_input_grads(apply_fn, params, x, 0.5, std).reshape(16, -1)
    assert float(jnp.max(jnp.sum(jnp.abs(g), 1))) <= stax_abs_product_bound(apply_fn, params, x.shape[1:], std)


def test_abs_product_bound_refuses_a_model_with_its_normalization():
    model = WideResNet(depth=10, width=1, num_classes=3, input_mean=(0.5,), input_std=(0.3,))
    variables = _generic_variables(model, jnp.zeros((1, 4, 4, 1)), 0)
    with pytest.raises(ValueError, match="without input_mean"):
        abs_product_bound(model, variables, (6, 6, 1), 0.3)


def test_kernel_distance_ignores_scale_and_sees_shape():
    a = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert kernel_distance(5 * a, a) == pytest.approx(0.0, abs=1e-15)
    b = np.array([[2.0, 0.0], [0.0, 2.0]])  # normalized: off-diagonals 0.5 vs 0
    assert kernel_distance(a, b) == pytest.approx(math.sqrt(2 * 0.5**2) / math.sqrt(2))


def test_downsample_images_is_a_block_mean():
    images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(downsample_images(images, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="divisor"):
        downsample_images(images, 3)


def test_stax_init_draws_what_init_fn_draws():
    """neural-tangents' own init of a small NTK-parameterized conv net draws i.i.d. N(0, 1)
    weights; stax_init draws the same law, in the shapes apply_fn takes, reproducibly. (That
    the scale is right for the WRN analogue is what the convergence test above checks.)"""
    from nt_robust.theory.nt_compat import stax

    small_init, _, _ = stax.serial(stax.Conv(64, (3, 3), padding="SAME", W_std=1.5, b_std=None), stax.Relu(),
                                   stax.Flatten(), stax.Dense(64, W_std=1.5, b_std=None))
    for draw in (small_init(jax.random.key(0), (1, 4, 4, 2))[1], stax_init(small_init, 0, (1, 4, 4, 2))):
        values = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(draw)])  # 65k N(0, 1) draws
        assert abs(values.mean()) < 5 / math.sqrt(values.size), values.mean()
        assert abs(values.std() - 1) < 5 / math.sqrt(2 * values.size), values.std()
    init_fn, apply_fn, _ = wrn_stax(10, 1)
    params = stax_init(init_fn, 3, (2, 4, 4, 1))
    assert jax.eval_shape(apply_fn, params, jnp.ones((2, 4, 4, 1))).shape == (2, 1)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(stax_init(init_fn, 3, (2, 4, 4, 1)))):
        np.testing.assert_array_equal(a, b)

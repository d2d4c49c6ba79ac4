"""Lazy training: the kernel predictor, nt.predict, and wide finite networks agree."""

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.theory import lazy_training as lt
from nt_robust.theory.kernels import relu_kernels
from nt_robust.theory.networks import MLPSpec, init_params, relative_change, scalar_fn


def _data(n, d, seed):
    u = jax.random.uniform(jax.random.key(seed), (n, d))
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    return u, jnp.where(u[:, 0] > jnp.median(u[:, 0]), 1.0, -1.0)


def test_discrete_kernel_gd_matches_nt_continuous_time_at_small_lr():
    spec = MLPSpec(3, 64).kernel_spec()
    x, y = _data(24, 10, 0)
    xt, _ = _data(8, 10, 1)
    scale = 10**0.5
    theta = relu_kernels(spec, scale * x)[1]
    theta_tx = relu_kernels(spec, scale * xt, scale * x)[1]
    lr = lt.learning_rate(spec, x, fraction=0.01)
    f0, f0t = jnp.zeros(24), jnp.zeros(8)
    ours = lt.kernel_gd(theta, theta_tx, f0, f0t, y, "mse", lr, 2000)
    f_train, f_test = lt.nt_mse_prediction(theta, theta_tx, f0, f0t, y, lr, 2000)
    np.testing.assert_allclose(ours.f_train, f_train, atol=0.02)
    np.testing.assert_allclose(ours.f_test, f_test, atol=0.02)


def test_wider_networks_stay_closer_to_the_kernel_prediction():
    x, y = _data(32, 10, 2)
    xt, _ = _data(16, 10, 3)
    gaps, changes = [], []
    for width in (64, 1024):
        spec = MLPSpec(2, width)
        kspec = spec.kernel_spec()
        params0 = init_params(spec, jax.random.key(4), 10)
        lr = lt.learning_rate(kspec, x)
        params, _ = lt.train_full_batch(spec, params0, x, y, "mse", lr, 100)
        f0 = scalar_fn(spec, params0)
        scale = 10**0.5
        pred = lt.kernel_gd(relu_kernels(kspec, scale * x)[1], relu_kernels(kspec, scale * xt, scale * x)[1],
                            f0(x), f0(xt), y, "mse", lr, 100)
        gaps.append(float(jnp.sqrt(jnp.mean((scalar_fn(spec, params)(xt) - pred.f_test) ** 2))))
        changes.append(float(relative_change(params, params0)))
    assert gaps[1] < gaps[0] / 2 and changes[1] < changes[0] / 2, (gaps, changes)

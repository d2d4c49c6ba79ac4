"""The kernel twin of the Flax MLP and the gradient measures of nt_robust.theory.trained,
against a closed form, a Monte-Carlo average over Flax inits and hand-built Jacobians."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.metrics import LipschitzConfig
from nt_robust.models.small import MLP
from nt_robust.theory.conv import analytic_grad_sq_diag, analytic_grad_sq_norm
from nt_robust.theory.trained import LINEAR_INIT_VARIANCE, lipschitz_measures, logit_grad_l1, mlp_stax, predicted_grad_l1

D = 49  # 7x7 images


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 7, 7, 1)).astype(np.float32)


def test_one_hidden_layer_gradient_variance_is_the_closed_form():
    # f = v·relu(Wx): ∂f/∂x_j = Σ_i v_i 1[w_i·x > 0] W_ij, so E(∂f/∂x_j)² = n · (σ_v²/n) · E[W_ij² 1[w_i·x > 0]]
    # = σ_v² σ_w² / (2d) by the symmetry w → −w, at every x and j.
    _, _, kernel_fn = mlp_stax(depth=1)
    with jax.enable_x64(True):
        diag = np.asarray(analytic_grad_sq_diag(kernel_fn, jnp.asarray(images(), jnp.float64)))
        trace = np.asarray(analytic_grad_sq_norm(kernel_fn, jnp.asarray(images(), jnp.float64)))
    np.testing.assert_allclose(diag, LINEAR_INIT_VARIANCE**2 / (2 * D), rtol=1e-10)
    np.testing.assert_allclose(trace, diag.sum(axis=1), rtol=1e-12)


def test_flax_mlp_init_has_the_twins_expected_squared_gradient():
    # E‖∇ₓf_k‖² of a one-hidden-layer ReLU net is the closed form at any width, so a Monte-Carlo
    # mean over Flax inits must match it within its own standard error (4 SE: a 6e-5 chance of
    # failing if the law is right); a wrong init variance (e.g. fan-out, or PyTorch's bias) is off by far more.
    x = jnp.asarray(images(2))
    model = MLP(width=128, depth=1, num_classes=4)

    @jax.jit
    def sq_norms(key):
        variables = model.init(key, x[:1])
        jac = jax.vmap(jax.jacrev(lambda xi: model.apply(variables, xi[None])[0]))(x)   # (N, K, 7, 7, 1)
        return jnp.sum(jac.reshape(*jac.shape[:2], -1) ** 2, axis=-1).mean()

    per_init = np.array([float(sq_norms(jax.random.key(s))) for s in range(200)])
    expected = LINEAR_INIT_VARIANCE**2 / 2          # Σ_j of the closed form: d · σ⁴/(2d)
    se = per_init.std(ddof=1) / math.sqrt(per_init.size)
    assert abs(per_init.mean() - expected) < 4 * se, (per_init.mean(), expected, se)


def test_predicted_l1_is_the_gaussian_mean_absolute_value():
    diag = np.array([[4.0, 1.0, 0.0], [9.0, 9.0, 9.0]])
    np.testing.assert_allclose(predicted_grad_l1(diag), math.sqrt(2 / math.pi) * np.array([3.0, 9.0]))


def test_logit_grad_l1_is_the_l1_norm_of_each_row_of_a_linear_models_weights():
    # a depth-0 MLP would be linear; build one by hand through flax: logits = x·W
    import flax.linen as nn

    class Affine(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3, use_bias=True)(x.reshape(x.shape[0], -1))

    model = Affine()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 1)))
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])   # (49, 3)
    l1 = logit_grad_l1(model, variables, images())
    np.testing.assert_allclose(l1, np.tile(np.abs(kernel).sum(axis=0), (3, 1)), rtol=1e-6)
    m = lipschitz_measures(model, variables, images(), jax.random.key(1), LipschitzConfig("yang"),
                           LipschitzConfig("trades_grad"))
    # a linear map: the Yang ratio lies between the largest row's ‖·‖₁ and the sum of them
    assert np.all(m["yang"] <= m["sum_l1"] * (1 + 1e-5)) and np.all(m["yang"] >= 0)
    np.testing.assert_allclose(m["max_l1"], np.abs(kernel).sum(axis=0).max(), rtol=1e-6)
    assert m["trades_grad"].shape == (3,) and np.all(np.isfinite(m["trades_grad"]))


def test_mlp_stax_refuses_no_hidden_layer():
    with pytest.raises(ValueError, match="depth"):
        mlp_stax(depth=0)

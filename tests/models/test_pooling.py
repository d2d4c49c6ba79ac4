"""max_pool: nn.max_pool's values and gradients, bit for bit, checked also against a numpy
loop that sends each window's gradient to its first maximum; forward mode works."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.models import ModelConfig, create_model, init_variables
from nt_robust.models.pooling import max_pool


def numpy_max_pool_vjp(x, g, size):
    """(pooled, dL/dx) for L = sum(g * pool(x)), one window at a time; ties: the first in row-major order."""
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    pooled, grad = np.zeros((n, ho, wo, c), x.dtype), np.zeros_like(x)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for k in range(c):
                    window = x[b, i * size:(i + 1) * size, j * size:(j + 1) * size, k]
                    r, s = divmod(int(np.argmax(window)), size)  # np.argmax: the first maximum
                    pooled[b, i, j, k] = window[r, s]
                    grad[b, i * size + r, j * size + s, k] += g[b, i, j, k]
    return pooled, grad


@pytest.mark.parametrize("shape,size", [((2, 8, 8, 3), 2), ((2, 7, 9, 2), 2), ((1, 9, 7, 2), 3)])
def test_values_and_gradients_equal_flax_and_the_loop_reference_with_ties(shape, size):
    rng = np.random.default_rng(0)
    # values on a grid of halves, then ReLU: many windows have tied maxima (zeros and positives)
    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(np.float32)
    out = max_pool(jnp.asarray(x), size)
    g = rng.standard_normal(out.shape).astype(np.float32)
    pooled_ref, grad_ref = numpy_max_pool_vjp(x, g, size)
    np.testing.assert_array_equal(out, pooled_ref)
    np.testing.assert_array_equal(jax.vjp(lambda v: max_pool(v, size), x)[1](g)[0], grad_ref)

    flax_pool = lambda v: nn.max_pool(v, (size, size), strides=(size, size))  # noqa: E731
    np.testing.assert_array_equal(out, flax_pool(x))
    np.testing.assert_array_equal(jax.vjp(flax_pool, x)[1](g)[0], grad_ref)  # flax's: the same convention

    tangent = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(jax.jvp(lambda v: max_pool(v, size), (x,), (tangent,))[1],
                                  jax.jvp(flax_pool, (x,), (tangent,))[1])


def test_the_small_cnn_uses_it_and_forward_mode_goes_through_the_model():
    model = create_model(ModelConfig("cnn", width=1, conv_impl="xla"), num_classes=10)
    variables = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    assert "reduce_window" not in str(jax.make_jaxpr(lambda v: model.apply(variables, v))(x))
    tangent = jnp.ones_like(x)
    primal, out_tangent = jax.jvp(lambda v: model.apply(variables, v), (x,), (tangent,))
    pullback = jax.vjp(lambda v: model.apply(variables, v), x)[1]
    # <J t, e_k> = <t, J^T e_k> for every logit k: forward and reverse mode agree
    for k in range(primal.shape[1]):
        cotangent = jnp.zeros_like(primal).at[:, k].set(1.0)
        np.testing.assert_allclose(jnp.sum(out_tangent * cotangent), jnp.sum(pullback(cotangent)[0] * tangent),
                                   rtol=1e-5)


@pytest.mark.parametrize("size", [0, 9])
def test_impossible_window_sizes_are_refused(size):
    with pytest.raises(ValueError, match="max_pool needs windows"):
        max_pool(jnp.zeros((1, 8, 8, 1)), size)

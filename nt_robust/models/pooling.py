"""Max pooling over non-overlapping windows whose gradient is elementwise.

``flax.linen.max_pool`` is ``lax.reduce_window``; its gradient is XLA's select-and-scatter,
which XLA:CPU runs slowly: the gradient of ReLU + 2x2 pooling of a 128x32x32x32 batch
took 51 ms that way and 12 ms this way on 2 cores (docs/benchmarks.md). Here the
windows become an axis of a reshape, the forward pass is a max over it, and the gradient
goes to each window's first maximum through a one-hot mask, as select-and-scatter sends
it: the same values and the same gradients, bit for bit (tests/models/test_pooling.py)::

    y = max_pool(x, 2)        # == nn.max_pool(x, (2, 2), strides=(2, 2)), NHWC

It is a ``jax.custom_jvp`` (the mask is a constant of the linear map), so forward-mode
autodiff, which neural-tangents uses, works as well as reverse mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def _window_max(windows: jax.Array) -> jax.Array:
    return jnp.max(windows, axis=-1)


@_window_max.defjvp
def _window_max_jvp(primals, tangents):
    (windows,), (tangent,) = primals, tangents
    first = jax.nn.one_hot(jnp.argmax(windows, axis=-1), windows.shape[-1], dtype=tangent.dtype)
    return jnp.max(windows, axis=-1), jnp.sum(first * tangent, axis=-1)


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Max over ``size`` x ``size`` windows with stride ``size`` of an NHWC batch (VALID: rows
    and columns past the last whole window are dropped, as ``nn.max_pool`` does)."""
    n, h, w, c = x.shape
    if size < 1 or h < size or w < size:
        raise ValueError(f"max_pool needs windows of at least 1 and at most the image, got {size} for {h}x{w}")
    ho, wo = h // size, w // size
    x = x[:, :ho * size, :wo * size, :].reshape(n, ho, size, wo, size, c)
    windows = jnp.transpose(x, (0, 1, 3, 5, 2, 4)).reshape(n, ho, wo, c, size * size)  # row-major in a window
    return _window_max(windows)

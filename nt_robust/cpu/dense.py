"""Dense layers whose matrix products run through a hand-written CPU kernel.

XLA:CPU's float32 matrix products (YNNPACK) kept an MLP's TRADES step behind PyTorch's MKL
on CPU: 1.03 against 0.67-0.78 ms for a 128 x 3072 by 3072 x 256 product on an Intel Xeon,
0.85 ms with the kernel (docs/benchmarks.md). ``kernels/matmul.cc`` (built and loaded with the
convolution kernels, ``nt_robust.cpu.native``) computes all three products of a dense
layer: the forward pass ``x W``, the input gradient ``g W^T`` and the weight gradient ``x^T g``.

:func:`native_dot_general` is a drop-in ``lax.dot_general``, handed to the models by
``nt_robust.cpu.ops.layer_ops`` for ``model.dense_impl`` = "native" or "auto" (on a CPU host
where the kernel was measured faster than XLA's products on this machine,
``nt_robust.cpu.choice.cpu_dense_choice``; XLA's products elsewhere)::

    y = nn.Dense(256, dot_general=native_dot_general)(x)

Under "native" the values are the kernel's, equal to XLA's up to float summation order; a
gradient of a gradient goes through XLA's derivatives. Other dtypes, and products that are not
``x[..., K] @ W[K, N]``, go to ``lax.dot_general``. Gotcha: "native" is a ``jax.custom_vjp``,
so forward-mode differentiation (``jax.jvp``) through such a layer raises; use "xla" there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# The kernel computes 2 vectors of outputs at a time (32 floats with AVX-512): a classifier's
# 10 would waste two thirds of it, and the layer was a tie with XLA's (docs/benchmarks.md).
NATIVE_MIN_FEATURES = 16


def _kernel_matmul(a, b, transpose_a=False, transpose_b=False):
    """``a @ b`` (``a.T``, ``b.T`` as asked) through the kernel, differentiable through XLA's product."""
    from nt_robust.cpu import native as kernels

    def xla(a, b):
        return (a.T if transpose_a else a) @ (b.T if transpose_b else b)

    return kernels.with_xla_derivatives(lambda a, b: kernels.matmul(a, b, transpose_a, transpose_b), xla)(a, b)


@jax.custom_vjp
def _native_dense(x, w):
    return _kernel_matmul(x, w)


def _native_dense_forward(x, w):
    return _kernel_matmul(x, w), (x, w)


def _native_dense_backward(residuals, g):
    x, w = residuals
    return _kernel_matmul(g, w, transpose_b=True), _kernel_matmul(x, g, transpose_a=True)


_native_dense.defvjp(_native_dense_forward, _native_dense_backward)


def native_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """Drop-in ``lax.dot_general``: ``lhs[..., K] @ rhs[K, N]`` in float32 with at least
    :data:`NATIVE_MIN_FEATURES` outputs runs through the kernel (the leading axes of ``lhs``
    folded into its rows); any other call is passed to ``lax``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    simple = (rhs.ndim == 2 and rhs.shape[1] >= NATIVE_MIN_FEATURES and lhs.ndim >= 1
              and tuple(lhs_contract) == (lhs.ndim - 1,)
              and tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch
              and lhs.dtype == rhs.dtype == jnp.float32 and preferred_element_type in (None, jnp.float32))
    if not simple:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    rows = lhs.reshape(-1, lhs.shape[-1])
    return _native_dense(rows, rhs).reshape(*lhs.shape[:-1], rhs.shape[1])

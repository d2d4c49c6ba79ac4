"""Convolutions whose gradients are fast on XLA:CPU.

Two things are slow there. XLA:CPU computes the weight gradient of a 3x3 convolution as
another convolution whose window is the whole feature map and whose output is 3x3. On some
CPUs that shape runs 3-11x slower than the forward pass and 5-19x slower than PyTorch's
oneDNN; on others it is faster than any rewrite (docs/benchmarks.md). And inside a loop
(``lax.fori_loop``/``while_loop``: APGD, FAB, Square, a ``fori`` training attack) the input
gradient that autodiff writes, a convolution with the kernel's in/out features swapped,
falls off XLA:CPU's fast convolution path: 22-24x slower than the same convolution outside
a loop. The custom VJPs here write the input gradient as an ordinary forward convolution of
the output gradient with the flipped, in/out-swapped kernel (``_input_gradient``), which
stays fast in loops; they differ in the weight gradient and in who runs the convolutions:

* ``flipped_dx_conv``: XLA's own weight-gradient convolution;
* ``shifted_matmul_conv``: one matmul per kernel tap (2.6-9x faster than XLA's where XLA's
  is slow)::

    dW[i, j] = sum_{n, h, w} x_pad[n, s*h + i, s*w + j, :]^T  g[n, h, w, :]

* ``native_conv``: hand-written C++ kernels for the forward pass, the input gradients (with
  at least 16 input channels) and the weight gradient (``nt_robust.cpu.native``:
  built with g++ on first use and spread over XLA's thread pool). Its forward values are the
  kernel's, equal to XLA's up to float summation order.

Each is a drop-in ``lax.conv_general_dilated``, handed to the models by
``nt_robust.cpu.ops.layer_ops`` for ``model.conv_impl`` = "flipped_dx", "shifted_matmul",
"native" or "auto" (on a CPU host whichever of the three was fastest when measured on this
machine, ``nt_robust.cpu.choice``; XLA's plain convolution elsewhere)::

    y = nn.Conv(64, (3, 3), conv_general_dilated=shifted_matmul_conv)(x)

Except under "native", the forward values are XLA's, bit for bit; the gradients equal XLA's
up to float summation order (~1e-6 relative). Gotcha: ``flipped_dx``, ``shifted_matmul`` and
``native`` are ``jax.custom_vjp``s, so forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``,
neural-tangents' NTK_VECTOR_PRODUCTS) through such a model raises; use
``conv_impl = "xla"`` there (``nt_robust.cpu.ops.supports_forward_mode``).

Mixed precision (``model.dtype = "bfloat16"``): the forward pass and the input gradient
are bfloat16 convolutions, as with ``conv_impl = "xla"``; each shifted-matmul weight-gradient
tap accumulates its N·Ho·Wo products in float32 (``preferred_element_type``) and is rounded
to bfloat16 once, as XLA's own bfloat16 weight gradient is. A ``precision`` (from
``model.matmul_precision``) is passed to all three.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain(x, kernel, strides, padding, precision=None):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _input_gradient(g, kernel, strides, padding, input_hw, precision, conv=None):
    """dL/dx of ``_plain(x, kernel, strides, padding)`` as a forward convolution: the output
    gradient dilated by the strides, padded so that every tap lands, against the kernel
    flipped in space with its in/out features swapped (HWIO again, which XLA:CPU runs on its
    fast path inside loops too). ``conv`` (``(g, kernel, pads, lhs_dilation, precision) -> dx``),
    when given, runs that convolution instead of XLA."""
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    pads = []
    for size, k, stride, (low, _), out in zip(input_hw, kernel.shape[:2], strides, padding, g.shape[1:3]):
        before = k - 1 - low
        pads.append((before, size + k - 1 - ((out - 1) * stride + 1) - before))
    if conv is not None:
        return conv(g, flipped, tuple(pads), tuple(strides), precision)
    return lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=strides, dimension_numbers=_NHWC,
                                    precision=precision)


def _xla_weight_gradient(x, kernel, g, strides, padding, precision):
    """XLA's own weight-gradient convolution (what autodiff writes)."""
    return jax.vjp(lambda k_: _plain(x, k_, strides, padding, precision), kernel)[1](g)[0]


def _tap_matmul(a, b, precision):
    """``a @ b``; below float32 the products are accumulated in float32 (rounded once at the end)."""
    if jnp.result_type(a, b) == jnp.float32:
        return jnp.matmul(a, b, precision=precision)  # the float32 program, unchanged
    return jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32)


def _shifted_matmul_weight_gradient(x, kernel, g, strides, padding, precision):
    """One matmul per kernel tap: dW[i, j] = x_pad[taps (i, j) read]^T g."""
    kh, kw, cin, cout = kernel.shape
    (sh, sw), (ho, wo) = strides, g.shape[1:3]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g_rows = g.reshape(-1, cout)
    taps = [_tap_matmul(padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :].reshape(-1, cin).T,
                        g_rows, precision)
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)


def _custom_vjp_conv(weight_gradient: Callable, forward: Callable = _plain,
                     input_gradient: Callable = _input_gradient) -> Callable:
    """``forward`` (default :func:`_plain`) as a ``jax.custom_vjp`` whose input gradient is
    ``input_gradient(g, kernel, strides, padding, input_hw, precision)`` (default
    :func:`_input_gradient`) and whose weight gradient is ``weight_gradient(x, kernel, g,
    strides, padding, precision)``."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
    def conv(x, kernel, strides, padding, precision=None):
        return forward(x, kernel, strides, padding, precision)

    def forward_with_residuals(x, kernel, strides, padding, precision=None):
        return forward(x, kernel, strides, padding, precision), (x, kernel)

    def backward(strides, padding, precision, residuals, g):
        x, kernel = residuals
        return (input_gradient(g, kernel, strides, padding, x.shape[1:3], precision),
                weight_gradient(x, kernel, g, strides, padding, precision))

    conv.defvjp(forward_with_residuals, backward)
    return conv


_flipped_dx = _custom_vjp_conv(_xla_weight_gradient)
_conv = _custom_vjp_conv(_shifted_matmul_weight_gradient)


NATIVE_MIN_OUT_CHANNELS = 16  # the direct convolution vectorizes over 16 output channels; fewer run scalar


def _native_forward(x, kernel, strides, padding, precision=None, lhs_dilation=(1, 1)):
    """The direct-convolution kernel (``nt_robust.cpu.native``) for float32 with at
    least 16 output channels; XLA's otherwise (e.g. the input gradient of a 3-channel stem)."""
    def xla(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=_NHWC, precision=precision)

    if not x.dtype == kernel.dtype == jnp.float32 or kernel.shape[3] < NATIVE_MIN_OUT_CHANNELS:
        return xla(x, kernel)
    from nt_robust.cpu import native as kernels

    out_hw = tuple(((size - 1) * d + 1 + low + high - k) // s + 1  # d: the input's dilation
                   for size, d, k, s, (low, high)
                   in zip(x.shape[1:3], lhs_dilation, kernel.shape[:2], strides, padding))
    return kernels.with_xla_derivatives(
        lambda x, kernel: kernels.conv_forward(x, kernel, strides, (padding[0][0], padding[1][0]), out_hw,
                                               lhs_dilation),
        xla)(x, kernel)


def _native_input_gradient(g, kernel, strides, padding, input_hw, precision):
    """:func:`_input_gradient`, its convolution of the (dilated) output gradient through
    :func:`_native_forward`."""
    return _input_gradient(g, kernel, strides, padding, input_hw, precision,
                           conv=lambda g, flipped, pads, dilation, precision: _native_forward(
                               g, flipped, (1, 1), pads, precision, lhs_dilation=dilation))


def _native_weight_gradient(x, kernel, g, strides, padding, precision):
    """The weight-gradient kernel for float32, XLA's otherwise."""
    def xla(x, g):
        return _xla_weight_gradient(x, kernel, g, strides, padding, precision)

    if not x.dtype == kernel.dtype == g.dtype == jnp.float32:
        return xla(x, g)
    from nt_robust.cpu import native as kernels

    return kernels.with_xla_derivatives(
        lambda x, g: kernels.weight_gradient(x, g, tuple(kernel.shape), strides, (padding[0][0], padding[1][0])),
        xla)(x, g)


_native = _custom_vjp_conv(_native_weight_gradient, _native_forward, _native_input_gradient)


def _simple_call(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count, batch_group_count, preferred_element_type):
    """The (strides, padding) of a 2-d NHWC/HWIO call without dilation or groups, operands of
    one dtype and no cropping, which the custom VJPs handle; None for any other call."""
    simple = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
              and preferred_element_type is None and lhs.dtype == rhs.dtype
              and all(d == 1 for d in (lhs_dilation or (1, 1)))
              and all(d == 1 for d in (rhs_dilation or (1, 1)))
              and tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))
              == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)))
    if not simple:
        return None
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    if any(p < 0 for pair in padding for p in pair):  # cropping: not worth a special case
        return None
    return tuple(int(s) for s in window_strides), padding


def _drop_in(custom: Callable, name: str, doc: str) -> Callable:
    """A drop-in ``lax.conv_general_dilated`` that sends the calls :func:`_simple_call` accepts
    to ``custom`` and every other call to ``lax``."""

    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
        call = _simple_call(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, preferred_element_type)
        if call is None:
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, batch_group_count,
                                            precision, preferred_element_type)
        return custom(lhs, rhs, *call, _hashable(precision))

    conv.__name__ = conv.__qualname__ = name
    conv.__doc__ = doc
    return conv


flipped_dx_conv = _drop_in(_flipped_dx, "flipped_dx_conv", """Drop-in ``lax.conv_general_dilated``: 2-d
    NHWC/HWIO convolutions without dilation or groups take the input gradient of
    :func:`_input_gradient` and XLA's weight gradient; any other call is passed to ``lax``.""")

shifted_matmul_conv = _drop_in(_conv, "shifted_matmul_conv", """Drop-in ``lax.conv_general_dilated``: 2-d
    NHWC/HWIO convolutions without dilation or groups (any ``precision``, operands of one dtype)
    take the shifted-matmul weight gradient and the input gradient of :func:`_input_gradient`;
    any other call is passed to ``lax``.""")


native_conv = _drop_in(_native, "native_conv", """Drop-in ``lax.conv_general_dilated``: 2-d NHWC/HWIO
    convolutions without dilation or groups run the hand-written kernels of
    ``nt_robust.cpu.native`` (float32: forward pass, weight gradients, and input
    gradients with at least 16 input channels; other dtypes, and a few-channel stem's input
    gradient, as :func:`flipped_dx_conv`); any other call is passed to ``lax``.""")


def _hashable(precision):
    """``precision`` as a custom_vjp static argument (a list of two becomes a tuple)."""
    return tuple(precision) if isinstance(precision, list) else precision

"""The prototype kernels of benchmarks/native_dw.py (weight gradient) and
benchmarks/native_conv_fwd.py (forward pass; docs/benchmarks.md quotes both): against
float64 numpy loops (test_conv's weight gradient, a forward pass here), within the float32
summation bound that holds for any order, including the blocks the kernels finish with
plain loops (output channels past a multiple of 16, input channels past a multiple of 8,
rows of pixels past a multiple of 8), strides, a 1x1 shortcut and padding larger than the
kernel's reach."""

import importlib.util
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conv import gamma, numpy_weight_gradient  # pytest puts this folder on sys.path

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the kernel is built with g++")


@pytest.fixture(scope="module")
def native_dw(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("native_dw", ROOT / "benchmarks" / "native_dw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_kernel(module.build_kernel(tmp_path_factory.mktemp("kernel")))
    return module


@pytest.mark.parametrize("size,cin,cout,kernel,stride,pad", [
    (8, 16, 16, 3, 1, 1),    # full blocks
    (8, 5, 16, 3, 1, 1),     # input channels past a multiple of 8
    (8, 8, 21, 3, 1, 1),     # output channels past a multiple of 16 (plain-loop tail)
    (9, 16, 32, 3, 2, 1),    # stride 2 on an odd size
    (8, 16, 32, 1, 2, 0),    # 1x1 shortcut
    (6, 3, 16, 3, 1, 2),     # padding wider than the kernel reaches: whole rows of zeros
])
def test_kernel_matches_a_float64_reference_within_the_summation_bound(native_dw, size, cin, cout, kernel, stride, pad):
    rng = np.random.default_rng(size * cin + cout)
    out = (size + 2 * pad - kernel) // stride + 1
    x = rng.standard_normal((3, size, size, cin)).astype(np.float32)
    g = rng.standard_normal((3, out, out, cout)).astype(np.float32)
    got = np.asarray(jax.jit(lambda x, g: native_dw.kernel_dw(x, g, (kernel, kernel, cin, cout), (stride, stride),
                                                              (pad, pad)))(jnp.asarray(x), jnp.asarray(g)), np.float64)
    pads = ((pad, pad), (pad, pad))
    want = numpy_weight_gradient(x, g, (kernel, kernel, cin, cout), stride, pads)
    magnitude = numpy_weight_gradient(np.abs(x), np.abs(g), (kernel, kernel, cin, cout), stride, pads)
    terms = 3 * out * out  # products summed per element (+1: the kernel adds each image's block sum to dw)
    bound = gamma(terms + 1) * magnitude
    assert np.all(np.abs(got - want) <= bound)
    # and the bound is tight enough to catch a dropped tap or a transposed kernel
    assert np.max(np.abs(np.swapaxes(want, 0, 1) - want)) > 100 * np.max(bound) or kernel == 1


def numpy_forward(x, kernel, stride, pad):
    """conv(x, W) from the definition in float64 (and the same with |x|, |W| for the bound)."""
    kh, kw, _, cout = kernel.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] @ kernel[i, j]
    return out


@pytest.fixture(scope="module")
def native_conv_fwd(native_dw, tmp_path_factory):
    spec = importlib.util.spec_from_file_location("native_conv_fwd", ROOT / "benchmarks" / "native_conv_fwd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_kernel(native_dw.build_kernel(tmp_path_factory.mktemp("fwd"), module.KERNEL_SOURCE))
    return module


@pytest.mark.parametrize("size,cin,cout,kernel,stride,pad", [
    (8, 16, 32, 3, 1, 1),    # one block of two vectors
    (8, 16, 16, 3, 1, 1),    # one vector
    (11, 5, 48, 3, 1, 1),    # two vectors then one; a row of 11 pixels: a block of 8 and one of 3
    (8, 8, 21, 3, 1, 1),     # output channels past a multiple of 16 (plain-loop tail)
    (9, 3, 16, 3, 2, 1),     # stride 2 on an odd size, 3 input channels (the stem's)
    (6, 4, 16, 3, 1, 2),     # padding wider than the kernel reaches: rows and pixels of zeros
])
def test_forward_kernel_matches_a_float64_reference_within_the_summation_bound(native_conv_fwd, size, cin, cout,
                                                                              kernel, stride, pad):
    rng = np.random.default_rng(size * cin + cout)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, cin, cout)).astype(np.float32)
    want = numpy_forward(x, w.astype(np.float64), stride, pad)
    bound = gamma(kernel * kernel * cin) * numpy_forward(np.abs(x), np.abs(w).astype(np.float64), stride, pad)
    got = np.asarray(jax.jit(lambda x, w: native_conv_fwd.kernel_conv(x, w, (stride, stride), (pad, pad),
                                                                      want.shape[1:3]))(jnp.asarray(x), jnp.asarray(w)),
                     np.float64)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound)
    # the bound is tight enough to catch a kernel read flipped in space
    flipped = numpy_forward(x, w[::-1, ::-1].astype(np.float64), stride, pad)
    assert np.any(np.abs(flipped - want) > 2 * bound)


@pytest.mark.parametrize("stride,padding", [(1, ((1, 1), (1, 1))), (1, ((2, 0), (0, 1))), (2, ((1, 1), (1, 1)))])
def test_the_all_kernel_variant_gives_the_convolution_and_its_gradients(native_dw, native_conv_fwd, stride, padding):
    # native_dw.py's "all" variant: forward kernel for the forward pass and (stride 1) for the
    # input gradient as a flipped-kernel convolution, weight-gradient kernel for dW. Checked
    # against test_conv's float64 loops within the summation bounds, with the patch undone after.
    import nt_robust.models.conv as conv
    from test_conv import numpy_input_gradient

    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 7, 7, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 18)).astype(np.float32)
    saved = conv._plain, conv._conv.fwd, conv._conv.bwd
    try:
        native_dw.use_weight_gradient("all")
        ours = lambda x, w: conv.shifted_matmul_conv(x, w, (stride, stride), padding,  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        out, vjp = jax.vjp(jax.jit(ours), jnp.asarray(x), jnp.asarray(w))
        g = rng.standard_normal(out.shape).astype(np.float32)
        dx, dw = (np.asarray(a, np.float64) for a in vjp(jnp.asarray(g)))
        forward_text = jax.jit(ours).lower(x, w).compile().as_text()
        backward_text = jax.jit(lambda x, w, g: jax.vjp(ours, x, w)[1](g)).lower(x, w, g).compile().as_text()
    finally:
        conv._plain = saved[0]
        conv._conv.defvjp(saved[1], saved[2])
    assert "nt_robust_bench_conv_fwd" in forward_text and "nt_robust_bench_conv_dw" in backward_text
    assert ("nt_robust_bench_conv_fwd" in backward_text) == (stride == 1)  # strided input gradients stay XLA's
    padded = np.pad(x.astype(np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
    want = numpy_forward(padded, w.astype(np.float64), stride, 0)
    bound = gamma(9 * 5) * numpy_forward(np.abs(padded), np.abs(w).astype(np.float64), stride, 0)
    assert out.shape == want.shape and np.all(np.abs(np.asarray(out, np.float64) - want) <= bound)
    want_dx = numpy_input_gradient(g, w, x.shape, stride, padding)
    assert np.all(np.abs(dx - want_dx) <= gamma(9 * 18) * numpy_input_gradient(np.abs(g), np.abs(w), x.shape,
                                                                               stride, padding))
    want_dw = numpy_weight_gradient(x, g, w.shape, stride, padding)
    magnitude = numpy_weight_gradient(np.abs(x), np.abs(g), w.shape, stride, padding)
    assert np.all(np.abs(dw - want_dw) <= gamma(2 * g.shape[1] * g.shape[2] + 1) * magnitude)

"""The prototype weight-gradient kernel of benchmarks/native_dw.py (docs/benchmarks.md
quotes its timings): against a float64 numpy reference written as loops over the taps,
within the float32 summation bound that holds for any order, including the blocks the
kernel finishes with plain loops (output channels past a multiple of 16, input channels
past a multiple of 8), strides, a 1x1 shortcut and padding larger than the kernel's reach."""

import importlib.util
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the kernel is built with g++")


@pytest.fixture(scope="module")
def native_dw(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("native_dw", ROOT / "benchmarks" / "native_dw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_kernel(module.build_kernel(tmp_path_factory.mktemp("kernel")))
    return module


def reference_dw(x, g, kernel_hw, strides, pads):
    """dw[i, j, c, k] = sum over (n, ho, wo) of x_padded[n, ho*sh + i, wo*sw + j, c] * g[n, ho, wo, k],
    in float64, and the same sum of absolute values (for the rounding bound)."""
    (kh, kw), (sh, sw), (pt, pl) = kernel_hw, strides, pads
    n, ho, wo, _ = g.shape
    padded = np.zeros((n, max(x.shape[1] + pt, (ho - 1) * sh + kh), max(x.shape[2] + pl, (wo - 1) * sw + kw),
                       x.shape[3]))
    padded[:, pt:pt + x.shape[1], pl:pl + x.shape[2]] = x
    dw = np.zeros((kh, kw, x.shape[3], g.shape[3]))
    magnitude = np.zeros_like(dw)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
            dw[i, j] = np.einsum("nhwc,nhwk->ck", window, g)
            magnitude[i, j] = np.einsum("nhwc,nhwk->ck", np.abs(window), np.abs(g))
    return dw, magnitude


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
    want, magnitude = reference_dw(x.astype(np.float64), g.astype(np.float64), (kernel, kernel), (stride, stride),
                                   (pad, pad))
    terms = 3 * out * out  # products summed per element; each product is exact in float64, one float32 rounding
    u = 2.0 ** -24
    bound = (terms + 1) * u / (1 - (terms + 1) * u) * magnitude
    assert np.all(np.abs(got - want) <= bound)
    # and the bound is tight enough to catch a dropped tap or a transposed kernel
    assert np.max(np.abs(np.swapaxes(want, 0, 1) - want)) > 100 * np.max(bound) or kernel == 1

"""The prototype weight-gradient kernel of benchmarks/native_dw.py (docs/benchmarks.md
quotes its timings): against test_conv's float64 numpy weight gradient written as loops,
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

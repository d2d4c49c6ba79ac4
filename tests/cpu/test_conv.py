"""The custom-VJP convolutions (flipped-kernel input gradient; XLA's or shifted-matmul weight
gradient): XLA's forward values, and gradients equal to XLA's and to input and weight
gradients written out as explicit loops in numpy, within float32 summation bounds."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nt_robust.cpu import choice, native
from nt_robust.cpu.conv import flipped_dx_conv, native_conv, shifted_matmul_conv
from nt_robust.cpu.ops import conv_function, resolve_conv_impl, supports_forward_mode
from nt_robust.models import ModelConfig, create_model, init_variables

NHWC = ("NHWC", "HWIO", "NHWC")


def numpy_weight_gradient(x, g, kernel_shape, stride, pad):
    """dL/dW for L = sum(g * conv(x, W)), from the definition, one tap and pixel at a time."""
    kh, kw, cin, cout = kernel_shape
    xp, g = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0))), np.asarray(g, np.float64)
    dw = np.zeros(kernel_shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            for h in range(g.shape[1]):
                for w in range(g.shape[2]):
                    dw[i, j] += xp[:, stride * h + i, stride * w + j, :].T @ g[:, h, w, :]
    return dw


def numpy_input_gradient(g, kernel, input_shape, stride, pad):
    """dL/dx for L = sum(g * conv(x, W)), from the definition: each output pixel sends
    g[n, h, w] @ W[i, j]^T back to the input pixel its tap (i, j) read."""
    kh, kw = kernel.shape[:2]
    n, height, width, cin = input_shape
    g, kernel = np.asarray(g, np.float64), np.asarray(kernel, np.float64)
    rows = max(height + pad[0][0] + pad[0][1], stride * (g.shape[1] - 1) + kh)
    cols = max(width + pad[1][0] + pad[1][1], stride * (g.shape[2] - 1) + kw)
    dx = np.zeros((n, rows, cols, cin), np.float64)
    for i in range(kh):
        for j in range(kw):
            for h in range(g.shape[1]):
                for w in range(g.shape[2]):
                    dx[:, stride * h + i, stride * w + j, :] += g[:, h, w, :] @ kernel[i, j].T
    return dx[:, pad[0][0]:pad[0][0] + height, pad[1][0]:pad[1][0] + width, :]


def gamma(n: int) -> float:
    """Higham's γ_n for float32: a sum of n products in any order is within γ_n·Σ|terms|."""
    return n * 2.0 ** -24 / (1 - n * 2.0 ** -24)


IMPLS = {"flipped_dx": flipped_dx_conv, "shifted_matmul": shifted_matmul_conv}

CASES = [  # kernel, stride, padding: the shapes the WRN and the small CNN use, plus asymmetric SAME
    ((3, 3), 1, ((1, 1), (1, 1))),
    ((3, 3), 2, ((1, 1), (1, 1))),
    ((1, 1), 2, ((0, 0), (0, 0))),
    ((3, 3), 1, "SAME"),
    ((3, 3), 2, "SAME"),          # even size: pads (0, 1)
    ((3, 3), 1, ((2, 0), (0, 1))),
]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", [7, 8])  # odd and even inputs (stride 2 drops the last row when even)
@pytest.mark.parametrize("kernel_size,stride,padding", CASES)
def test_forward_and_gradients_match_xla_and_hand_computed_gradients(kernel_size, stride, padding, size, impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, size, size, 4)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 4, 5)).astype(np.float32)
    strides = (stride, stride)

    def xla(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

    def ours(x, k):
        return IMPLS[impl](x, k, strides, padding, dimension_numbers=NHWC)

    out = ours(x, kernel)
    np.testing.assert_array_equal(out, xla(x, kernel))  # the forward pass is XLA's own
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx_ref, dw_ref = jax.vjp(xla, x, kernel)[1](g)
    dx, dw = jax.vjp(ours, x, kernel)[1](g)
    # Each dW entry is a float32 sum of n = N·Ho·Wo products, each dx entry one of at most
    # m = kh·kw·C_out; in any summation order (ours: a flipped-kernel convolution, one matmul
    # per tap; XLA's: its transposed convolutions) a float32 sum is within γ·Σ|terms| of the exact
    # one. The float64 loops are exact to far below that. So each float32 result is within
    # `bound` of the float64 one, and the two float32 results are within 2·bound of each other.
    pads = lax.padtype_to_pads((size, size), kernel_size, strides, padding) if isinstance(padding, str) else padding
    checks = {
        "dw": (dw, dw_ref, numpy_weight_gradient(x, g, kernel.shape, stride, pads),
               gamma(x.shape[0] * out.shape[1] * out.shape[2])
               * numpy_weight_gradient(np.abs(x), np.abs(g), kernel.shape, stride, pads)),
        "dx": (dx, dx_ref, numpy_input_gradient(g, kernel, x.shape, stride, pads),
               gamma(kernel_size[0] * kernel_size[1] * kernel.shape[3])
               * numpy_input_gradient(np.abs(g), np.abs(kernel), x.shape, stride, pads)),
    }
    for name, (got, xla_got, exact, bound) in checks.items():
        assert np.all(np.abs(got - exact) <= bound), (name, np.max(np.abs(got - exact) / bound))
        assert np.all(np.abs(xla_got - exact) <= bound), (name, np.max(np.abs(xla_got - exact) / bound))
        assert np.all(np.abs(got - xla_got) <= 2 * bound), (name, np.max(np.abs(got - xla_got) / bound))
    # the bound is tight enough to see a wrong flip: the unflipped kernel's input gradient misses it
    unflipped = numpy_input_gradient(g, kernel[::-1, ::-1], x.shape, stride, pads)
    assert kernel_size == (1, 1) or np.any(np.abs(unflipped - checks["dx"][2]) > 2 * checks["dx"][3])


def test_the_input_gradient_inside_a_loop_stays_an_ordinary_hwio_convolution():
    # Autodiff's input gradient is a convolution with the kernel's in/out features swapped
    # (dim_labels ..._01oi->...); inside a while loop XLA:CPU ran it 22-24x slower than the same
    # convolution outside one (docs/benchmarks.md). The custom VJPs write it as an HWIO one.
    x = jnp.ones((2, 8, 8, 4))
    kernel = jnp.ones((3, 3, 4, 4))
    for impl in IMPLS.values():
        def body(i, y, impl=impl):
            return y + jax.grad(lambda z: jnp.sum(impl(z, kernel, (1, 1), "SAME", dimension_numbers=NHWC) ** 2))(y)
        text = jax.jit(lambda y: lax.fori_loop(0, 3, body, y)).lower(x).compile().as_text()
        labels = [line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines() if " convolution(" in line]
        assert labels and all("_01io->" in label for label in labels), labels


@pytest.mark.parametrize("kwargs", [dict(rhs_dilation=(2, 2)), dict(lhs_dilation=(2, 2)),
                                    dict(feature_group_count=2)])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_dilated_or_grouped_calls_fall_back_to_lax(kwargs, impl):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 9, 4)).astype(np.float32)
    in_per_group = 2 if "feature_group_count" in kwargs else 4
    kernel = rng.standard_normal((3, 3, in_per_group, 6)).astype(np.float32)

    def run(conv):
        return lambda x, k: conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs)

    got, want = run(IMPLS[impl]), run(lax.conv_general_dilated)
    np.testing.assert_array_equal(got(x, kernel), want(x, kernel))
    g = rng.standard_normal(want(x, kernel).shape).astype(np.float32)
    for a, b in zip(jax.vjp(got, x, kernel)[1](g), jax.vjp(want, x, kernel)[1](g)):
        np.testing.assert_array_equal(a, b)
    assert "custom_vjp" not in str(jax.make_jaxpr(got)(x, kernel))


@pytest.mark.parametrize("arch,depth", [("cnn", 1), ("wrn", 10)])
def test_models_give_the_same_logits_and_parameter_gradients_with_either_impl(arch, depth):
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    labels = jnp.arange(4) % 10
    results = {}
    for impl in ("xla", "flipped_dx", "shifted_matmul"):
        model = create_model(ModelConfig(arch, width=1, depth=depth, conv_impl=impl), num_classes=10)
        variables = init_variables(model, jax.random.key(1), (8, 8, 3))

        def loss(params, variables=variables, model=model):
            logits = model.apply({**variables, "params": params}, images, train=False)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

        grads = jax.jit(jax.grad(lambda p: loss(p)[0]))(variables["params"])
        # Forward only, the custom_vjp is just its primal: both programs are the same XLA
        # convolutions on the same operands, so the logits are compared bit for bit. (The logits
        # of the two gradient programs above are not: those programs differ, and XLA may lay out
        # or fuse a convolution differently in each.)
        logits = jax.jit(lambda v, model=model: model.apply(v, images, train=False))(variables)
        results[impl] = (logits, grads)
        # the model really routes its convolutions through ours (or not)
        assert ("custom_vjp" in str(jax.make_jaxpr(loss)(variables["params"]))) == (impl != "xla")
    for impl in ("flipped_dx", "shifted_matmul"):
        np.testing.assert_array_equal(results["xla"][0], results[impl][0])
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                               results["xla"][1], results[impl][1])


def test_auto_resolves_to_the_measured_choice_and_unknown_names_are_rejected():
    assert jax.default_backend() == "cpu"  # the suite runs on CPU, where auto is what was measured
    measured = choice.cpu_conv_choice()["impl"]  # the fastest: XLA's, shifted matmuls or the native kernels
    expected = {"xla": "flipped_dx", "shifted_matmul": "shifted_matmul", "native": "native"}[measured]
    assert resolve_conv_impl("auto") == expected
    assert conv_function("auto") is {**IMPLS, "native": native_conv}[expected]
    assert conv_function("xla") is lax.conv_general_dilated
    assert supports_forward_mode(conv_function("xla")) and not supports_forward_mode(conv_function("auto"))
    assert not any(supports_forward_mode(conv_function(name)) for name in ("flipped_dx", "shifted_matmul", "native"))
    with pytest.raises(ValueError, match="model.conv_impl must be one of"):
        ModelConfig("cnn", conv_impl="oneDNN")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        resolve_conv_impl("fast")


@pytest.mark.parametrize("timings,expected", [
    ({"xla_ms": 10.0, "shifted_matmul_ms": 7.9}, "shifted_matmul"),
    ({"xla_ms": 10.0, "shifted_matmul_ms": 8.0}, "xla"),  # not clearly faster
    ({"xla_ms": 10.0, "shifted_matmul_ms": 30.0, "native_ms": 7.9}, "native"),
    ({"xla_ms": 10.0, "shifted_matmul_ms": 30.0, "native_ms": 8.0}, "xla"),
    ({"xla_ms": 10.0, "shifted_matmul_ms": 5.0, "native_ms": 4.5}, "shifted_matmul"),  # not clearly faster than it
    ({"xla_ms": 10.0, "shifted_matmul_ms": 5.0, "native_ms": 3.9}, "native"),
    ({"xla_ms": 10.0, "shifted_matmul_ms": 30.0}, "xla"),  # native unavailable
])
def test_a_candidate_is_chosen_only_when_clearly_faster_than_the_best_before_it(timings, expected):
    assert choice.choose(timings) == expected


def test_the_choice_is_measured_once_per_machine_and_can_be_forced(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NT_ROBUST_CONV_IMPL_AUTO", raising=False)
    calls = []
    monkeypatch.setattr(choice, "measure", lambda: calls.append(1) or {"xla_ms": 30.0, "shifted_matmul_ms": 10.0})
    choice.cpu_conv_choice.cache_clear()
    try:
        first = choice.cpu_conv_choice()
        assert first["impl"] == "shifted_matmul" and first["source"] == "measured now"
        choice.cpu_conv_choice.cache_clear()  # a new process: read from the cache, not measured again
        again = choice.cpu_conv_choice()
        assert again["impl"] == "shifted_matmul" and again["source"].startswith("measured earlier") and calls == [1]
        (tmp_path / "nt_robust" / "conv_impl.json").write_text("{not json")  # a corrupt cache: measured again
        choice.cpu_conv_choice.cache_clear()
        assert choice.cpu_conv_choice()["source"] == "measured now" and calls == [1, 1]
        monkeypatch.setenv("NT_ROBUST_CONV_IMPL_AUTO", "xla")
        choice.cpu_conv_choice.cache_clear()
        assert choice.cpu_conv_choice() == {"impl": "xla", "source": "NT_ROBUST_CONV_IMPL_AUTO"}
        monkeypatch.setenv("NT_ROBUST_CONV_IMPL_AUTO", "fast")
        choice.cpu_conv_choice.cache_clear()
        with pytest.raises(ValueError, match="NT_ROBUST_CONV_IMPL_AUTO must be one of"):
            choice.cpu_conv_choice()
    finally:
        choice.cpu_conv_choice.cache_clear()  # the rest of the suite measures (or reads) for real


def test_the_measurement_times_every_candidate():
    timings = choice.measure()
    names = {"xla_ms", "shifted_matmul_ms"} | ({"native_ms"} if shutil.which("g++") else {"native_unavailable"})
    assert set(timings) == names and all(timings[f"{name}_ms"] > 0 for name in ("xla", "shifted_matmul"))


def test_a_cached_native_choice_falls_back_when_the_kernels_no_longer_build(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NT_ROBUST_CONV_IMPL_AUTO", raising=False)
    monkeypatch.setattr(choice, "measure", lambda: {"xla_ms": 30.0, "shifted_matmul_ms": 20.0, "native_ms": 5.0})
    monkeypatch.setattr(choice, "native_unavailable", lambda: None)
    choice.cpu_conv_choice.cache_clear()
    try:
        assert choice.cpu_conv_choice()["impl"] == "native"
        monkeypatch.setattr(choice, "native_unavailable", lambda: "g++ is not on PATH")
        choice.cpu_conv_choice.cache_clear()  # a later process, after g++ was removed
        later = choice.cpu_conv_choice()
        assert later["impl"] == "shifted_matmul" and later["native_unavailable"] == "g++ is not on PATH"
    finally:
        choice.cpu_conv_choice.cache_clear()


@pytest.mark.parametrize("jaxlib, checked", [("0.10.2", True), ("0.10.9", True), ("0.10.1", False),
                                             ("0.11.2", False), ("0.12.0.dev20261201", False), (None, False)])
def test_on_a_jaxlib_the_kernels_were_not_tested_with_auto_falls_back_and_says_so(monkeypatch, capsys, jaxlib,
                                                                                checked):
    """The kernels' FFI ABI comes with jaxlib: on another version "auto" never picks (or
    builds) them, one line on stderr says why, and "native" still forces them."""
    from nt_robust.cpu import machine

    monkeypatch.setattr(machine, "package_version", lambda name: jaxlib if name == "jaxlib" else "1.0")
    monkeypatch.setattr(native, "native_status", lambda: {"available": True, "library": "x.so"})
    reason = native.unchecked_jaxlib()
    assert (reason is None) is checked
    choice._say_once.cache_clear()
    if checked:
        assert choice.native_unavailable() is None
        return
    assert f"jaxlib {jaxlib or 'unknown'}" in reason and "0.10.2 <= jaxlib < 0.11.0" in reason
    assert choice.native_unavailable() == reason and choice.native_unavailable() == reason
    assert capsys.readouterr().err.count("nt-robust: note: the native kernels were built and tested with") == 1
    monkeypatch.setattr(choice, "_alternating_times",
                        lambda calls, rounds: {name: [1.0] for name in calls})
    assert "native_ms" not in choice.measure() and choice.measure()["native_unavailable"] == reason
    assert resolve_conv_impl("native") == "native"   # forced: the user's call

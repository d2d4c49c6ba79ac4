"""conv_impl = "native" (nt_robust.cpu.native): the kernels' forward pass, input
gradient and weight gradient against float64 loops within the float32 summation bounds, on
one device and split over two; the build's cache and its errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conv import gamma, numpy_input_gradient, numpy_weight_gradient  # pytest puts this folder on sys.path

from nt_robust.cpu import native
from nt_robust.cpu.machine import cpu_info
from nt_robust.cpu.conv import NATIVE_MIN_OUT_CHANNELS
from nt_robust.cpu.ops import conv_function, resolve_conv_impl, supports_forward_mode

NHWC = ("NHWC", "HWIO", "NHWC")
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="the kernels are built with g++")
needs_avx2 = pytest.mark.skipif("avx2" not in cpu_info()["isa"], reason="runs AVX2 code")


def run_script(script: str, tmp_path: Path, env: dict | None = None) -> tuple[str, dict]:
    """``script`` in a fresh Python process started in the repository (the FFI targets are
    registered once per process), given ``tmp_path/results.npz`` as ``sys.argv[1]`` to save its
    arrays in: its stdout and those arrays."""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "results.npz")], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, np.load(tmp_path / "results.npz")


def run_avx2_script(script: str, tmp_path: Path) -> dict:
    """:func:`run_script` with the kernels built for AVX2 (``x86-64-v3``) into a cache of its own;
    the script prints ``native.register()``, the library it loaded, to show that it was that build."""
    env = {**os.environ, "NT_ROBUST_NATIVE_MARCH": "x86-64-v3", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    stdout, arrays = run_script(script, tmp_path, env)
    assert str(tmp_path / "cache") in stdout  # its own build, not the native one
    return arrays


def numpy_forward(x, kernel, stride, pads):
    """conv(x, W) from the definition in float64."""
    kh, kw, _, cout = kernel.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] @ kernel[i, j]
    return out


def check_against_loops(x, w, g, out, dx, dw, stride, pads):
    """Each float32 result (None: not checked) within γ_n·Σ|terms| of the float64 loops (n: the
    terms per sum; the weight gradient's kernel adds each image's partial sums, and two
    devices' sums, once more, hence the +2)."""
    kh, kw, cin, cout = w.shape
    w64, n_dw = w.astype(np.float64), x.shape[0] * g.shape[1] * g.shape[2] + 2
    checks = {
        "forward": (out, lambda x, w, g: numpy_forward(x, w, stride, pads), kh * kw * cin),
        "input gradient": (dx, lambda x, w, g: numpy_input_gradient(g, w, x.shape, stride, pads), kh * kw * cout),
        "weight gradient": (dw, lambda x, w, g: numpy_weight_gradient(x, g, w.shape, stride, pads), n_dw),
    }
    for name, (got, exact, terms) in checks.items():
        if got is None:
            continue
        want, bound = exact(x, w64, g), gamma(terms) * exact(np.abs(x), np.abs(w64), np.abs(g))
        assert got.shape == want.shape, name
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound), (name, np.max(np.abs(got - want) / bound))


CASES = [  # kernel, stride, padding, channels in/out: the WRN's layers, asymmetric padding, channel tails
    (3, 1, ((1, 1), (1, 1)), 16, 32),
    (3, 1, ((2, 0), (0, 1)), 20, 18),
    (3, 1, ((1, 1), (1, 1)), 3, 16),   # a stem: its input gradient has 3 channels, so XLA's
    (3, 2, ((1, 1), (1, 1)), 3, 16),
    (1, 2, ((0, 0), (0, 0)), 6, 48),
    (3, 2, ((1, 1), (1, 1)), 16, 32),  # a WRN's strided layers: the input gradient reads a dilated output gradient
    (3, 2, ((0, 1), (1, 0)), 24, 16),
    (1, 2, ((0, 0), (0, 0)), 16, 32),
]


@needs_compiler
@pytest.mark.parametrize("kernel,stride,padding,cin,cout", CASES)
def test_native_convolution_and_its_gradients_match_float64_loops(kernel, stride, padding, cin, cout):
    rng = np.random.default_rng(cin * cout)
    x = rng.standard_normal((3, 9, 9, cin)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, cin, cout)).astype(np.float32)
    conv = conv_function("native")

    def f(x, w):
        return conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)

    out, vjp = jax.vjp(jax.jit(f), jnp.asarray(x), jnp.asarray(w))
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(g))
    check_against_loops(x, w, g, np.asarray(out), np.asarray(dx), np.asarray(dw), stride, padding)
    text = jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g)).lower(x, w, g).compile().as_text()
    assert native.WEIGHT_GRADIENT_TARGET in text
    # the input gradient runs the direct convolution for at least 16 input channels
    assert (native.FORWARD_TARGET in text) == (cin >= NATIVE_MIN_OUT_CHANNELS)
    assert resolve_conv_impl("native") == "native" and not supports_forward_mode(conv)


@needs_compiler
def test_split_over_two_devices_each_device_runs_its_shard_and_the_sums_are_exact(tmp_path):
    # Data parallelism: custom_partitioning gives each CPU device its half of the batch, and the
    # weight gradient's halves are summed (psum). Run in a fresh process with two CPU devices.
    script = textwrap.dedent(f"""
        import json, sys
        import jax
        jax.config.update("jax_num_cpu_devices", 2)
        import jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from nt_robust.cpu.ops import conv_function
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 8, 8, 16)).astype(np.float32)
        w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
        g = rng.standard_normal((4, 8, 8, 32)).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        shard = NamedSharding(mesh, P("batch"))
        f = lambda x, w: conv_function("native")(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        step = jax.jit(lambda x, w, g: (f(x, w), *jax.vjp(f, x, w)[1](g)))
        out, dx, dw = step(jax.device_put(x, shard), w, jax.device_put(g, shard))
        text = step.lower(jax.device_put(x, shard), w, jax.device_put(g, shard)).compile().as_text()
        np.savez(sys.argv[1], x=x, w=w, g=g, out=out, dx=dx, dw=dw)
        print(json.dumps({{"devices": len(jax.devices()), "out_shards": len(out.sharding.device_set),
                          "calls": text.count("nt_robust_conv_")}}))
    """)
    stdout, arrays = run_script(script, tmp_path)
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["devices"] == 2 and info["out_shards"] == 2 and info["calls"] >= 3
    check_against_loops(arrays["x"], arrays["w"], arrays["g"], arrays["out"], arrays["dx"], arrays["dw"], 1,
                        ((1, 1), (1, 1)))


@needs_compiler
def test_the_build_is_cached_and_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    library = native.build(tmp_path / "ok")
    stamp = library.stat().st_mtime_ns
    assert native.build(tmp_path / "ok") == library and library.stat().st_mtime_ns == stamp
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", (broken,))
    with pytest.raises(native.NativeConvUnavailable, match="building the native convolution kernels failed"):
        native.build(tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []  # no partial library


def test_without_a_compiler_the_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "COMPILER", "no-such-compiler-nt-robust")
    with pytest.raises(native.NativeConvUnavailable, match="apt-get install g\\+\\+.*conv_impl = 'auto'"):
        native.build(tmp_path)
    assert not any(tmp_path.iterdir())


@needs_compiler
@pytest.mark.parametrize("batch,size,cin,cout,kernel,stride,pad", [
    (3, 8, 16, 32, 3, 1, 1),    # full blocks (the forward pass: one block of two vectors)
    (3, 11, 5, 48, 3, 1, 1),    # input channels past a multiple of 8; two vectors then one; 11 = 8 + 3 pixels
    (3, 8, 8, 21, 3, 1, 1),     # output channels past a multiple of 16 (plain-loop tails)
    (3, 9, 16, 32, 3, 2, 1),    # stride 2 on an odd size
    (3, 8, 16, 32, 1, 2, 0),    # 1x1 shortcut
    (3, 6, 3, 16, 3, 1, 2),     # padding wider than the kernel reaches: rows and pixels of zeros
    (11, 5, 16, 16, 3, 1, 1),   # the weight gradient's 8 chunks of the batch: 2 images each, then 1, then none
    (2, 14, 16, 48, 3, 1, 1),   # 14 columns: blocks of 7 pixels (two vectors, then one)
])
def test_each_kernel_alone_matches_float64_loops_at_its_edge_cases(batch, size, cin, cout, kernel, stride, pad):
    rng = np.random.default_rng(size * cin + cout)
    out = (size + 2 * pad - kernel) // stride + 1
    x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, cin, cout)).astype(np.float32)
    g = rng.standard_normal((batch, out, out, cout)).astype(np.float32)
    forward = jax.jit(lambda x, w: native.conv_forward(x, w, (stride, stride), (pad, pad), (out, out)))
    dw = jax.jit(lambda x, g: native.weight_gradient(x, g, w.shape, (stride, stride), (pad, pad)))
    pads = ((pad, pad), (pad, pad))
    check_against_loops(x, w, g, np.asarray(forward(x, w)), None, np.asarray(dw(x, g)), stride, pads)
    # the bounds are tight enough to catch a kernel read flipped in space
    if kernel > 1:
        flipped = numpy_forward(x, w[::-1, ::-1].astype(np.float64), stride, pads)
        assert np.any(np.abs(flipped - numpy_forward(x, w.astype(np.float64), stride, pads))
                      > 2 * gamma(kernel * kernel * cin) * numpy_forward(np.abs(x), np.abs(w).astype(np.float64),
                                                                        stride, pads))


@needs_compiler
def test_under_vmap_and_for_a_gradient_of_a_gradient_native_equals_float64_xla_exactly():
    # Small integers: every product and partial sum is an integer far below 2**24, so float32
    # arithmetic is exact in any summation order and the kernels must equal XLA's float64
    # convolutions bit for bit. Covered: FAB's / jacrev's vmapped VJP (the kernel runs once
    # on the folded batch), per-example weight gradients (vmap: one kernel call per example)
    # and a gradient-norm penalty's gradient (through XLA's derivatives of the kernels).
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, (5, 6, 6, 16)).astype(np.float32)
    w = rng.integers(-1, 2, (3, 3, 16, 16)).astype(np.float32)
    c = rng.integers(-1, 2, (5, 6, 6, 16)).astype(np.float32)

    def quantities(conv, x, w, c):
        def features(x, w):  # two layers, so that a gradient of a gradient reaches the weight gradient's derivative
            return conv(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC), w, (1, 1), ((1, 1), (1, 1)),
                        dimension_numbers=NHWC)

        def per_class(x, w):
            return features(x, w).sum((1, 2))  # (N, 16)

        outputs, vjp = jax.vjp(lambda x: per_class(x, w), x)
        eye = jnp.eye(outputs.shape[1], dtype=x.dtype)
        jacobian = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, outputs.shape))[0])(eye)
        per_example = jax.vmap(lambda xi, ci: jax.grad(lambda w: jnp.sum(features(xi[None], w) * ci))(w))(x, c)
        input_gradient = lambda w: jax.grad(lambda x: jnp.sum(features(x, w) * c))(x)  # noqa: E731
        penalty = jax.grad(lambda w: jnp.sum(input_gradient(w) ** 2))(w)
        return jacobian, per_example, penalty

    got = jax.jit(lambda x, w, c: quantities(conv_function("native"), x, w, c))(x, w, c)
    text = jax.jit(lambda x, w, c: quantities(conv_function("native"), x, w, c)).lower(x, w, c).as_text()
    assert native.FORWARD_TARGET in text and native.WEIGHT_GRADIENT_TARGET in text
    with jax.enable_x64(True):
        want = quantities(jax.lax.conv_general_dilated, *(jnp.asarray(a, jnp.float64) for a in (x, w, c)))
        want = [np.asarray(a) for a in want]
    for name, got_one, want_one in zip(("vmapped VJP", "per-example weight gradients", "gradient-norm penalty"),
                                       got, want):
        assert np.max(np.abs(want_one)) < 2 ** 22, name  # still exact in float32
        np.testing.assert_array_equal(np.asarray(got_one, np.float64), want_one, err_msg=name)


def dilate(x, dilation):
    """x with dilation - 1 zero rows (columns) between its rows (columns), in float64."""
    n, h, w, c = x.shape
    out = np.zeros((n, (h - 1) * dilation[0] + 1, (w - 1) * dilation[1] + 1, c), np.float64)
    out[:, ::dilation[0], ::dilation[1]] = x
    return out


@needs_compiler
@pytest.mark.parametrize("size,cin,cout,dilation,pads", [
    (8, 16, 32, (2, 2), (1, 2)),   # a stride-2 layer's input gradient (pads as _input_gradient makes them)
    (5, 7, 21, (2, 3), (2, 0)),    # unequal dilations, channel tails, 5 columns in 3 phases
    (4, 16, 16, (3, 3), (0, 0)),   # taps that read only dilation zeros for a whole block
])
def test_the_forward_kernel_on_a_dilated_input_matches_float64_loops(size, cin, cout, dilation, pads):
    rng = np.random.default_rng(size + cin)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    xd, absd = dilate(x, dilation), dilate(np.abs(x), dilation)
    padding = ((pads[0], pads[0] + 1), (pads[1], pads[1]))
    want = numpy_forward(xd, w.astype(np.float64), 1, padding)
    bound = gamma(9 * cin) * numpy_forward(absd, np.abs(w).astype(np.float64), 1, padding)
    got = jax.jit(lambda x, w: native.conv_forward(x, w, (1, 1), pads, want.shape[1:3], dilation))(x, w)
    assert got.shape == want.shape
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound), np.max(np.abs(got - want) / bound)


@needs_compiler
def test_environment_json_records_the_kernels_a_run_uses():
    from nt_robust.environment import environment_info

    record = environment_info("native")["native_conv"]
    assert record["available"] and Path(record["library"]).is_file()
    assert record["build_key"] == native.build_key() and record["build_key"] in record["library"]
    assert environment_info("xla")["native_conv"] is None


@needs_compiler
@needs_avx2
def test_the_avx2_build_matches_float64_loops_too(tmp_path):
    # -march=native compiles 16-float vectors on AVX-512 CPUs and 8-float ones elsewhere
    # (kernels/common.h), with other register blocks; build the AVX2 variant here as well, in a
    # fresh process (the FFI targets are registered once per process) with its own cache.
    script = textwrap.dedent("""
        import sys
        import jax, numpy as np
        from nt_robust.cpu import native
        from nt_robust.cpu.ops import conv_function
        assert native.march() == "x86-64-v3"
        rng = np.random.default_rng(0)
        results = {}
        for name, (size, cin, cout, stride) in {"a": (9, 16, 48, 1), "b": (14, 32, 40, 1), "c": (9, 24, 32, 2)}.items():
            x = rng.standard_normal((3, size, size, cin)).astype(np.float32)
            w = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
            f = lambda x, w, s=stride: conv_function("native")(x, w, (s, s), ((1, 1), (1, 1)),
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
            out, vjp = jax.vjp(jax.jit(f), x, w)
            g = rng.standard_normal(out.shape).astype(np.float32)
            results.update({f"{name}_{key}": np.asarray(value) for key, value in
                            zip(("x", "w", "g", "out", "dx", "dw"), (x, w, g, out, *vjp(g)))})
        np.savez(sys.argv[1], **results)
        print(native.register())
    """)
    arrays = run_avx2_script(script, tmp_path)
    for name, stride in (("a", 1), ("b", 1), ("c", 2)):
        check_against_loops(*(arrays[f"{name}_{key}"] for key in ("x", "w", "g", "out", "dx", "dw")), stride,
                            ((1, 1), (1, 1)))

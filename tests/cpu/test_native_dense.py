"""dense_impl = "native" (nt_robust.cpu.dense, kernels/matmul.cc): the matrix-product kernel
against float64 products within the float32 summation bound, for every layout and for shapes
that cut the work every way the kernel does; an MLP through it against XLA's products, bit
for bit where float32 is exact; under a mesh of two devices; and the "auto" choice."""

import json
import os
import shutil
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conv import gamma  # pytest puts this folder on sys.path
from test_native_conv import needs_avx2, needs_compiler, run_avx2_script, run_script

from nt_robust.cpu import choice, native
from nt_robust.cpu.dense import NATIVE_MIN_FEATURES, native_dot_general
from nt_robust.cpu.ops import dot_general_function, resolve_dense_impl, supports_forward_mode
from nt_robust.models import ModelConfig
from nt_robust.models.small import MLP


def check_product(a, b, got, transpose_a, transpose_b):
    """``got`` within γ_{K+2}·(|A||B|) of the float64 product (any summation order of K terms, plus
    the K slices' and pieces' regrouping, stays within γ_K; +2 for margin, as for the convolutions)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a64, b64 = (a64.T if transpose_a else a64), (b64.T if transpose_b else b64)
    want, bound = a64 @ b64, gamma(a64.shape[1] + 2) * (np.abs(a64) @ np.abs(b64))
    assert got.shape == want.shape
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound), np.max(np.abs(got - want) / (bound + 1e-300))


SHAPES = [  # (M, K, N): one register block's tails, tiles, K slices (256) and K pieces, 1-wide edges
    (37, 70, 45),
    (1, 1, 1),
    (3, 1000, 17),
    (128, 3072, 40),   # one tile: K cut into pieces, summed by whichever task finishes last
    (130, 300, 100),   # row and column tails in tiles; a K slice and a remainder
    (200, 64, 300),    # several tiles of each kind: operands packed once for the whole call
    (16, 257, 33),
]


@needs_compiler
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_kernel_matches_float64_products_in_every_layout(m, k, n):
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    for transpose_a in (False, True):
        for transpose_b in (False, True):
            a = rng.standard_normal((k, m) if transpose_a else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
            product = jax.jit(lambda a, b, ta=transpose_a, tb=transpose_b: native.matmul(a, b, ta, tb))
            got = np.asarray(product(a, b))
            check_product(a, b, got, transpose_a, transpose_b)
            assert np.array_equal(got, np.asarray(product(a, b)))  # the cut depends on the shapes only


@needs_compiler
def test_an_empty_sum_is_zero_and_shapes_that_do_not_chain_are_refused():
    assert np.array_equal(np.asarray(native.matmul(jnp.ones((3, 0)), jnp.ones((0, 4)))), np.zeros((3, 4)))
    with pytest.raises(Exception, match="do not chain"):
        jax.ffi.ffi_call(native.MATMUL_TARGET, jax.ShapeDtypeStruct((3, 4), jnp.float32))(
            jnp.ones((3, 5)), jnp.ones((6, 4)), transpose_a=False, transpose_b=False)


def integer_mlp(width=64, image=(8, 8, 3), seed=0):
    """An MLP whose parameters and inputs are small integers, so that every sum it and its
    derivatives compute is an integer below 2**24: exact in float32 in any summation order.
    (Logits up to 64·(64·192) ≈ 786k; input gradients up to 64·64·10; the second derivative
    below is linear in each weight.)"""
    rng = np.random.default_rng(seed)
    model = MLP(width=width, depth=2, num_classes=10)
    x = rng.integers(0, 2, (8, *image)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.integers(-1, 2, a.shape), jnp.float32), variables)
    return x, variables, rng


@needs_compiler
def test_an_mlp_through_the_kernel_equals_xla_bit_for_bit_where_float32_is_exact():
    x, variables, rng = integer_mlp()
    cotangent = jnp.asarray(rng.integers(-1, 2, (8, 10)), jnp.float32)
    direction = jnp.asarray(rng.integers(-1, 2, x.shape), jnp.float32)
    results = {}
    for impl in ("xla", "native"):
        model = MLP(width=64, depth=2, num_classes=10, dot_general=dot_general_function(impl))

        def logits(v, x, model=model):
            return model.apply(v, x)

        def input_gradient_along(v, x, model=model):  # a gradient-norm-style penalty: second derivatives
            return jnp.vdot(jax.vjp(lambda x: logits(v, x), x)[1](cotangent)[0], direction)

        out, vjp = jax.vjp(jax.jit(logits), variables, x)
        per_class = jax.jit(jax.vmap(lambda c: vjp(c)[1]))(jnp.eye(10, dtype=jnp.float32)[:, None, :].repeat(8, 1))
        results[impl] = (out, vjp(cotangent), per_class, jax.jit(jax.grad(input_gradient_along))(variables, x))
        if impl == "native":
            text = jax.jit(logits).lower(variables, x).compile().as_text()
            assert native.MATMUL_TARGET in text
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           results["xla"], results["native"])


@needs_compiler
def test_narrow_layers_and_other_dtypes_go_to_xla():
    numbers = (((1,), (0,)), ((), ()))
    x = jnp.ones((4, 32), jnp.float32)
    narrow = jax.jit(lambda x, w: native_dot_general(x, w, numbers)).lower(x, jnp.ones((32, NATIVE_MIN_FEATURES - 1)))
    assert native.MATMUL_TARGET not in narrow.compile().as_text()
    half = jax.jit(lambda x, w: native_dot_general(x, w, numbers)).lower(x.astype(jnp.bfloat16),
                                                                       jnp.ones((32, 64), jnp.bfloat16))
    assert native.MATMUL_TARGET not in half.compile().as_text()
    wide = jax.jit(lambda x, w: native_dot_general(x, w, numbers)).lower(x, jnp.ones((32, 64)))
    assert native.MATMUL_TARGET in wide.compile().as_text()
    three_d = native_dot_general(jnp.ones((2, 3, 32)), jnp.ones((32, 64)), (((2,), (0,)), ((), ())))
    assert three_d.shape == (2, 3, 64) and np.all(np.asarray(three_d) == 32)


@needs_compiler
def test_forward_mode_through_the_kernel_is_refused_with_the_fix():
    from nt_robust.theory.conv import flax_empirical_ntk
    from nt_robust.theory.nt_compat import NTK_IMPL_VP

    assert supports_forward_mode(jax.lax.dot_general) and not supports_forward_mode(native_dot_general)
    model = MLP(width=32, depth=1, num_classes=3, dot_general=native_dot_general)
    x = jnp.ones((2, 4, 4, 1), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="dense_impl='xla'"):
        flax_empirical_ntk(model, variables, x, implementation=NTK_IMPL_VP)


def test_names_resolve_and_unknown_ones_are_rejected(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert resolve_dense_impl("xla") == "xla" and resolve_dense_impl("native") == "native"
    assert resolve_dense_impl("auto") == os.environ["NT_ROBUST_DENSE_IMPL_AUTO"]  # fixed by conftest
    assert dot_general_function("xla") is jax.lax.dot_general
    assert dot_general_function("native") is native_dot_general
    assert nn.Dense(4, dot_general=dot_general_function("native")).dot_general is native_dot_general
    with pytest.raises(ValueError, match="model.dense_impl must be one of"):
        ModelConfig("mlp", width=8, dense_impl="mkl")
    with pytest.raises(ValueError, match="dense_impl must be one of"):
        resolve_dense_impl("fast")


@pytest.mark.parametrize("timings,expected", [
    ({"xla_ms": 3.0, "native_ms": 2.84}, "native"),
    ({"xla_ms": 3.0, "native_ms": 2.85}, "xla"),  # not clearly faster
    ({"xla_ms": 3.0, "native_ms": 2.5, "native_over_xla": 0.96}, "xla"),  # the paired ratio decides
    ({"xla_ms": 3.0, "native_ms": 3.1, "native_over_xla": 0.94}, "native"),
    ({"xla_ms": 3.0}, "xla"),  # the kernel unavailable
])
def test_the_kernel_is_chosen_only_when_clearly_faster(timings, expected):
    assert choice.choose_dense(timings) == expected


def test_the_dense_choice_is_measured_once_per_machine_and_can_be_forced(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NT_ROBUST_DENSE_IMPL_AUTO", raising=False)
    calls = []
    monkeypatch.setattr(choice, "measure_dense", lambda: calls.append(1) or {"xla_ms": 3.0, "native_ms": 2.0})
    monkeypatch.setattr(choice, "native_unavailable", lambda: None)
    choice.cpu_dense_choice.cache_clear()
    try:
        first = choice.cpu_dense_choice()
        assert first["impl"] == "native" and first["source"] == "measured now"
        choice.cpu_dense_choice.cache_clear()  # a new process: read from the cache, not measured again
        again = choice.cpu_dense_choice()
        assert again["impl"] == "native" and again["source"].startswith("measured earlier") and calls == [1]
        monkeypatch.setattr(choice, "native_unavailable", lambda: "g++ is not on PATH")
        choice.cpu_dense_choice.cache_clear()  # a later process, after g++ was removed
        later = choice.cpu_dense_choice()
        assert later["impl"] == "xla" and later["native_unavailable"] == "g++ is not on PATH"
        monkeypatch.setenv("NT_ROBUST_DENSE_IMPL_AUTO", "native")
        choice.cpu_dense_choice.cache_clear()
        assert choice.cpu_dense_choice() == {"impl": "native", "source": "NT_ROBUST_DENSE_IMPL_AUTO"}
        monkeypatch.setenv("NT_ROBUST_DENSE_IMPL_AUTO", "mkl")
        choice.cpu_dense_choice.cache_clear()
        with pytest.raises(ValueError, match="NT_ROBUST_DENSE_IMPL_AUTO must be one of"):
            choice.cpu_dense_choice()
    finally:
        choice.cpu_dense_choice.cache_clear()


def test_the_dense_measurement_times_both_candidates():
    timings = choice.measure_dense(rounds=3)
    names = {"xla_ms"} | ({"native_ms", "native_over_xla"} if shutil.which("g++") else {"native_unavailable"})
    assert set(timings) == names and timings["xla_ms"] > 0


@needs_compiler
def test_environment_json_records_the_kernel_a_run_uses():
    from nt_robust.environment import environment_info

    info = environment_info("xla", "native")
    assert info["native_dense"]["available"] and info["native_dense"]["build_key"] == native.build_key()
    assert info["native_conv"] is None and info["dense_impl_auto"] == resolve_dense_impl("auto")
    assert environment_info("xla", "xla")["native_dense"] is None


@needs_compiler
def test_an_mlp_step_split_over_two_devices_matches_float64(tmp_path):
    # Under a mesh the forward pass and the input gradient run on each device's rows; the
    # weight gradient's two halves are summed (psum). Fresh process with two CPU devices.
    script = textwrap.dedent("""
        import json, sys
        import jax
        jax.config.update("jax_num_cpu_devices", 2)
        import jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from nt_robust.cpu.dense import native_dot_general
        rng = np.random.default_rng(0)
        x = rng.standard_normal((6, 300)).astype(np.float32)
        w = rng.standard_normal((300, 48)).astype(np.float32)
        g = rng.standard_normal((6, 48)).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        shard = NamedSharding(mesh, P("batch"))
        f = lambda x, w: native_dot_general(x, w, (((1,), (0,)), ((), ())))
        step = jax.jit(lambda x, w, g: (f(x, w), *jax.vjp(f, x, w)[1](g)))
        args = (jax.device_put(x, shard), w, jax.device_put(g, shard))
        out, dx, dw = step(*args)
        text = step.lower(*args).compile().as_text()
        np.savez(sys.argv[1], x=x, w=w, g=g, out=out, dx=dx, dw=dw)
        print(json.dumps({"devices": len(jax.devices()), "out_shards": len(out.sharding.device_set),
                          "calls": text.count("nt_robust_matmul")}))
    """)
    stdout, r = run_script(script, tmp_path)
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["devices"] == 2 and info["out_shards"] == 2 and info["calls"] >= 3
    check_product(r["x"], r["w"], r["out"], False, False)
    check_product(r["g"], r["w"], r["dx"], False, True)
    check_product(r["x"], r["g"], r["dw"], True, False)


@needs_compiler
@needs_avx2
def test_the_avx2_build_matches_float64_products_too(tmp_path):
    # -march=native gives 16-float vectors, 8-row register blocks and 16x16 transposes on
    # AVX-512 CPUs, and 8-float vectors, 6 rows and 8x8 transposes elsewhere: build the AVX2
    # variant as well, in a fresh process with its own cache.
    script = textwrap.dedent("""
        import sys
        import jax, numpy as np
        from nt_robust.cpu import native
        assert native.march() == "x86-64-v3"
        rng = np.random.default_rng(1)
        results = {}
        for name, (m, k, n, ta, tb) in {"a": (37, 70, 45, 0, 0), "b": (130, 600, 20, 0, 1), "c": (50, 33, 70, 1, 0),
                                        "d": (128, 1100, 16, 1, 1)}.items():
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            results.update({f"{name}_a": a, f"{name}_b": b,
                            f"{name}_out": np.asarray(native.matmul(a, b, bool(ta), bool(tb)))})
        np.savez(sys.argv[1], **results)
        print(native.register())
    """)
    r = run_avx2_script(script, tmp_path)
    for name, ta, tb in (("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("d", 1, 1)):
        check_product(r[f"{name}_a"], r[f"{name}_b"], r[f"{name}_out"], bool(ta), bool(tb))

"""Hand-written CPU convolution kernels for ``model.conv_impl = "native"`` (which "auto" picks
where it measured them fastest, ``nt_robust.cpu.choice``).

XLA:CPU's convolutions at 16–64 channels are what keep WideResNet steps behind PyTorch's
oneDNN on CPU (docs/benchmarks.md). Two small C++ kernels, called from XLA through its FFI,
replace them: a direct convolution (``kernels/conv_fwd.cc``: the forward pass, and the input
gradient, a forward convolution of the flipped kernel over the output gradient, dilated for
strided layers) and a weight gradient (``kernels/conv_dw.cc``). Each spreads its work over
XLA:CPU's own thread pool (``kernels/common.h``), so one device uses every core; under data
parallelism over CPU devices (what ``nt-robust train`` does for conv nets)
``custom_partitioning`` gives each device its shard of the batch. The same library holds the
matrix-product kernel of ``model.dense_impl = "native"`` (``kernels/matmul.cc``,
``nt_robust.cpu.dense``)::

    from nt_robust.cpu.native import conv_forward, matmul, weight_gradient, native_status

    native_status()           # {"available": True, "library": ".../libnt_robust_conv.so", ...}
    y = conv_forward(x, w, strides=(1, 1), low_pads=(1, 1), out_hw=(32, 32))
    dw = weight_gradient(x, g, w.shape, strides=(1, 1), low_pads=(1, 1))
    h = matmul(x2d, w2d)      # x2d @ w2d; transpose_a / transpose_b for x2d.T, w2d.T

The kernels are compiled on first use with ``g++ -O3 -march=native`` (a few seconds;
``$NT_ROBUST_NATIVE_MARCH`` names another target, e.g. ``x86-64-v3`` for AVX2 code on an
AVX-512 machine, which is how the tests cover both) and cached under
``~/.cache/nt_robust/kernels/`` by a key of their sources, the target, the compiler, jaxlib
and the CPU's model and ISA, so a home directory shared by different machines keeps one
build per CPU. The vector width follows the target's ISA (16 floats with AVX-512, 8 with
AVX2: ``kernels/common.h``). Without g++ (or when the build fails)
:class:`NativeConvUnavailable` says so and names the fix. float32 only
(``nt_robust.cpu.conv`` keeps XLA's convolutions for other dtypes); CPU backend only.
Under ``jax.vmap`` a kernel runs on the folded batch, or once per mapped element; a gradient
of a gradient goes through XLA's derivatives (``nt_robust.cpu.conv``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

KERNELS = Path(__file__).resolve().parent / "kernels"
SOURCES = (KERNELS / "conv_fwd.cc", KERNELS / "conv_dw.cc", KERNELS / "matmul.cc")
HEADERS = (KERNELS / "common.h",)
FORWARD_TARGET, WEIGHT_GRADIENT_TARGET = "nt_robust_conv_fwd", "nt_robust_conv_dw"
MATMUL_TARGET = "nt_robust_matmul"
COMPILER = "g++"
# The jaxlib versions [from, before) the kernels were built and tested with (XLA's FFI headers
# and custom-call ABI come with jaxlib). "auto" uses them only there; "native" forces them anywhere.
CHECKED_JAXLIB = ((0, 10, 2), (0, 11, 0))


class NativeConvUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here."""


def _compiler_version() -> str:
    done = subprocess.run([COMPILER, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else "unknown"


def march() -> str:
    """The ``-march`` the kernels are built for: ``$NT_ROBUST_NATIVE_MARCH``, else ``native``."""
    return os.environ.get("NT_ROBUST_NATIVE_MARCH", "").strip() or "native"


def build_key() -> str:
    """What a build depends on: the sources, the target, the compiler, jaxlib and the CPU
    (``-march=native``: its model name and numbers, and the vector ISA features ``cpu_info`` reads)."""
    from nt_robust.cpu.machine import cpu_info, package_version

    cpu = cpu_info()
    digest = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        digest.update(source.read_bytes())
    for part in (march(), _compiler_version(), package_version("jaxlib") or "unknown", str(cpu["model"]),
                 str(cpu["family"]), str(cpu["model_number"]), " ".join(cpu["isa"])):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def build(directory: Path | None = None) -> Path:
    """The shared library with both kernels, built now unless the cache has it.

    The build goes to a temporary file in the cache directory and is renamed into place, so
    a build killed midway, or two processes building at once, never leave a broken library."""
    import jax

    from nt_robust.cpu.machine import cache_dir

    if shutil.which(COMPILER) is None:
        raise NativeConvUnavailable(
            f"model.conv_impl (or dense_impl) = 'native' compiles its kernels with {COMPILER}, which is not on PATH: "
            "install it (Debian/Ubuntu: apt-get install g++) or use model.conv_impl = 'auto' (dense_impl = 'auto')")
    target = (directory or cache_dir() / "kernels" / build_key()) / "libnt_robust_conv.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(handle)
    command = [COMPILER, "-O3", f"-march={march()}", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", *map(str, SOURCES), "-o", partial]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeConvUnavailable(
                f"building the native convolution kernels failed ({' '.join(command)}):\n{done.stderr[-2000:]}\n"
                "use model.conv_impl = 'auto' (and dense_impl = 'auto') meanwhile")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=1)
def register() -> Path:
    """Build (or find) the library and register both kernels with XLA, once per process."""
    import jax

    library = build()
    try:
        handle = ctypes.cdll.LoadLibrary(str(library))
    except OSError as error:
        raise NativeConvUnavailable(f"loading the native convolution kernels ({library}) failed: {error}; delete "
                                    f"{library.parent} to rebuild them, or use model.conv_impl = 'auto' "
                                    "(dense_impl = 'auto')") from error
    jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(handle.NtRobustConvFwd), platform="cpu")
    jax.ffi.register_ffi_target(WEIGHT_GRADIENT_TARGET, jax.ffi.pycapsule(handle.NtRobustConvDw), platform="cpu")
    jax.ffi.register_ffi_target(MATMUL_TARGET, jax.ffi.pycapsule(handle.NtRobustMatmul), platform="cpu")
    return library


def unchecked_jaxlib() -> str | None:
    """Why "auto" must not pick the kernels on this jaxlib (None: it is one they were tested with)."""
    from nt_robust.cpu.machine import package_version

    text = package_version("jaxlib") or "unknown"
    try:
        version = tuple(int(part) for part in text.split(".")[:3])
    except ValueError:
        version = None
    first, before = CHECKED_JAXLIB
    if version is not None and first <= version < before:
        return None
    checked = f"{'.'.join(map(str, first))} <= jaxlib < {'.'.join(map(str, before))}"
    return (f"the native kernels were built and tested with {checked}, and this is jaxlib {text}: "
            "'auto' uses XLA's convolutions and products (model.conv_impl / dense_impl = 'native' forces the kernels)")


def native_status() -> dict[str, Any]:
    """Whether the kernels are usable here: the library's path, or why not (no exception)."""
    try:
        return {"available": True, "library": str(register())}
    except NativeConvUnavailable as error:
        return {"available": False, "reason": str(error)}


def _attrs(strides, low_pads, lhs_dilation=None) -> dict[str, Any]:
    import numpy as np

    attrs = dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(low_pads[0]), pl=np.int64(low_pads[1]))
    if lhs_dilation is not None:
        attrs.update(lh=np.int64(lhs_dilation[0]), lw=np.int64(lhs_dilation[1]))
    return attrs


def _batch_spec(arg_shapes):
    """The mesh axes the first operand's batch dimension is sharded over (None: unsharded)."""
    spec = arg_shapes[0].sharding.spec
    return spec[0] if len(spec) else None


def _with_vmap_rule(fn, fold_batch: bool):
    """``fn(a, b)`` (a kernel call; ``a``'s first axis is the batch, or the rows) under
    ``jax.vmap`` too. ``fold_batch``: when only ``a`` is mapped, its mapped axis is folded into
    that first axis and the kernel runs once
    (the forward pass of a vmapped VJP, e.g. FAB's or ``jacrev``'s per-class gradients); any
    other mapping runs the kernel once per mapped element (``lax.map``)."""
    import jax
    import jax.numpy as jnp
    from jax.custom_batching import custom_vmap

    mapped = custom_vmap(fn)

    @mapped.def_vmap
    def rule(axis_size, in_batched, a, b):
        a_batched, b_batched = in_batched
        if fold_batch and a_batched and not b_batched:
            out = mapped(a.reshape(-1, *a.shape[2:]), b)
            return out.reshape(axis_size, a.shape[1], *out.shape[1:]), True
        a = a if a_batched else jnp.broadcast_to(a, (axis_size, *a.shape))
        b = b if b_batched else jnp.broadcast_to(b, (axis_size, *b.shape))
        return jax.lax.map(lambda operands: mapped(*operands), (a, b)), True

    return mapped


def _batch_partitioned(call, sharding_rule: str, summed: bool):
    """``call(a, b)`` (a kernel call) partitioned over ``a``'s first axis (the batch, or the
    rows) under a mesh, and batched under ``jax.vmap``. Not ``summed``: each device computes the
    output rows of its shard of ``a`` from all of ``b``. ``summed``: both operands are sharded
    over that axis, and each device's sum over its shard is added up by a ``psum``."""
    import jax
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    @custom_partitioning
    def kernel(a, b):
        return call(a, b)

    def infer(mesh, arg_shapes, result_shape):
        return NamedSharding(mesh, PartitionSpec() if summed else PartitionSpec(_batch_spec(arg_shapes)))

    def partition(mesh, arg_shapes, result_shape):
        axes = _batch_spec(arg_shapes)
        sharded, whole = NamedSharding(mesh, PartitionSpec(axes)), NamedSharding(mesh, PartitionSpec())
        if not summed:
            return mesh, call, sharded, (sharded, whole)

        def lower(a, b):
            partial = call(a, b)
            return jax.lax.psum(partial, axes) if axes is not None else partial

        return mesh, lower, whole, (sharded, sharded)

    kernel.def_partition(infer_sharding_from_operands=infer, partition=partition, sharding_rule=sharding_rule)
    # A sum over the first axis cannot take a mapped axis folded into it.
    return _with_vmap_rule(kernel, fold_batch=not summed)


def conv_forward(x, w, strides: tuple[int, int], low_pads: tuple[int, int], out_hw: tuple[int, int],
                 lhs_dilation: tuple[int, int] = (1, 1)):
    """``conv(x, w)`` (NHWC, HWIO, float32) with ``low_pads`` rows/columns of zeros before the
    image (those after follow from ``out_hw``) and ``x`` dilated by ``lhs_dilation`` (a strided
    convolution's input gradient), partitioned over the batch under a mesh (and batched under
    ``jax.vmap``)."""
    import jax
    import jax.numpy as jnp

    register()

    def call(x, w):
        return jax.ffi.ffi_call(FORWARD_TARGET, jax.ShapeDtypeStruct((x.shape[0], *out_hw, w.shape[3]), jnp.float32))(
            x, w, **_attrs(strides, low_pads, lhs_dilation))

    return _batch_partitioned(call, "b h w c, i j c k -> b p q k", summed=False)(x, w)


def weight_gradient(x, g, kernel_shape: tuple[int, ...], strides: tuple[int, int], low_pads: tuple[int, int]):
    """dL/dw of ``conv(x, w)`` for the output gradient ``g`` (float32), partitioned over the
    batch under a mesh (each device sums its shard, then a ``psum``; batched under ``jax.vmap``)."""
    import jax
    import jax.numpy as jnp

    register()

    def call(x, g):
        return jax.ffi.ffi_call(WEIGHT_GRADIENT_TARGET, jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32))(
            x, g, **_attrs(strides, low_pads))

    return _batch_partitioned(call, "b h w c, b i j k -> p q c k", summed=True)(x, g)


def matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
    """``a @ b`` (``a.T`` with ``transpose_a``, ``b.T`` with ``transpose_b``; float32, 2-d)
    through the matrix-product kernel (``kernels/matmul.cc``), partitioned over the rows of
    ``a`` under a mesh: each device multiplies its rows (``transpose_a``: sums its rows'
    products, then a ``psum``); batched under ``jax.vmap``."""
    import jax
    import jax.numpy as jnp

    register()

    def call(a, b):
        rows, columns = a.shape[1 if transpose_a else 0], b.shape[0 if transpose_b else 1]
        return jax.ffi.ffi_call(MATMUL_TARGET, jax.ShapeDtypeStruct((rows, columns), jnp.float32))(
            a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    rule = ("k m, " if transpose_a else "m k, ") + ("n k" if transpose_b else "k n") + " -> m n"
    return _batch_partitioned(call, rule, summed=transpose_a)(a, b)


def with_xla_derivatives(native: Callable, xla: Callable) -> Callable:
    """``native(a, b)`` (a kernel call), differentiated (for a gradient of a gradient) through
    ``xla(a, b)``: the same function in XLA's ops, which, unlike a kernel call, have derivatives::

        product = with_xla_derivatives(lambda a, b: matmul(a, b), lambda a, b: a @ b)
    """
    import jax

    @jax.custom_vjp
    def fn(a, b):
        return native(a, b)

    fn.defvjp(lambda a, b: (native(a, b), (a, b)), lambda operands, g: jax.vjp(xla, *operands)[1](g))
    return fn

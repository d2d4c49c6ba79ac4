"""A model config's layer functions: ``model.conv_impl`` and ``model.dense_impl`` resolved, once
and outside any trace, into the ``conv_general_dilated`` and ``dot_general`` its Flax layers
are built with (``nt_robust.models.registry.create_model`` is the one caller), and the record
of that choice in environment.json::

    ops = layer_ops(ModelConfig(arch="wrn", conv_impl="auto"))
    ops["conv"]                      # e.g. shifted_matmul_conv: what "auto" measured fastest here
    supports_forward_mode(ops["conv"])   # False: a jax.custom_vjp (jax.jvp raises through it)
    record("auto", "auto")           # {"conv_impl_auto": ..., "native_conv": ..., ...}

``conv_impl``: "auto" (on a CPU host the fastest of "flipped_dx", "shifted_matmul" and
"native" measured on this machine, ``nt_robust.cpu.choice``; XLA's plain convolution
elsewhere), "xla", "flipped_dx", "shifted_matmul" or "native" (``nt_robust.cpu.conv``).
``dense_impl``: "auto", "xla" or "native" (``nt_robust.cpu.dense``). Off a CPU host
(``nt_robust.cpu_host``) "auto" and "native" mean XLA's: nothing is measured or built.
"""

from __future__ import annotations

from typing import Any, Callable

from jax import lax

from nt_robust.cpu import choice, native
from nt_robust.cpu.conv import flipped_dx_conv, native_conv, shifted_matmul_conv
from nt_robust.cpu.dense import native_dot_general
from nt_robust.cpu_host import cpu_host

CONV_IMPLS = ("auto", "xla", "flipped_dx", "shifted_matmul", "native")
DENSE_IMPLS = ("auto", "xla", "native")
CONV_FUNCTIONS: dict[str, Callable] = {"xla": lax.conv_general_dilated, "flipped_dx": flipped_dx_conv,
                                       "shifted_matmul": shifted_matmul_conv, "native": native_conv}
DOT_GENERAL_FUNCTIONS: dict[str, Callable] = {"xla": lax.dot_general, "native": native_dot_general}
# the jax.custom_vjp drop-ins: reverse mode only
_CUSTOM_VJP = (flipped_dx_conv, shifted_matmul_conv, native_conv, native_dot_general)


def resolve_conv_impl(name: str) -> str:
    """``"auto"`` -> on a CPU host the fastest convolution measured on this machine
    (``nt_robust.cpu.choice``: XLA's as ``"flipped_dx"``, ``"shifted_matmul"`` or
    ``"native"``), ``"xla"`` elsewhere (``nt_robust.cpu_host``: nothing measured or built on a
    GPU or TPU host); ``"native"`` -> ``"xla"`` off a CPU host."""
    if name not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {name!r}")
    if name in ("native", "auto") and not cpu_host():
        return "xla"  # the kernels and the per-machine choice are CPU machinery (nt_robust.cpu_host)
    if name == "auto":
        impl = choice.cpu_conv_choice()["impl"]
        return "flipped_dx" if impl == "xla" else impl
    return name


def resolve_dense_impl(name: str) -> str:
    """``"auto"`` -> on a CPU host (``nt_robust.cpu_host``) the faster of ``"xla"`` and
    ``"native"`` measured on this machine (``nt_robust.cpu.choice.cpu_dense_choice``), ``"xla"``
    elsewhere; ``"native"`` -> ``"xla"`` off a CPU host."""
    if name not in DENSE_IMPLS:
        raise ValueError(f"dense_impl must be one of {DENSE_IMPLS}, got {name!r}")
    if not cpu_host():
        return "xla"  # the kernel and the per-machine choice are CPU machinery (nt_robust.cpu_host)
    if name == "auto":
        return choice.cpu_dense_choice()["impl"]
    return name


def conv_function(name: str) -> Callable:
    """The ``conv_general_dilated`` to hand to ``flax.linen.Conv`` for ``conv_impl = name``."""
    return CONV_FUNCTIONS[resolve_conv_impl(name)]


def dot_general_function(name: str) -> Callable:
    """The ``dot_general`` to hand to ``flax.linen.Dense`` for ``dense_impl = name``."""
    return DOT_GENERAL_FUNCTIONS[resolve_dense_impl(name)]


def layer_ops(model_config: Any) -> dict[str, Callable]:
    """``{"conv": ..., "dot_general": ...}`` for a ``ModelConfig`` (anything with ``arch``,
    ``conv_impl`` and ``dense_impl``): only the function its architecture uses is resolved
    (an MLP measures no convolution, a conv net no dense kernel); the other is XLA's."""
    uses_conv = model_config.arch != "mlp"
    return {"conv": conv_function(model_config.conv_impl) if uses_conv else lax.conv_general_dilated,
            "dot_general": lax.dot_general if uses_conv else dot_general_function(model_config.dense_impl)}


def supports_forward_mode(fn: Callable) -> bool:
    """Whether a layer function (a model's ``conv`` or ``dot_general``) can be differentiated in
    forward mode (``jax.jvp``): XLA's can, the ``jax.custom_vjp`` drop-ins of this package cannot."""
    return not any(fn is custom for custom in _CUSTOM_VJP)


def record(conv_impl: str = "auto", dense_impl: str = "auto") -> dict[str, Any]:
    """The environment.json entries of a run with ``model.conv_impl`` / ``model.dense_impl``:
    what "auto" means here (``conv_impl_auto``, ``dense_impl_auto``), how it was chosen
    (``*_auto_choice``: timings, or None off a CPU host), and the native kernels' library and
    build key where the run uses them (``native_conv``, ``native_dense``; None otherwise)."""
    return {
        "conv_impl_auto": resolve_conv_impl("auto"),
        "conv_impl_auto_choice": choice.cpu_conv_choice() if cpu_host() else None,
        "native_conv": _native_kernels_record(resolve_conv_impl(conv_impl) == "native"),
        "dense_impl_auto": resolve_dense_impl("auto"),
        "dense_impl_auto_choice": choice.cpu_dense_choice() if cpu_host() else None,
        "native_dense": _native_kernels_record(resolve_dense_impl(dense_impl) == "native"),
    }


def _native_kernels_record(used: bool) -> dict[str, Any] | None:
    """The native kernels' library and build key where ``used``; None otherwise."""
    if not used:
        return None
    return {**native.native_status(), "build_key": native.build_key()}

"""The one place that imports neural-tangents, after making 0.6.5 importable on current JAX.

neural-tangents 0.6.5 (2023, the last release) imports names that JAX has since moved
(``jax.core.Jaxpr`` & co. now live in ``jax.extend.core``), the removed ``jax.util``
module, ``jax.interpreters.ad.zeros_like_p`` (only as a dict key of its
STRUCTURED_DERIVATIVES rules) and, through ``neural_tangents.experimental``, TensorFlow.
:func:`apply_shim` patches exactly those, only where missing, so it is a no-op on a JAX
that still has them. Everything in nt_robust gets neural-tangents from here::

    from nt_robust.theory.nt_compat import nt, stax, NTK_IMPL
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    ntk = nt.empirical_ntk_fn(apply_fn, implementation=NTK_IMPL)   # never AUTO/STRUCTURED

Gotcha: ``NtkImplementation.STRUCTURED_DERIVATIVES`` and ``AUTO`` are broken (on old
JAX too); always pass ``implementation=`` explicitly (``NTK_IMPL`` or
``NTK_IMPL_VP``). ``tests/theory/test_theory_kernels.py`` compares nt's kernels with
our own closed form and is the alarm for a JAX release that breaks this shim.
"""

from __future__ import annotations

import sys
import types

import jax
import jax.core
import jax.extend.core
import jax.interpreters.ad

_MOVED_TO_EXTEND = ("Jaxpr", "JaxprEqn", "Literal", "Primitive", "Var", "ClosedJaxpr")


def apply_shim() -> None:
    """Alias the names nt 0.6.5 expects; idempotent, and only fills what is missing."""
    for name in _MOVED_TO_EXTEND:
        if not hasattr(jax.core, name) and hasattr(jax.extend.core, name):
            setattr(jax.core, name, getattr(jax.extend.core, name))
    if "jax.util" not in sys.modules:
        from jax._src import util as _util  # private, but the functions are tiny and stable
        shim = types.ModuleType("jax.util", "nt_robust shim: what neural-tangents needs of jax.util")
        shim.safe_map, shim.safe_zip = _util.safe_map, _util.safe_zip
        sys.modules["jax.util"] = shim
        jax.util = shim  # type: ignore[attr-defined]
    if not hasattr(jax.interpreters.ad, "zeros_like_p"):
        # Used only as a dictionary key of STRUCTURED_DERIVATIVES rules (which we never use).
        jax.interpreters.ad.zeros_like_p = jax.extend.core.Primitive("zeros_like")  # type: ignore[attr-defined]
    if "neural_tangents.experimental" not in sys.modules:
        # The real module converts TensorFlow models; importing it would import TensorFlow.
        stub = types.ModuleType("neural_tangents.experimental",
                                "stub: TensorFlow-only module, not available (nt_robust shim)")
        sys.modules["neural_tangents.experimental"] = stub


apply_shim()

import neural_tangents as nt  # noqa: E402  (the shim must come first)
from neural_tangents import stax  # noqa: E402

NTK_IMPL = nt.NtkImplementation.JACOBIAN_CONTRACTION
NTK_IMPL_VP = nt.NtkImplementation.NTK_VECTOR_PRODUCTS

__all__ = ["NTK_IMPL", "NTK_IMPL_VP", "apply_shim", "nt", "stax"]

"""How an attack's iterations are laid out in the XLA graph.

``"unroll"`` writes every step into the graph (a Python loop at trace time): longer
compiles, but on CPU several times faster for conv nets, where XLA runs a ``while``
body poorly (docs/benchmarks.md; ``benchmarks/attack_loop.py`` re-measures it; much of that
was autodiff's input-gradient convolution, which ``conv_impl = "auto"`` now writes in a form
XLA:CPU keeps fast inside loops, ``nt_robust.models.conv``). ``"fori"`` uses
``lax.fori_loop``: one copy of the step, compile time independent of the step count.
``"auto"`` picks unroll on CPU and fori on GPU/TPU::

    carry = run_loop(0, num_steps, body, carry, loop="auto")   # body(i, carry) -> carry
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

LOOPS: tuple[str, ...] = ("auto", "unroll", "fori")
Carry = TypeVar("Carry")


def resolve_loop(loop: str) -> str:
    """Map ``"auto"`` to ``"unroll"`` on CPU and ``"fori"`` elsewhere."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "auto":
        return "unroll" if jax.default_backend() == "cpu" else "fori"
    return loop


def run_loop(lower: int, upper: int, body: Callable[[int, Carry], Carry], carry: Carry,
             loop: str = "auto") -> Carry:
    """``for i in range(lower, upper): carry = body(i, carry)`` in the chosen form.

    Under ``"fori"`` the index ``i`` is a traced integer; under ``"unroll"`` a Python int.
    """
    if resolve_loop(loop) == "fori":
        return jax.lax.fori_loop(lower, upper, body, carry)
    for i in range(lower, upper):
        carry = body(i, carry)
    return carry

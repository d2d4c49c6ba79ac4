"""How an attack's iterations are laid out in the XLA graph.

``"fori"`` uses ``lax.fori_loop``: one copy of the step, compile time independent of the
step count. ``"unroll"`` writes every step into the graph (a Python loop at trace time).
``"auto"`` is fori on every backend. On CPU, unrolling used to be several times faster for
conv nets, because autodiff's input-gradient convolution fell off XLA:CPU's fast path inside
a ``while`` body; ``conv_impl = "auto"`` now writes that gradient in a form that stays fast
there (``nt_robust.cpu.conv``), and on an Intel Xeon the fori loop was then as fast for
the conv nets' TRADES steps and PGD-20 and faster for the MLP's (TRADES 33.5 against 45.5
ms, PGD-20 on 500 points 53 against 75 ms: XLA fused each unrolled step's update into the
next, recomputing the whole chain), and compiled in about half the time (docs/benchmarks.md;
``benchmarks/attack_loop.py`` re-measures it). With ``conv_impl = "xla"`` on CPU, ask for
``"unroll"``::

    carry = run_loop(0, num_steps, body, carry, loop="auto")   # body(i, carry) -> carry
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

LOOPS: tuple[str, ...] = ("auto", "unroll", "fori")
Carry = TypeVar("Carry")


def resolve_loop(loop: str) -> str:
    """Map ``"auto"`` to ``"fori"``."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    return "fori" if loop == "auto" else loop


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

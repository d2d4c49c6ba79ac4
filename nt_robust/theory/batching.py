"""Kernels over many points, tile by tile, so that only the result must fit in memory.

    from nt_robust.theory.batching import tiled_kernel
    from nt_robust.theory.kernels import KernelSpec, ntk
    big = tiled_kernel(lambda a, b: ntk(spec, a, b), x, x, tile=1000)   # numpy (n1, n2) float32

Each (tile × tile) block is computed by one jitted call (compiled once per block shape)
and copied into a host numpy array; peak memory is the n1×n2 result plus a few blocks'
intermediates. For neural-tangents kernels, ``nt.batch(kernel_fn, batch_size=...)``
does the same (see experiments/theory_memory.py for measured sizes).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def tiled_kernel(kernel_fn: Callable[[jax.Array, jax.Array], jax.Array], x1: np.ndarray, x2: np.ndarray | None = None,
                 tile: int = 1000) -> np.ndarray:
    """``kernel_fn(x1, x2)`` assembled from blocks of at most ``tile`` rows and columns."""
    x2 = x1 if x2 is None else x2
    fn = jax.jit(kernel_fn)
    out = np.empty((len(x1), len(x2)), np.float32)
    for i in range(0, len(x1), tile):
        for j in range(0, len(x2), tile):
            out[i:i + tile, j:j + tile] = np.asarray(fn(x1[i:i + tile], x2[j:j + tile]))
    return out

"""The ℓ2 Square Attack's windows (Andriushchenko et al., ECCV 2020; AutoAttack's ``norm="L2"``).

    from nt_robust.attacks.square_l2 import l2_start, l2_proposal

    x_best = l2_start(x, eps, signs, flips)                       # the tiled initial point
    x_new = l2_proposal(x, x_best, eps, side, corner1, corner2, signs, flips)

Both are pure functions of their random draws (the attack in :mod:`nt_robust.attacks.square`
draws them), so a test can replay them. The perturbation is built from *windows*: an
``s × s`` pattern ``η`` whose top half is ``+`` and bottom half ``−`` a pyramid of nested
rectangles (rectangle ``k`` around the centre adds ``1/(k + 1)²``), each half of unit ℓ2
norm, the whole of norm 1, transposed at random.

- start: the image is tiled with windows of side ``⌊H/5⌋`` (offset ``(H − 5·side)//2``), each
  window and channel times a random sign; then ``x + ε·δ/‖δ‖₂``, clipped to [0, 1];
- proposal, with ``δ = x_best − x``: draw two windows W₁, W₂ of side ``s`` (the schedule's
  ``√(p·H·W)`` rounded, at least 3, made odd); in W₁ put ``η·sign + δ_W₁/‖δ_W₁‖`` (per
  channel), rescaled per channel to ``√(max(ε² − ‖δ‖², 0)/C + ‖δ_{W₁∪W₂}‖²)``: the mass
  of both windows plus an equal share of what is left of the budget; zero W₂ (the mass
  moves from W₂ to W₁); then ``x + ε·δ/‖δ‖₂``, clipped to [0, 1]. Every point lies on the
  sphere of radius ε before clipping, so it stays inside B₂(x, ε).

The published start assumes the tiles fit (32 x 32: 5 x 5 tiles of side 6 from offset 1); where
they run past the edge (e.g. 12 x 12: six tiles of side 2 from offset 1) it fails, and here the
tiles are cut at the edge. Here every example draws its own windows, signs and transpositions (the published code draws
one window position and one transposition per iteration for the whole batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_TINY = 1e-12  # the published code's guard against a zero norm


def _inverse_square_sums(size: int) -> jax.Array:
    """``H[n] = Σ_{j=1}^{n} 1/j²`` for n = 0 … size."""
    return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, size + 1) ** 2)]), jnp.float32)


def window_pattern(rr: jax.Array, cc: jax.Array, side: jax.Array, sums: jax.Array) -> jax.Array:
    """``η[rr, cc]`` of a window of side ``side`` (0 outside ``[0, side)²``), broadcasting.

    In a half of ``a`` rows and ``side`` columns the nested rectangles around the centre
    ``(a//2, side//2)`` are the Chebyshev rings: rectangle ``k`` covers the cells at ring
    distance ``m ≤ k``, so a cell gets ``Σ_{k=m}^{side//2} 1/(k + 1)² = H[side//2 + 1] − H[m]``.
    """
    half = side // 2
    top = rr < half
    rows = jnp.where(top, half, side - half)
    rel = jnp.where(top, rr, rr - half)
    ring = jnp.maximum(jnp.abs(rel - rows // 2), jnp.abs(cc - half))
    inside = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
    value = jnp.where(inside, jnp.take(sums, half + 1) - jnp.take(sums, jnp.clip(ring, 0, sums.shape[0] - 1)), 0.0)
    return jnp.where(top, value, -value), inside & top, inside & ~top


def _normalized_window(rr, cc, side, sums, axes):
    """η with each half of unit norm and the whole of norm 1 (halves summed over ``axes``)."""
    value, top, bottom = window_pattern(rr, cc, side, sums)
    top_norm = jnp.sqrt(jnp.sum(jnp.where(top, value * value, 0.0), axis=axes, keepdims=True))
    bottom_norm = jnp.sqrt(jnp.sum(jnp.where(bottom, value * value, 0.0), axis=axes, keepdims=True))
    value = jnp.where(top, value / jnp.maximum(top_norm, _TINY), value / jnp.maximum(bottom_norm, _TINY))
    halves = (top_norm > 0).astype(value.dtype) + (bottom_norm > 0).astype(value.dtype)
    return value / jnp.sqrt(jnp.maximum(halves, 1.0))


def _l2_normalize(delta: jax.Array) -> jax.Array:
    return delta / (_TINY + jnp.sqrt(jnp.sum(delta * delta, axis=(1, 2, 3), keepdims=True)))


def start_tiles(height: int, width: int) -> tuple[int, int, int, int]:
    """``(side, offset, rows, cols)`` of the starting tiling: windows of side ``⌊H/5⌋``."""
    side = height // 5
    if side < 1:
        raise ValueError(f"the ℓ2 Square attack needs images at least 5 pixels high, got {height}")
    return side, (height - side * 5) // 2, height // side, width // side


def l2_start(x: jax.Array, eps: float, signs: jax.Array, flips: jax.Array) -> jax.Array:
    """The starting point. ``signs``: (N, tiles, C) of ±1; ``flips``: (N, tiles) bool
    (transpose that tile's window); tiles in row-major order of :func:`start_tiles`.

    Every tile holds the same window (or its transpose), so the pixel → (tile, cell) map is
    built once in NumPy and the pattern gathered: one small graph whatever the tile count."""
    n, height, width, channels = x.shape
    side, offset, rows, cols = start_tiles(height, width)
    r, c = np.arange(height)[:, None] - offset, np.arange(width)[None, :] - offset
    inside = (r >= 0) & (r < rows * side) & (c >= 0) & (c < cols * side)
    tile = np.where(inside, (r // side) * cols + c // side, 0)
    cell = np.where(inside, (r % side) * side + c % side, 0)
    grid_r, grid_c = np.arange(side)[:, None], np.arange(side)[None, :]
    sums = _inverse_square_sums(side + 1)
    plain = _normalized_window(jnp.asarray(grid_r), jnp.asarray(grid_c), side, sums, (0, 1)).reshape(-1)
    flipped = _normalized_window(jnp.asarray(grid_c), jnp.asarray(grid_r), side, sums, (0, 1)).reshape(-1)
    flip = jnp.take(flips, jnp.asarray(tile), axis=1)                           # (N, H, W)
    pattern = jnp.where(flip, jnp.take(flipped, jnp.asarray(cell)), jnp.take(plain, jnp.asarray(cell)))
    pattern = jnp.where(jnp.asarray(inside), pattern, 0.0)[..., None]
    delta = pattern * jnp.take(signs, jnp.asarray(tile), axis=1)                 # (N, H, W, C)
    return jnp.clip(x + _l2_normalize(delta.astype(x.dtype)) * eps, 0.0, 1.0)


def window_side(p: jax.Array, height: int, width: int) -> jax.Array:
    """``s``: ``round(√(p·H·W))``, at least 3, made odd, at most ``min(H, W)``."""
    side = jnp.maximum(jnp.round(jnp.sqrt(p * height * width)), 3).astype(jnp.int32)
    side = side + (side % 2 == 0)
    return jnp.minimum(side, min(height, width))


def l2_proposal(x: jax.Array, x_best: jax.Array, eps: float, side: jax.Array, corner1: jax.Array,
                corner2: jax.Array, signs: jax.Array, flips: jax.Array) -> jax.Array:
    """One candidate: ``corner1``, ``corner2`` (2, N) top-left rows and columns of W₁, W₂;
    ``signs`` (N, C) ±1; ``flips`` (N,) bool; ``side`` a scalar."""
    n, height, width, channels = x.shape
    sums = _inverse_square_sums(max(height, width) + 1)
    r = jnp.arange(height)[None, :, None, None]
    c = jnp.arange(width)[None, None, :, None]

    def window(corner):
        top, left = (corner[k][:, None, None, None] for k in (0, 1))
        return r - top, c - left, (r >= top) & (r < top + side) & (c >= left) & (c < left + side)

    rr, cc, in1 = window(corner1)
    _, _, in2 = window(corner2)
    delta = x_best - x
    window_norm = jnp.sqrt(jnp.sum(jnp.where(in1, delta * delta, 0.0), axis=(1, 2), keepdims=True))   # (N,1,1,C)
    image_norm = jnp.sqrt(jnp.sum(delta * delta, axis=(1, 2, 3), keepdims=True))
    both_norm = jnp.sqrt(jnp.sum(jnp.where(in1 | in2, delta * delta, 0.0), axis=(1, 2, 3), keepdims=True))
    flip = flips[:, None, None, None]
    eta = _normalized_window(jnp.where(flip, cc, rr), jnp.where(flip, rr, cc), side, sums, (1, 2))
    new = eta * signs[:, None, None, :] + jnp.where(in1, delta, 0.0) / (_TINY + window_norm)
    new_norm = jnp.sqrt(jnp.sum(jnp.where(in1, new * new, 0.0), axis=(1, 2), keepdims=True))
    mass = jnp.sqrt(jnp.maximum(eps * eps - image_norm ** 2, 0.0) / channels + both_norm ** 2)
    delta = jnp.where(in1, new / (_TINY + new_norm) * mass, jnp.where(in2, 0.0, delta))
    return jnp.clip(x + _l2_normalize(delta) * eps, 0.0, 1.0)

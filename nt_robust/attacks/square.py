"""Square Attack (Andriushchenko et al., ECCV 2020), ℓ∞ and ℓ2: a score-based black-box attack.

    from nt_robust.attacks.square import SquareConfig, square

    result = square(logits_fn, x, y, key, SquareConfig(eps=8 / 255, num_queries=5000))
    result.x_adv, result.fooled, result.queries      # queries: model calls per example
    result = square(logits_fn, x, y, key, SquareConfig(eps=0.5, norm="l2"))    # the ℓ2 version

It never looks at gradients, so it is the check against gradient masking: a model that
resists the white-box attacks but not this one has gradients that lie. Per example:

- start at ``x + ε·v`` with ``v ∈ {-1, +1}`` constant along image columns (vertical
  stripes, one sign per column and channel), clipped to [0, 1];
- at query ``i`` draw a square of side ``s = max(round(√(p_i·H·W)), 1)`` at a random
  position, set each channel of it to ``x ± ε`` (one random sign per channel) and keep the
  new point if the margin loss ``z_y − max_{j≠y} z_j`` decreased or the point is
  misclassified; ``p`` halves at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
  from ``p_init = 0.8`` (with ``rescale_schedule`` those counts are scaled to the budget as
  if it were 10 000; AutoAttack keeps them as they are);
- a point stops (and stops spending queries) as soon as it is misclassified.

In ℓ2 the start and the proposals are the original's windows (:mod:`nt_robust.attacks.square_l2`),
with the same schedule for ``p``, the same acceptance rule and early stop.

The published code draws one square position and one sign pattern per iteration for the
whole batch; here every example draws its own (the attack's distribution per example
is the same). The loop is a ``lax.while_loop`` that ends early when every point is broken.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nt_robust.attacks.losses import best_other_logit
from nt_robust.config import check_choice, check_int, check_real
from nt_robust.attacks.square_l2 import l2_proposal, l2_start, start_tiles, window_side
from nt_robust.models.apply import LogitsFn

_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SquareConfig:
    """One Square attack (hashable). Defaults: AutoAttack's (5000 queries, p_init 0.8, one
    restart, schedule not rescaled)."""

    eps: float
    norm: str = "linf"
    num_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    rescale_schedule: bool = False

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, ("linf", "l2"), "the norms Square is implemented for")
        check_real("p_init", self.p_init, above=0, maximum=1)
        for name in ("num_queries", "restarts"):
            check_int(name, getattr(self, name), minimum=1)
        object.__setattr__(self, "eps", check_real("eps", self.eps, minimum=0))


class SquareResult(NamedTuple):
    x_adv: jax.Array    # best point found, in B(x, ε) ∩ [0, 1] (ℓ∞ or ℓ2)
    fooled: jax.Array   # (N,) bool
    queries: jax.Array  # (N,) model evaluations spent on each example


def square_fraction(i: jax.Array | int, config: SquareConfig) -> jax.Array:
    """``p_i``: the fraction of the image a square covers at query ``i`` (0-based)."""
    it = jnp.asarray(i)
    if config.rescale_schedule:
        it = jnp.floor(it / config.num_queries * 10000)
    halvings = sum((it > t).astype(jnp.int32) for t in _P_THRESHOLDS)
    return config.p_init / 2.0 ** halvings


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``z_y − max_{j≠y} z_j``: <= 0 exactly when misclassified (ties count as broken)."""
    return jnp.take_along_axis(logits, y[:, None], 1)[:, 0] - best_other_logit(logits, y)


def square_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
               config: SquareConfig) -> SquareResult:
    """One run of the attack (NHWC images; ℓ2 needs at least 5 rows for its starting tiles)."""
    n, height, width, channels = x.shape
    eps = config.eps
    init_key, loop_key = jax.random.split(key)
    if config.norm == "linf":
        stripes = jax.random.rademacher(init_key, (n, 1, width, channels), x.dtype)
        x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
    else:
        _, _, tile_rows, tile_cols = start_tiles(height, width)
        sign_key, flip_key = jax.random.split(init_key)
        x_best = l2_start(x, eps, jax.random.rademacher(sign_key, (n, tile_rows * tile_cols, channels), x.dtype),
                          jax.random.bernoulli(flip_key, 0.5, (n, tile_rows * tile_cols)))
    best_margin = margin(logits_fn(x_best), y)
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]

    def cond(carry):
        i, _, best_margin, _ = carry
        return (i < config.num_queries) & jnp.any(best_margin > 0)

    def body(carry):
        i, x_best, best_margin, queries = carry
        active = best_margin > 0
        p = square_fraction(i, config)
        if config.norm == "linf":   # (the ℓ∞ stream of draws is the one it always was)
            pos_key, sign_key = jax.random.split(jax.random.fold_in(loop_key, i))
            side = jnp.clip(jnp.round(jnp.sqrt(p * height * width)), 1, min(height, width)).astype(jnp.int32)
        else:
            pos_key, sign_key, pos2_key, flip_key = jax.random.split(jax.random.fold_in(loop_key, i), 4)
            side = window_side(p, height, width)
        room = jnp.stack([height - side, width - side])[:, None]
        corner = jnp.floor(jax.random.uniform(pos_key, (2, n)) * room).astype(jnp.int32)
        if config.norm == "linf":
            top = corner[0][:, None, None, None]
            left = corner[1][:, None, None, None]
            inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            signs = jax.random.rademacher(sign_key, (n, 1, 1, channels), x.dtype)
            candidate = jnp.where(inside, x_best + 2 * eps * signs, x_best)
            candidate = jnp.clip(jnp.clip(candidate, x - eps, x + eps), 0.0, 1.0)
        else:
            corner2 = jnp.floor(jax.random.uniform(pos2_key, (2, n)) * room).astype(jnp.int32)
            candidate = l2_proposal(x, x_best, eps, side, corner, corner2,
                                    jax.random.rademacher(sign_key, (n, channels), x.dtype),
                                    jax.random.bernoulli(flip_key, 0.5, (n,)))
        new_margin = margin(logits_fn(candidate), y)
        keep = active & ((new_margin < best_margin) | (new_margin <= 0))
        x_best = jnp.where(keep[:, None, None, None], candidate, x_best)
        best_margin = jnp.where(keep, new_margin, best_margin)
        return i + 1, x_best, best_margin, queries + active.astype(jnp.int32)

    init = (jnp.asarray(0), x_best, best_margin, jnp.ones((n,), jnp.int32))
    _, x_best, best_margin, queries = jax.lax.while_loop(cond, body, init)
    return SquareResult(x_best, best_margin <= 0, queries)


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, config: SquareConfig) -> SquareResult:
    """Square attack with ``config.restarts`` runs (run ``r``: ``fold_in(key, r)``); a later
    run only replaces points the earlier runs did not break."""
    if x.ndim != 4:
        raise ValueError(f"Square expects NHWC images, got shape {x.shape}")
    y = y.astype(jnp.int32)
    best = square_run(logits_fn, x, y, jax.random.fold_in(key, 0), config)
    for restart in range(1, config.restarts):
        new = square_run(logits_fn, x, y, jax.random.fold_in(key, restart), config)
        take = ~best.fooled
        best = SquareResult(jnp.where(take[:, None, None, None], new.x_adv, best.x_adv), best.fooled | new.fooled,
                            best.queries + jnp.where(take, new.queries, 0))
    return SquareResult(jax.lax.stop_gradient(best.x_adv), best.fooled, best.queries)

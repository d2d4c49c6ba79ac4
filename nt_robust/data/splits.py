"""Seeded train/validation split.

Example::

    train_x, train_y, val_x, val_y = train_val_split(ds.train_images, ds.train_labels,
                                                     val_size=5000, seed=0)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["train_val_split"]


def train_val_split(
    images: np.ndarray, labels: np.ndarray, val_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into (train_x, train_y, val_x, val_y) by a seeded random permutation.

    ``val_size`` is a count (int, 0 <= k < N) or a fraction (float, 0 <= f < 1,
    rounded to a count). Within each part the original order is kept, so
    ``val_size=0`` returns the data unchanged and an empty validation set.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    n = len(images)
    k = _val_count(val_size, n)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[:k]] = True
    return images[~chosen], labels[~chosen], images[chosen], labels[chosen]


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, numbers.Integral):
        k = int(val_size)
    elif math.isfinite(val_size) and 0.0 <= val_size < 1.0:
        k = round(float(val_size) * n)
    else:
        raise ValueError(f"a fractional val_size must be in [0, 1), got {val_size!r}")
    if not 0 <= k < max(n, 1):
        raise ValueError(
            f"val_size={val_size!r} gives {k} validation examples out of {n}; "
            f"it must leave at least one training example"
        )
    return k

"""Validation of images and labels handed to evaluation (NaN, out-of-range values, wrong
label type or class), so bad inputs stop with a message instead of silently wrong numbers
(a NaN image passes ``x.min() < 0``; ``one_hot(10, 10)`` is a zero row)::

    check_images_and_labels(images, labels, num_classes=10)   # raises DataFormatError
"""

from __future__ import annotations

import numpy as np

from .errors import DataFormatError

__all__ = ["check_images_and_labels"]


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_images_and_labels(images: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                            what: str = "evaluation") -> None:
    """Images: uint8 (0..255) or float in [0, 1], all finite. Labels: integers in
    ``[0, num_classes)``, one per image."""
    images, labels = np.asarray(images), np.asarray(labels)
    problems = []
    if len(images) != len(labels):
        problems.append(f"{len(images)} images but {len(labels)} labels")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            problems.append(f"images have dtype {images.dtype}; give uint8 (0..255) or float in [0, 1]")
        else:
            flat = images.reshape(len(images), -1) if len(images) else images.reshape(0, 1)
            bad = ~np.isfinite(flat).all(axis=1)
            if bad.any():
                problems.append(f"{int(bad.sum())} of {len(images)} images contain NaN or inf "
                                f"(first: index {_first(bad)})")
            with np.errstate(invalid="ignore"):
                outside = ((flat < 0) | (flat > 1)).any(axis=1) & ~bad
            if outside.any():
                problems.append(f"{int(outside.sum())} images have values outside [0, 1] (first: index "
                                f"{_first(outside)}, range {np.nanmin(flat[outside]):.4g}..{np.nanmax(flat[outside]):.4g}); "
                                "float images must be scaled to [0, 1] (normalization belongs inside the model)")
    if not np.issubdtype(labels.dtype, np.integer):
        problems.append(f"labels have dtype {labels.dtype}; they must be integer class indices")
    elif labels.size:
        low = labels < 0
        high = labels >= num_classes if num_classes is not None else np.zeros_like(low)
        if (low | high).any():
            bound = f"[0, {num_classes})" if num_classes is not None else "[0, ...)"
            problems.append(f"{int((low | high).sum())} labels lie outside {bound} (first: index "
                            f"{_first(low | high)}, value {int(labels[low | high][0])})")
    if problems:
        raise DataFormatError(f"bad {what} inputs: " + "; ".join(problems))

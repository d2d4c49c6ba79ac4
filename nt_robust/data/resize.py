"""Block-mean downsampling of NHWC images (``data.downsample``; the conv-net theory's images)::

    small = block_mean(images, 2)          # (N, 28, 28, 1) -> (N, 14, 14, 1), float64 means
    small8 = downsample_uint8(images, 2)   # the same, rounded to the nearest uint8 level

Each output pixel is the mean of a ``factor`` x ``factor`` block (area averaging, no
filtering beyond it), so a 0..255 image stays in 0..255. The uint8 version rounds half to
even (numpy's ``rint``), an error of at most half a grey level (1/510 of the [0, 1] range).
"""

from __future__ import annotations

import numpy as np

__all__ = ["block_mean", "downsample_uint8"]


def block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks, NHWC; factor 1 returns the images unchanged."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"downsampling needs NHWC images, got shape {images.shape}")
    n, h, w, c = images.shape
    if not isinstance(factor, (int, np.integer)) or factor < 1 or h % factor or w % factor:
        raise ValueError(f"downsample factor must be a positive divisor of the image size {h}x{w}, got {factor!r}")
    if factor == 1:
        return images
    return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def downsample_uint8(images: np.ndarray, factor: int) -> np.ndarray:
    """:func:`block_mean` of uint8 images, rounded back to uint8."""
    if factor == 1:
        return np.asarray(images)
    return np.rint(block_mean(images, factor)).astype(np.uint8)

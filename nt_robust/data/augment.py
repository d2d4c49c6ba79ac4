"""Array conversion and on-device augmentation, in pure JAX.

Example::

    import functools, jax
    augment = jax.jit(functools.partial(augment_batch, crop_padding=4, flip=True))
    batch = augment(jax.random.key(0), to_float(ds.train_images[:128]))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["augment_batch", "to_float"]


def to_float(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """uint8 images in 0..255 -> float32 in [0, 1].

    Works on numpy arrays (returns numpy) and jax arrays (returns jax, also
    under jit). Floating input is taken to be scaled already and is only cast
    to float32, so ``to_float(to_float(x)) == to_float(x)``.
    """
    xp = jnp if isinstance(images, jax.Array) else np
    images = xp.asarray(images)
    if images.dtype == xp.uint8:
        return images.astype(xp.float32) / xp.float32(255)
    if xp.issubdtype(images.dtype, xp.floating):
        return images.astype(xp.float32)
    raise TypeError(f"to_float expects uint8 or floating images, got {images.dtype}")


def augment_batch(
    key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True
) -> jax.Array:
    """Random crop of the zero-padded image plus random horizontal flip, per example.

    ``images`` is a float NHWC batch in [0, 1]. The crop matches torchvision's
    ``RandomCrop(size, padding=crop_padding)`` with fill 0: pad H and W by
    ``crop_padding`` zeros and cut an HxW window at a uniform random offset.
    The flip mirrors each image left-right with probability 0.5. With
    ``crop_padding=0, flip=False`` the batch is returned unchanged.
    ``crop_padding`` and ``flip`` are Python values: keep them static under jit.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects an NHWC batch, got shape {images.shape}")
    if int(crop_padding) != crop_padding or crop_padding < 0:
        raise ValueError(f"crop_padding must be a non-negative int, got {crop_padding!r}")
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        images = _random_crop(crop_key, images, int(crop_padding))
    if flip:
        images = _random_flip(flip_key, images)
    return images


# jit here too: eager callers get one compiled kernel per shape instead of
# op-by-op dispatch; inside an outer jit these are simply inlined.
@functools.partial(jax.jit, static_argnames="pad")
def _random_crop(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


@jax.jit
def _random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    mirror = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)

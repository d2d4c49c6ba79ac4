"""augment_batch: crop and flip semantics, jit, determinism."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.data import augment_batch


def batch(n=16, h=6, w=5, c=2, seed=0):
    # Strictly positive values so zero padding is recognisable.
    return jnp.asarray(np.random.default_rng(seed).uniform(0.01, 1.0, (n, h, w, c)), jnp.float32)


def windows(image: np.ndarray, pad: int):
    """Every crop a RandomCrop(padding=pad) could produce, by offset."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return {
        (dy, dx): padded[dy:dy + h, dx:dx + w]
        for dy, dx in itertools.product(range(2 * pad + 1), repeat=2)
    }


def matching_offsets(out: np.ndarray, image: np.ndarray, pad: int):
    return [off for off, win in windows(image, pad).items() if np.array_equal(out, win)]


def test_identity_when_disabled():
    x = batch()
    out = augment_batch(jax.random.key(0), x, crop_padding=0, flip=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_flip_only_gives_input_or_mirror():
    x = np.asarray(batch(n=64))
    out = np.asarray(augment_batch(jax.random.key(1), jnp.asarray(x), crop_padding=0))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_crop_only_gives_a_window_of_the_padded_input():
    pad = 2
    x = np.asarray(batch(n=32))
    out = np.asarray(augment_batch(jax.random.key(2), jnp.asarray(x), crop_padding=pad, flip=False))
    assert out.shape == x.shape
    used = set()
    for o, xi in zip(out, x):
        offsets = matching_offsets(o, xi, pad)
        assert len(offsets) == 1
        used.update(offsets)
    assert len(used) > 5  # offsets vary across the batch


def test_crop_and_flip_under_jit():
    pad = 1
    augment = jax.jit(functools.partial(augment_batch, crop_padding=pad, flip=True))
    x = np.asarray(batch(n=32))
    key = jax.random.key(3)
    out = np.asarray(augment(key, jnp.asarray(x)))
    eager = augment_batch(key, jnp.asarray(x), crop_padding=pad)
    np.testing.assert_array_equal(out, np.asarray(eager))
    for o, xi in zip(out, x):
        assert matching_offsets(o, xi, pad) or matching_offsets(o[:, ::-1], xi, pad)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.dtype == np.float32


def test_same_key_same_output_and_key_matters():
    x = batch()
    a = augment_batch(jax.random.key(7), x)
    b = augment_batch(jax.random.key(7), x)
    c = augment_batch(jax.random.key(8), x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_offsets_and_flips_are_uniform_enough():
    pad, n = 1, 2000
    x = batch(n=n, h=4, w=4, c=1)
    out = np.asarray(augment_batch(jax.random.key(4), x, crop_padding=pad, flip=False))
    counts = {}
    for o, xi in zip(out, np.asarray(x)):
        (offset,) = matching_offsets(o, xi, pad)
        counts[offset] = counts.get(offset, 0) + 1
    assert len(counts) == 9 and min(counts.values()) > n / 9 * 0.7
    flips = np.asarray(augment_batch(jax.random.key(5), x, crop_padding=0))
    rate = np.mean([not np.array_equal(f, xi) for f, xi in zip(flips, np.asarray(x))])
    assert 0.45 < rate < 0.55


def test_invalid_arguments():
    with pytest.raises(ValueError):
        augment_batch(jax.random.key(0), jnp.zeros((4, 4, 1)))
    with pytest.raises(ValueError):
        augment_batch(jax.random.key(0), batch(), crop_padding=-1)

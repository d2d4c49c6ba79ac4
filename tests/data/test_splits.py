"""train_val_split."""

import numpy as np
import pytest

from nt_robust.data import train_val_split

N = 100
IMAGES = np.arange(N, dtype=np.uint8).reshape(N, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
LABELS = np.arange(N, dtype=np.int32)  # label i identifies example i


def test_disjoint_and_complete():
    tx, ty, vx, vy = train_val_split(IMAGES, LABELS, 20, seed=0)
    assert len(vy) == 20 and len(ty) == 80
    assert set(ty).isdisjoint(vy)
    assert sorted([*ty, *vy]) == list(range(N))
    # images travel with their labels
    np.testing.assert_array_equal(tx[:, 0, 0, 0], ty)
    np.testing.assert_array_equal(vx[:, 0, 0, 0], vy)


def test_seeded():
    first = train_val_split(IMAGES, LABELS, 20, seed=3)
    again = train_val_split(IMAGES, LABELS, 20, seed=3)
    other = train_val_split(IMAGES, LABELS, 20, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert set(first[3]) != set(other[3])


def test_fraction_and_zero():
    _, ty, _, vy = train_val_split(IMAGES, LABELS, 0.25, seed=0)
    assert len(vy) == 25 and len(ty) == 75
    tx, ty, vx, vy = train_val_split(IMAGES, LABELS, 0, seed=0)
    assert vx.shape == (0, 2, 2, 1) and vy.shape == (0,)
    np.testing.assert_array_equal(tx, IMAGES)
    np.testing.assert_array_equal(ty, LABELS)


@pytest.mark.parametrize("bad", [-1, N, N + 1, 1.0, -0.1, 1.5, float("nan"), True, "10", None])
def test_invalid_val_size(bad):
    with pytest.raises(ValueError):
        train_val_split(IMAGES, LABELS, bad, seed=0)


def test_length_mismatch():
    with pytest.raises(ValueError, match="labels"):
        train_val_split(IMAGES, LABELS[:-1], 10, seed=0)

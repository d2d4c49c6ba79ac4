"""make_synthetic_dataset."""

import numpy as np
import pytest

from nt_robust.data import make_synthetic_dataset


def test_shapes_and_dtypes():
    ds = make_synthetic_dataset()
    assert ds.name == "synthetic" and ds.source == "generated"
    assert ds.train_images.shape == (512, 8, 8, 1) and ds.test_images.shape == (256, 8, 8, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.num_classes == 4 and len(ds.class_names) == 4
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [128] * 4)


def test_deterministic_under_seed():
    a, b, c = (make_synthetic_dataset(seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)


def test_classes_are_distinguishable():
    ds = make_synthetic_dataset(image_shape=(6, 6, 3), num_classes=5, seed=1)
    train = ds.train_images.reshape(len(ds.train_images), -1).astype(np.float64)
    test = ds.test_images.reshape(len(ds.test_images), -1).astype(np.float64)
    means = np.stack([train[ds.train_labels == k].mean(0) for k in range(ds.num_classes)])
    distances = ((test[:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == ds.test_labels).mean()
    assert accuracy > 0.9


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_synthetic_dataset(image_shape=(8, 8))
    with pytest.raises(ValueError):
        make_synthetic_dataset(num_classes=1)

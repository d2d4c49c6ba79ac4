"""The Dataset container and to_float."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.data import DataFormatError, Dataset, to_float


def make(**overrides):
    fields = dict(
        name="toy",
        train_images=np.zeros((4, 2, 3, 1), np.uint8),
        train_labels=np.array([0, 1, 1, 0], np.int32),
        test_images=np.zeros((2, 2, 3, 1), np.uint8),
        test_labels=np.array([1, 0], np.int32),
        num_classes=2,
        class_names=("a", "b"),
        source="generated",
    )
    fields.update(overrides)
    return Dataset(**fields)


def test_properties_and_summary():
    ds = make()
    assert ds.image_shape == (2, 3, 1)
    assert ds.summary() == {
        "name": "toy", "num_train": 4, "num_test": 2, "image_shape": [2, 3, 1],
        "num_classes": 2, "source": "generated",
    }


def test_arrays_are_read_only_views_without_touching_the_caller():
    images = np.zeros((4, 2, 3, 1), np.uint8)
    ds = make(train_images=images)
    with pytest.raises(ValueError):
        ds.train_images[0, 0, 0, 0] = 1
    images[0, 0, 0, 0] = 1  # caller's array stays writable
    with pytest.raises(AttributeError):
        ds.name = "other"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(train_images=np.zeros((4, 2, 3, 1), np.float32)),
        dict(train_images=np.zeros((4, 2, 3), np.uint8)),
        dict(train_labels=np.array([0, 1, 1, 0], np.int64)),
        dict(test_labels=np.array([1, 0, 0], np.int32)),
        dict(test_labels=np.array([1, 2], np.int32)),
        dict(class_names=("a",)),
        dict(test_images=np.zeros((2, 3, 2, 1), np.uint8)),
    ],
)
def test_invalid_contents_rejected(overrides):
    with pytest.raises(DataFormatError):
        make(**overrides)


def test_to_float_numpy_and_jax():
    x = np.array([[0, 128, 255]], np.uint8)
    out = to_float(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 128 / 255, 1.0]], rtol=1e-6)
    jout = jax.jit(to_float)(jnp.asarray(x))
    assert isinstance(jout, jax.Array) and jout.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jout), out, rtol=1e-6)
    np.testing.assert_array_equal(to_float(out), out)  # idempotent on floats
    with pytest.raises(TypeError):
        to_float(np.zeros(3, np.int32))

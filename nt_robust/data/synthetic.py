"""A tiny generated dataset for unit tests and smoke runs (no files needed).

Each class is a fixed random template; an example is its class template plus
Gaussian noise, clipped to 0..255. A small model learns it in a few steps.
Example::

    ds = make_synthetic_dataset(num_train=128, num_test=64, seed=1)
    ds.name, ds.image_shape     # ("synthetic", (8, 8, 1))
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

__all__ = ["make_synthetic_dataset"]

NOISE_STD = 0.2 * 255  # small against the typical template distance, so classes separate


def make_synthetic_dataset(
    num_train: int = 512,
    num_test: int = 256,
    image_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 4,
    seed: int = 0,
) -> Dataset:
    """Generate a synthetic :class:`Dataset` named ``"synthetic"``; same seed, same data."""
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) of positive ints, got {image_shape}")
    if num_classes < 2 or num_train < 0 or num_test < 0:
        raise ValueError("need num_classes >= 2 and non-negative example counts")
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes, *image_shape))
    train_images, train_labels = _sample(rng, templates, num_train)
    test_images, test_labels = _sample(rng, templates, num_test)
    return Dataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        class_names=tuple(f"class_{k}" for k in range(num_classes)),
        source="generated",
    )


def _sample(
    rng: np.random.Generator, templates: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    # Balanced classes in random order.
    labels = rng.permutation(np.arange(count) % len(templates)).astype(np.int32)
    noisy = templates[labels] + rng.normal(0.0, NOISE_STD, size=(count, *templates.shape[1:]))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels

"""Two-class subsets, flattened and put on the unit sphere, for the theory experiments.

    from nt_robust.theory.data import sphere_binary_subset
    data = sphere_binary_subset("fashion_mnist", classes=(0, 2), n_train=256, n_test=256, seed=0)
    data.x_train   # (n, d) float32 rows with ‖u‖ = 1 (and entries in [0, 1])
    data.y_train   # (n,) float32 in {−1, +1}: +1 for classes[1]
    data.eps_scale # median pixel-space ‖x‖₂: a pixel ε corresponds to ε / eps_scale here

Projection onto the sphere is our choice (the NTK analyses assume ‖x‖ = 1). Because the
pixels are non-negative, u stays inside [0, 1]^d, the box the attacks clip to.

The conv-net theory uses images instead (NHWC, pixels in [0, 1], downsampled 2x2 by default)::

    from nt_robust.theory.data import image_subset
    images = image_subset("fashion_mnist", n=32, downsample=2, n_train=2048)
    images.x, images.mean, images.std   # (32, 14, 14, 1); the train split's pixel mean and std
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nt_robust.data import load_dataset, to_float
from nt_robust.data.resize import block_mean


@dataclasses.dataclass(frozen=True)
class SphereData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    eps_scale: float
    info: dict


def _pick(images: np.ndarray, labels: np.ndarray, classes: tuple[int, int], n: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n examples, balanced between the two classes, in random order."""
    picks = [rng.choice(np.flatnonzero(labels == c), n // 2 + (i < n % 2), replace=False)
             for i, c in enumerate(classes)]
    index = rng.permutation(np.concatenate(picks))
    x = to_float(images[index]).reshape(len(index), -1).astype(np.float32)
    y = np.where(labels[index] == classes[1], 1.0, -1.0).astype(np.float32)
    return x, y


def sphere_binary_subset(name: str = "fashion_mnist", classes: tuple[int, int] = (0, 2), n_train: int = 256,
                         n_test: int = 256, seed: int = 0, data_dir: str | None = None) -> SphereData:
    """A balanced two-class subset (train from the train split, test from the test split)."""
    ds = load_dataset(name, data_dir=data_dir, download=False)
    rng = np.random.default_rng(seed)
    x_train, y_train = _pick(ds.train_images, ds.train_labels, classes, n_train, rng)
    x_test, y_test = _pick(ds.test_images, ds.test_labels, classes, n_test, rng)
    norms = np.linalg.norm(x_train, axis=1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    info = {"dataset": name, "classes": list(classes),
            "class_names": [ds.class_names[c] for c in classes], "n_train": n_train, "n_test": n_test,
            "seed": seed, "dim": int(x_train.shape[1]), "median_pixel_norm": float(np.median(norms))}
    return SphereData(unit(x_train), y_train, unit(x_test), y_test, float(np.median(norms)), info)


@dataclasses.dataclass(frozen=True)
class ImageData:
    """NHWC images in [0, 1] for the conv-net theory, with the train split's pixel statistics."""

    x: np.ndarray
    labels: np.ndarray
    mean: float
    std: float
    info: dict
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None


def downsample_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks, NHWC (28x28 -> 14x14 at factor 2); factor 1 is a no-op."""
    return block_mean(images, factor)


def image_subset(name: str = "fashion_mnist", n: int = 32, seed: int = 0, downsample: int = 2,
                 n_train: int = 0, data_dir: str | None = None) -> ImageData:
    """``n`` test images of every class in turn (random within a class), downsampled, NHWC,
    and ``n_train`` random train images with their labels (``x_train``, ``y_train``).

    ``mean``/``std``: one pixel mean and standard deviation over the (downsampled) train split;
    the conv-net theory standardizes with them, so no input pixel is exactly 0 (a ReLU
    network without biases is not differentiable at an all-zero patch)."""
    ds = load_dataset(name, data_dir=data_dir, download=False)
    rng = np.random.default_rng(seed)
    classes = np.unique(ds.test_labels)
    per_class = [rng.permutation(np.flatnonzero(ds.test_labels == c)) for c in classes]
    index = np.array([per_class[i % len(classes)][i // len(classes)] for i in range(n)])
    to_nhwc = lambda a: a[..., None] if a.ndim == 3 else a  # noqa: E731
    x = downsample_images(to_nhwc(to_float(ds.test_images[index])).astype(np.float32), downsample)
    train = downsample_images(to_nhwc(to_float(ds.train_images[:10000])).astype(np.float32), downsample)
    info = {"dataset": name, "n": n, "n_train": n_train, "seed": seed, "downsample": downsample,
            "image_shape": list(x.shape[1:]), "stats_from": "first 10000 train images"}
    x_train = y_train = None
    if n_train:
        picks = rng.choice(len(ds.train_labels), n_train, replace=False)
        x_train = downsample_images(to_nhwc(to_float(ds.train_images[picks])).astype(np.float32), downsample)
        y_train = np.asarray(ds.train_labels[picks])
    return ImageData(x, ds.test_labels[index], float(train.mean()), float(train.std()), info, x_train, y_train)

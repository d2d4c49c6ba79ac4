"""The arrays a run trains and evaluates on, from a :class:`DataConfig`::

    splits = prepare_splits(config.data, sample_seed=config.train.seed)
    splits.train_images, splits.val_images, splits.test_images      # uint8 NHWC
    splits.metadata["sample_seed"]     # the seed that drew the training sample (None: the first N)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nt_robust.data import Dataset, load_dataset, train_val_split
from nt_robust.data.resize import downsample_uint8
from nt_robust.train.config import DataConfig


@dataclasses.dataclass(frozen=True)
class Splits:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int]
    metadata: dict


def prepare_splits(config: DataConfig, sample_seed: int | None = None) -> Splits:
    """The run's splits. ``sample_seed`` (the run's ``train.seed``) draws the training
    subset when ``config.train_sample == "seed"``; it is ignored for "first"."""
    dataset: Dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    train_x, train_y, val_x, val_y = train_val_split(dataset.train_images, dataset.train_labels,
                                                     config.val_size, seed=config.split_seed)
    if config.train_subset is not None:
        if config.train_subset > len(train_x):
            raise ValueError(f"data.train_subset = {config.train_subset} but only {len(train_x)} training "
                             f"examples remain after the {config.val_size}-example validation split")
        if config.train_sample == "seed":
            if sample_seed is None:
                raise ValueError("data.train_sample = 'seed' needs the seed to draw the sample with "
                                 "(prepare_splits(config.data, sample_seed=config.train.seed))")
            chosen = balanced_sample(train_y, config.train_subset, sample_seed, dataset.num_classes)
        else:
            chosen = np.arange(config.train_subset)
        train_x, train_y = train_x[chosen], train_y[chosen]
    drawn = config.train_sample == "seed" and config.train_subset is not None
    test_x = dataset.test_images
    if config.downsample != 1:
        h, w = dataset.image_shape[:2]
        if h % config.downsample or w % config.downsample:
            raise ValueError(f"data.downsample = {config.downsample} does not divide {dataset.name}'s "
                             f"{h}x{w} images: choose a divisor of {h} and {w}")
        train_x, val_x, test_x = (downsample_uint8(x, config.downsample) for x in (train_x, val_x, test_x))
    metadata = {**dataset.summary(), "train_examples": len(train_x), "val_examples": len(val_x),
                "test_examples": len(test_x), "downsample": config.downsample,
                "image_shape": list(test_x.shape[1:]), "split_seed": config.split_seed,
                "train_sample": config.train_sample, "sample_seed": sample_seed if drawn else None,
                "train_class_counts": np.bincount(train_y, minlength=dataset.num_classes).tolist()}
    return Splits(train_x, train_y.astype(np.int32), val_x, val_y.astype(np.int32),
                  test_x, dataset.test_labels.astype(np.int32), dataset.num_classes,
                  tuple(int(d) for d in test_x.shape[1:]), metadata)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The permutation of training examples for ``epoch`` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


# Mixed into the seed of the training-sample draw, so that it is a stream of its own,
# independent of the initialization and batch order drawn from the same train.seed.
SAMPLE_STREAM = 0x5A3D1E


def balanced_sample(labels: np.ndarray, size: int, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices of a class-balanced random sample of ``size`` of ``labels``: each of
    the ``num_classes`` classes gets ``size // num_classes`` examples and ``size % num_classes``
    randomly chosen classes one more; which examples is random too, all from ``seed``::

        balanced_sample(np.array([0, 0, 1, 1, 1]), 2, seed=3, num_classes=2)   # one 0, one 1
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, SAMPLE_STREAM])
    counts = np.full(num_classes, size // num_classes)
    counts[rng.choice(num_classes, size % num_classes, replace=False)] += 1
    available = np.bincount(labels, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] > available[c]]
    if short:
        raise ValueError(f"data.train_sample = 'seed' wants {counts[short[0]]} images of class {short[0]} for a "
                         f"class-balanced sample of {size}, but only {available[short[0]]} remain after the "
                         "validation split: lower data.train_subset, or use data.train_sample = \"first\"")
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:counts[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))

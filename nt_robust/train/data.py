"""The arrays a run trains and evaluates on, from a :class:`DataConfig`::

    splits = prepare_splits(config.data)
    splits.train_images, splits.val_images, splits.test_images      # uint8 NHWC
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


def prepare_splits(config: DataConfig) -> Splits:
    dataset: Dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    train_x, train_y, val_x, val_y = train_val_split(dataset.train_images, dataset.train_labels,
                                                     config.val_size, seed=config.split_seed)
    if config.train_subset is not None:
        if config.train_subset > len(train_x):
            raise ValueError(f"data.train_subset = {config.train_subset} but only {len(train_x)} training "
                             f"examples remain after the {config.val_size}-example validation split")
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    test_x = dataset.test_images
    if config.downsample != 1:
        h, w = dataset.image_shape[:2]
        if h % config.downsample or w % config.downsample:
            raise ValueError(f"data.downsample = {config.downsample} does not divide {dataset.name}'s "
                             f"{h}x{w} images: choose a divisor of {h} and {w}")
        train_x, val_x, test_x = (downsample_uint8(x, config.downsample) for x in (train_x, val_x, test_x))
    metadata = {**dataset.summary(), "train_examples": len(train_x), "val_examples": len(val_x),
                "test_examples": len(test_x), "downsample": config.downsample,
                "image_shape": list(test_x.shape[1:])}
    return Splits(train_x, train_y.astype(np.int32), val_x, val_y.astype(np.int32),
                  test_x, dataset.test_labels.astype(np.int32), dataset.num_classes,
                  tuple(int(d) for d in test_x.shape[1:]), metadata)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The permutation of training examples for ``epoch`` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)

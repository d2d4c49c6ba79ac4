"""Datasets for nt_robust: loaders, splits, augmentation and a synthetic set.

Example::

    from nt_robust.data import load_dataset, train_val_split, to_float, augment_batch

    ds = load_dataset("fashion_mnist")              # or "mnist", "cifar10", "cifar100"
    tx, ty, vx, vy = train_val_split(ds.train_images, ds.train_labels, 5000, seed=0)
    batch = augment_batch(jax.random.key(0), to_float(tx[:128]), crop_padding=2)

Loading never unpickles and always verifies checksums; see
:func:`load_dataset` for where files are searched and when they are downloaded.
"""

from .augment import augment_batch, to_float
from .checks import check_images_and_labels
from .checksums import Checksum
from .cifar import read_cifar_binary
from .dataset import Dataset
from .errors import ChecksumError, DataError, DataFormatError, DatasetNotFoundError
from .idx import read_idx_dataset
from .load import load_dataset
from .specs import DATASET_NAMES
from .splits import train_val_split
from .synthetic import make_synthetic_dataset

__all__ = [
    "DATASET_NAMES",
    "Checksum",
    "ChecksumError",
    "DataError",
    "DataFormatError",
    "Dataset",
    "DatasetNotFoundError",
    "augment_batch",
    "check_images_and_labels",
    "load_dataset",
    "make_synthetic_dataset",
    "read_cifar_binary",
    "read_idx_dataset",
    "to_float",
    "train_val_split",
]

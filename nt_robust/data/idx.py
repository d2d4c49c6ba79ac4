"""Reader for the idx format of MNIST and Fashion-MNIST.

An idx file is: two zero bytes, a dtype code (0x08 = unsigned byte), the
number of dimensions, one big-endian uint32 per dimension, then the data.
Example::

    arrays = read_idx_dataset("/usr/share/datasets/fashion-mnist", checksums)
    arrays.train_images.shape   # (60000, 28, 28, 1)
"""

from __future__ import annotations

import os
import struct
from math import prod
from pathlib import Path

import numpy as np

from .checksums import ChecksumTable, lookup_checksum, verify_gzip_file
from .dataset import ArraySplits
from .errors import DataFormatError

__all__ = ["IDX_FILES", "parse_idx", "missing_idx_files", "read_idx_dataset"]

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_UBYTE = 0x08
_IMAGE_HW = (28, 28)
_NUM_CLASSES = 10


def parse_idx(
    payload: bytes, *, ndim: int, item_shape: tuple[int, ...] = (), origin: object = "<bytes>"
) -> np.ndarray:
    """Decode an uncompressed unsigned-byte idx payload into an array.

    ``ndim`` and ``item_shape`` (the dimensions after the first) are checked;
    ``origin`` names the file in error messages.
    """
    if len(payload) < 4:
        raise DataFormatError(f"{origin}: too short for an idx header ({len(payload)} bytes)")
    zero_a, zero_b, dtype_code, actual_ndim = payload[:4]
    if zero_a or zero_b:
        raise DataFormatError(f"{origin}: bad idx magic number {payload[:4].hex()}")
    if dtype_code != _UBYTE:
        raise DataFormatError(f"{origin}: idx dtype code {dtype_code:#04x}, expected 0x08 (ubyte)")
    if actual_ndim != ndim:
        raise DataFormatError(f"{origin}: idx file has {actual_ndim} dimensions, expected {ndim}")
    header_len = 4 + 4 * ndim
    if len(payload) < header_len:
        raise DataFormatError(f"{origin}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", payload[4:header_len])
    if item_shape and tuple(dims[1:]) != tuple(item_shape):
        raise DataFormatError(f"{origin}: item shape {dims[1:]}, expected {tuple(item_shape)}")
    expected = prod(dims)
    actual = len(payload) - header_len
    if actual != expected:
        raise DataFormatError(
            f"{origin}: header promises {expected} bytes of data for shape {dims}, "
            f"file holds {actual} (truncated or corrupt)"
        )
    return np.frombuffer(payload, np.uint8, count=expected, offset=header_len).reshape(dims)


def missing_idx_files(directory: Path) -> list[str]:
    """Names of the four idx files absent from ``directory``."""
    return [name for name in IDX_FILES if not (directory / name).is_file()]


def read_idx_dataset(
    directory: str | os.PathLike, checksums: ChecksumTable, fix: str = ""
) -> ArraySplits:
    """Verify and read the four idx .gz files of an MNIST-like dataset.

    ``checksums`` maps each file name to its :class:`Checksum`; ``fix`` is
    advice appended to checksum errors.
    """
    directory = Path(directory)
    images, labels = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images[split] = _read(directory, f"{prefix}-images-idx3-ubyte.gz", checksums, fix,
                              ndim=3, item_shape=_IMAGE_HW)
        labels[split] = _read(directory, f"{prefix}-labels-idx1-ubyte.gz", checksums, fix, ndim=1)
        _check_pair(directory, prefix, images[split], labels[split])
    return ArraySplits(
        train_images=images["train"][..., None],
        train_labels=labels["train"].astype(np.int32),
        test_images=images["test"][..., None],
        test_labels=labels["test"].astype(np.int32),
    )


def _read(directory: Path, name: str, checksums: ChecksumTable, fix: str, **shape) -> np.ndarray:
    path = directory / name
    payload = verify_gzip_file(path, lookup_checksum(checksums, name, path), fix)
    return parse_idx(payload, origin=path, **shape)


def _check_pair(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{directory}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise DataFormatError(
            f"{directory}: {prefix} labels go up to {labels.max()}, expected < {_NUM_CLASSES}"
        )

"""A dataset file replaced by the same-named file of another dataset (MNIST's images where
Fashion-MNIST's belong: same format, same size, valid gzip) is refused by its checksum."""

import gzip
import hashlib
import shutil

import numpy as np
import pytest

from nt_robust.data import Checksum, ChecksumError, load_dataset

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()


def write_set(directory, seed):
    rng = np.random.default_rng(seed)
    shapes = {FILES[0]: (6, 28, 28), FILES[1]: (6,), FILES[2]: (3, 28, 28), FILES[3]: (3,)}
    directory.mkdir(parents=True)
    for name, shape in shapes.items():
        high = 10 if len(shape) == 1 else 256
        (directory / name).write_bytes(gzip.compress(idx(rng.integers(0, high, shape, dtype=np.uint8)), mtime=0))
    return {name: Checksum(md5=hashlib.md5((directory / name).read_bytes()).hexdigest()) for name in FILES}


def test_dataset_file_replaced_by_another_datasets_file_is_refused_naming_it(tmp_path):
    table = write_set(tmp_path / "fashion_mnist", seed=0)
    write_set(tmp_path / "other" / "mnist", seed=1)
    assert len(load_dataset("fashion_mnist", data_dir=tmp_path, download=False, _checksums=table).train_images) == 6
    replaced = tmp_path / "fashion_mnist" / FILES[0]
    shutil.copyfile(tmp_path / "other" / "mnist" / FILES[0], replaced)
    with pytest.raises(ChecksumError) as error:
        load_dataset("fashion_mnist", data_dir=tmp_path, download=False, _checksums=table)
    message = str(error.value)
    assert f"Checksum mismatch for {replaced}" in message and table[FILES[0]].md5 in message
    assert "not the official release" in message and "Fix: delete it and load again" in message

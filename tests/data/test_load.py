"""load_dataset: search order, offline behaviour, download, errors, real data."""

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from nt_robust.data import DatasetNotFoundError, load_dataset
from nt_robust.data import load as load_module
from nt_robust.data import sources, specs
from nt_robust.data.checksums import Checksum
from nt_robust.data.idx import IDX_FILES

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx_set(directory: Path, n_train: int, n_test: int = 2, seed: int = 0):
    """Four idx .gz files with ``n_train`` training images; returns an md5 table."""
    rng = np.random.default_rng(seed)
    shapes = [(n_train, 28, 28), (n_train,), (n_test, 28, 28), (n_test,)]
    directory.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, shape in zip(IDX_FILES, shapes, strict=True):
        array = rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8)
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (directory / name).write_bytes(gzip.compress(header + array.tobytes(), mtime=0))
        table[name] = Checksum(md5=hashlib.md5((directory / name).read_bytes()).hexdigest())
    return table


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty cache, no data-dir env var, no system directories, no env download switches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("NT_ROBUST_DATA_DIR", "NT_ROBUST_OFFLINE", "NT_ROBUST_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {})
    return tmp_path


def test_missing_data_message_explains_the_fix(isolated, monkeypatch):
    empty = isolated / "empty"
    empty.mkdir()
    monkeypatch.setenv("NT_ROBUST_DATA_DIR", str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=empty, download=False)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    for expected in (
        *IDX_FILES,
        "NT_ROBUST_DATA_DIR",
        "--set data.data_dir=DIR",
        str(empty),
        str(empty / "mnist"),
        str(isolated / "env" / "mnist"),
        str(isolated / "cache" / "nt_robust" / "mnist"),
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "not attempted (download=False)",
    ):
        assert expected in message


def test_fashion_mnist_message_mentions_debian_package(isolated, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"fashion_mnist": (str(isolated / "nope"),)})
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(isolated / "nope") in message
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message


def test_incomplete_directory_is_reported(isolated):
    write_idx_set(isolated / "d", n_train=3)
    (isolated / "d" / IDX_FILES[2]).unlink()
    with pytest.raises(DatasetNotFoundError, match=f"lacks {IDX_FILES[2]}"):
        load_dataset("mnist", data_dir=isolated / "d", download=False)


def test_search_order(isolated, monkeypatch):
    # Identical files in all three places; ds.source tells which one won.
    arg, env, cache = isolated / "arg", isolated / "env", isolated / "cache" / "nt_robust"
    for directory in (arg, env / "mnist", cache / "mnist"):
        table = write_idx_set(directory, n_train=3)
    monkeypatch.setenv("NT_ROBUST_DATA_DIR", str(env))

    def source(**kwargs):
        return load_dataset("mnist", download=False, _checksums=table, **kwargs).source

    assert source(data_dir=arg) == str(arg)
    assert source() == str(env / "mnist")
    monkeypatch.delenv("NT_ROBUST_DATA_DIR")
    assert source() == str(cache / "mnist")


def test_data_dir_subdirectory_and_source(isolated):
    table = write_idx_set(isolated / "root" / "mnist", n_train=3)
    ds = load_dataset("mnist", data_dir=str(isolated / "root"), download=False, _checksums=table)
    assert ds.source == str(isolated / "root" / "mnist")
    assert ds.summary() == {
        "name": "mnist", "num_train": 3, "num_test": 2, "image_shape": [28, 28, 1],
        "num_classes": 10, "source": str(isolated / "root" / "mnist"),
    }


@pytest.mark.parametrize("var, value", [("NT_ROBUST_OFFLINE", "1"), ("NT_ROBUST_DOWNLOAD", "0")])
def test_env_disables_download(isolated, monkeypatch, var, value):
    def no_download(*args, **kwargs):
        raise AssertionError("download must not be attempted")

    monkeypatch.setattr(load_module, "fetch_dataset_files", no_download)
    monkeypatch.setenv(var, value)
    with pytest.raises(DatasetNotFoundError, match=f"not attempted \\({var}={value}\\)"):
        load_dataset("mnist")


@pytest.fixture
def mirror(isolated, monkeypatch):
    """A file:// mirror holding fabricated MNIST files; returns its checksum table."""
    table = write_idx_set(isolated / "mirror", n_train=6, seed=4)
    spec = dataclasses.replace(specs.SPECS["mnist"], base_url=(isolated / "mirror").as_uri() + "/")
    monkeypatch.setitem(specs.SPECS, "mnist", spec)
    return table


def test_download_into_cache(isolated, mirror):
    ds = load_dataset("mnist", download=True, _checksums=mirror)
    cache = isolated / "cache" / "nt_robust" / "mnist"
    assert ds.source == str(cache) and ds.train_images.shape == (6, 28, 28, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_FILES)
    for name in IDX_FILES:
        assert (cache / name).read_bytes() == (isolated / "mirror" / name).read_bytes()
    # Second load comes from the cache, even offline.
    assert load_dataset("mnist", download=False, _checksums=mirror).source == str(cache)


def test_download_with_bad_checksum_leaves_nothing(isolated, mirror):
    bad = dict(mirror)
    bad[IDX_FILES[0]] = Checksum(md5="0" * 32)
    with pytest.raises(DatasetNotFoundError, match="failed: Checksum mismatch"):
        load_dataset("mnist", download=True, _checksums=bad)
    cache = isolated / "cache" / "nt_robust" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_failed_download_keeps_only_whole_verified_files(isolated, mirror):
    (isolated / "mirror" / IDX_FILES[2]).unlink()
    with pytest.raises(DatasetNotFoundError, match="failed"):
        load_dataset("mnist", download=True, _checksums=mirror)
    cache = isolated / "cache" / "nt_robust" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_FILES[:2])


def test_synthetic_and_names(isolated):
    assert load_dataset("synthetic").name == "synthetic"
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("Fashion-MNIST", download=False)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NT_ROBUST_DATA_DIR", raising=False)
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    assert ds.train_images.max() == 255 and ds.class_names[9] == "Ankle boot"

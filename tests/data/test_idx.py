"""Round trips and corruption handling of the idx (MNIST-like) reader."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from nt_robust.data import Checksum, ChecksumError, DataError, DataFormatError, read_idx_dataset
from nt_robust.data.idx import IDX_FILES, parse_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory, n_train=7, n_test=3, seed=0):
    """Write the four .gz files; return the arrays and an md5 checksum table."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, array in arrays.items():
        path = directory / name
        path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
        table[name] = Checksum(md5=hashlib.md5(path.read_bytes()).hexdigest())
    return arrays, table


def test_parse_idx_reads_header_and_data():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(array), ndim=3, item_shape=(3, 4))
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "dtype code"),
        (lambda b: b[:3] + b"\x02" + b[4:], "dimensions"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "file holds"),
        (lambda b: b[:6], "header"),
        (lambda b: b"", "too short"),
    ],
)
def test_parse_idx_rejects_malformed_payloads(mutate, message):
    payload = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataFormatError, match=message):
        parse_idx(mutate(payload), ndim=3, origin="some-file")


def test_parse_idx_checks_item_shape():
    with pytest.raises(DataFormatError, match="item shape"):
        parse_idx(idx_bytes(np.zeros((2, 27, 28), np.uint8)), ndim=3, item_shape=(28, 28))


def test_round_trip_exact(tmp_path):
    arrays, table = write_idx_set(tmp_path)
    loaded = read_idx_dataset(tmp_path, table)
    assert loaded.train_images.shape == (7, 28, 28, 1)
    assert loaded.train_images.dtype == np.uint8
    assert loaded.train_labels.dtype == np.int32
    np.testing.assert_array_equal(loaded.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(loaded.train_labels, arrays["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(loaded.test_images[..., 0], arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(loaded.test_labels, arrays["t10k-labels-idx1-ubyte.gz"])


def test_recompressed_file_accepted_by_payload_sha256(tmp_path):
    # Like Debian's Fashion-MNIST: different .gz bytes, same decompressed content.
    arrays, table = write_idx_set(tmp_path)
    name = "train-images-idx3-ubyte.gz"
    payload = idx_bytes(arrays[name])
    (tmp_path / name).write_bytes(gzip.compress(payload, compresslevel=1, mtime=12345))
    strict = dict(table)
    strict[name] = Checksum(md5=table[name].md5, payload_sha256=None)
    with pytest.raises(ChecksumError):
        read_idx_dataset(tmp_path, strict)
    table[name] = Checksum(md5=table[name].md5, payload_sha256=hashlib.sha256(payload).hexdigest())
    loaded = read_idx_dataset(tmp_path, table)
    np.testing.assert_array_equal(loaded.train_images[..., 0], arrays[name])


def test_flipped_byte_raises_checksum_error_naming_file(tmp_path):
    _, table = write_idx_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        read_idx_dataset(tmp_path, table, fix="Fix: re-download it.")
    message = str(info.value)
    assert str(path) in message
    assert table[path.name].md5 in message
    assert "re-download" in message


def test_truncated_gzip_raises_data_error_naming_file(tmp_path):
    arrays, table = write_idx_set(tmp_path)
    name = "train-labels-idx1-ubyte.gz"
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ChecksumError, match=str(path)):
        read_idx_dataset(tmp_path, table)
    # With only a payload checksum the file must be decompressed, which fails cleanly.
    sha = hashlib.sha256(idx_bytes(arrays[name])).hexdigest()
    table[name] = Checksum(payload_sha256=sha)
    with pytest.raises(DataFormatError, match="not a complete gzip") as info:
        read_idx_dataset(tmp_path, table)
    assert str(path) in str(info.value)


def test_short_payload_with_matching_checksum_is_a_format_error(tmp_path):
    arrays, table = write_idx_set(tmp_path)
    name = "train-images-idx3-ubyte.gz"
    path = tmp_path / name
    path.write_bytes(gzip.compress(idx_bytes(arrays[name])[:-28], mtime=0))
    table[name] = Checksum(md5=hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(DataFormatError, match="truncated or corrupt") as info:
        read_idx_dataset(tmp_path, table)
    assert str(path) in str(info.value)


def test_label_count_mismatch_and_range(tmp_path):
    _, table = write_idx_set(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(6, np.uint8)), mtime=0))
    table[labels.name] = Checksum(md5=hashlib.md5(labels.read_bytes()).hexdigest())
    with pytest.raises(DataFormatError, match="7 images but 6 labels"):
        read_idx_dataset(tmp_path, table)
    labels.write_bytes(gzip.compress(idx_bytes(np.full(7, 10, np.uint8)), mtime=0))
    table[labels.name] = Checksum(md5=hashlib.md5(labels.read_bytes()).hexdigest())
    with pytest.raises(DataFormatError, match="labels go up to 10"):
        read_idx_dataset(tmp_path, table)


def test_file_without_known_checksum_is_refused(tmp_path):
    _, table = write_idx_set(tmp_path)
    del table[IDX_FILES[3]]
    with pytest.raises(DataError, match="No checksum is known"):
        read_idx_dataset(tmp_path, table)

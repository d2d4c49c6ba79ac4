"""Round trips and corruption handling of the CIFAR binary reader."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from nt_robust.data import Checksum, ChecksumError, DataFormatError, load_dataset, read_cifar_binary
from nt_robust.data.cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT, parse_cifar_records


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def records(images: np.ndarray, labels, coarse=None) -> bytes:
    """CIFAR records: label byte(s), then the image as CHW bytes."""
    out = bytearray()
    for i, image in enumerate(images):
        if coarse is not None:
            out.append(coarse[i])
        out.append(labels[i])
        out += image.transpose(2, 0, 1).tobytes()
    return bytes(out)


def random_images(rng, n):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar10_members(seed=0):
    """Member name -> (bytes, images, labels) for a small fake CIFAR-10."""
    rng = np.random.default_rng(seed)
    members = {}
    for name, n in [*((f, 2) for f in CIFAR10_LAYOUT.train_files), (CIFAR10_LAYOUT.test_file, 3)]:
        images, labels = random_images(rng, n), rng.integers(0, 10, n, dtype=np.uint8)
        members[name] = (records(images, labels), images, labels)
    return members


def write_tar(path, folder, blobs: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_cifar10_tar(tmp_path, members):
    blobs = {name: data for name, (data, _, _) in members.items()}
    blobs["batches.meta.txt"] = b"airplane\nautomobile\n"
    archive = write_tar(tmp_path / CIFAR10_LAYOUT.archive, CIFAR10_LAYOUT.folder, blobs)
    return archive, {archive.name: Checksum(md5=md5(archive.read_bytes()))}


def expected_cifar10(members):
    train = [members[f] for f in CIFAR10_LAYOUT.train_files]
    return (
        np.concatenate([images for _, images, _ in train]),
        np.concatenate([labels for _, _, labels in train]),
        members[CIFAR10_LAYOUT.test_file][1],
        members[CIFAR10_LAYOUT.test_file][2],
    )


def assert_matches(loaded, expected):
    got = (loaded.train_images, loaded.train_labels, loaded.test_images, loaded.test_labels)
    for array, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(array, want)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int32


def test_record_layout_is_chw_to_nhwc():
    # Every pixel gets a value identifying its channel, row and column.
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    chw = ((c * 80 + h * 2 + w) % 256).astype(np.uint8)
    raw = bytes([7]) + chw.tobytes()
    images, labels = parse_cifar_records(raw, CIFAR10_LAYOUT)
    assert images.shape == (1, 32, 32, 3) and labels.tolist() == [7]
    # byte 1 + channel*1024 + row*32 + col holds pixel (row, col, channel)
    for channel, row, col in [(0, 0, 1), (2, 5, 3), (1, 31, 0), (2, 31, 31)]:
        assert images[0, row, col, channel] == raw[1 + channel * 1024 + row * 32 + col]
    assert images[0, 0, 0].tolist() == [0, 80, 160]  # channels differ
    assert images[0, 1, 0, 0] == 2 and images[0, 0, 1, 0] == 1  # rows vs columns


def test_cifar10_round_trip_from_tar_gz(tmp_path):
    members = cifar10_members()
    archive, table = write_cifar10_tar(tmp_path, members)
    loaded = read_cifar_binary(archive, CIFAR10_LAYOUT, table)
    assert loaded.train_images.shape == (10, 32, 32, 3)
    assert_matches(loaded, expected_cifar10(members))


@pytest.mark.parametrize("inside", [True, False])
def test_cifar10_round_trip_from_extracted_folder(tmp_path, inside):
    members = cifar10_members(seed=1)
    folder = tmp_path / CIFAR10_LAYOUT.folder if inside else tmp_path
    folder.mkdir(exist_ok=True)
    table = {}
    for name, (data, _, _) in members.items():
        (folder / name).write_bytes(data)
        table[name] = Checksum(md5=md5(data))
    loaded = load_dataset("cifar10", data_dir=tmp_path, download=False, _checksums=table)
    assert loaded.source == str(folder)
    assert_matches(loaded, expected_cifar10(members))


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    blobs, expected = {}, {}
    for name, n in (("train.bin", 5), ("test.bin", 4)):
        images = random_images(rng, n)
        fine = np.array([99, 0, 42, 7, 13][:n], np.uint8)
        coarse = np.array([19, 3, 0, 11, 5][:n], np.uint8)
        blobs[name] = records(images, fine, coarse)
        expected[name] = (images, fine)
    blobs["fine_label_names.txt"] = b"apple\n"
    archive = write_tar(tmp_path / CIFAR100_LAYOUT.archive, CIFAR100_LAYOUT.folder, blobs)
    table = {archive.name: Checksum(md5=md5(archive.read_bytes()))}
    ds = load_dataset("cifar100", data_dir=tmp_path, download=False, _checksums=table)
    assert ds.num_classes == 100 and len(ds.class_names) == 100
    assert ds.class_names[:2] == ("apple", "aquarium_fish") and ds.class_names[-1] == "worm"
    np.testing.assert_array_equal(ds.train_images, expected["train.bin"][0])
    np.testing.assert_array_equal(ds.train_labels, expected["train.bin"][1])
    np.testing.assert_array_equal(ds.test_images, expected["test.bin"][0])
    np.testing.assert_array_equal(ds.test_labels, expected["test.bin"][1])


def test_load_dataset_cifar10_metadata(tmp_path):
    archive, table = write_cifar10_tar(tmp_path, cifar10_members())
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, _checksums=table)
    assert ds.name == "cifar10" and ds.image_shape == (32, 32, 3)
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    assert ds.source == str(archive)


def test_corrupted_archive_raises_checksum_error(tmp_path):
    archive, table = write_cifar10_tar(tmp_path, cifar10_members())
    data = bytearray(archive.read_bytes())
    data[100] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=str(archive)):
        read_cifar_binary(archive, CIFAR10_LAYOUT, table)


def test_truncated_archive_raises_checksum_error(tmp_path):
    archive, table = write_cifar10_tar(tmp_path, cifar10_members())
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match=str(archive)):
        read_cifar_binary(archive, CIFAR10_LAYOUT, table)


def test_truncated_member_in_folder_raises_checksum_error(tmp_path):
    members = cifar10_members()
    table = {}
    for name, (data, _, _) in members.items():
        (tmp_path / name).write_bytes(data)
        table[name] = Checksum(md5=md5(data))
    victim = tmp_path / "data_batch_3.bin"
    victim.write_bytes(victim.read_bytes()[:-5])
    with pytest.raises(ChecksumError, match=str(victim)):
        read_cifar_binary(tmp_path, CIFAR10_LAYOUT, table)


def test_partial_record_is_a_format_error_even_with_matching_checksum(tmp_path):
    members = cifar10_members()
    table = {}
    for name, (data, _, _) in members.items():
        if name == "test_batch.bin":
            data = data[:-1]
        (tmp_path / name).write_bytes(data)
        table[name] = Checksum(md5=md5(data))
    with pytest.raises(DataFormatError, match="test_batch.bin"):
        read_cifar_binary(tmp_path, CIFAR10_LAYOUT, table)


def test_archive_missing_a_member_is_a_format_error(tmp_path):
    members = cifar10_members()
    blobs = {name: data for name, (data, _, _) in members.items() if name != "data_batch_4.bin"}
    archive = write_tar(tmp_path / CIFAR10_LAYOUT.archive, CIFAR10_LAYOUT.folder, blobs)
    table = {archive.name: Checksum(md5=md5(archive.read_bytes()))}
    with pytest.raises(DataFormatError, match="data_batch_4.bin"):
        read_cifar_binary(archive, CIFAR10_LAYOUT, table)


def test_label_out_of_range_is_a_format_error():
    raw = bytes([10]) + bytes(3072)
    with pytest.raises(DataFormatError, match="out of range"):
        parse_cifar_records(raw, CIFAR10_LAYOUT, "x.bin")

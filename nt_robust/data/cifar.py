"""Reader for the official *binary* CIFAR-10 / CIFAR-100 releases.

Each record is the label byte(s) followed by 3072 pixel bytes in CHW order
(1024 red, 1024 green, 1024 blue, rows top to bottom). CIFAR-100 records hold
a coarse and a fine label; the fine one is used. Nothing is unpickled, and the
archive is read member by member in memory, never extracted to disk.
Example::

    arrays = read_cifar_binary("cifar-10-binary.tar.gz", CIFAR10_LAYOUT, checksums)
    arrays.train_images.shape   # (50000, 32, 32, 3)
"""

from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checksums import ChecksumTable, lookup_checksum, verify_file
from .errors import DataFormatError
from .dataset import ArraySplits

__all__ = [
    "CIFAR10_LAYOUT",
    "CIFAR100_LAYOUT",
    "CifarLayout",
    "find_cifar",
    "parse_cifar_records",
    "read_cifar_binary",
]

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE


@dataclass(frozen=True)
class CifarLayout:
    """Where the records live in a release and how a record is laid out."""

    archive: str  # the .tar.gz as published
    folder: str  # top-level folder inside it
    train_files: tuple[str, ...]
    test_file: str
    label_bytes: int  # label bytes before the pixels of each record
    label_index: int  # which of them is the label we use
    num_classes: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


CIFAR10_LAYOUT = CifarLayout(
    archive="cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_file="test_batch.bin",
    label_bytes=1,
    label_index=0,
    num_classes=10,
)
CIFAR100_LAYOUT = CifarLayout(
    archive="cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_file="test.bin",
    label_bytes=2,
    label_index=1,  # byte 0 is the coarse (20-class) label
    num_classes=100,
)


def parse_cifar_records(
    raw: bytes, layout: CifarLayout, origin: object = "<bytes>"
) -> tuple[np.ndarray, np.ndarray]:
    """Decode concatenated records into NHWC uint8 images and int32 labels."""
    record = layout.label_bytes + _PIXELS
    if not raw or len(raw) % record:
        raise DataFormatError(
            f"{origin}: {len(raw)} bytes is not a whole number of {record}-byte "
            "CIFAR records (truncated or corrupt)"
        )
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = rows[:, layout.label_index].astype(np.int32)
    if labels.max() >= layout.num_classes:
        raise DataFormatError(
            f"{origin}: label {labels.max()} out of range for {layout.num_classes} classes"
        )
    chw = rows[:, layout.label_bytes:].reshape(-1, 3, _SIDE, _SIDE)
    return np.ascontiguousarray(chw.transpose(0, 2, 3, 1)), labels


def find_cifar(directory: Path, layout: CifarLayout) -> tuple[Path | None, str]:
    """Locate the archive or an extracted folder in ``directory``.

    Returns (location, note); location is None when nothing usable is there,
    and note then says what was missing.
    """
    if (directory / layout.archive).is_file():
        return directory / layout.archive, "found"
    notes = [f"no {layout.archive}"]
    for folder in (directory / layout.folder, directory):
        missing = [m for m in layout.members if not (folder / m).is_file()]
        if not missing:
            return folder, "found"
        if len(missing) < len(layout.members):
            notes.append(f"{folder} lacks {', '.join(missing)}")
    if not (directory / layout.folder).is_dir():
        notes.append(f"no {layout.folder}/")
    return None, "; ".join(notes)


def read_cifar_binary(
    location: str | os.PathLike, layout: CifarLayout, checksums: ChecksumTable, fix: str = ""
) -> ArraySplits:
    """Verify and read a CIFAR release: the .tar.gz itself or an extracted folder.

    ``checksums`` maps the archive name (for an archive) or each member name
    (for a folder) to its :class:`Checksum`.
    """
    location = Path(location)
    if location.is_file():
        verify_file(location, lookup_checksum(checksums, location.name, location), fix)
        blobs = _read_archive_members(location, layout)
    else:
        blobs = _read_folder_members(location, layout, checksums, fix)
    train = [parse_cifar_records(blobs[m], layout, location / m) for m in layout.train_files]
    test_images, test_labels = parse_cifar_records(
        blobs[layout.test_file], layout, location / layout.test_file
    )
    return ArraySplits(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
    )


def _read_folder_members(
    folder: Path, layout: CifarLayout, checksums: ChecksumTable, fix: str
) -> dict[str, bytes]:
    blobs = {}
    for member in layout.members:
        path = folder / member
        verify_file(path, lookup_checksum(checksums, member, path), fix)
        blobs[member] = path.read_bytes()
    return blobs


def _read_archive_members(archive: Path, layout: CifarLayout) -> dict[str, bytes]:
    wanted = {f"{layout.folder}/{m}": m for m in layout.members}
    blobs = {}
    try:
        # Stream mode ("r|gz") reads the archive once, front to back; random
        # access on a gzip stream would re-decompress from the start per member.
        with tarfile.open(archive, mode="r|gz") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is None or not info.isfile():
                    continue
                blobs[member] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataFormatError(f"{archive}: cannot read the tar.gz archive ({err})") from err
    missing = [name for name, member in wanted.items() if member not in blobs]
    if missing:
        raise DataFormatError(f"{archive}: archive lacks {', '.join(missing)}")
    return blobs

"""Checksum verification of dataset files.

A file is accepted when the md5 of the file as stored matches, or, for gzip
files whose decompressed content is known, when the sha256 of that content
matches (Debian re-gzips Fashion-MNIST, which changes the .gz md5 but not the
payload). Example::

    table = {"train.bin": Checksum(md5="6172c775...")}
    verify_file(path, lookup_checksum(table, "train.bin", path))
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumError, DataError, DataFormatError

__all__ = [
    "Checksum",
    "ChecksumTable",
    "file_md5",
    "lookup_checksum",
    "verify_file",
    "verify_gzip_file",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """Known digests of one file; at least one must be given."""

    md5: str | None = None  # of the file exactly as stored
    payload_sha256: str | None = None  # of its gzip-decompressed content

    def __post_init__(self) -> None:
        if not (self.md5 or self.payload_sha256):
            raise ValueError("a Checksum needs md5 or payload_sha256")


ChecksumTable = Mapping[str, Checksum]  # keyed by file name (no directory)


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lookup_checksum(table: ChecksumTable, name: str, path: Path) -> Checksum:
    """The table entry for ``name``; refuses to load a file nobody vouches for."""
    try:
        return table[name]
    except KeyError:
        raise DataError(
            f"No checksum is known for {path} (looked up as {name!r}), so it "
            "cannot be verified and will not be loaded."
        ) from None


def verify_file(path: Path, checksum: Checksum, fix: str = "") -> None:
    """Raise :class:`ChecksumError` unless the md5 of ``path`` matches."""
    if checksum.md5 is None:
        raise DataError(f"No md5 is known for {path}; it cannot be verified.")
    actual = file_md5(path)
    if actual != checksum.md5:
        raise _mismatch(path, f"md5 {checksum.md5}", f"md5 {actual}", fix)


def verify_gzip_file(path: Path, checksum: Checksum, fix: str = "") -> bytes:
    """Verify a .gz file and return its decompressed content.

    Decompresses only once: the archive md5 is tried first, the payload
    sha256 (where known) second.
    """
    raw = path.read_bytes()
    actual_md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if checksum.md5 is not None and actual_md5 == checksum.md5:
        return _gunzip(raw, path, fix)
    if checksum.payload_sha256 is None:
        raise _mismatch(path, f"md5 {checksum.md5}", f"md5 {actual_md5}", fix)
    payload = _gunzip(raw, path, fix)
    actual_sha = hashlib.sha256(payload).hexdigest()
    if actual_sha != checksum.payload_sha256:
        expected = f"sha256 {checksum.payload_sha256} of the decompressed content"
        if checksum.md5 is not None:
            expected = f"md5 {checksum.md5} or {expected}"
        raise _mismatch(path, expected, f"md5 {actual_md5}, sha256 {actual_sha}", fix)
    return payload


def _gunzip(raw: bytes, path: Path, fix: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataFormatError(
            f"{path} is not a complete gzip file ({err}); it is probably "
            f"truncated or corrupt. {fix}".rstrip()
        ) from err


def _mismatch(path: Path, expected: str, actual: str, fix: str) -> ChecksumError:
    return ChecksumError(
        f"Checksum mismatch for {path}: expected {expected}, got {actual}. "
        f"The file is corrupt, incomplete or not the official release. {fix}".rstrip()
    )

"""Download of dataset files into the user cache.

A file is fetched into a hidden temporary file next to its destination,
verified, and only then renamed into place, so the cache never holds a
partial or unverified file. Example::

    fetch_dataset_files(get_spec("mnist"), cache_dir("mnist"))
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .checksums import Checksum, ChecksumTable, lookup_checksum, verify_file, verify_gzip_file
from .specs import DatasetSpec

__all__ = ["OFFLINE_ENV", "DOWNLOAD_ENV", "download_allowed", "download_file",
           "fetch_dataset_files"]

OFFLINE_ENV = "NT_ROBUST_OFFLINE"
DOWNLOAD_ENV = "NT_ROBUST_DOWNLOAD"
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def download_allowed(download: bool | None) -> tuple[bool, str]:
    """Resolve ``download=None`` against the environment; returns (allowed, why)."""
    if download is not None:
        return bool(download), f"download={download}"
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE:
        return False, f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]}"
    if os.environ.get(DOWNLOAD_ENV, "").strip().lower() in _FALSE:
        return False, f"{DOWNLOAD_ENV}={os.environ[DOWNLOAD_ENV]}"
    return True, "allowed by default"


def fetch_dataset_files(spec: DatasetSpec, dest_dir: Path, checksums: ChecksumTable) -> None:
    """Download every file of ``spec`` that ``dest_dir`` lacks."""
    for name in spec.download_files:
        dest = dest_dir / name
        if not dest.is_file():
            download_file(spec.url(name), dest, lookup_checksum(checksums, name, dest))


def download_file(url: str, dest: Path, checksum: Checksum, *, timeout: float = TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verified against ``checksum``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            with _progress(int(total) if total else None, dest.name) as advance:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    advance(len(chunk))
        fix = f"The download from {url} was corrupted; try again later."
        if dest.name.endswith(".gz") and not dest.name.endswith(".tar.gz"):
            verify_gzip_file(tmp, checksum, fix)
        else:
            verify_file(tmp, checksum, fix)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


@contextlib.contextmanager
def _progress(total: int | None, label: str) -> Iterator:
    """Yields a callable taking a byte count; a tqdm bar when tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield lambda n: None
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False) as bar:
        yield bar.update

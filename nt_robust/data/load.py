"""``load_dataset``: find (or download), verify and read a dataset.

Example::

    from nt_robust.data import load_dataset
    ds = load_dataset("fashion_mnist")                    # searches the usual places
    ds = load_dataset("cifar10", data_dir="~/data", download=False)
"""

from __future__ import annotations

import contextlib
import http.client
import os
from pathlib import Path

from .checksums import ChecksumTable
from .cifar import read_cifar_binary
from .dataset import Dataset
from .download import download_allowed, fetch_dataset_files
from .errors import DataError, DatasetNotFoundError
from .idx import read_idx_dataset
from .sources import cache_dir, locate, not_found_message, probe
from .specs import DatasetSpec, canonical_name, get_spec
from .synthetic import make_synthetic_dataset

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    *,
    _checksums: ChecksumTable | None = None,
) -> Dataset:
    """Load ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``.

    Files are searched in ``data_dir``, ``$NT_ROBUST_DATA_DIR``, the user cache
    and system directories (see :mod:`nt_robust.data.sources`). If none has
    them and ``download`` allows it (None: allowed unless ``NT_ROBUST_OFFLINE=1``
    or ``NT_ROBUST_DOWNLOAD=0``), they are downloaded into the user cache.
    Every file is checksum-verified. ``_checksums`` replaces the table of
    official checksums; it exists for tests with fabricated files.

    Raises DatasetNotFoundError, ChecksumError or DataFormatError (all DataError).
    """
    key = canonical_name(name)
    if key == "synthetic":
        return make_synthetic_dataset()
    spec = get_spec(key)
    checksums = spec.checksums if _checksums is None else _checksums
    location, searched = locate(spec, data_dir)
    if location is None:
        location, download_note = _try_download(spec, checksums, download)
        if location is None:
            raise DatasetNotFoundError(not_found_message(spec, searched, download_note))
    return _read(spec, location, checksums)


def _try_download(
    spec: DatasetSpec, checksums: ChecksumTable, download: bool | None
) -> tuple[Path | None, str]:
    allowed, why = download_allowed(download)
    if not allowed:
        return None, f"not attempted ({why})"
    target = cache_dir(spec.name)
    try:
        fetch_dataset_files(spec, target, checksums)
    except (OSError, DataError, http.client.HTTPException) as err:
        with contextlib.suppress(OSError):
            target.rmdir()  # only succeeds if we created it and nothing landed in it
        return None, f"attempted into {target} and failed: {err}"
    location, note = probe(spec, target)
    return location, f"downloaded into {target} ({note})"


def _read(spec: DatasetSpec, location: Path, checksums: ChecksumTable) -> Dataset:
    fix = (
        f"Fix: delete it and load again to re-download it into {cache_dir(spec.name)}, "
        f"or replace it with the official file from {spec.base_url}."
    )
    if spec.format == "cifar":
        arrays = read_cifar_binary(location, spec.cifar_layout, checksums, fix)
    else:
        arrays = read_idx_dataset(location, checksums, fix)
    return Dataset(
        name=spec.name,
        **arrays._asdict(),
        num_classes=len(spec.class_names),
        class_names=spec.class_names,
        source=str(location),
    )

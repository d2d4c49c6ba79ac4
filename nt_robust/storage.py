"""Atomic file writes: a reader (or a crash) never sees half a file, and an old result is
replaced only once the new one is complete::

    write_json(run_dir / "summary.json", summary)
    save_arrays(run_dir / "eval" / "test.npz", per_example)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


class DamagedFileError(ValueError):
    """A result file (JSON, JSONL or .npz) is truncated, overwritten or not what it should be."""


def process_umask() -> int:
    """This process's umask, read without changing it (Linux's /proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give
    (0666 less the umask, as orbax's checkpoint files get), not mkstemp's 0600: a group sharing
    a runs folder reads the results as it reads the checkpoints. A failure (a full disk) names
    ``path`` and leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~process_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # write() and fsync() name no file
            raise OSError(error.errno, f"{error.strerror} (writing {path}; the previous version, if any, is "
                          "intact)", str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NotWritableError(PermissionError):
    """A directory results must go to is read-only (permissions or file system)."""


def check_writable(directory: str | os.PathLike, purpose: str, min_free_bytes: int = 1 << 20) -> None:
    """Fail now, not after hours of work, if files cannot be written into ``directory``
    (created if missing): probes with the same temporary file :func:`write_bytes` uses, and
    refuses a file system with less than ``min_free_bytes`` free (ENOSPC, naming it)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=".write-probe.", suffix=".tmp")
        os.close(handle)
        os.unlink(tmp)
        stats = os.statvfs(directory)
        if stats.f_bavail * stats.f_frsize < min_free_bytes:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {directory} has "
                          f"{stats.f_bavail * stats.f_frsize} bytes free, where {purpose}. Free space there, then "
                          "rerun", str(directory))
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise NotWritableError(error.errno, f"cannot write to {directory} ({error.strerror}), where {purpose}. "
                               "Make it writable, or copy the run directory somewhere writable and use the "
                               "copy") from None


def open_no_follow(path: str | os.PathLike, mode: int = 0o644) -> int:
    """``os.open(path, O_RDWR | O_CREAT)`` that refuses a symbolic link (O_NOFOLLOW): a lock
    file pointing elsewhere would let the lock truncate a file outside its directory."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link (to {os.readlink(path)}), where a lock file "
                          f"belongs; nothing was written through it. Remove the link ({path}) and rerun",
                          str(path)) from None
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block,
    waiting while another process (or thread) holds it; the OS drops it if the holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _damaged(path: Path, what: str, fix: str | None = None) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({what}). "
                            + (fix or "Restore it from a backup, or delete it and rerun the command that wrote it"))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path``; :class:`DamagedFileError` naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _damaged(Path(path), f"not valid JSON: {error}") from None


def write_jsonl(path: str | os.PathLike, rows: list[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise _damaged(path, f"line {number} is not valid JSON: {error}") from None
    return rows


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """``.npz`` of named arrays (no pickled objects), written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buffer.getvalue())


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of ``.npz`` file ``path`` (never unpickled); :class:`DamagedFileError` naming it
    if it is truncated or not such a file."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        reason = "it holds pickled objects" if "pickle" in str(error) else f"{type(error).__name__}: {error}"
        raise _damaged(Path(path), f"not an .npz of arrays: {reason}",
                       "Delete it and rerun the command that wrote it (nt-robust eval or train)") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")

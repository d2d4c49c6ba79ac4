"""One directory per run; studies read nothing else::

    RUN_DIR/config.json         resolved config (what ran, every default filled in)
    RUN_DIR/environment.json    versions, devices, processes, git commit
    RUN_DIR/metrics.jsonl       one line per epoch
    RUN_DIR/summary.json        final and best-epoch metrics, both selection rules
    RUN_DIR/checkpoints/        orbax: latest/, best_val/, best_test/
    RUN_DIR/eval/*.npz          per-example arrays (labels, predictions, margins, Lipschitz)
    RUN_DIR/.lock               held (flock) by the process training the run; names it

Only one process trains a run directory at a time: :meth:`RunDirectory.lock` takes an
exclusive ``flock`` on ``RUN_DIR/.lock`` and writes the holder (pid, host, start time,
command) into it. A second trainer fails at once with :class:`RunDirectoryLockedError`
naming the holder. The OS drops the lock when its process dies (even by SIGKILL), so a
stale ``.lock`` left by a dead process is simply taken over. Readers (``nt-robust eval``)
take no lock. On NFS, flock works across hosts with NFSv4 (Lustre needs ``-o flock``).
A ``.lock`` that is a symbolic link is refused (never followed). :func:`config_hash` ties
checkpoints and summaries to their config; :func:`config_differences` names what differs::

    config_differences(storage.read_json(run / "config.json"), to_dict(config))  # ["optim.lr: 0.05 -> 0.1"]
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from nt_robust import storage

log = logging.getLogger("nt_robust.train")


class RunConfigMismatchError(RuntimeError):
    """The run directory already holds a run made with a different config."""


class RunDirectoryLockedError(RuntimeError):
    """Another live process is training this run directory."""


class RunDirectoryNotWritableError(RuntimeError):
    """The run directory (or its file system) is read-only for this process."""


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def not_writable_error(root: Path, error: OSError, doing: str) -> RunDirectoryNotWritableError:
    return RunDirectoryNotWritableError(
        f"cannot write to {root} ({error.strerror}{f': {error.filename}' if error.filename else ''}), which "
        f"{doing} needs. Make it writable (chmod -R u+w {root}), or copy the run to a writable place and use "
        "that copy.")


class RunLock:
    """An exclusive, process-lifetime lock on a run directory (see the module docstring)::

        with RunLock(run_dir):
            ...   # train
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = storage.open_no_follow(self.path)  # a symlinked .lock is refused, never truncated through
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RunDirectoryNotWritableError(str(error)) from None
            if error.errno in _NOT_WRITABLE:
                raise not_writable_error(self.root, error, "training") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(_read_holder(fd))
            os.close(fd)
            raise RunDirectoryLockedError(
                f"{self.root} is being trained by another process ({holder}). Wait for it to finish, or "
                "stop it first; if it is a requeued copy of this job, one of the two is redundant. "
                "(A lock of a process that died is released by the OS and taken over automatically.)") from None
        stale = _read_holder(fd)
        if stale:
            log.info("taking over the lock of %s, which is no longer running", _describe_holder(stale))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file = released cleanly; non-empty = its holder died
            os.close(self._fd)         # (closing drops the flock)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder or "pid" not in holder:
        return "holder unknown"
    return (f"pid {holder['pid']} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


_MISSING = object()


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}" if path else key)
        return found
    return [] if old == new else [(path, old, new)]


# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("train.progress", "train.tensorboard", "train.wandb")


def _bn_passes_before_the_option(saved: dict[str, Any]) -> str:
    """Before ``objective.bn_passes`` every run forwarded clean then adversarial: the
    "authors" order for trades (and natural: one pass), the "trades" one for pgd_at."""
    objective = saved.get("objective", {})
    return "trades" if isinstance(objective, dict) and objective.get("kind") == "pgd_at" else "authors"


# Config fields added after runs were made, with the behaviour a saved config without one
# ran with (not necessarily today's default): resuming such a run needs that value.
# A value may also be a function of the saved config (a dict), for a field whose old
# behaviour depended on other settings.
ADDED_FIELDS = {"model.conv_impl": "xla",
                "model.dense_impl": "xla",  # issue 16: the dense kernel; every run before it used XLA's products
                # issue 12: mixed precision; every run before it was float32 at JAX's default precision.
                "model.dtype": "float32", "model.matmul_precision": "default", "eval.dtype": "float32",
                "eval.lipschitz_direction": "ascend",  # issue 11: Yang's published (descending) loop as an option
                **{f"{attack}.{field}_text": None for attack in ("train_attack", "eval.attack")
                   for field in ("eps", "step_size")},
                # issue 11: schedules epoch for epoch as TRADES and the authors; old runs keep theirs.
                "optim.milestone_convention": "legacy", "optim.late_halving_rule": "legacy",
                "objective.bn_passes": _bn_passes_before_the_option,
                "data.downsample": 1,  # issue 14: block-mean downsampling; runs before it saw full-size images
                "data.train_sample": "first"}  # issue 33: seeded training samples; before, the first N for every seed


def added_field_value(path: str, saved: dict[str, Any]) -> Any:
    """The value of added field ``path`` that reproduces what a run saved without it did."""
    value = ADDED_FIELDS[path]
    return value(saved) if callable(value) else value


def _matters(path: str, old: Any, new: Any, saved: dict[str, Any]) -> bool:
    if path.startswith(RESUMABLE_CHANGES):
        return False
    return not (old is _MISSING and path in ADDED_FIELDS and new == added_field_value(path, saved))


def _describe(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


def config_differences(saved: dict[str, Any], config: dict[str, Any], allowed: tuple[str, ...] = ()) -> list[str]:
    """``["optim.lr: 0.05 -> 0.1", ...]``: the fields where ``config`` would give another run
    than ``saved`` (settings in RESUMABLE_CHANGES, fields added since ``saved`` was written
    at their old behaviour, and the dotted paths in ``allowed`` do not count)."""
    return [f"{path}: {_describe(old)} -> {_describe(new)}" for path, old, new in _differences(saved, config)
            if _matters(path, old, new, saved) and not path.startswith(allowed or ("\0",))]


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON, less the settings that may change on resume
    (RESUMABLE_CHANGES): stored in every checkpoint record and finished summary.json, so a
    run is tied to the exact config it ran with even where config.json is gone."""
    import hashlib

    def strip(node: Any, path: str = "") -> Any:
        if not isinstance(node, dict):
            return node
        return {k: strip(v, f"{path}{k}.") for k, v in node.items()
                if not f"{path}{k}".startswith(RESUMABLE_CHANGES)}
    text = json.dumps(strip(config), sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class RunDirectory:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.environment_path = self.root / "environment.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.summary_path = self.root / "summary.json"
        self.checkpoint_dir = self.root / "checkpoints"
        self.eval_dir = self.root / "eval"

    def claim(self, config: dict[str, Any], environment: dict[str, Any], write: bool = True) -> bool:
        """Record ``config`` for a new run, or check it matches the run already here.
        Returns True when an existing run will be resumed."""
        if self.config_path.exists():
            previous = storage.read_json(self.config_path)
            if not isinstance(previous, dict):
                raise storage.DamagedFileError(f"{self.config_path} is damaged (not a JSON object). Restore it from a "
                                          "backup, or delete it: the checkpoints' records hold the config too")
            differences = config_differences(previous, config)
            if differences:
                legacy = [f"--set {path}={added_field_value(path, previous)}" for path in ADDED_FIELDS
                          if any(d.startswith(f"{path}: (absent)") for d in differences)]
                raise RunConfigMismatchError(
                    f"{self.root} already holds a run with a different config ({'; '.join(differences[:5])}). "
                    "Resume it with its own config"
                    + (f" (it predates {', '.join(legacy)}: add that to resume it exactly)" if legacy else "")
                    + ", give this run another name (--set name=...) or --run-dir, or delete that directory.")
            resumed = True
        else:
            resumed = False
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
            storage.write_json(self.config_path, config)
            storage.write_json(self.environment_path if not resumed else self.root / "environment.resumed.json",
                          environment)
        return resumed

    def lock(self) -> RunLock:
        """Take the run's exclusive lock (:class:`RunDirectoryLockedError` if another live
        process holds it); release it with ``.release()`` or use it as a context manager."""
        return RunLock(self.root).acquire()

    def read_metrics(self) -> list[dict[str, Any]]:
        return storage.read_jsonl(self.metrics_path)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        storage.write_jsonl(self.metrics_path, rows)

    def save_eval(self, name: str, per_example: dict[str, Any]) -> None:
        storage.save_arrays(self.eval_dir / f"{name}.npz", per_example)

    def write_summary(self, summary: dict[str, Any]) -> None:
        storage.write_json(self.summary_path, summary)

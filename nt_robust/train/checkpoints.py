"""Orbax checkpoints of the full :class:`TrainState` plus a JSON record per checkpoint.

Layout under ``RUN_DIR/checkpoints``: ``latest/`` (the ``keep`` most recent, written at
epoch ends and every ``checkpoint_every_steps``), ``best_val/`` and ``best_test/`` (one
each). Orbax writes into a temporary directory and renames it when complete, so a crash
never leaves a half checkpoint that a resume would pick up; a writer removes such
leftovers when it starts. Each finished step gets ``nt_robust_digest.json`` (size and
sha256 of every file), because OCDBT does not checksum its data: a flipped byte in a data
file restores silently wrong parameters. A restore verifies the digest first, skips a
damaged step with a warning (falling back to the newest intact one) and raises
:class:`CheckpointCorruptError`, naming the files and the fix, when none is left. A step
whose record says a digest follows but has none (cut off before it) counts as damaged.
SIGINT and SIGTERM during a save take effect once it is complete; a full disk, as an
OSError or as TensorStore's ``RESOURCE_EXHAUSTED``, is a :class:`CheckpointSaveError`::

    checkpoints = Checkpointer(run_dir / "checkpoints", keep=2)
    checkpoints.save("latest", state, {"epoch": 3, ...})
    state, record = checkpoints.restore("latest", abstract_state)
    Checkpointer(run_dir / "checkpoints", writer=False)    # eval: reads, never writes
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from nt_robust import storage

KINDS = ("latest", "best_val", "best_test")
DIGEST = "nt_robust_digest.json"
# Set in every record this version writes: the step gets a digest once orbax has renamed it.
# A step whose record says so but that has no digest was cut off between the rename and
# the digest (a kill), so its files cannot be checked: it is treated as damaged.
DIGEST_FOLLOWS = "digest_follows"

log = logging.getLogger("nt_robust.train")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model/optimizer the config describes."""


class CheckpointCorruptError(RuntimeError):
    """No intact checkpoint of the requested kind is left (files changed, truncated or missing)."""


# TensorStore reports a full disk as ValueError("RESOURCE_EXHAUSTED: ... No space left on
# device ...") (measured on a 3 MB tmpfs), not as an OSError.
_TENSORSTORE_ERRNO = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "No space left on device": errno.ENOSPC,
                      "PERMISSION_DENIED": errno.EACCES, "Read-only file system": errno.EROFS}


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (itself, or a cause or context orbax wrapped it in; or
    TensorStore's spelling of one in a ValueError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        for marker, number in _TENSORSTORE_ERRNO.items():
            if marker in str(error):
                return OSError(number, os.strerror(number))
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (full disk, read-only or vanished directory, ...)."""


# What orbax/TensorStore raise on damaged files when no digest says so first (found by
# flipping, truncating and deleting each file of a step): ValueError("DATA_LOSS: ..." /
# "NOT_FOUND: ..."), json/unicode decode errors (ValueError subclasses), KeyError (an item
# directory is gone), and a bare Exception("Encountered error while reading array index")
# that wraps TensorStore's zstd/chunk errors.
_READ_ERRORS = (ValueError, KeyError, TypeError, OSError)
_DAMAGE_MARKERS = ("DATA_LOSS", "NOT_FOUND", "Error reading", "Encountered error while reading", "decode",
                   "Expecting", "Unterminated", "was not found in the checkpoint", "No such file")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_digest(step_dir: Path) -> None:
    files = {str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != DIGEST}
    storage.write_json(step_dir / DIGEST, {"files": files})


def verify_digest(step_dir: Path) -> str | None:
    """None if every file matches ``step_dir``'s digest (or it has none and was written
    before digests existed); else what is wrong, including a step whose record says a
    digest follows but has none (killed between orbax's rename and the digest)."""
    digest_path = step_dir / DIGEST
    if not digest_path.exists():
        try:
            expected = json.loads((step_dir / "record" / "metadata").read_text()).get(DIGEST_FOLLOWS)
        except (OSError, ValueError, AttributeError):
            expected = False  # an unreadable record is found by the restore itself
        if expected:
            return (f"it has no {DIGEST} although its record says one follows: the process that wrote it was "
                    "stopped between orbax's rename and the digest, so its files cannot be checked")
        return None
    try:
        files = storage.read_json(digest_path)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its digest {digest_path} is unreadable ({type(error).__name__})"
    for name, expected in files.items():
        path = step_dir / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} has {size} bytes instead of {expected['size']} (truncated or overwritten)"
        if _sha256(path) != expected["sha256"]:
            return f"{path} differs from what was written (sha256 mismatch: bytes changed on disk)"
    return None


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"params/hidden1/kernel": shape}``: attribute, key and index paths spelled alike,
    so a TrainState and orbax's metadata of it compare."""
    def name(key: Any) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)
    return {"/".join(name(k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a save takes effect once the save is complete (an exception
    raised inside orbax would leave its worker threads mid-operation): SIGINT as
    KeyboardInterrupt, SIGTERM through the handler that was installed before (the trainer's
    raises :class:`Terminated`; the default one ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():  # (None: a handler set outside Python, which cannot be put back)
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if signal.SIGTERM in received:
        handler = previous[signal.SIGTERM]
        if callable(handler):
            handler(signal.SIGTERM, None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGTERM)
    if signal.SIGINT in received:
        raise KeyboardInterrupt


def _settle(threads: set[threading.Thread], seconds: float = 5.0) -> None:
    """Give the worker threads of a failed save a moment to finish their writes, so that
    nothing is still writing into its temporary directory when the error is reported (a
    retry in the same process would otherwise race them while cleaning it up)."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        while not thread.daemon and time.monotonic() < deadline:
            try:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
                break
            except Exception as error:  # noqa: BLE001 - orbax's threads re-raise their own part of the failure in join()
                if isinstance(error, RuntimeError) and "before it is started" in str(error):
                    time.sleep(0.01)  # threading.enumerate() also lists threads still starting up
                    continue
                log.debug("a worker thread of the failed save: %r", error)
                break


class Checkpointer:
    """``writer=False`` (evaluation) never creates, cleans up or deletes anything, so it
    can read a run another process is training."""

    def __init__(self, directory: str | Path, keep: int = 2, writer: bool = True):
        self.directory = Path(directory).absolute()
        self.writer = writer
        # Synchronous saves: save() waits for each anyway, and orbax's async commit threads
        # are non-daemon and wait up to 300 s for each other after a failure, keeping a
        # failed process alive (measured: two trainers on one run directory hung 300 s).
        self._managers = {
            kind: ocp.CheckpointManager(
                self.directory / kind,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep if kind == "latest" else 1, create=writer, read_only=not writer,
                    cleanup_tmp_directories=writer, enable_async_checkpointing=False),
                item_handlers={"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()},
            )
            for kind in KINDS
        }

    def latest_step(self, kind: str = "latest") -> int | None:
        return self._managers[kind].latest_step()

    def step_dir(self, kind: str, step: int) -> Path:
        return self.directory / kind / str(step)

    def save(self, kind: str, state: Any, record: dict[str, Any]) -> None:
        """Write checkpoint ``kind`` at ``state.step``. The previous checkpoints are removed
        (beyond ``keep``) only after the new one is complete; a failed write raises
        :class:`CheckpointSaveError` and leaves them as they were."""
        step = int(state.step)
        manager = self._managers[kind]
        previous = [s for s in manager.all_steps() if s != step]
        threads_before = set(threading.enumerate())
        with _sigint_deferred():
            if step in manager.all_steps():  # a replayed step (or a damaged one being rewritten)
                manager.delete(step)
            try:
                record = {**record, DIGEST_FOLLOWS: True}
                manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            record=ocp.args.JsonSave(record)), force=True)
                manager.wait_until_finished()
                if jax.process_index() == 0:
                    write_digest(self.step_dir(kind, step))
            except Exception as failure:  # noqa: BLE001 - orbax may wrap the OSError; re-raised unless it is one
                error = _os_error_in(failure)
                if error is None:
                    raise
                _settle(set(threading.enumerate()) - threads_before)
                kept = (f"the previous checkpoint {self.step_dir(kind, max(previous))} is intact"
                        if previous else "no earlier checkpoint of this kind exists")
                raise CheckpointSaveError(
                    f"could not write checkpoint {self.step_dir(kind, step)}: {error.strerror or error}"
                    f"{f' ({error.filename})' if error.filename else ''}; {kept}. Free space or fix the "
                    "directory's permissions, then rerun the same command to resume from the last "
                    "checkpoint.") from failure

    def restore(self, kind: str, like_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The newest intact checkpoint of ``kind`` (or step ``step``) restored into the
        structure, shapes and shardings of ``like_state``; None if there is none.

        A damaged step is skipped with a warning; :class:`CheckpointCorruptError` if no
        intact one is left, :class:`CheckpointMismatchError` if it was written by another
        model or optimizer."""
        manager = self._managers[kind]
        abstract_state = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
        damaged: list[tuple[Path, str]] = []
        tried: set[int] = set()
        for _ in range(3):  # re-list if a running trainer replaced steps while we read them
            if step is None:
                manager.reload()
            steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
            steps = [s for s in steps if s not in tried]
            vanished = False
            for s in steps:
                tried.add(s)
                step_dir = self.step_dir(kind, s)
                problem = verify_digest(step_dir)
                if problem is None:
                    result = self._restore_step(manager, kind, s, abstract_state)
                    if isinstance(result, tuple):
                        if damaged:
                            log.warning("restored %s instead (older, intact)", step_dir)
                        return result
                    problem = result
                if not step_dir.exists():
                    vanished = True  # deleted by a trainer after we listed it: not damage
                    continue
                log.warning("checkpoint %s is damaged: %s; falling back to the next older one", step_dir, problem)
                damaged.append((step_dir, problem))
            if not vanished or step is not None:
                break
        if not damaged:
            return None
        raise CheckpointCorruptError(self._no_intact_message(kind, damaged))

    def _restore_step(self, manager: ocp.CheckpointManager, kind: str, step: int,
                      abstract_state: Any) -> tuple[Any, dict[str, Any]] | str:
        """The restored (state, record), or a description of the damage."""
        step_dir = self.step_dir(kind, step)
        verified = (step_dir / DIGEST).exists()
        try:
            stored = _leaf_shapes(manager.item_metadata(step)["state"].tree)
        except _READ_ERRORS + (AttributeError,) as error:
            return f"its metadata is unreadable ({type(error).__name__}: {str(error)[:200]})"
        wanted = _leaf_shapes(abstract_state)
        differences = ([f"{k}: checkpoint {stored[k]}, config {wanted[k]}" for k in wanted
                        if k in stored and stored[k] != wanted[k]]
                       + [f"{k}: only in the config" for k in wanted if k not in stored]
                       + [f"{k}: only in the checkpoint" for k in stored if k not in wanted])
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} does not match the model and optimizer of this config "
                f"({'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}). It was written by "
                "a different model/width/optimizer: point to the run directory that made it, or start "
                "a new run with another name.")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 -- orbax wraps TensorStore read errors in a bare Exception
            text = f"{type(error).__name__}: {str(error)[:300]}"
            if not verified and (isinstance(error, _READ_ERRORS) or type(error) is Exception) \
                    and any(marker in str(error) for marker in _DAMAGE_MARKERS):
                return text
            if verified:  # the files are byte for byte what was written: the reader differs
                raise CheckpointMismatchError(
                    f"checkpoint {step_dir} is intact but does not restore into this config's "
                    f"model and optimizer ({text}). Point to the run directory that made it, or start a new "
                    "run with another name.") from None
            raise
        return restored["state"], dict(restored["record"])

    def _no_intact_message(self, kind: str, damaged: list[tuple[Path, str]]) -> str:
        listing = "; ".join(f"{d}: {p}" for d, p in damaged)
        kind_dir = self.directory / kind
        if kind == "latest":
            fix = (f"Restore those files from a backup, or delete {kind_dir} to retrain the run from step 0 "
                   "(its config stays; metrics.jsonl is rewritten as it retrains)")
        else:
            fix = (f"Evaluate another checkpoint (--checkpoint latest or "
                   f"{'best_val' if kind == 'best_test' else 'best_test'}), restore the files from a backup, "
                   "or retrain in a new run directory")
        return f"no intact checkpoint in {kind_dir} ({listing}). {fix}."

    def close(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()
            manager.close()

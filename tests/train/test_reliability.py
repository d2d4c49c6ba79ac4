"""Faults and bad input, in-process (docs/reliability.md lists each with its test):
damaged checkpoints, a full disk during a save, Ctrl-C, a changed config, a checkpoint of
another model, a read-only run directory and bad inputs to evaluation.

Every run here is the same tiny MLP on the synthetic set (7 steps per epoch, checkpoints
every 2 steps, so latest/ holds steps 6 and 7), so resumed runs are compared bit for bit
with the uninterrupted one of the module fixture.
"""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from nt_robust import storage
from nt_robust.cli import main
from nt_robust.config import load_config
from nt_robust.data import DataFormatError
from nt_robust.train import ExperimentConfig, RunConfigMismatchError, Trainer, train
from nt_robust.train.checkpoints import (DIGEST, DIGEST_FOLLOWS, CheckpointCorruptError, CheckpointMismatchError,
                                         CheckpointSaveError, verify_digest)
from nt_robust.train.loop import WALL_CLOCK_FIELDS, TrainingInterrupted
from nt_robust.train.run_dir import RunDirectoryNotWritableError
from nt_robust.train.state import model_variables

TINY = ["data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=mlp",
        "model.width=16", "model.depth=1", "train.batch_size=64", "train.epochs=1", "train_attack.num_steps=1",
        "eval.attack.num_steps=1", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=64",
        "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "train.checkpoint_every_steps=2"]
TIMING = WALL_CLOCK_FIELDS


def tiny(*extra: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, TINY + list(extra))


def leaves(run_dir: Path, kind: str = "latest") -> list[np.ndarray]:
    state, _ = Trainer(tiny(), run_dir).restore(kind)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.params, state.opt_state))]


def assert_same_run(reference: Path, other: Path) -> None:
    for a, b in zip(leaves(reference), leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING}  # noqa: E731
    assert strip(storage.read_json(reference / "summary.json")["final"]) == strip(storage.read_json(other / "summary.json")["final"])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def largest_data_file(step_dir: Path) -> Path:
    return max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reliability") / "reference"
    train(tiny(), run_dir)
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints" / "latest").iterdir())
    assert steps == [6, 7]
    return run_dir


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    shutil.copytree(reference, tmp_path / "run")
    return tmp_path / "run"


def test_flipped_byte_in_newest_checkpoint_falls_back_with_a_warning_and_resumes_exactly(reference, copy, caplog):
    # OCDBT has no checksum of its own: without the digest this restores wrong parameters silently.
    damaged = largest_data_file(copy / "checkpoints" / "latest" / "7")
    flip_byte(damaged)
    with caplog.at_level(logging.WARNING, logger="nt_robust.train"):
        state, record = Trainer(tiny(), copy).restore("latest")
    assert int(state.step) == 6 and record["progress"]["batch"] == 6
    assert f"{copy / 'checkpoints' / 'latest' / '7'} is damaged" in caplog.text and str(damaged) in caplog.text
    (copy / "summary.json").unlink()
    train(tiny(), copy)  # resumes at step 6, rewrites step 7
    assert verify_digest(copy / "checkpoints" / "latest" / "7") is None
    assert_same_run(reference, copy)


def test_truncated_files_in_every_latest_step_stop_naming_the_files_and_the_fix(copy):
    truncated = [largest_data_file(copy / "checkpoints" / "latest" / step) for step in ("6", "7")]
    for path in truncated:
        path.write_bytes(path.read_bytes()[:10])
    before = snapshot(copy / "checkpoints")
    with pytest.raises(CheckpointCorruptError) as error:
        train(tiny(), copy)
    message = str(error.value)
    assert "no intact checkpoint in" in message and "truncated" in message
    assert all(str(path) in message for path in truncated)
    assert f"delete {copy / 'checkpoints' / 'latest'} to retrain" in message
    assert snapshot(copy / "checkpoints") == before  # nothing deleted or rewritten


def test_corrupt_best_checkpoint_in_eval_names_it_and_suggests_another(copy, capsys):
    flip_byte(largest_data_file(next((copy / "checkpoints" / "best_test").iterdir())))
    assert main(["eval", str(copy), "--checkpoint", "best_test", "--examples", "8"]) == 2
    err = capsys.readouterr().err
    assert "CheckpointCorruptError" in err and str(copy / "checkpoints" / "best_test") in err
    assert "--checkpoint latest" in err and "Traceback" not in err
    assert main(["eval", str(copy), "--checkpoint", "latest", "--examples", "8"]) == 0  # the suggested fix works


def test_damaged_checkpoint_without_digest_is_recognised_from_orbax_errors(copy, caplog):
    # Steps written before digests existed (no digest, and no record saying one follows):
    # TensorStore's own errors mark the damage.
    for step_dir in (copy / "checkpoints" / "latest").iterdir():
        (step_dir / DIGEST).unlink()
        record = json.loads((step_dir / "record" / "metadata").read_text())
        del record[DIGEST_FOLLOWS]
        (step_dir / "record" / "metadata").write_text(json.dumps(record))
    path = largest_data_file(copy / "checkpoints" / "latest" / "7")
    path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="nt_robust.train"):
        state, _ = Trainer(tiny(), copy).restore("latest")
    assert int(state.step) == 6 and "latest/7 is damaged" in caplog.text


def test_checkpoint_of_another_width_or_architecture_is_a_mismatch_not_damage(copy):
    for name, change, detail in (
            ("wider", ["model.width=32"], "params/hidden1/kernel: checkpoint (64, 16), config (64, 32)"),
            ("deeper", ["model.depth=2"], "params/hidden2/bias: only in the config")):
        shutil.copytree(copy / "checkpoints", copy.parent / name / "checkpoints")
        with pytest.raises(CheckpointMismatchError) as error:
            Trainer(tiny(*change), copy.parent / name).restore("latest")
        assert detail in str(error.value) and "different model/width/optimizer" in str(error.value)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint_and_the_run_resumes_exactly(
        reference, tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    run_dir, saves = tmp_path / "run", []
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def disk_full_at_the_third_save(self, item, directory):
        saves.append(directory)
        if len(saves) == 3:  # step 6, after its arrays were written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
        return await original(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_the_third_save)
    with pytest.raises(CheckpointSaveError) as error:
        train(tiny(), run_dir)
    message = str(error.value)
    assert "latest/6" in message and "No space left on device" in message
    assert f"previous checkpoint {run_dir / 'checkpoints' / 'latest' / '4'} is intact" in message
    latest = run_dir / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["2", "4", "6.orbax-checkpoint-tmp"]
    assert verify_digest(latest / "4") is None and (latest / "4" / DIGEST).exists()
    monkeypatch.undo()
    train(tiny(), run_dir)  # the half-written step 6 is cleaned up, the run resumes from step 4
    assert sorted(p.name for p in latest.iterdir()) == ["6", "7"]
    assert_same_run(reference, run_dir)


def test_full_disk_while_writing_a_result_file_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    storage.write_json(path, {"old": 1})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        storage.write_json(path, {"new": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_ctrl_c_during_training_keeps_the_last_checkpoint_and_the_resume_is_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny(), run_dir)
    original, calls = trainer.train_step, [0]

    def step_then_ctrl_c(*args):
        calls[0] += 1
        if calls[0] == 5:  # SIGINT arrives while step 5 runs
            raise KeyboardInterrupt
        return original(*args)

    trainer.train_step = step_then_ctrl_c
    with pytest.raises(TrainingInterrupted) as interrupted:
        trainer.fit()
    assert f"last checkpoint is step 4 in {run_dir / 'checkpoints' / 'latest'}" in str(interrupted.value)
    assert "Run the same command again to resume" in str(interrupted.value)
    assert sorted(p.name for p in (run_dir / "checkpoints" / "latest").iterdir()) == ["2", "4"]
    assert (run_dir / ".lock").read_text() == ""  # released
    train(tiny(), run_dir)
    assert_same_run(reference, run_dir)


def test_ctrl_c_during_a_checkpoint_save_waits_for_the_save_to_finish(tmp_path, monkeypatch):
    import signal

    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def ctrl_c_mid_save(self, item, directory):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the checkpoint is half written
        return await original(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", ctrl_c_mid_save)
    # Python's default_int_handler, or SIG_IGN where the test process was started in the
    # background by a non-interactive shell (which ignores SIGINT for asynchronous commands)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="last checkpoint is step 2"):
        train(tiny(), tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest"
    assert [p.name for p in latest.iterdir()] == ["2"] and verify_digest(latest / "2") is None
    assert (latest / "2" / DIGEST).exists()
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_config_changed_between_start_and_resume_is_refused_and_nothing_is_touched(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, stop_after_steps=3)
    before = snapshot(run_dir)
    with pytest.raises(RunConfigMismatchError, match=r"optim\.lr: 0\.05 -> 0\.1"):
        train(tiny("optim.lr=0.1"), run_dir)
    after = snapshot(run_dir)
    assert after.pop(".lock") == b"" and before.pop(".lock") == b""
    assert after == before


def test_read_only_run_directory_fails_at_once_naming_it(copy, monkeypatch, capsys):
    # Tests run as root here, where chmod does not stop writes: make the file system say EROFS.
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(copy)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    (copy / "summary.json").unlink()
    before = snapshot(copy)
    with pytest.raises(RunDirectoryNotWritableError, match="Read-only file system") as error:
        train(tiny(), copy)
    assert str(copy) in str(error.value) and "copy the run" in str(error.value)
    assert main(["eval", str(copy), "--checkpoint", "latest", "--examples", "8"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and str(copy / "eval") in err and "Traceback" not in err
    assert snapshot(copy) == before


@pytest.mark.parametrize("images,labels,message", [
    (np.full((4, 8, 8, 1), np.nan, np.float32), np.zeros(4, np.int32), "4 of 4 images contain NaN or inf"),
    (np.full((4, 8, 8, 1), 2.0, np.float32), np.zeros(4, np.int32), "values outside [0, 1]"),
    (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 4, 2]), "1 labels lie outside [0, 4) (first: index 2, value 4)"),
    (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, -1, 0, 0]), "outside [0, 4)"),
    (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.float32), "integer class indices"),
    (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, np.int32), "4 images but 3 labels"),
])
def test_nan_or_out_of_range_inputs_and_labels_given_to_eval_are_refused(reference, images, labels, message):
    trainer = Trainer(tiny(), reference)
    state, _ = trainer.restore("latest")
    with pytest.raises(DataFormatError) as error:
        trainer.evaluator(model_variables(state, use_ema=False), images, labels)
    assert message in str(error.value)


def test_nan_images_given_to_a_protocol_are_refused():
    from nt_robust.attacks.protocols import get_protocol, run_protocol

    images = np.zeros((2, 8, 8, 1), np.float32)
    images[1, 3, 3, 0] = np.nan  # passes a min() < 0 / max() > 1 range check
    with pytest.raises(DataFormatError, match="1 of 2 images contain NaN or inf \\(first: index 1\\)"):
        run_protocol(get_protocol("pgd20-0.003", 0.031), lambda v, x: x, {}, images, np.zeros(2, np.int32))


FAULTS = Path(__file__).with_name("fault_subprocess.py")


def run_fault(mode: str, run_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(FAULTS), mode, str(run_dir), json.dumps(TINY)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return done, time.monotonic() - start


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_and_the_resume_is_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    killed, _ = run_fault("kill-mid-save", run_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = run_dir / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["2", "4", "6.orbax-checkpoint-tmp"]
    assert verify_digest(latest / "4") is None and (latest / "4" / DIGEST).exists()
    assert int(Trainer(tiny(), run_dir).restore("latest")[0].step) == 4  # the half-written step is invisible
    train(tiny(), run_dir)
    assert sorted(p.name for p in latest.iterdir()) == ["6", "7"]  # leftover removed, run finished
    assert_same_run(reference, run_dir)


def test_disk_full_in_the_cli_exits_non_zero_within_seconds_with_no_thread_left_behind(tmp_path):
    # orbax's async commit threads used to keep a failed process alive for 300 s; the fault
    # script adds a non-daemon thread that would sleep 300 s.
    done, seconds = run_fault("disk-full", tmp_path / "run")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "nt-robust: error: CheckpointSaveError: could not write checkpoint" in done.stderr, done.stderr[-6000:]
    assert "No space left on device" in done.stderr and "latest/4 is intact" in done.stderr
    # No traceback of ours (TensorStore may still report its own cancelled writes afterwards).
    assert "Traceback" not in done.stderr.split("nt-robust: error:")[0] and "nt_robust/" not in done.stderr
    assert seconds < 60  # the lingering thread would have kept it alive 300 s


def test_eval_reads_a_run_that_another_process_is_training(copy, capsys):
    from nt_robust.train.run_dir import RunLock

    with RunLock(copy):  # as a trainer holds it; eval takes no lock and only reads checkpoints
        assert main(["eval", str(copy), "--checkpoint", "latest", "--examples", "8"]) == 0
    assert '"step": 7' in capsys.readouterr().out


def test_settling_a_failed_save_tolerates_threads_that_are_still_starting():
    # threading.enumerate() lists threads between start() and their first instruction, and
    # join() on those raises "cannot join thread before it is started" (seen once in CI).
    from nt_robust.train.checkpoints import _settle

    class Starting:
        daemon, attempts = False, 0

        def join(self, timeout=None):
            self.attempts += 1
            if self.attempts < 3:
                raise RuntimeError("cannot join thread before it is started")

    thread = Starting()
    _settle({thread}, seconds=5.0)
    assert thread.attempts == 3


def test_settling_a_failed_save_survives_orbax_threads_that_re_raise_the_failure_in_join():
    # orbax's worker threads re-raise their own exception from join(); a full disk then hit
    # _settle a second time and escaped as a raw ValueError instead of CheckpointSaveError
    # (CI, 2026-12-07). The thread class here is orbax's own.
    from orbax.checkpoint._src.futures.future import _SignalingThread

    from nt_robust.train.checkpoints import _settle

    def full_disk():
        raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": No space left on device')

    thread = _SignalingThread(target=full_disk, send_signals=[], receive_signals=[], daemon=False)
    thread.start()
    with pytest.raises(ValueError, match="RESOURCE_EXHAUSTED"):  # the behaviour this guards against
        thread.join()
    _settle({thread}, seconds=5.0)
    assert not thread.is_alive()

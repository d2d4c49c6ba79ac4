"""One trainer per run directory: the lock names its holder, a dead holder's lock is taken
over, a second `nt-robust train` exits at once, and Ctrl-C ends the CLI with 130."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nt_robust.train.checkpoints import DIGEST, verify_digest
from nt_robust.train.run_dir import RunDirectoryLockedError, RunLock

FAULTS = Path(__file__).with_name("fault_subprocess.py")
TINY = ["data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=mlp",
        "model.width=16", "model.depth=1", "train.batch_size=64", "train_attack.num_steps=1",
        "eval.attack.num_steps=1", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=64",
        "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "optim.schedule=constant"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def cli(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nt_robust.cli", "train", "--run-dir", str(run_dir),
            *[a for o in TINY + list(overrides) for a in ("--set", o)]]


@pytest.fixture
def holder(tmp_path):
    process = subprocess.Popen([sys.executable, str(FAULTS), "hold-lock", str(tmp_path / "run")], env=ENV,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_lock_held_by_a_live_process_names_it_and_a_dead_ones_is_taken_over(tmp_path, holder, caplog):
    with pytest.raises(RunDirectoryLockedError) as error:
        RunLock(tmp_path / "run").acquire()
    message = str(error.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in message
    assert "hold-lock" in message  # its command line
    holder.kill()  # SIGKILL: no chance to clean up; the OS drops the flock
    holder.wait()
    with caplog.at_level(logging.INFO, logger="nt_robust.train"):
        lock = RunLock(tmp_path / "run").acquire()
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run" / ".lock").read_text() == ""


def test_second_trainer_on_a_locked_run_directory_exits_non_zero_within_seconds(tmp_path, holder):
    start = time.monotonic()
    done = subprocess.run(cli(tmp_path / "run", "train.epochs=1"), capture_output=True, text=True, timeout=120,
                          env=ENV)
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"RunDirectoryLockedError: {tmp_path / 'run'} is being trained by another process (pid {holder.pid}" \
        in done.stderr
    assert "Traceback" not in done.stderr and seconds < 60  # (interpreter and JAX start-up included)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing else written


def test_ctrl_c_in_the_cli_exits_130_saying_how_to_resume_with_an_intact_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # SIGINT at its default in the child: a suite started in the background by a non-interactive
    # shell ignores SIGINT, and an ignored signal stays ignored across exec (as it should for
    # `nt-robust train ... &`), which would turn this Ctrl-C into a 60 s timeout
    process = subprocess.Popen(cli(run_dir, "train.epochs=200", "train.checkpoint_every_steps=1"), env=ENV,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 90
    while not (latest.exists() and any((p / DIGEST).exists() for p in latest.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert time.monotonic() - start < 30
    assert "nt-robust: interrupted: training of" in err and "Run the same command again to resume" in err
    assert "Traceback" not in err
    steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    assert f"its last checkpoint is step {steps[-1]} in {latest}" in err
    assert not [p for p in latest.iterdir() if not p.name.isdigit()]  # no half-written step
    assert all(verify_digest(latest / str(s)) is None for s in steps)
    assert (run_dir / ".lock").read_text() == ""

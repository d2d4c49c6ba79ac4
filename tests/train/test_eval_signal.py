"""SIGTERM during `nt-robust eval` (a real signal to a real process): it stops like Ctrl-C,
says so (exit 143, no traceback), and the rerun resumes after the finished batches."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

from nt_robust.cli import main

CHILD = textwrap.dedent("""
    import pathlib, sys, time
    from nt_robust.attacks import protocols

    run_dir, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    original = protocols.BatchStore.save

    def save(self, index, arrays):  # the first batch is stored; then wait for the test's SIGTERM
        original(self, index, arrays)
        if index == 0:
            marker.touch()
            time.sleep(120)

    protocols.BatchStore.save = save
    from nt_robust.cli import main

    sys.argv = ["nt-robust", "eval", run_dir, "--protocol", "pgd20", "--examples", "64", "--batch-size", "16"]
    sys.exit(main())
""")


def test_sigterm_during_eval_exits_143_and_the_rerun_resumes_after_the_stored_batches(tiny_run, tmp_path, capsys):
    run_dir, marker = tmp_path / "run", tmp_path / "first_batch_stored"
    shutil.copytree(tiny_run, run_dir)
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(marker)], stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert "nt-robust: terminated (SIGTERM)" in err and "Traceback" not in err
    # the rerun (this process) starts after the stored batch and finishes
    assert main(["eval", str(run_dir), "--protocol", "pgd20", "--examples", "64", "--batch-size", "16"]) == 0
    assert "resuming pgd20: 1 batch(es) already done" in capsys.readouterr().err

"""Faults that need their own process (used by the tests; not a test itself):

    python fault_subprocess.py kill-mid-save RUN_DIR '[overrides]'   # SIGKILL while step 6 is half written
    python fault_subprocess.py disk-full RUN_DIR '[overrides]'       # nt-robust train; ENOSPC at step 6,
                                                                     # and a thread that would linger 300 s
    python fault_subprocess.py hold-lock RUN_DIR                     # take the run's lock, then sleep
    python fault_subprocess.py signal-at-save RUN_DIR '[overrides]'  # nt-robust train; RUN_DIR.saving appears
                                                                     # when the epoch-end save of step 7 starts,
                                                                     # which then waits for RUN_DIR.signalled:
                                                                     # the test's signal arrives mid-save
    python fault_subprocess.py cli RUN_DIR '[overrides]'             # nt-robust train, nothing injected
"""

import errno
import json
import os
import signal
import sys
import time

mode, run_dir = sys.argv[1], sys.argv[2]

if mode == "hold-lock":  # run_dir.py alone: importing nt_robust.train would start JAX (seconds)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "nt_robust" / "train" / "run_dir.py"
    spec = importlib.util.spec_from_file_location("run_dir", path)
    run_dir_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_dir_module)
    run_dir_module.RunLock(run_dir).acquire()
    print("locked", flush=True)
    time.sleep(120)
    sys.exit(0)

from orbax.checkpoint._src.handlers import json_checkpoint_handler  # noqa: E402

overrides = json.loads(sys.argv[3])
original, saves = json_checkpoint_handler.JsonCheckpointHandler._save_fn, []


async def faulty_save(self, item, directory):
    if mode == "signal-at-save":
        if "latest/7." in str(directory):
            import asyncio

            open(run_dir + ".saving", "w").close()
            for _ in range(600):  # until the test has sent its signal (it then creates RUN_DIR.signalled)
                if os.path.exists(run_dir + ".signalled"):
                    break
                await asyncio.sleep(0.05)
        return await original(self, item, directory)
    if mode == "cli":
        return await original(self, item, directory)
    saves.append(directory)
    if len(saves) == 3:  # step 6: its arrays are in 6.orbax-checkpoint-tmp, its record is not
        if mode == "kill-mid-save":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
    return await original(self, item, directory)


json_checkpoint_handler.JsonCheckpointHandler._save_fn = faulty_save

if mode == "kill-mid-save":
    from nt_robust.config import load_config  # noqa: E402
    from nt_robust.train import ExperimentConfig, train  # noqa: E402

    train(load_config(ExperimentConfig, None, overrides), run_dir)
else:
    import threading

    from nt_robust.cli import main  # noqa: E402

    # A non-daemon thread that outlives the error, as orbax's commit threads can (they wait
    # up to 300 s for each other): the command must still end within seconds.
    if mode == "disk-full":
        threading.Thread(target=time.sleep, args=(300,), name="lingering", daemon=False).start()
    sys.argv = ["nt-robust", "train", "--run-dir", run_dir] + [a for o in overrides for a in ("--set", o)]
    sys.exit(main())

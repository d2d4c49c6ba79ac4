"""Run a short training in a fresh process (device count, distributed setup and crashes
need their own process). Used by the tests; not a test itself.

    python train_subprocess.py RUN_DIR OUT.npz '["model.arch=mlp", ...]' [--kill-after-steps N]
        [--coordinator HOST:PORT --num-processes P --process-id I]

OUT.npz holds the final parameters, BatchNorm statistics and optimizer state.
"""

import argparse
import json
import os
import signal
import sys

from process_setup import add_distributed_arguments, start_jax  # this folder (the script's sys.path[0])

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("out")
parser.add_argument("overrides")
parser.add_argument("--kill-after-steps", type=int)
add_distributed_arguments(parser)
args = parser.parse_args()

import jax  # noqa: E402
import numpy as np  # noqa: E402

start_jax(args)

from nt_robust.config import load_config  # noqa: E402
from nt_robust.train import ExperimentConfig, Trainer  # noqa: E402

config = load_config(ExperimentConfig, None, json.loads(args.overrides))
trainer = Trainer(config, args.run_dir)
if args.kill_after_steps is not None:
    original_step, calls = trainer.train_step, [0]

    def step_then_die(*a):
        out = original_step(*a)
        calls[0] += 1
        if calls[0] == args.kill_after_steps:
            jax.block_until_ready(out)
            os.kill(os.getpid(), signal.SIGKILL)  # an unclean death, as from the OOM killer
        return out

    trainer.train_step = step_then_die

summary = trainer.fit()
state, _ = trainer.restore("latest")
leaves = {f"leaf{i}": np.asarray(leaf) for i, leaf in
          enumerate(jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state)))}

if jax.process_index() == 0:
    np.savez(args.out, **leaves)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                      "final": summary["final"]}))
sys.stdout.flush()

"""Train in a fresh process (one of two, or alone) and record every batch the training loop fed,
as the whole global batch after augmentation. Used by tests/train/test_per_host_data.py; not a
test itself.

    python per_host_subprocess.py RUN_DIR OUT.npz '["data.dataset=synthetic", ...]' [--stop-after-steps N]
        [--coordinator HOST:PORT --num-processes 2 --process-id I]

OUT.npz (written by process 0) holds, for every step s the loop ran, ``images{s}`` (the global
batch as the step augments it: the union of every host's rows, gathered), ``labels{s}``, and,
when the run finished, the final parameters and optimizer state (``leaf{i}``).
"""

import argparse
import json
import sys

from process_setup import add_distributed_arguments, start_jax  # this folder (the script's sys.path[0])

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("out")
parser.add_argument("overrides")
parser.add_argument("--stop-after-steps", type=int)
add_distributed_arguments(parser)
args = parser.parse_args()

import jax  # noqa: E402
import numpy as np  # noqa: E402

start_jax(args)

from nt_robust.config import load_config  # noqa: E402
from nt_robust.data import augment_batch, to_float  # noqa: E402
from nt_robust.train import ExperimentConfig, Trainer  # noqa: E402
from nt_robust.train.sharding import to_host  # noqa: E402
from nt_robust.train.step import step_key_root  # noqa: E402

config = load_config(ExperimentConfig, None, json.loads(args.overrides))
trainer = Trainer(config, args.run_dir)


@jax.jit
def augmented(images, step):
    """What the train step does to its batch first (nt_robust/train/step.py)."""
    augment_key, _ = jax.random.split(jax.random.fold_in(step_key_root(config.train.seed), step))
    return augment_batch(augment_key, to_float(images), crop_padding=config.data.crop_padding, flip=config.data.flip)


recorded = {}
real_step = trainer.train_step


def recording_step(state, images, labels):
    step = int(to_host(state.step))
    recorded[f"images{step}"] = np.asarray(to_host(augmented(images, state.step)))
    recorded[f"labels{step}"] = np.asarray(to_host(labels))
    return real_step(state, images, labels)


trainer.train_step = recording_step
summary = trainer.fit(args.stop_after_steps)
if "final" in summary:
    state, _ = trainer.restore("latest")
    recorded.update({f"leaf{i}": np.asarray(leaf) for i, leaf in
                     enumerate(jax.tree_util.tree_leaves(to_host((state.params, state.opt_state))))})
if jax.process_index() == 0:
    np.savez(args.out, **recorded)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "summary": summary}))
sys.stdout.flush()

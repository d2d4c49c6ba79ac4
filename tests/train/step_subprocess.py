"""One training step per (conv_impl, objective) from a fixed state, in a fresh process
(device count and jax.distributed need their own process). Used by
tests/train/test_parallel_and_resume.py; not a test itself.

    # single device: writes the start state, the steps, and the sensitivity probes
    python step_subprocess.py OUT.npz --write-state STATE.npz
    # sharded (NT_ROBUST_CPU_DEVICES=4, or --coordinator ... for two processes)
    python step_subprocess.py OUT.npz --read-state STATE.npz [--conv-impls auto]
        [--coordinator H:P --num-processes 2 --process-id I]

For every configuration, OUT.npz holds ``{conv_impl}/{objective}/leaf{i}`` (parameters,
BatchNorm statistics and optimizer state after the step) and ``.../loss``. The single-device
run adds, from the same compiled step:

- ``.../ulp{r}/…``: the step from the start state with every parameter moved by one ulp
  (r = 0, 1, 2: three random sign patterns). This measures, on the machine the test runs
  on, how much a rounding-sized change of the inputs moves this step's outputs.
- ``.../fault/…``: the step with the last quarter of the batch replaced by other examples,
  a stand-in for a wrong batch split; the test checks its tolerance is far below this.
"""

import argparse
import json
import os
import sys
import time

from process_setup import add_distributed_arguments, start_jax  # this folder (the script's sys.path[0])

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--write-state")
parser.add_argument("--read-state")
add_distributed_arguments(parser)
parser.add_argument("--conv-impls", default="auto,xla")
args = parser.parse_args()

import jax  # noqa: E402
import numpy as np  # noqa: E402

start_jax(args)

from nt_robust.config import load_config  # noqa: E402
from nt_robust.models import create_model, init_variables  # noqa: E402
from nt_robust.train import ExperimentConfig  # noqa: E402
from nt_robust.train.splits import prepare_splits  # noqa: E402
from nt_robust.train.optim import make_optimizer  # noqa: E402
from nt_robust.train.sharding import (batch_sharding, data_mesh, global_batch, process_rows,  # noqa: E402
                                      replicate, replicated_sharding, to_host)
from nt_robust.train.state import create_train_state, init_key  # noqa: E402
from nt_robust.train.step import make_train_step  # noqa: E402

# A WRN-10-1 (BatchNorm: statistics over the global batch) on the 8x8 synthetic set.
BASE = ["data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=wrn",
        "model.depth=10", "model.width=1", "train.batch_size=32", "train.epochs=1", "optim.lr=0.05",
        "train.progress=false"]
OBJECTIVES = {
    "natural": ["objective.kind=natural"],
    "pgd_at": ["objective.kind=pgd_at", "train_attack.loss=ce", "train_attack.norm=linf",
               "train_attack.eps=0.031", "train_attack.step_size=0.007", "train_attack.num_steps=2",
               "train_attack.start=uniform"],
    "trades": ["objective.kind=trades", "train_attack.loss=kl", "train_attack.norm=linf",
               "train_attack.eps=0.031", "train_attack.step_size=0.007", "train_attack.num_steps=2",
               "train_attack.start=gaussian"],
}
BATCH = 32


def host_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(to_host(tree))]


def one_ulp(params, seed: int):
    """Every parameter moved one ulp up or down (random signs)."""
    rng = np.random.default_rng(seed)

    def move(leaf):
        leaf = np.asarray(leaf)
        up = rng.random(leaf.shape) < 0.5
        return np.where(up, np.nextafter(leaf, np.inf), np.nextafter(leaf, -np.inf)).astype(leaf.dtype)

    return jax.tree_util.tree_map(move, params)


def start_state_for(config, model, optimizer, image_shape):
    """The state every process steps from: the single-device run's (saved), so that the
    comparison sees the step alone, not initialization."""
    variables = init_variables(model, init_key(config.train.seed), image_shape)
    state = jax.tree_util.tree_map(np.asarray, create_train_state(
        variables, optimizer, config.objective.lam, use_ema=False, seed=config.train.seed))
    if args.read_state:
        # The single-device process writes it first thing (atomically); the sharded ones start
        # beside it and wait, so their compilations overlap (XLA compiles on one thread).
        deadline = time.monotonic() + 600
        while not os.path.exists(args.read_state):
            if time.monotonic() > deadline:
                sys.exit(f"no start state at {args.read_state} after 600 s")
            time.sleep(0.2)
        with np.load(args.read_state) as saved:
            treedef = jax.tree_util.tree_structure(state)
            state = jax.tree_util.tree_unflatten(treedef, [saved[f"leaf{i}"] for i in range(treedef.num_leaves)])
    if args.write_state:
        partial = f"{args.write_state}.partial.npz"
        np.savez(partial, **{f"leaf{i}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(state))})
        os.replace(partial, args.write_state)
    return state


mesh = data_mesh()
rep, batch = replicated_sharding(mesh), batch_sharding(mesh)
rows = process_rows(BATCH)
out: dict[str, np.ndarray] = {}
start_state = None
for conv_impl in args.conv_impls.split(","):
    for objective, settings in OBJECTIVES.items():
        config = load_config(ExperimentConfig, None, BASE + settings + [f"model.conv_impl={conv_impl}"])
        splits = prepare_splits(config.data)
        model = create_model(config.model, splits.num_classes)
        optimizer = make_optimizer(config.optim, config.train.epochs, len(splits.train_images) // BATCH)
        step = jax.jit(make_train_step(model, config, optimizer),
                       in_shardings=(rep, batch, batch), out_shardings=(rep, rep))
        if start_state is None:  # the same parameter tree for every conv_impl and objective
            start_state = start_state_for(config, model, optimizer, splits.image_shape)

        def run(state, index: np.ndarray, prefix: str) -> None:
            new_state, metrics = step(replicate(state, mesh),
                                      global_batch(splits.train_images[index][rows], mesh),
                                      global_batch(splits.train_labels[index][rows], mesh))
            leaves = host_leaves((new_state.params, new_state.batch_stats, new_state.opt_state))
            out.update({f"{prefix}/leaf{i}": leaf for i, leaf in enumerate(leaves)})
            out[f"{prefix}/loss"] = np.asarray(to_host(metrics["loss"]))

        name = f"{conv_impl}/{objective}"
        run(start_state, np.arange(BATCH), name)
        if args.write_state:
            for r in range(3):
                run(start_state.replace(params=one_ulp(start_state.params, seed=r)), np.arange(BATCH),
                    f"{name}/ulp{r}")
            wrong_rows = np.concatenate([np.arange(BATCH - BATCH // 4), BATCH + np.arange(BATCH // 4)])
            run(start_state, wrong_rows, f"{name}/fault")

if jax.process_index() == 0:
    np.savez(args.out, **out)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count()}))
sys.stdout.flush()

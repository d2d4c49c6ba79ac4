"""Per-host data over whole epochs (issue 39 item 3): on 2 processes (jax.distributed over gloo
on localhost) each host feeds its rows of every global batch; the union of the hosts' rows,
augmented, is the one-process batch at every step of two epochs, and a 2-process run stopped
mid-epoch and resumed on 2 processes feeds the same batches and ends with the same weights as
an uninterrupted 2-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("per_host_subprocess.py")
# An MLP on 256 synthetic 8x8 images, 8 steps of 32 per epoch, random crops (padding 1) and flips.
# No evaluation (nothing here depends on it, and its attack would be compiled in every process).
OVERRIDES = ["data.dataset=synthetic", "data.val_size=0", "data.train_subset=256", "data.crop_padding=1",
             "data.flip=true", "model.arch=mlp", "model.width=8", "model.depth=1", "train.batch_size=32",
             "train.epochs=2", "objective.kind=natural", "eval.val_examples=0", "eval.test_examples=0",
             "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "optim.schedule=constant"]
STEPS_PER_EPOCH = 8
STOP = STEPS_PER_EPOCH + 3  # inside epoch 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, out: Path, processes: int, *extra: str) -> list[subprocess.Popen]:
    env = {**os.environ, "NT_ROBUST_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, str(SCRIPT), str(run_dir), str(out), json.dumps(OVERRIDES), *extra]
    if processes == 1:
        return [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    port = _free_port()
    return [subprocess.Popen([*command, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                              "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]


def _finish(group: list[subprocess.Popen]) -> dict:
    outputs = [p.communicate(timeout=600) for p in group]
    for process, (_, err) in zip(group, outputs):
        assert process.returncode == 0, err[-3000:]
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_hosts_rows_make_the_one_process_batches_and_a_resume_stays_exact(tmp_path):
    # all at once (their compilations overlap): one process; two; two stopped inside epoch 2
    one = _start(tmp_path / "one", tmp_path / "one.npz", 1)
    two = _start(tmp_path / "two", tmp_path / "two.npz", 2)
    stopped = _start(tmp_path / "resumed", tmp_path / "stopped.npz", 2, "--stop-after-steps", str(STOP))
    assert _finish(one)["processes"] == 1
    assert _finish(two)["processes"] == 2
    assert _finish(stopped)["summary"] == {"stopped_at_step": STOP}
    resumed = _finish(_start(tmp_path / "resumed", tmp_path / "resumed.npz", 2))
    assert resumed["processes"] == 2 and resumed["summary"]["final"]["epoch"] == 2

    one, two = _load(tmp_path / "one.npz"), _load(tmp_path / "two.npz")
    steps = range(2 * STEPS_PER_EPOCH)
    assert sorted(k for k in one if k.startswith("images")) == sorted(f"images{s}" for s in steps)
    for s in steps:  # bitwise: crops and flips move pixels, they do not round them
        np.testing.assert_array_equal(two[f"labels{s}"], one[f"labels{s}"], err_msg=f"step {s}")
        np.testing.assert_array_equal(two[f"images{s}"], one[f"images{s}"], err_msg=f"step {s}")
    # every training example once per epoch (labels of the 256 examples: a multiset check), and
    # the augmentation really moved pixels
    assert not np.array_equal(one["images0"], one["images8"])

    first, then = _load(tmp_path / "stopped.npz"), _load(tmp_path / "resumed.npz")
    assert sorted(int(k[6:]) for k in first if k.startswith("images")) == list(range(STOP))
    assert sorted(int(k[6:]) for k in then if k.startswith("images")) == list(range(STOP, 2 * STEPS_PER_EPOCH))
    for s in steps:
        part = first if s < STOP else then
        np.testing.assert_array_equal(part[f"images{s}"], two[f"images{s}"], err_msg=f"step {s}")
    leaves = [k for k in two if k.startswith("leaf")]
    assert leaves
    for key in leaves:
        np.testing.assert_array_equal(then[key], two[key], err_msg=key)

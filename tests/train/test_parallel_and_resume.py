"""Data parallelism and exact resume, each run in a fresh process:

- one training step sharded over 4 fake CPU devices, and over two processes joined by
  jax.distributed (gloo on 127.0.0.1), against the same step on one device from the same
  state: natural, PGD-AT and TRADES, for each ``model.conv_impl``;
- a run SIGKILLed mid-epoch and resumed ends bitwise identical to an uninterrupted one
  (same machine, same device count: the same compiled program on the same inputs).

The model is a WRN-10-1, so BatchNorm statistics over the global batch are exercised.

Why single steps and not trajectories: sharding changes only the order of float additions
(the gradient all-reduce, BatchNorm means), and training amplifies such differences. A
1e-6 perturbation at step 10 of a natural WRN run grows to 1.4e-3 in the loss by step 28;
adversarial steps are worse (sign steps, normalized vanishing gradients, and TRADES' first
KL gradient, which is mostly cancellation). A 28-step comparison passed on one CPU family
and failed on another. One step from a shared state is exact up to rounding, and its
tolerance is derived below, on the machine the test runs on.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nt_robust.train.loop import WALL_CLOCK_FIELDS

TRAIN_SCRIPT = Path(__file__).with_name("train_subprocess.py")
STEP_SCRIPT = Path(__file__).with_name("step_subprocess.py")
OVERRIDES = [
    "data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=wrn",
    "model.depth=10", "model.width=1", "train.batch_size=32", "train.epochs=2",
    "objective.kind=natural",
    "eval.attack.num_steps=2", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=32",
    "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "train.checkpoint_every_steps=5",
]
OBJECTIVES = ("natural", "pgd_at", "trades")
EPS32 = float(np.finfo(np.float32).eps)
# How far a sharded step may move from the single-device step, in units of how far the
# single-device step moves when every parameter is moved by one ulp (measured per output
# leaf, on this machine, from three random sign patterns). Both are rounding-sized changes
# pushed through the same step. A reordered sum can differ from another order by up to
# about log2(n) roundings (tree vs. sequential partial sums); the largest reduction in the
# step is a BatchNorm mean over 32·8·8 = 2048 values, log2 = 11, so 32 allows 11 levels
# with a 3x margin. Measured on AMD EPYC (4 devices and 2 processes): at most 1.3 units.
# A wrong batch split (the "fault" step) moves the outputs by over 6000 units.
ROUNDING_UNITS = 32.0


def _env(devices: int) -> dict[str, str]:
    # Devices the way users ask for them (nt-robust --cpu-devices N / NT_ROBUST_CPU_DEVICES).
    return {**os.environ, "NT_ROBUST_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}


def launch(tmp_path: Path, name: str, devices: int = 1, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), str(tmp_path / name), str(tmp_path / f"{name}.npz"),
                             json.dumps(OVERRIDES), *extra], env=_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def launch_step(out: Path, *extra: str, devices: int = 1) -> subprocess.Popen:
    """Output goes to files beside ``out`` (processes run side by side: no pipe may fill up)."""
    log = open(out.with_suffix(".log"), "w")
    process = subprocess.Popen([sys.executable, str(STEP_SCRIPT), str(out), *extra], env=_env(devices),
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    return process


def finish_step(process: subprocess.Popen, out: Path) -> dict | None:
    """Wait for a step process; its report (None from a non-zero process index, which prints none)."""
    process.wait(timeout=600)
    text = out.with_suffix(".log").read_text() if out.with_suffix(".log").exists() else ""
    assert process.returncode == 0, text[-3000:]
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leaves(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.finfo(np.float32).tiny))


def step_outputs(results: dict[str, np.ndarray], name: str) -> list[str]:
    """The output leaves of configuration ``name`` worth comparing (scalar counters such as
    the step number are compared exactly by the bitwise part of the check)."""
    return [k.split("/")[-1] for k in results
            if k.count("/") == 2 and k.startswith(name + "/") and (results[k].size > 1 or k.endswith("/loss"))]


def assert_same_step(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], name: str) -> None:
    """``other``'s step equals the single-device step up to ROUNDING_UNITS times the step's
    own measured sensitivity to one-ulp changes, and the tolerance would catch a wrong split."""
    outputs = step_outputs(reference, name)
    assert outputs, name
    caught = []
    for leaf in outputs:
        key = f"{name}/{leaf}"
        sensitivity = max(relative_difference(reference[key], reference[f"{name}/ulp{r}/{leaf}"]) for r in range(3))
        tolerance = ROUNDING_UNITS * max(sensitivity, EPS32)
        difference = relative_difference(reference[key], other[key])
        assert difference <= tolerance, (f"{key}: sharded vs single-device {difference:.3g} > {tolerance:.3g} "
                                         f"({ROUNDING_UNITS:g} x one-ulp sensitivity {sensitivity:.3g})")
        caught.append(relative_difference(reference[key], reference[f"{name}/fault/{leaf}"]) > tolerance)
    assert any(caught), f"{name}: a wrong batch split would pass this tolerance"


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Every configuration's step on one device (with its one-ulp probes), on 4 devices and
    on two processes, all started together: the sharded runs wait for the single-device run's
    start state, and their compilations overlap."""
    tmp = tmp_path_factory.mktemp("steps")
    state = str(tmp / "state.npz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one = launch_step(tmp / "one.npz", "--write-state", state)
    four = launch_step(tmp / "four.npz", "--read-state", state, devices=4)
    # Two processes: the default conv_impl only; the cross-process all-reduce is what is new
    # there, and the conv implementations are covered on four devices.
    two = [launch_step(tmp / ("two.npz" if i == 0 else "two_1.npz"), "--read-state", state, "--conv-impls", "auto",
                       "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))
           for i in range(2)]
    assert finish_step(one, tmp / "one.npz")["devices"] == 1
    assert finish_step(four, tmp / "four.npz")["devices"] == 4
    report = finish_step(two[0], tmp / "two.npz")
    finish_step(two[1], tmp / "two_1.npz")
    assert report["processes"] == 2 and report["devices"] == 2
    return {name: leaves(tmp / f"{name}.npz") for name in ("one", "four", "two")}


@pytest.mark.parametrize("conv_impl", ["auto", "xla"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_four_devices_step_matches_one_device(steps, conv_impl, objective):
    assert_same_step(steps["one"], steps["four"], f"{conv_impl}/{objective}")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_step_matches_one_process(steps, objective):
    assert_same_step(steps["one"], steps["two"], f"auto/{objective}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-device run of two natural epochs (the resume test's reference)."""
    tmp = tmp_path_factory.mktemp("reference")
    report = finish(launch(tmp, "one_device"))
    assert report["devices"] == 1
    return tmp, report


def test_sigkill_mid_epoch_then_resume_is_identical(reference, tmp_path):
    ref_dir, ref_report = reference
    # 14 steps per epoch; checkpoints every 5 steps; die after step 17 (epoch 2, batch 3),
    # so the resume starts from the mid-epoch checkpoint at step 15.
    killed = launch(tmp_path, "run", extra=("--kill-after-steps", "17"))
    killed.communicate(timeout=600)
    assert killed.returncode == -9
    assert not (tmp_path / "run" / "summary.json").exists()
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints" / "latest").iterdir() if p.name.isdigit())
    assert steps[-1] == 15
    report = finish(launch(tmp_path, "run"))
    reference_leaves, resumed_leaves = leaves(ref_dir / "one_device.npz"), leaves(tmp_path / "run.npz")
    for key in reference_leaves:
        np.testing.assert_array_equal(reference_leaves[key], resumed_leaves[key], err_msg=key)
    strip = lambda row: {k: v for k, v in row.items() if k not in WALL_CLOCK_FIELDS}  # noqa: E731
    assert strip(report["final"]) == strip(ref_report["final"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_two_process_training_writes_one_run_directory(tmp_path):
    """The multi-host path end to end: two processes on one run directory (process 0 takes
    the run lock and writes, checkpoints are collective) finish one epoch and leave one
    complete run. Its numbers are not compared with one process: trajectories amplify
    rounding (the module docstring); the step tests above check the arithmetic."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = json.dumps(OVERRIDES + ["train.epochs=1"])
    processes = [subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), str(tmp_path / "run"), str(tmp_path / "run.npz"),
                                   overrides, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i)], env=_env(1), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    report = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert report["processes"] == 2 and report["devices"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["devices"] == 2 and summary["final"]["epoch"] == 1
    assert 0.0 <= summary["final"]["test_natural_accuracy"] <= 1.0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # written once, by process 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "latest").iterdir() if p.name.isdigit())

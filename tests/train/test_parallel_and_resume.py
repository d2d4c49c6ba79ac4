"""Data parallelism and exact resume, each run in a fresh process:

- 1 device vs 4 fake CPU devices: the same parameters after two epochs;
- two processes joined by jax.distributed (gloo on 127.0.0.1) vs one process;
- a run SIGKILLed mid-epoch and resumed ends bitwise identical to an uninterrupted one.

The model is a WRN-10-1, so BatchNorm statistics over the global batch are exercised.
The two epochs are *natural* training, and the adversarial path is compared on one
TRADES step from the trained state. Adversarial training over many steps is a chaotic
function of float rounding: an ℓ∞ attack steps along sign(∇), an ℓ2 attack normalizes
the vanishing CE gradient of confidently classified points, and TRADES' first KL
gradient (at x + 0.001·N(0, I), where p(x) ≈ p(x̂)) is mostly cancellation error. So the
~1e-7 differences of another reduction order grow into whole-step differences (measured
here: 4e-4 after 3 TRADES steps, 4% after two PGD-AT ℓ2 epochs, 17% after two TRADES
epochs), while two natural epochs stay within 2e-6. A device-count comparison of long
adversarial runs would test chaos, not correctness.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("train_subprocess.py")
OVERRIDES = [
    "data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=wrn",
    "model.depth=10", "model.width=1", "train.batch_size=32", "train.epochs=2", "train_attack.num_steps=2",
    "objective.kind=natural",
    "eval.attack.num_steps=2", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=32",
    "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "train.checkpoint_every_steps=5",
]


def launch(tmp_path: Path, name: str, devices: int = 1, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    # Devices the way users ask for them (nt-robust --cpu-devices N / NT_ROBUST_CPU_DEVICES).
    env = {**os.environ, "NT_ROBUST_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / name), str(tmp_path / f"{name}.npz"),
                             json.dumps(OVERRIDES), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leaves(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def assert_same_training(reference: Path, other: Path) -> None:
    """Sharding changes only the order of float additions (gradient all-reduce, BatchNorm
    means): ~1e-7 per operation, measured 2e-6 after 28 natural steps, ~1e-5 after the
    TRADES step. A real fault (a wrong batch split, per-device BatchNorm statistics,
    a different data order) moves parameters by more than 1e-2."""
    a, b = leaves(reference), leaves(other)
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("leaf") and a[key].size > 1:
            assert relative_difference(a[key], b[key]) < 1e-4, key
        elif key.startswith("adv_leaf") and a[key].size > 1:
            assert relative_difference(a[key], b[key]) < 1e-3, key
    np.testing.assert_allclose(a["adv_loss"], b["adv_loss"], rtol=1e-4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-device run everything else is compared with."""
    tmp = tmp_path_factory.mktemp("reference")
    report = finish(launch(tmp, "one_device"))
    assert report["devices"] == 1
    return tmp, report


def test_four_devices_match_one_device(reference, tmp_path):
    ref_dir, ref_report = reference
    report = finish(launch(tmp_path, "four_devices", devices=4))
    assert report["devices"] == 4
    assert_same_training(ref_dir / "one_device.npz", tmp_path / "four_devices.npz")
    assert abs(report["final"]["test_natural_accuracy"] - ref_report["final"]["test_natural_accuracy"]) <= 1 / 64


def test_two_processes_with_jax_distributed_match_one_process(reference, tmp_path):
    ref_dir, _ = reference
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = [launch(tmp_path, "two_processes", extra=("--coordinator", f"127.0.0.1:{port}",
                                                          "--num-processes", "2", "--process-id", str(i)))
                 for i in range(2)]
    reports = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, reports):
        assert process.returncode == 0, err[-3000:]
    report = json.loads(reports[0][0].strip().splitlines()[-1])
    assert report["processes"] == 2 and report["devices"] == 2
    assert_same_training(ref_dir / "one_device.npz", tmp_path / "two_processes.npz")


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
    timing = ("train_seconds", "eval_seconds", "epoch_seconds")
    strip = lambda row: {k: v for k, v in row.items() if k not in timing}  # noqa: E731
    assert strip(report["final"]) == strip(ref_report["final"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]

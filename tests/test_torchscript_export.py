"""`nt-robust export --format torchscript` (nt_robust.export.torchscript; issue 37, item 5): a file
that a Python process with torch alone (no nt_robust, no class definitions) loads and runs, giving
our logits. Skipped without torch. Tolerance: tests/test_export.py's float32 argument, 1e-5 of
the logit scale (a layout error moves logits by O(0.1-1))."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nt_robust.cli import main  # noqa: E402
from nt_robust.export import nhwc_to_nchw  # noqa: E402
from nt_robust.export.run import restore_variables  # noqa: E402
from test_export import make_run  # noqa: E402

LOAD_ALONE = """
import sys, numpy as np, torch
module = torch.jit.load(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], module(x).detach().numpy())
assert not any(name.startswith("nt_robust") for name in sys.modules), "nt_robust was imported"
"""


@pytest.mark.parametrize("overrides", [
    ["data.dataset=fashion_mnist", "model.arch=cnn", "model.width=1"],                  # no RobustBench class
    ["data.dataset=cifar10", "model.arch=wrn", "model.depth=10", "model.width=1",       # in-model normalization
     "model.input_mean=[0.5, 0.4, 0.3]", "model.input_std=[0.2, 0.25, 0.3]"],
], ids=["smallcnn", "wrn-normalized"])
def test_torchscript_file_loads_without_nt_robust_and_gives_our_logits(tmp_path, capsys, overrides):
    run_dir = make_run(tmp_path, overrides)
    out = tmp_path / "model.ts.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert "TorchScript" in capsys.readouterr().out
    details = json.loads(out.with_suffix(".nt_robust.json").read_text())
    restored = restore_variables(run_dir, "best_val")
    x = np.random.default_rng(5).uniform(size=(3, *restored["image_shape"])).astype(np.float32)
    np.save(tmp_path / "x.npy", nhwc_to_nchw(x))
    subprocess.run([sys.executable, "-c", LOAD_ALONE, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, cwd=tmp_path, timeout=300)
    theirs = np.load(tmp_path / "y.npy")
    ours = np.asarray(restored["model"].apply(restored["variables"], x, train=False))
    assert theirs.shape == ours.shape
    assert np.max(np.abs(theirs - ours)) <= 1e-5 * max(1.0, float(np.max(np.abs(ours))))
    assert details["image_shape"] == list(restored["image_shape"])


def test_torchscript_dry_run_is_refused_with_the_fix(tmp_path, capsys):
    run_dir = make_run(tmp_path, ["data.dataset=fashion_mnist", "model.arch=cnn", "model.width=1"])
    assert main(["export", str(run_dir), "--format", "torchscript", "--dry-run"]) == 2
    assert "drop --dry-run" in capsys.readouterr().err

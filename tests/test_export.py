"""Export to PyTorch (nt_robust.export; skipped without torch, which `make test` installs).

The WideResNet's state_dict is loaded with ``strict=True`` into RobustBench's own
``WideResNet`` class when robustbench is installed (`make setup` installs it with
--no-deps; its file is loaded by path, because ``import robustbench`` imports torchvision)
and always into an independent copy written here from RobustBench's source.

Tolerance (float32, unit roundoff u = 2^-24 ≈ 6e-8): both frameworks compute the same
function with the same float32 operations; only the summation order inside convolutions
(XLA/Eigen vs oneDNN blocks) and the BatchNorm formula's rounding differ. Those differences
are a few ulps of the activations per layer and do not add coherently, so the logits differ
by a few ulps of their scale (measured, AMD EPYC 2 cores: ≤ 6e-6 at logits up to 19, ≤ 1.3e-6
at ≤ 5, i.e. ≤ 5 u relative, also against a float64 run of the same weights). The inputs are
scaled so that logits reach 4 (a classifier's typical range); 1e-5 absolute is then 2.5e-6
relative ≈ 40 u: loose enough for other CPUs' kernels, and ~10^4 below what a layout or
padding error gives (the negative control below: Flax's "SAME" padding at stride 2 moves the
logits by ~0.1 to 1).
"""

import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nt_robust.config import load_config, to_dict  # noqa: E402
from nt_robust.export import ExportError, export_run, nhwc_to_nchw, state_arrays, to_torch  # noqa: E402
from nt_robust.models import MLP, SmallCNN, WideResNet  # noqa: E402

torch.set_num_threads(1)  # torch's thread pool beside JAX's is very slow on a busy 2-core machine
TOLERANCE = 1e-5
LOGIT_SCALE = 4.0


# --- RobustBench's WideResNet, written out from robustbench/model_zoo/architectures/wide_resnet.py
# (robustbench 1.1.1; itself from the TRADES code). `shifted` pads stride-2 convolutions like
# Flax's "SAME" (0 before, 1 after), the trap the export must not fall into (negative control).

class RBBasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, shifted=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                               padding=0 if shifted and stride == 2 else 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (not self.equalInOut) and nn.Conv2d(in_planes, out_planes, kernel_size=1,
                                                                stride=stride, padding=0, bias=False) or None
        self.pad = shifted and stride == 2

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        inner = out if self.equalInOut else x
        out = self.relu2(self.bn2(self.conv1(F.pad(inner, (0, 1, 0, 1)) if self.pad else inner)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class RBNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride, shifted=False):
        super().__init__()
        self.layer = nn.Sequential(*[RBBasicBlock(i == 0 and in_planes or out_planes, out_planes,
                                                  i == 0 and stride or 1, shifted) for i in range(int(nb_layers))])

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    def __init__(self, depth=28, num_classes=10, widen_factor=10, shifted=False):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) / 6
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = RBNetworkBlock(n, channels[0], channels[1], 1, shifted)
        self.block2 = RBNetworkBlock(n, channels[1], channels[2], 2, shifted)
        self.block3 = RBNetworkBlock(n, channels[2], channels[3], 2, shifted)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        return self.fc(out.view(-1, self.nChannels))


def robustbench_class():
    """robustbench's own WideResNet class, loaded from its file (None if not installed)."""
    spec = importlib.util.find_spec("robustbench")   # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model_zoo" / "architectures" / "wide_resnet.py"
    module_spec = importlib.util.spec_from_file_location("robustbench_wide_resnet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.WideResNet


def random_variables(model, x, seed=1):
    """Random weights, BatchNorm scales/biases and running statistics (numpy: jax's own
    initializers take long to compile on a busy CPU)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        if "'mean'" in name:
            return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)
        if "'scale'" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if "'bias'" in name:
            return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (rng.normal(size=leaf.shape) * math.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def scale_logits(model, variables, x):
    """Rescale the classifier so that the largest |logit| on ``x`` is LOGIT_SCALE."""
    largest = float(np.max(np.abs(np.asarray(model.apply(variables, x, train=False)))))
    classifier = {k: v * (LOGIT_SCALE / largest) for k, v in variables["params"]["classifier"].items()}
    return {**variables, "params": {**variables["params"], "classifier": classifier}}


def torch_logits(module, x):
    with torch.no_grad():
        return module.eval()(torch.from_numpy(nhwc_to_nchw(x))).numpy()


def load_strict(module, arrays):
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
                                                 strict=True)
    assert not missing and not unexpected
    return module


@pytest.mark.parametrize("depth", [10, 16])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_wide_resnet_robustbench_layout_matches(depth, width):
    model = WideResNet(depth=depth, width=width, num_classes=10)
    x = np.random.default_rng(0).uniform(size=(6, 32, 32, 3)).astype(np.float32)
    variables = scale_logits(model, random_variables(model, x), x)
    expected = np.asarray(model.apply(variables, x, train=False))
    arrays = state_arrays(model, variables, "robustbench", image_shape=(32, 32, 3), batches=7)

    shortcuts = sorted(k for k in arrays if "convShortcut" in k)
    assert shortcuts == ([] if width == 1 else ["block1.layer.0.convShortcut.weight"]) + \
        ["block2.layer.0.convShortcut.weight", "block3.layer.0.convShortcut.weight"]
    assert int(arrays["bn1.num_batches_tracked"]) == 7 and arrays["bn1.num_batches_tracked"].dtype == np.int64

    classes = [RBWideResNet] + ([robustbench_class()] if robustbench_class() else [])
    for cls in classes:
        module = load_strict(cls(depth=depth, num_classes=10, widen_factor=width), arrays)
        assert list(module.state_dict()) == list(arrays)   # same keys, same order
        got = torch_logits(module, x)
        assert np.max(np.abs(got - expected)) <= TOLERANCE, cls
    # our own module (format torch) computes the same
    assert np.max(np.abs(torch_logits(to_torch(model, variables), x) - expected)) <= TOLERANCE


def test_padding_mismatch_would_be_caught():
    """Negative control: the same weights under Flax-"SAME"-style stride-2 padding are far off."""
    model = WideResNet(depth=10, width=1, num_classes=10)
    x = np.random.default_rng(0).uniform(size=(6, 32, 32, 3)).astype(np.float32)
    variables = scale_logits(model, random_variables(model, x), x)
    expected = np.asarray(model.apply(variables, x, train=False))
    arrays = state_arrays(model, variables, "robustbench", image_shape=(32, 32, 3))
    shifted = load_strict(RBWideResNet(depth=10, num_classes=10, widen_factor=1, shifted=True), arrays)
    assert np.max(np.abs(torch_logits(shifted, x) - expected)) > 1000 * TOLERANCE


def test_batch_norm_statistics_carry_over_after_training_steps():
    """Three SGD steps in train mode (batch statistics, running averages updated), then eval
    mode in both frameworks. Also: train-mode logits agree, and one running-average update
    agrees (mean exactly; variance up to PyTorch's unbiased n/(n-1) factor)."""
    import optax

    model = WideResNet(depth=10, width=1, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    variables = random_variables(model, x)
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, s: (np.ones if "'var'" in jax.tree_util.keystr(p) else np.zeros)(s.shape, np.float32),
        variables["batch_stats"])   # Flax's initial running statistics, as PyTorch's
    params, stats = variables["params"], variables["batch_stats"]
    optimizer = optax.sgd(0.05, momentum=0.9)
    opt_state = optimizer.init(params)

    def loss(params, stats, xb, yb):
        logits, updated = model.apply({"params": params, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updated["batch_stats"]

    grad_step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    before = {"params": params, "batch_stats": stats}
    for step in range(3):
        xb = np.clip(x + 0.1 * step, 0, 1)
        (_, stats), grads = grad_step(params, stats, xb, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    trained = {"params": params, "batch_stats": stats}
    assert not np.allclose(np.asarray(stats["final_bn"]["mean"]), 0)   # the running averages moved

    x_eval = rng.uniform(size=(6, 32, 32, 3)).astype(np.float32)
    trained = scale_logits(model, trained, x_eval)
    expected = np.asarray(model.apply(trained, x_eval, train=False))
    module = load_strict(RBWideResNet(depth=10, num_classes=10, widen_factor=1),
                         state_arrays(model, trained, "robustbench", image_shape=(32, 32, 3), batches=3))
    assert np.max(np.abs(torch_logits(module, x_eval) - expected)) <= TOLERANCE

    # one train-mode step from `before`: same logits (batch statistics) and running averages
    ours, updated = model.apply(before, x, train=True, mutable=["batch_stats"])
    module = load_strict(RBWideResNet(depth=10, num_classes=10, widen_factor=1),
                         state_arrays(model, before, "robustbench", image_shape=(32, 32, 3))).train()
    with torch.no_grad():
        theirs = module(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    scale = max(LOGIT_SCALE, float(np.max(np.abs(ours))))   # the same relative tolerance as in eval mode
    assert np.max(np.abs(theirs - np.asarray(ours))) <= TOLERANCE * scale / LOGIT_SCALE
    bn = module.block3.layer[0].bn1
    flax_bn = updated["batch_stats"]["group3_block1"]["bn1"]
    n = 8 * 16 * 16                                        # examples x pixels normalized by that BatchNorm
    np.testing.assert_allclose(bn.running_mean.numpy(), np.asarray(flax_bn["mean"]), rtol=1e-5, atol=1e-6)
    # PyTorch's running_var = 0.9 + 0.1 * unbiased var, Flax's = 0.9 + 0.1 * biased var
    torch_var = (bn.running_var.numpy() - 0.9) / 0.1
    flax_var = (np.asarray(flax_bn["var"]) - 0.9) / 0.1
    np.testing.assert_allclose(torch_var, flax_var * n / (n - 1), rtol=1e-4, atol=1e-5)


def test_robustbench_layout_refused_where_not_exact():
    x = np.zeros((1, 8, 8, 1), np.float32)
    model = WideResNet(depth=10, width=1, num_classes=4)
    variables = random_variables(model, x)
    with pytest.raises(ExportError, match="3-channel"):
        state_arrays(model, variables, "robustbench", image_shape=(8, 8, 1))
    with pytest.raises(ExportError, match="avg_pool2d"):
        state_arrays(model, variables, "robustbench", image_shape=(64, 64, 3))
    normalized = WideResNet(depth=10, width=1, num_classes=4, input_mean=(0.5,) * 3, input_std=(0.25,) * 3)
    with pytest.raises(ExportError, match="normalizes its input"):
        state_arrays(normalized, variables, "robustbench", image_shape=(32, 32, 3))
    with pytest.raises(ExportError, match="own layout"):
        state_arrays(MLP(width=4, depth=1, num_classes=4), {"params": {}}, "robustbench")
    # the torch layout takes any channels, sizes and normalization
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    normalized = WideResNet(depth=10, width=1, num_classes=4, input_mean=(0.5,), input_std=(0.25,))
    variables = scale_logits(normalized, random_variables(normalized, x), x)
    expected = np.asarray(normalized.apply(variables, x, train=False))
    assert np.max(np.abs(torch_logits(to_torch(normalized, variables), x) - expected)) <= TOLERANCE


@pytest.mark.parametrize("model, shape", [
    (MLP(width=16, depth=2, num_classes=10), (8, 8, 1)),
    (MLP(width=8, depth=1, num_classes=5, input_mean=(0.5, 0.4), input_std=(0.2, 0.3)), (4, 4, 2)),
    (SmallCNN(width=1, num_classes=10), (8, 8, 3)),
])
def test_small_models_logits_match(model, shape):
    x = np.random.default_rng(0).uniform(size=(6,) + shape).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
    variables = scale_logits(model, variables, x)
    expected = np.asarray(model.apply(variables, x))
    assert np.max(np.abs(torch_logits(to_torch(model, variables), x) - expected)) <= TOLERANCE
    keys = set(state_arrays(model, variables))
    assert {"classifier.weight", "classifier.bias", "mean", "std", "dense.0.weight"} <= keys


# --- nt-robust export RUN: a run directory with a checkpoint (no training: random weights) --------

def make_run(tmp_path: Path, overrides: list[str], checkpoint="best_val", step=12) -> Path:
    from nt_robust.models import create_model
    from nt_robust.train import Checkpointer, ExperimentConfig
    from nt_robust.train.config import DATASET_SHAPES
    from nt_robust.train.restore import abstract_state

    config = load_config(ExperimentConfig, None, ["name=exported", "train.epochs=4", *overrides])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(to_dict(config)))
    shape, classes = DATASET_SHAPES[config.data.dataset]
    model = create_model(config.model, classes)
    abstract = abstract_state(config, model, shape)
    x = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
    variables = random_variables(model, x)
    state = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state = state.replace(step=np.asarray(step, np.int32), params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}))
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=2)
    progress = {"epoch": 3, "batch": 0, "best_val": {"epoch": 3, "val_robust_accuracy": 0.4,
                                                   "test_natural_accuracy": 0.8125}}
    checkpoints.save(checkpoint, state, {"progress": progress})
    checkpoints.close()
    return run_dir


def write_autoattack(run_dir: Path, eps, step, n=100, natural=0.84921, robust=0.53077, checkpoint="best_val"):
    (run_dir / "eval").mkdir(exist_ok=True)
    result = {"protocol": "autoattack-standard", "protocol_version": 1, "eps": eps, "num_examples": n,
              "natural_accuracy": natural, "robust_accuracy": robust, "split": "test", "step": step,
              "checkpoint": checkpoint}
    (run_dir / "eval" / f"{checkpoint}_test_autoattack-standard_eps{eps!r}_n{n}.json").write_text(json.dumps(result))


CIFAR_WRN = ["data.dataset=cifar10", "model.arch=wrn", "model.depth=10", "model.width=1", "eval.attack.eps=8/255"]


def robustbench_model_info():
    """RobustBench's ModelInfo dataclass, from robustbench/utils.py by path (None if not
    installed or not importable without its dependencies)."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        return None
    import ast
    source = (Path(list(spec.submodule_search_locations)[0]) / "utils.py").read_text()
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelInfo"), None)
    if node is None:
        return None
    namespace = {}
    exec(compile(ast.Module([ast.parse("import dataclasses\nfrom typing import Optional").body[0],
                             ast.parse("from typing import Optional").body[0], node], []), "utils.py", "exec"),
         namespace)
    return namespace["ModelInfo"]


# RobustBench 1.1.1's ModelInfo fields, written out (the check where robustbench is absent)
ROBUSTBENCH_FIELDS = ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "autoattack_acc", "footnote"]


def assert_robustbench_schema(info):
    import dataclasses
    assert sorted(info) == sorted(ROBUSTBENCH_FIELDS)   # JSON keys: no order
    model_info = robustbench_model_info()
    if model_info is not None:   # its own class: built from our JSON, and back again unchanged
        assert [f.name for f in dataclasses.fields(model_info)] == ROBUSTBENCH_FIELDS
        assert dataclasses.asdict(model_info(**info)) == info


def test_export_run_robustbench(tmp_path):
    run_dir = make_run(tmp_path, CIFAR_WRN)
    write_autoattack(run_dir, 8 / 255, step=12)
    write_autoattack(run_dir, 8 / 255, step=5, n=1000, natural=0.1, robust=0.1)    # stale: an older best_val
    write_autoattack(run_dir, 0.031, step=12, n=1000, natural=0.1, robust=0.1)     # another threat model
    from nt_robust.cli import main
    assert main(["export", str(run_dir)]) == 0
    path = run_dir / "export" / "best_val_robustbench.pt"
    state_dict = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values())
    assert state_dict["fc.weight"].dtype == torch.float32
    assert int(state_dict["block1.layer.0.bn1.num_batches_tracked"]) == 12
    for cls in [RBWideResNet] + ([robustbench_class()] if robustbench_class() else []):
        cls(depth=10, num_classes=10, widen_factor=1).load_state_dict(state_dict, strict=True)
    info = json.loads(path.with_suffix(".json").read_text())
    exact = json.loads(path.with_suffix(".nt_robust.json").read_text())
    assert_robustbench_schema(info)
    assert info["name"] == "exported" and info["architecture"] == "WideResNet-10-1" and info["dataset"] == "cifar10"
    assert info["eps"] == "8/255" and exact["eps_value"] == 8 / 255 and exact["threat_model"] == "Linf"
    # the only intact result has 100 points: not filled unless asked
    assert info["autoattack_acc"] is None and info["clean_acc"] == "81.25"   # the checkpoint's epoch evaluation
    test_examples = json.loads((run_dir / "config.json").read_text())["eval"]["test_examples"]
    assert exact["num_examples"] == test_examples and any("fewer than 1000" in n for n in exact["skipped_evaluations"])
    assert main(["export", str(run_dir), "--allow-few-points"]) == 0
    info = json.loads(path.with_suffix(".json").read_text())
    exact = json.loads(path.with_suffix(".nt_robust.json").read_text())
    assert info["clean_acc"] == "84.92" and info["autoattack_acc"] == "53.08" and "100 test points" in info["footnote"]
    assert exact["checkpoint"] == "best_val" and "validation" in exact["checkpoint_selection"]
    assert exact["autoattack_accuracy"] == 0.53077 and exact["num_examples"] == 100 and exact["step"] == 12
    assert len(exact["skipped_evaluations"]) == 2
    assert exact["max_logit_difference"] <= 1e-4 * max(1, exact["logit_scale"])


def test_export_run_torch_layout_and_refusals(tmp_path, capsys):
    from nt_robust.cli import main

    run_dir = make_run(tmp_path, ["data.dataset=synthetic", "model.arch=wrn", "model.depth=10", "model.width=1"])
    assert main(["export", str(run_dir)]) == 2
    assert "3-channel" in capsys.readouterr().err and not (run_dir / "export").exists()
    out = tmp_path / "wrn.pt"
    assert main(["export", str(run_dir), "--format", "torch", "--out", str(out)]) == 0
    state_dict = torch.load(out, weights_only=True)
    assert state_dict["conv1.weight"].shape[1] == 1 and state_dict["mean"].numel() == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["autoattack_acc"] is None and info["clean_acc"] == "81.25"   # the checkpoint's epoch evaluation
    assert main(["export", str(run_dir), "--format", "torch", "--dry-run"]) == 0
    assert "would write" in capsys.readouterr().out and not (run_dir / "export").exists()
    assert main(["export", str(run_dir), "--checkpoint", "best_test"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_export_of_a_run_trained_on_two_devices(tmp_path):
    """A run trained on 2 CPU devices (its checkpoint sharded over both) exports from a
    process with another device count; the exported weights are the ones `eval`'s restore
    (the trainer's own, sharding-aware) reads."""
    import os
    import subprocess
    import sys

    from nt_robust.export.run import restore_variables
    from nt_robust.train.loop import Trainer
    from nt_robust.train.restore import load_run_config
    from nt_robust.train.state import model_variables

    run_dir = tmp_path / "two_devices"
    settings = ["name=two", "data.dataset=synthetic", "data.val_size=64", "model.arch=mlp", "model.width=16",
                "model.depth=1", "train.batch_size=64", "train.epochs=1", "objective.kind=natural",
                "eval.val_examples=64", "eval.test_examples=64", "eval.lipschitz=none", "train.progress=false"]
    command = [sys.executable, "-m", "nt_robust.cli", "train", "--run-dir", str(run_dir), "--cpu-devices", "2"]
    for setting in settings:
        command += ["--set", setting]
    env = {k: v for k, v in os.environ.items() if k not in ("NT_ROBUST_CPU_DEVICES", "XLA_FLAGS")}
    done = subprocess.run(command, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["devices"] == 2
    from nt_robust.cli import main
    assert main(["export", str(run_dir), "--checkpoint", "latest"]) == 0
    state_dict = torch.load(run_dir / "export" / "latest_torch.pt", weights_only=True)
    trainer = Trainer(load_run_config(run_dir), run_dir)
    state, _ = trainer.restore("latest")
    params = jax.device_get(model_variables(state, use_ema=False))["params"]
    np.testing.assert_array_equal(state_dict["dense.0.weight"].numpy(), np.asarray(params["hidden1"]["kernel"]).T)
    np.testing.assert_array_equal(state_dict["classifier.bias"].numpy(), np.asarray(params["classifier"]["bias"]))
    assert restore_variables(run_dir, "latest")["step"] == int(state.step)


def test_export_labels_the_norm_that_ran(tmp_path):
    """An ℓ2 run's model_info says L2 and never takes an ℓ∞ AutoAttack result at the same ε
    (results written before results carried a norm were ℓ∞)."""
    run_dir = make_run(tmp_path, CIFAR_WRN[:-1] + ["eval.attack.eps=0.5", "eval.attack.norm=l2",
                                                   "train_attack.norm=l2", "train_attack.eps=0.5"])
    write_autoattack(run_dir, 0.5, step=12, n=1000)                      # no norm recorded: ℓ∞
    details = export_run(run_dir, dry_run=True)["details"]
    assert details["threat_model"] == "L2" and details.get("autoattack_accuracy") is None
    assert any("in linf, not the run's l2" in note for note in details["skipped_evaluations"])
    path = run_dir / "eval" / "best_val_test_autoattack-standard_eps0.5_n1000.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "norm": "l2"}))
    result = export_run(run_dir, dry_run=True)
    assert result["details"]["threat_model"] == "L2" and result["info"]["autoattack_acc"] == "53.08"

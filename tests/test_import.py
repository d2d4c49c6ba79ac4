"""`nt-robust import`: PyTorch WideResNet state_dicts in as evaluation-ready directories
(nt_robust.export.importer; issue 37, item 1). Skipped without torch.

Independent truths: RobustBench's own WideResNet class (loaded from its file when
robustbench is installed) or the independent copy in tests/test_export.py computes the
reference logits in PyTorch; export → import → export must give back the same tensors bit
for bit (a pure relabelling and transposition). Tolerance: tests/test_export.py derives
1e-5 absolute at logits scaled to 4 (≈ 40 float32 ulps of that scale; a layout error moves
logits by O(0.1-1)); the same two frameworks compute the same float32 function here.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nt_robust.export import export_run, nhwc_to_nchw  # noqa: E402
from nt_robust.export.importer import ImportError_, import_state_dict  # noqa: E402
from nt_robust.export.run import restore_variables  # noqa: E402

from test_export import (CIFAR_WRN, LOGIT_SCALE, TOLERANCE, RBWideResNet, make_run,  # noqa: E402
                               robustbench_class)

torch.manual_seed(0)


def random_robustbench(depth, width, classes=10):
    """RobustBench's WideResNet (its own class when installed), random weights and BatchNorm
    statistics, classifier scaled so that logits reach LOGIT_SCALE on the test inputs."""
    cls = robustbench_class() or RBWideResNet
    module = cls(depth=depth, num_classes=classes, widen_factor=width).eval()
    generator = torch.Generator().manual_seed(depth * 100 + width)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif "bn" in name and name.endswith("weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return module


def logits_of(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(nhwc_to_nchw(x))).numpy()


def scaled(module, x):
    with torch.no_grad():
        largest = float(np.max(np.abs(logits_of(module, x))))
        module.fc.weight.mul_(LOGIT_SCALE / largest)
        module.fc.bias.mul_(LOGIT_SCALE / largest)
    return module


def our_logits(run_dir, x):
    restored = restore_variables(run_dir, "best_val")
    return np.asarray(restored["model"].apply(restored["variables"], x, train=False))


@pytest.mark.parametrize("depth,width", [(10, 1), (16, 2)])
def test_robustbench_wide_resnet_imports_to_the_same_logits(tmp_path, depth, width):
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    module = scaled(random_robustbench(depth, width), x)
    source = tmp_path / "model.pt"
    torch.save(module.state_dict(), source)
    result = import_state_dict(source, tmp_path / "imported", eps="8/255")
    assert (result["layout"], result["depth"], result["width"], result["num_classes"]) == \
        ("robustbench", depth, width, 10)
    import hashlib
    assert result["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    record = json.loads((tmp_path / "imported" / "imported.json").read_text())
    assert record["normalization"] == {"mean": None, "std": None} and record["source"] == str(source.resolve())
    difference = np.max(np.abs(our_logits(tmp_path / "imported", x) - logits_of(module, x)))
    assert difference <= TOLERANCE, difference


def test_a_cifar_sized_wrn_28_10_forward_pass(tmp_path):
    x = np.random.default_rng(1).uniform(size=(1, 32, 32, 3)).astype(np.float32)
    module = scaled(random_robustbench(28, 10), x)
    torch.save(module.state_dict(), tmp_path / "wrn28.pt")
    import_state_dict(tmp_path / "wrn28.pt", tmp_path / "imported")
    difference = np.max(np.abs(our_logits(tmp_path / "imported", x) - logits_of(module, x)))
    assert difference <= TOLERANCE, difference


@pytest.mark.parametrize("fmt", ["robustbench", "torch"])
def test_export_import_export_is_the_identity(tmp_path, fmt):
    run_dir = make_run(tmp_path, CIFAR_WRN + (["model.input_mean=[0.5,0.4,0.3]", "model.input_std=[0.2,0.25,0.3]"]
                                              if fmt == "torch" else []))
    first = export_run(run_dir, format=fmt, out=tmp_path / "first.pt")
    import_state_dict(first["state_dict"], tmp_path / "imported", eps="8/255")
    second = export_run(tmp_path / "imported", format=fmt, out=tmp_path / "second.pt")
    a, b = torch.load(tmp_path / "first.pt", weights_only=True), torch.load(tmp_path / "second.pt", weights_only=True)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    if fmt == "torch":
        assert json.loads((tmp_path / "imported" / "imported.json").read_text())["normalization"]["mean"] == \
            pytest.approx([0.5, 0.4, 0.3])
    assert second["info"]["eps"] == "8/255"


def _refused(tmp_path, state_dict, match, **kwargs):
    source = tmp_path / "bad.pt"
    torch.save(state_dict, source)
    out = tmp_path / "never"
    with pytest.raises(ImportError_, match=match) as error:
        import_state_dict(source, out, **kwargs)
    assert not out.exists()
    return str(error.value)


def test_bad_state_dicts_are_refused_naming_keys_and_layout(tmp_path):
    good = random_robustbench(10, 1).state_dict()
    message = _refused(tmp_path, {"layer1.weight": torch.zeros(3)}, "not a WideResNet")
    assert "Expected layout" in message and "layer1.weight" in message
    missing = {k: v for k, v in good.items() if k != "block2.layer.0.bn2.running_var"}
    assert "block2.layer.0.bn2.running_var" in _refused(tmp_path, missing, "missing keys")
    extra = {**good, "block1.layer.0.extra.weight": torch.zeros(1)}
    assert "block1.layer.0.extra.weight" in _refused(tmp_path, extra, "unexpected keys")
    double = {k: (v.double() if v.is_floating_point() else v) for k, v in good.items()}
    assert "conv1.weight: dtype float64, expected float32" in _refused(tmp_path, double, "dtype")
    _refused(tmp_path, {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in good.items()}, "bfloat16")
    assert "WideResNet-10-1" in _refused(tmp_path, good, "not the asked width 2", width=2)
    assert "100 classes" in _refused(tmp_path, good, "classes", dataset="cifar100")


def test_wrapped_zoo_checkpoints_are_unwrapped(tmp_path):
    module = random_robustbench(10, 1)
    source = tmp_path / "zoo.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, source)
    result = import_state_dict(source, tmp_path / "imported")
    assert len(result["unwrapped"]) == 2
    x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert np.max(np.abs(our_logits(tmp_path / "imported", x) - logits_of(module, x))) <= TOLERANCE * 10


def test_eval_takes_an_imported_model_like_a_run(tmp_path, capsys):
    """A 1-channel, 4-class torch-layout WideResNet on the synthetic dataset: `eval` runs a
    preset and writes its result in the imported directory, as for a trained run."""
    from nt_robust.cli import main

    run_dir = make_run(tmp_path, ["data.dataset=synthetic", "model.arch=wrn", "model.depth=10", "model.width=1"])
    export_run(run_dir, format="torch", out=tmp_path / "small.pt")
    assert main(["import", str(tmp_path / "small.pt"), str(tmp_path / "imported"), "--dataset", "synthetic",
                 "--eps", "0.1", "--set", "eval.lipschitz=none"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "imported"), "--attack", "pgd20", "--examples", "8",
                 "--set", "eval.attack.num_steps=2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 8 and result["eps"] == 0.1 and result["norm"] == "linf"
    assert result["checkpoint_selection"].startswith("imported weights")
    assert result["result_file"].startswith(str(tmp_path / "imported" / "eval"))
    assert main(["import", str(tmp_path / "small.pt"), str(tmp_path / "imported")]) == 2   # not empty: refused
    assert "not empty" in capsys.readouterr().err

"""RobustBench's DMWideResNet layout in our Flax DMWideResNet (nt_robust.models.dm_wide_resnet,
nt_robust.export.dm_import; issue 37, item 1). Skipped without torch.

Independent truth: a PyTorch DMWideResNet written here from RobustBench's description (its own
class when robustbench is installed) computes the reference logits; state_dict → our variables →
state_dict must give back the same tensors bit for bit (a relabelling and transposition).
Tolerance: tests/test_export.py's, 1e-5 absolute at logits scaled to 4 (≈ 40 float32 ulps of that
scale; a layout error moves logits by O(0.1-1)).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from nt_robust.export import nhwc_to_nchw  # noqa: E402
from nt_robust.export.dm_import import dm_state_arrays, load_dm_state_dict  # noqa: E402
from nt_robust.export.importer import ImportError_, import_state_dict  # noqa: E402
from test_export import LOGIT_SCALE, TOLERANCE  # noqa: E402


class _Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut, self.stride = cin != cout, stride
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if self.has_shortcut else None

    def forward(self, x):
        a = self.relu_0(self.batchnorm_0(x))
        padded = F.pad(a, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(padded))))
        return (self.shortcut(a) if self.has_shortcut else x) + out


class _Group(nn.Module):
    def __init__(self, n, cin, cout, stride, act):
        super().__init__()
        self.block = nn.Sequential(*[_Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x):
        return self.block(x)


class TorchDMWideResNet(nn.Module):
    """RobustBench's DMWideResNet, from its description (module docstring)."""

    def __init__(self, num_classes=10, depth=28, width=10, act=_Swish):
        super().__init__()
        self.register_buffer("mean", torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1))
        self.register_buffer("std", torch.tensor((0.2471, 0.2435, 0.2616)).view(3, 1, 1))
        n, c = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(_Group(n, c[0], c[1], 1, act), _Group(n, c[1], c[2], 2, act),
                                   _Group(n, c[2], c[3], 2, act))
        self.batchnorm, self.relu = nn.BatchNorm2d(c[3]), act()
        self.logits = nn.Linear(c[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.avg_pool2d(self.relu(self.batchnorm(out)), 8)
        return self.logits(out.flatten(1))


def _dm_class():
    try:
        from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet, Swish
    except ImportError:
        return None
    return lambda **kw: DMWideResNet(activation_fn=Swish, **kw)


def random_dm(depth, width, classes=10):
    """A DMWideResNet with random weights and BatchNorm statistics, logits scaled to LOGIT_SCALE."""
    cls = _dm_class() or (lambda **kw: TorchDMWideResNet(**kw))
    module = cls(num_classes=classes, depth=depth, width=width).eval()
    g = torch.Generator().manual_seed(depth * 100 + width)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith(("running_mean", ".bias")) and "logits" not in name:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(5)
            elif "batchnorm" in name and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        x = torch.from_numpy(nhwc_to_nchw(_images()))
        largest = float(module(x).abs().max())
        module.logits.weight.mul_(LOGIT_SCALE / largest)
        module.logits.bias.mul_(LOGIT_SCALE / largest)
    return module


def _images(n=4):
    return np.random.default_rng(1).uniform(size=(n, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("depth,width", [(10, 1), (16, 2)])
def test_dm_wide_resnet_gives_pytorchs_logits(tmp_path, depth, width):
    module = random_dm(depth, width)
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, tmp_path / "dm.pt")
    model, variables, record = load_dm_state_dict(tmp_path / "dm.pt")
    assert (record["depth"], record["width"], record["num_classes"]) == (depth, width, 10)
    assert record["unwrapped"] and len(record["sha256"]) == 64
    x = _images()
    with torch.no_grad():
        want = module(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    got = np.asarray(model.apply(variables, x, train=False))
    assert np.max(np.abs(got - want)) <= TOLERANCE, np.max(np.abs(got - want))
    # state_dict -> our variables -> state_dict: the same tensors, bit for bit
    back = dm_state_arrays(variables, model.input_mean, model.input_std, batches=5)
    original = {k: v.numpy() for k, v in module.state_dict().items()}
    assert set(back) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
        assert back[key].dtype == value.dtype, key


def test_bad_dm_state_dicts_are_refused_naming_keys_and_layout(tmp_path):
    good = {k: v.numpy() for k, v in random_dm(10, 1).state_dict().items()}
    cases = {
        "missing keys": {k: v for k, v in good.items() if k != "layer.1.block.0.shortcut.weight"},
        "unexpected keys": {**good, "extra.weight": np.zeros(3, np.float32)},
        "dtype float64": {**good, "logits.bias": good["logits.bias"].astype(np.float64)},
        "shape": {**good, "layer.2.block.0.conv_1.weight": np.zeros((64, 64, 1, 1), np.float32)},
    }
    for expected, arrays in cases.items():
        with pytest.raises(ImportError_, match="Expected layout: mean, std") as error:
            load_dm_state_dict(arrays)
        assert expected.split()[0] in str(error.value), (expected, str(error.value))
    torch.save(random_dm(10, 1).state_dict(), tmp_path / "dm.pt")
    with pytest.raises(ImportError_, match="DMWideResNet-10-1.*not the asked width 2"):
        import_state_dict(tmp_path / "dm.pt", tmp_path / "out", width=2)
    assert not (tmp_path / "out").exists()                                   # nothing written


def test_nt_robust_import_writes_a_dm_directory_that_eval_takes(tmp_path, capsys, monkeypatch):
    import dataclasses
    import json

    import nt_robust.train.splits as train_data
    from nt_robust.cli import main
    from nt_robust.data import make_synthetic_dataset
    from nt_robust.export.run import restore_variables

    data = dataclasses.replace(make_synthetic_dataset(num_train=256, num_test=8, image_shape=(32, 32, 3),
                                                      num_classes=10), name="cifar10")
    monkeypatch.setattr(train_data, "load_dataset", lambda name, data_dir=None: data)
    module = random_dm(10, 1)
    torch.save(module.state_dict(), tmp_path / "dm.pt")
    assert main(["import", str(tmp_path / "dm.pt"), str(tmp_path / "dm"), "--set", "eval.lipschitz=none"]) == 0
    record = json.loads((tmp_path / "dm" / "imported.json").read_text())
    assert record["layout"] == "dm_wide_resnet" and (record["depth"], record["width"]) == (10, 1)
    assert record["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    restored = restore_variables(tmp_path / "dm", "best_val")
    x = _images()
    with torch.no_grad():
        want = module(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    got = np.asarray(restored["model"].apply(restored["variables"], x, train=False))
    assert np.max(np.abs(got - want)) <= TOLERANCE
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "dm"), "--attack", "pgd20", "--examples", "4",
                 "--set", "eval.attack.num_steps=2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 4 and result["robust_accuracy"] <= result["natural_accuracy"]

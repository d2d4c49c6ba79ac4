"""Our Flax models as PyTorch modules and tensor-only ``state_dict``\\ s.

    from nt_robust.export import state_arrays, to_torch

    arrays = state_arrays(model, variables, "robustbench")   # {key: numpy array}, no torch needed
    torch_model = to_torch(model, variables)                  # torch.nn.Module, eval mode, float32
    logits = torch_model(x_nchw)                              # x: (N, C, H, W) in [0, 1]

Layouts (``format``):

* ``"robustbench"`` (WideResNet only): the key layout of RobustBench's / TRADES'
  ``WideResNet`` (``robustbench.model_zoo.architectures.wide_resnet``): ``conv1``,
  ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}``, ``block{2,3}.layer.0.convShortcut``
  (and ``block1.layer.0.convShortcut`` for k > 1: RobustBench adds a shortcut wherever the
  channels change), the final ``bn1``, ``fc``, and each BatchNorm's ``running_mean``,
  ``running_var`` and ``num_batches_tracked``. ``WideResNet(depth, num_classes,
  widen_factor=k).load_state_dict(sd, strict=True)`` computes our eval-mode logits.
  RobustBench's class has a 3-channel stem, no input normalization and ``avg_pool2d(·, 8)``,
  so this layout is refused (:class:`ExportError`, saying why) for anything else: images
  that are not 3-channel with an 8x8 last feature map (32x32 CIFAR), or a model with
  ``input_mean`` / ``input_std``.
* ``"torch"``: the state_dict of :func:`to_torch`'s module, for every architecture: the
  WideResNet's keys above plus ``mean`` / ``std`` buffers (empty when the model has no
  normalization), any number of channels and global average pooling of any size; the MLP's
  and SmallCNN's own layout (``features.{i}``, ``dense.{i}``, ``classifier``, ``mean``,
  ``std``).

Why the WideResNet is exact, not approximately the same: every 3x3 convolution of ours
pads 1 pixel on every side (``padding=1``), also at stride 2, like PyTorch's ``padding=1``
(Flax's ``"SAME"`` would pad (0, 1) for an even input at stride 2, sampling a shifted
grid: this model does not use it); the 1x1 stride-2 shortcut takes the even pixels in
both; BatchNorm has PyTorch's eps 1e-5 and momentum 0.1 (checked below: ``BN_EPSILON``,
``BN_MOMENTUM``). Flax keeps the *biased* batch variance in its running average and
PyTorch the unbiased one (n/(n−1)), which only matters for training after the export:
the exported ``running_var`` is what our eval mode divides by, so eval logits agree.

``torch`` is imported only when a module is built (:func:`to_torch`); it is an optional
dependency (``pip install -e ".[torch]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nt_robust.models.small import MLP, SmallCNN
from nt_robust.models.wide_resnet import BN_EPSILON, BN_MOMENTUM, WideResNet

FORMATS = ("robustbench", "torch")


class ExportError(ValueError):
    """The model cannot be written in the asked layout so that it computes the same function."""


def default_format(model: Any) -> str:
    """``"robustbench"`` for a WideResNet, ``"torch"`` for the MLP and SmallCNN."""
    return "robustbench" if isinstance(model, WideResNet) else "torch"


def _f32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def _conv(kernel: Any) -> np.ndarray:
    return _f32(np.asarray(kernel).transpose(3, 2, 0, 1))     # (kh, kw, in, out) -> (out, in, kh, kw)


def _linear(kernel: Any) -> np.ndarray:
    return _f32(np.asarray(kernel).T)                          # (in, out) -> (out, in)


def _normalization(model: Any, channels: int | None) -> dict[str, np.ndarray]:
    """``mean`` / ``std`` buffers: empty when the model has none; otherwise both set, the
    missing one as Normalize's identity (0 or 1)."""
    if model.input_mean is None and model.input_std is None:
        return {"mean": np.zeros(0, np.float32), "std": np.zeros(0, np.float32)}
    n = len(model.input_mean if model.input_mean is not None else model.input_std)
    mean = np.zeros(n) if model.input_mean is None else model.input_mean
    std = np.ones(n) if model.input_std is None else model.input_std
    return {"mean": _f32(mean), "std": _f32(std)}


def _check_batch_norm() -> None:
    if BN_EPSILON != 1e-5 or BN_MOMENTUM != 0.9:
        raise ExportError(f"our WideResNet's BatchNorm has eps {BN_EPSILON} and Flax momentum {BN_MOMENTUM}; "
                          "PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1 = Flax 0.9) would compute "
                          "something else: refusing to export")


def last_feature_map(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Height and width after the WideResNet's two stride-2 groups (3x3, padding 1)."""
    def down(size: int) -> int:
        return (size + 2 - 3) // 2 + 1
    return down(down(image_shape[0])), down(down(image_shape[1]))


def check_robustbench(model: Any, image_shape: tuple[int, int, int] | None) -> None:
    """Raise :class:`ExportError` unless RobustBench's ``WideResNet`` class, loaded with the
    ``"robustbench"`` state_dict, computes exactly ``model`` on images of ``image_shape``."""
    if not isinstance(model, WideResNet):
        raise ExportError(f"the RobustBench layout is RobustBench's WideResNet; a {type(model).__name__} "
                          "keeps its own layout: use --format torch")
    if model.input_mean is not None or model.input_std is not None:
        raise ExportError("this WideResNet normalizes its input (model.input_mean / input_std) and RobustBench's "
                          "WideResNet class has no normalization; folding it into conv1 is not exact (the zero "
                          "padding would change at the border): use --format torch (keeps mean/std buffers)")
    if image_shape is not None:
        if image_shape[2] != 3:
            raise ExportError(f"RobustBench's WideResNet takes 3-channel images (conv1 has 3 input channels); "
                              f"this run's images are {image_shape[0]}x{image_shape[1]}x{image_shape[2]}: "
                              "use --format torch")
        if last_feature_map(image_shape) != (8, 8):
            raise ExportError(f"RobustBench's WideResNet averages with avg_pool2d(out, 8), which is the global "
                              f"average only for an 8x8 last feature map (32x32 images); {image_shape[0]}x"
                              f"{image_shape[1]} images end at {last_feature_map(image_shape)}: use --format torch")


def _wide_resnet_arrays(model: WideResNet, variables: Any, batches: int) -> dict[str, np.ndarray]:
    _check_batch_norm()
    params, stats = variables["params"], variables.get("batch_stats")
    if not stats:
        raise ExportError("a WideResNet needs its BatchNorm statistics (variables['batch_stats'])")

    def bn(prefix: str, scope: str, block: str | None = None) -> dict[str, np.ndarray]:
        p = params[block][scope] if block else params[scope]
        s = stats[block][scope] if block else stats[scope]
        return {f"{prefix}.weight": _f32(p["scale"]), f"{prefix}.bias": _f32(p["bias"]),
                f"{prefix}.running_mean": _f32(s["mean"]), f"{prefix}.running_var": _f32(s["var"]),
                f"{prefix}.num_batches_tracked": np.asarray(batches, np.int64)}

    arrays = {"conv1.weight": _conv(params["stem"]["kernel"])}
    blocks = (model.depth - 4) // 6
    for group in (1, 2, 3):
        for index in range(blocks):
            block, prefix = f"group{group}_block{index + 1}", f"block{group}.layer.{index}"
            arrays.update(bn(f"{prefix}.bn1", "bn1", block))
            arrays[f"{prefix}.conv1.weight"] = _conv(params[block]["conv1"]["kernel"])
            arrays.update(bn(f"{prefix}.bn2", "bn2", block))
            arrays[f"{prefix}.conv2.weight"] = _conv(params[block]["conv2"]["kernel"])
            if "shortcut" in params[block]:
                arrays[f"{prefix}.convShortcut.weight"] = _conv(params[block]["shortcut"]["kernel"])
    arrays.update(bn("bn1", "final_bn"))
    arrays["fc.weight"] = _linear(params["classifier"]["kernel"])
    arrays["fc.bias"] = _f32(params["classifier"]["bias"])
    return arrays


def _small_arrays(model: MLP | SmallCNN, variables: Any) -> dict[str, np.ndarray]:
    params = variables["params"] if "params" in variables else variables
    arrays: dict[str, np.ndarray] = {}
    if isinstance(model, SmallCNN):
        for i, name in enumerate(f"conv{s}_{c}" for s in (1, 2) for c in (1, 2)):
            arrays[f"features.{i}.weight"] = _conv(params[name]["kernel"])
            arrays[f"features.{i}.bias"] = _f32(params[name]["bias"])
        dense = ["dense1", "dense2"]
    else:
        dense = [f"hidden{i + 1}" for i in range(model.depth)]
    for i, name in enumerate(dense):
        arrays[f"dense.{i}.weight"] = _linear(params[name]["kernel"])
        arrays[f"dense.{i}.bias"] = _f32(params[name]["bias"])
    arrays["classifier.weight"] = _linear(params["classifier"]["kernel"])
    arrays["classifier.bias"] = _f32(params["classifier"]["bias"])
    return {**arrays, **_normalization(model, None)}


def state_arrays(model: Any, variables: Any, format: str | None = None,
                 image_shape: tuple[int, int, int] | None = None, batches: int = 0) -> dict[str, np.ndarray]:
    """The state_dict of ``model`` in layout ``format`` (None: :func:`default_format`) as
    float32 numpy arrays (``num_batches_tracked``: int64 scalars set to ``batches``, the
    optimizer steps taken; PyTorch only reads it when BatchNorm momentum is None).
    ``image_shape`` (H, W, C) lets the RobustBench layout check that it is exact."""
    format = format or default_format(model)
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {FORMATS}")
    if format == "robustbench":
        check_robustbench(model, image_shape)
    if isinstance(model, WideResNet):
        arrays = _wide_resnet_arrays(model, variables, batches)
        return arrays if format == "robustbench" else {**arrays, **_normalization(model, None)}
    if isinstance(model, (MLP, SmallCNN)):
        return _small_arrays(model, variables)
    raise ExportError(f"export of {type(model).__name__} to PyTorch is not implemented "
                      "(WideResNet, MLP and SmallCNN are)")


def _modules(model: Any, in_channels: int, normalized: int) -> Any:
    """An uninitialized-weights torch module with :func:`state_arrays`' ``"torch"`` layout."""
    import torch
    from torch import nn

    class Normalized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(normalized))   # empty: no normalization
            self.register_buffer("std", torch.zeros(normalized))

        def normalize(self, x: Any) -> Any:
            if self.mean.numel():
                x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
            return x

    if isinstance(model, WideResNet):
        class Block(nn.Module):   # RobustBench's BasicBlock, its attribute names
            def __init__(self, cin: int, cout: int, stride: int) -> None:
                super().__init__()
                self.bn1 = nn.BatchNorm2d(cin)
                self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
                self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

            def forward(self, x: Any) -> Any:
                activated = torch.relu(self.bn1(x))
                out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
                return (x if self.convShortcut is None else self.convShortcut(activated)) + out

        class Group(nn.Module):
            def __init__(self, blocks: int, cin: int, cout: int, stride: int) -> None:
                super().__init__()
                self.layer = nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                             for i in range(blocks)])

            def forward(self, x: Any) -> Any:
                return self.layer(x)

        class ExportedWideResNet(Normalized):
            def __init__(self) -> None:
                super().__init__()
                k, n = model.width, (model.depth - 4) // 6
                self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
                self.block1 = Group(n, 16, 16 * k, 1)
                self.block2 = Group(n, 16 * k, 32 * k, 2)
                self.block3 = Group(n, 32 * k, 64 * k, 2)
                self.bn1 = nn.BatchNorm2d(64 * k)
                self.fc = nn.Linear(64 * k, model.num_classes)

            def forward(self, x: Any) -> Any:
                out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
                return self.fc(torch.relu(self.bn1(out)).mean(dim=(2, 3)))

        return ExportedWideResNet()

    def linear(n_in: int, n_out: int) -> Any:
        return nn.Linear(n_in, n_out)

    class Exported(Normalized):
        def __init__(self, convs: list[tuple[int, int]], dense: list[tuple[int, int]], classes: tuple[int, int]):
            super().__init__()
            self.features = nn.ModuleList([nn.Conv2d(i, o, 3, padding="same") for i, o in convs])
            self.dense = nn.ModuleList([linear(i, o) for i, o in dense])
            self.classifier = linear(*classes)

        def forward(self, x: Any) -> Any:
            x = self.normalize(x)
            for index, layer in enumerate(self.features):
                x = torch.relu(layer(x))
                if index % 2 == 1:
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)   # flatten in Flax's NHWC order
            for layer in self.dense:
                x = torch.relu(layer(x))
            return self.classifier(x)

    return Exported


def to_torch(model: Any, variables: Any) -> Any:
    """A ``torch.nn.Module`` (eval mode, float32) computing ``model.apply(variables, x,
    train=False)`` on NCHW input; its ``state_dict()`` is :func:`state_arrays`' ``"torch"``
    layout, loaded with ``strict=True``."""
    import torch

    arrays = state_arrays(model, variables, "torch")
    if isinstance(model, WideResNet):
        module = _modules(model, arrays["conv1.weight"].shape[1], len(arrays["mean"]))
    else:
        def pairs(prefix: str) -> list[tuple[int, int]]:
            shapes = [arrays[k].shape for k in sorted((k for k in arrays if k.startswith(prefix)
                                                       and k.endswith(".weight")),
                                                      key=lambda k: int(k.split(".")[1]))]
            return [(s[1], s[0]) for s in shapes]
        module = _modules(model, 0, len(arrays["mean"]))(pairs("features."), pairs("dense."),
                                    tuple(arrays["classifier.weight"].shape[::-1]))
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
    return module.eval()


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{key: torch.Tensor}`` (copies), what ``torch.save`` writes."""
    import torch
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def nhwc_to_nchw(x: Any) -> np.ndarray:
    """Image batch from our layout to PyTorch's."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))

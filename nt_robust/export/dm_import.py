"""RobustBench's ``DMWideResNet`` state_dicts (Swish WideResNets of its widest CIFAR entries) in
and out of :class:`nt_robust.models.dm_wide_resnet.DMWideResNet`::

    model, variables, record = load_dm_state_dict("Gowal2020Uncovering_70_16_extra.pt")
    logits = model.apply(variables, images, train=False)        # NHWC images in [0, 1]
    arrays = dm_state_arrays(variables)   # back to the PyTorch keys (NCHW / OIHW), bit for bit

Layout: ``mean``, ``std`` (C, 1, 1), ``init_conv.weight``,
``layer.{0,1,2}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1[,shortcut]}.*``,
``batchnorm.*``, ``logits.{weight,bias}``. Depth (6n + 4), width, classes and channels are read
from the shapes; the keys must be exactly these, float32 (``num_batches_tracked`` int64), or
:class:`~nt_robust.export.importer.ImportError_` names the keys and the layout. The activation
is not in the file: RobustBench builds these entries with Swish (``activation="swish"``, the
default here); pass ``"relu"`` for its ReLU ones.

``nt-robust import`` writes such a file as a directory with ``model.arch = "dm_wrn"``
(:mod:`nt_robust.export.importer`), which ``eval`` and the studies take like a trained run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from nt_robust.export.state_dicts import ImportError_, as_numpy, layout_problems, sha256, unwrap
from nt_robust.models.dm_wide_resnet import DMWideResNet

DM_CORE = {"init_conv.weight", "logits.weight", "logits.bias", "batchnorm.weight", "layer.0.block.0.conv_0.weight"}
DM_EXPECTED = ("mean, std (C,1,1), init_conv.weight, layer.{0,1,2}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1}.* "
               "(+ shortcut.weight where the channels change), batchnorm.*, logits.weight, logits.bias "
               "(RobustBench's DMWideResNet)")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_dm_layout(keys: set[str]) -> bool:
    """Whether ``keys`` look like a DMWideResNet state_dict."""
    return DM_CORE <= keys


def dm_architecture(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """``depth``, ``width``, ``num_classes``, ``in_channels`` from the tensors' shapes."""
    if not is_dm_layout(set(arrays)):
        raise ImportError_(f"not a DMWideResNet state_dict: missing {sorted(DM_CORE - set(arrays))}. "
                           f"Expected layout: {DM_EXPECTED}")
    blocks = len({k.split(".")[3] for k in arrays if k.startswith("layer.0.block.")})
    first = arrays["layer.0.block.0.conv_0.weight"].shape[0]
    if first % 16:
        raise ImportError_(f"layer.0.block.0.conv_0.weight has {first} output channels: a DMWideResNet has 16·width")
    return {"depth": 6 * blocks + 4, "width": first // 16, "num_classes": int(arrays["logits.weight"].shape[0]),
            "in_channels": int(arrays["init_conv.weight"].shape[1])}


def _conv_out(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1))   # (kh, kw, in, out) -> OIHW


def _conv_in(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))               # OIHW -> (kh, kw, in, out)


def dm_state_arrays(variables: Any, mean: Any, std: Any, batches: int = 0) -> dict[str, np.ndarray]:
    """The PyTorch state_dict arrays of our DMWideResNet's ``variables`` (and its input ``mean``/``std``)."""
    params, stats = variables["params"], variables["batch_stats"]
    out: dict[str, np.ndarray] = {"mean": np.asarray(mean, np.float32).reshape(-1, 1, 1),
                                  "std": np.asarray(std, np.float32).reshape(-1, 1, 1),
                                  "init_conv.weight": _conv_out(params["init_conv"]["kernel"])}

    def bn(prefix: str, p: Any, s: Any) -> None:
        for key, value in zip(_BN, (p["scale"], p["bias"], s["mean"], s["var"], batches)):
            out[f"{prefix}.{key}"] = np.asarray(value, np.int64 if key == "num_batches_tracked" else np.float32)

    for name in sorted(params):
        if not name.startswith("layer_"):
            continue
        _, group, _, index = name.split("_")
        prefix, p, s = f"layer.{group}.block.{index}", params[name], stats[name]
        bn(f"{prefix}.batchnorm_0", p["batchnorm_0"], s["batchnorm_0"])
        out[f"{prefix}.conv_0.weight"] = _conv_out(p["conv_0"]["kernel"])
        bn(f"{prefix}.batchnorm_1", p["batchnorm_1"], s["batchnorm_1"])
        out[f"{prefix}.conv_1.weight"] = _conv_out(p["conv_1"]["kernel"])
        if "shortcut" in p:
            out[f"{prefix}.shortcut.weight"] = _conv_out(p["shortcut"]["kernel"])
    bn("batchnorm", params["batchnorm"], stats["batchnorm"])
    out["logits.weight"] = np.ascontiguousarray(np.asarray(params["logits"]["kernel"], np.float32).T)
    out["logits.bias"] = np.asarray(params["logits"]["bias"], np.float32)
    return out


def check_dm_layout(arrays: dict[str, np.ndarray], activation: str = "swish") -> tuple[DMWideResNet, dict[str, int]]:
    """The model ``arrays`` are exactly the layout of, or :class:`ImportError_` naming the keys."""
    arch = dm_architecture(arrays)
    channels = arch["in_channels"]
    model = DMWideResNet(depth=arch["depth"], width=arch["width"], num_classes=arch["num_classes"],
                         activation=activation, input_mean=(0.0,) * channels, input_std=(1.0,) * channels)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, channels), np.float32)))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    expected = {k: (v.shape, v.dtype) for k, v in dm_state_arrays(zeros, [0.0] * channels, [1.0] * channels).items()}
    problems = layout_problems(arrays, expected)
    if problems:
        raise ImportError_(f"not the DMWideResNet layout of a DMWideResNet-{arch['depth']}-{arch['width']}, "
                           f"{arch['num_classes']} classes: " + "; ".join(problems[:10])
                           + f"{' ...' if len(problems) > 10 else ''}. Expected layout: {DM_EXPECTED}")
    model = model.clone(input_mean=tuple(float(v) for v in arrays["mean"].reshape(-1)),
                        input_std=tuple(float(v) for v in arrays["std"].reshape(-1)))
    return model, arch


def dm_variables(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Our DMWideResNet's ``{"params", "batch_stats"}`` from the (checked) layout's arrays."""
    params: dict[str, Any] = {"init_conv": {"kernel": _conv_in(arrays["init_conv.weight"])}}
    stats: dict[str, Any] = {}

    def bn(prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return ({"scale": arrays[f"{prefix}.weight"], "bias": arrays[f"{prefix}.bias"]},
                {"mean": arrays[f"{prefix}.running_mean"], "var": arrays[f"{prefix}.running_var"]})

    for key in sorted({k.rsplit(".", 2)[0] for k in arrays if k.startswith("layer.")}):
        _, group, _, index = key.split(".")
        name = f"layer_{group}_block_{index}"
        params[name], stats[name] = {}, {}
        for bn_name in ("batchnorm_0", "batchnorm_1"):
            params[name][bn_name], stats[name][bn_name] = bn(f"{key}.{bn_name}")
        for conv in ("conv_0", "conv_1", "shortcut"):
            if f"{key}.{conv}.weight" in arrays:
                params[name][conv] = {"kernel": _conv_in(arrays[f"{key}.{conv}.weight"])}
    params["batchnorm"], stats["batchnorm"] = bn("batchnorm")
    params["logits"] = {"kernel": np.ascontiguousarray(arrays["logits.weight"].T), "bias": arrays["logits.bias"]}
    return {"params": params, "batch_stats": stats}


def load_dm_state_dict(source: str | Path | dict[str, Any], activation: str = "swish"
                       ) -> tuple[DMWideResNet, dict[str, Any], dict[str, Any]]:
    """``(model, variables, record)`` from a DMWideResNet state_dict (a ``.pt`` path, or the dict
    of tensors or arrays itself; ``{"state_dict": ...}`` and ``module.`` unwrapped)."""
    record: dict[str, Any] = {"layout": "dm_wide_resnet", "activation": activation}
    if isinstance(source, (str, Path)):
        import torch

        record.update(source=str(Path(source).resolve()), sha256=sha256(source))
        source = torch.load(source, map_location="cpu", weights_only=True)
    state_dict, notes = unwrap(source)
    arrays = as_numpy(state_dict)
    model, arch = check_dm_layout(arrays, activation)
    record.update(arch, unwrapped=notes, normalization={"mean": list(model.input_mean), "std": list(model.input_std)})
    return model, dm_variables(arrays), record

"""``nt-robust import``: a PyTorch WideResNet state_dict as an evaluation-ready directory::

    result = import_state_dict("Carmon2019Unlabeled.pt", "runs/imported/carmon", dataset="cifar10",
                               eps="8/255")
    # then, like any trained run:  nt-robust eval runs/imported/carmon --protocol autoattack-standard

Layouts (``layout``, detected from the keys when None):

* ``"robustbench"``: RobustBench's / TRADES' ``WideResNet`` (``conv1``,
  ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}``, ``bn1``, ``fc``), any
  depth (6n + 4) and width; no input normalization. What ``nt-robust export`` writes by default.
* ``"torch"``: the same keys plus ``mean`` / ``std`` buffers (``nt-robust export --format
  torch`` of a WideResNet): the normalization becomes ``model.input_mean`` / ``input_std``.
* ``"dm_wide_resnet"``: RobustBench's Swish ``DMWideResNet`` (``init_conv``,
  ``layer.{g}.block.{i}.*``, ``batchnorm``, ``logits``, ``mean``/``std``), checked by
  :mod:`nt_robust.export.dm_import`; the directory's ``model.arch`` is ``"dm_wrn"``.

Depth, width, classes and input channels are read from the tensors' shapes (``depth`` /
``width`` given: checked against them). The keys must be exactly the layout's for that
depth and width, every tensor float32 (``num_batches_tracked`` int64) and of the layout's
shape; anything else is refused (:class:`ImportError_`, naming the keys and the expected
layout) before anything is written. A checkpoint saved as ``{"state_dict": ...}`` or with
``nn.DataParallel``'s ``module.`` prefix (as RobustBench's zoo files are) is unwrapped, and
that is recorded.

The directory holds ``config.json`` (a WideResNet config with the dataset, ε and norm to
evaluate at), the weights as the checkpoints ``latest``, ``best_val`` and ``best_test``
(identical: every evaluation command's default finds them) and ``imported.json``: the
source file's path and sha256, the layout, the unwrapping, the normalization, depth,
width, classes and the torch version that read it. ``eval``, the protocols, the stability
and Lipschitz metrics and ``export`` take it like a trained run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nt_robust import storage
from nt_robust.export.dm_import import check_dm_layout, dm_variables, is_dm_layout
from nt_robust.export.pytorch import state_arrays
from nt_robust.export.state_dicts import ImportError_, as_numpy, layout_problems, sha256, unwrap
from nt_robust.models.wide_resnet import WideResNet

LAYOUTS = ("robustbench", "torch", "dm_wide_resnet")


def detect_layout(keys: set[str]) -> str:
    """``"torch"`` when the WideResNet keys come with ``mean`` / ``std``, ``"robustbench"``
    without; :class:`ImportError_` for keys of no WideResNet layout."""
    core = {"conv1.weight", "fc.weight", "fc.bias", "bn1.weight", "block1.layer.0.conv1.weight"}
    if is_dm_layout(keys):
        return "dm_wide_resnet"
    if not core <= keys:
        raise ImportError_(f"not a WideResNet state_dict in RobustBench's layout: missing "
                           f"{sorted(core - keys)} (found e.g. {sorted(keys)[:6]}). Expected layout: {_EXPECTED}")
    return "torch" if {"mean", "std"} <= keys else "robustbench"


_EXPECTED = ("conv1.weight, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}.* (+ convShortcut where the channels "
             "change), bn1.*, fc.weight, fc.bias (RobustBench's WideResNet; + mean, std for --layout torch)")


def infer_architecture(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """``depth``, ``width``, ``num_classes``, ``in_channels`` from the tensors' shapes."""
    blocks = len({k.split(".")[2] for k in arrays if k.startswith("block1.layer.")})
    first = arrays["block1.layer.0.conv1.weight"].shape[0]
    if first % 16:
        raise ImportError_(f"block1.layer.0.conv1.weight has {first} output channels: a WideResNet has 16·width")
    return {"depth": 6 * blocks + 4, "width": first // 16, "num_classes": int(arrays["fc.weight"].shape[0]),
            "in_channels": int(arrays["conv1.weight"].shape[1])}


def _expected_arrays(model: WideResNet, in_channels: int, layout: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Key -> (shape, dtype) of ``layout`` for ``model``, from our exporter's own layout."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, in_channels), np.float32),
                                               train=False))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    arrays = state_arrays(model, zeros, "torch")
    if layout == "robustbench":
        arrays = {k: v for k, v in arrays.items() if k not in ("mean", "std")}
    return {k: (v.shape, v.dtype) for k, v in arrays.items()}


def check_layout(arrays: dict[str, np.ndarray], layout: str, depth: int | None = None,
                 width: int | None = None) -> dict[str, int]:
    """Raise :class:`ImportError_` unless ``arrays`` is exactly ``layout`` for its (or the
    given) depth and width; return the architecture."""
    arch = infer_architecture(arrays)
    asked = {"depth": depth, "width": width}
    wrong = {k: v for k, v in asked.items() if v is not None and v != arch[k]}
    if wrong:
        raise ImportError_(f"the state_dict is a WideResNet-{arch['depth']}-{arch['width']} (from the number of "
                           f"block1.layer.* entries and block1.layer.0.conv1.weight's {16 * arch['width']} "
                           f"channels), not the asked " + ", ".join(f"{k} {v}" for k, v in wrong.items()))
    if layout == "torch" and arrays["mean"].size != arrays["std"].size:
        raise ImportError_(f"mean has {arrays['mean'].size} entries and std {arrays['std'].size}: expected the same")
    model = WideResNet(depth=arch["depth"], width=arch["width"], num_classes=arch["num_classes"])
    expected = _expected_arrays(model, arch["in_channels"], layout)
    if layout == "torch":
        expected["mean"] = expected["std"] = ((arrays["mean"].size,), np.float32)
    problems = layout_problems(arrays, expected)
    if problems:
        name = f"WideResNet-{arch['depth']}-{arch['width']}, {arch['num_classes']} classes"
        raise ImportError_(f"not the {layout} layout of a {name}: " + "; ".join(problems[:10])
                           + f"{' ...' if len(problems) > 10 else ''}. Expected layout: {_EXPECTED}")
    return arch


def _check_dm(arrays: dict[str, np.ndarray], depth: int | None, width: int | None) -> dict[str, int]:
    """:func:`nt_robust.export.dm_import.check_dm_layout`, and the asked depth and width."""
    _, arch = check_dm_layout(arrays)
    wrong = {k: v for k, v in {"depth": depth, "width": width}.items() if v is not None and v != arch[k]}
    if wrong:
        raise ImportError_(f"the state_dict is a DMWideResNet-{arch['depth']}-{arch['width']} (from the "
                           "layer.0.block.* entries and layer.0.block.0.conv_0.weight's channels), not the asked "
                           + ", ".join(f"{k} {v}" for k, v in wrong.items()))
    return arch


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))   # (out, in, kh, kw) -> (kh, kw, in, out)


def to_variables(arrays: dict[str, np.ndarray], depth: int) -> dict[str, Any]:
    """Our WideResNet's ``{"params", "batch_stats"}`` from the (checked) layout's arrays:
    the inverse of :func:`nt_robust.export.pytorch.state_arrays`."""
    params: dict[str, Any] = {"stem": {"kernel": _conv(arrays["conv1.weight"])}}
    stats: dict[str, Any] = {}

    def bn(prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return ({"scale": arrays[f"{prefix}.weight"], "bias": arrays[f"{prefix}.bias"]},
                {"mean": arrays[f"{prefix}.running_mean"], "var": arrays[f"{prefix}.running_var"]})

    for group in (1, 2, 3):
        for index in range((depth - 4) // 6):
            block, prefix = f"group{group}_block{index + 1}", f"block{group}.layer.{index}"
            params[block], stats[block] = {}, {}
            for name in ("bn1", "bn2"):
                params[block][name], stats[block][name] = bn(f"{prefix}.{name}")
            for name in ("conv1", "conv2"):
                params[block][name] = {"kernel": _conv(arrays[f"{prefix}.{name}.weight"])}
            if f"{prefix}.convShortcut.weight" in arrays:
                params[block]["shortcut"] = {"kernel": _conv(arrays[f"{prefix}.convShortcut.weight"])}
    params["final_bn"], stats["final_bn"] = bn("bn1")
    params["classifier"] = {"kernel": np.ascontiguousarray(arrays["fc.weight"].T), "bias": arrays["fc.bias"]}
    return {"params": params, "batch_stats": stats}


def _normalization(arrays: dict[str, np.ndarray]) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if "mean" not in arrays or arrays["mean"].size == 0:
        return None, None
    return tuple(float(v) for v in arrays["mean"]), tuple(float(v) for v in arrays["std"])


def import_state_dict(source: str | Path, out: str | Path, dataset: str = "cifar10", eps: Any = "8/255",
                      norm: str = "linf", layout: str | None = None, depth: int | None = None,
                      width: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                      progress: bool = False) -> dict[str, Any]:
    """Write ``source`` (a ``.pt`` state_dict) as the evaluation-ready directory ``out``;
    see the module docstring. ``overrides``: more ``--set`` config settings (``eval.*``,
    ``data.*``). Returns ``{run_dir, layout, depth, width, num_classes, sha256, ...}``."""
    try:
        import torch
    except ImportError:
        raise ImportError_('nt-robust import reads PyTorch files and needs torch: pip install -e ".[torch]"') from None
    from nt_robust.config import load_config, to_dict
    from nt_robust.models import create_model
    from nt_robust.train import Checkpointer, ExperimentConfig
    from nt_robust.train.config import input_shape
    from nt_robust.train.restore import abstract_state

    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file (a PyTorch state_dict saved with torch.save)")
    if out.exists() and any(out.iterdir()):
        raise ImportError_(f"{out} exists and is not empty: choose a new directory (nothing was written)")
    if layout is not None and layout not in LAYOUTS:
        raise ImportError_(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- pickle, zip and torch errors alike
        raise ImportError_(f"{source} is not a tensor-only PyTorch file torch.load(weights_only=True) reads "
                           f"({type(error).__name__}: {str(error)[:200]})") from None
    state_dict, notes = unwrap(loaded)
    arrays = as_numpy(state_dict)
    detected = detect_layout(set(arrays))
    layout = layout or detected
    if (layout == "dm_wide_resnet") != (detected == "dm_wide_resnet"):
        raise ImportError_(f"--layout {layout} but the keys are the {detected} layout (nothing was written)")
    if layout == "dm_wide_resnet":
        arch = _check_dm(arrays, depth, width)
        mean, std = (tuple(float(v) for v in arrays[k].reshape(-1)) for k in ("mean", "std"))
    else:
        arch = check_layout(arrays, layout, depth, width)
        mean, std = _normalization(arrays)
    arch_name = "dm_wrn" if layout == "dm_wide_resnet" else "wrn"
    settings = [f"name={out.name}", f"data.dataset={dataset}", f"model.arch={arch_name}", f"model.depth={arch['depth']}",
                f"model.width={arch['width']}", f"eval.attack.eps={eps}", f"eval.attack.norm={norm}",
                f"train_attack.eps={eps}", f"train_attack.norm={norm}", "data.val_size=0", *overrides]
    if mean is not None:
        settings += [f"model.input_mean={list(mean)}", f"model.input_std={list(std)}"]
    config = load_config(ExperimentConfig, None, settings)
    image_shape, classes = input_shape(config.data)
    if classes != arch["num_classes"] or image_shape[2] != arch["in_channels"]:
        raise ImportError_(f"{dataset} has {classes} classes and {image_shape[2]}-channel images; the state_dict's "
                           f"fc.weight has {arch['num_classes']} classes and conv1.weight {arch['in_channels']} "
                           "input channels: pass the dataset it was trained on (--dataset)")
    model = create_model(config.model, classes)
    variables = dm_variables(arrays) if layout == "dm_wide_resnet" else to_variables(arrays, arch["depth"])
    batches = int(arrays["batchnorm.num_batches_tracked" if layout == "dm_wide_resnet" else "bn1.num_batches_tracked"])
    abstract = abstract_state(config, model, image_shape)
    state = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state = state.replace(step=np.asarray(batches, abstract.step.dtype), params=variables["params"],
                          batch_stats=variables["batch_stats"])
    record = {"source": str(source.resolve()), "sha256": sha256(source), "layout": layout, "unwrapped": notes,
              "normalization": {"mean": mean, "std": std}, **arch, "num_batches_tracked": batches,
              "torch_version": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    storage.write_json(out / "config.json", to_dict(config))
    checkpoints = Checkpointer(out / "checkpoints", keep=1)
    try:
        for kind in ("latest", "best_val", "best_test"):
            checkpoints.save(kind, state, {"progress": {"epoch": None, "imported": True}})
    finally:
        checkpoints.close()
    storage.write_json(out / "imported.json", record)
    if progress:
        print(f"imported {source} ({layout} layout, WRN-{arch['depth']}-{arch['width']}, {arch['num_classes']} "
              f"classes) into {out}", file=sys.stderr)
    return {"run_dir": str(out), **record}

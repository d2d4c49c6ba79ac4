"""Build a model from a small validated config::

    config = ModelConfig(arch="wrn", depth=16, width=4)
    model = create_model(config, num_classes=10)
    variables = init_variables(model, jax.random.key(0), image_shape=(32, 32, 3))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nt_robust.config import check_choice, check_int, require
from nt_robust.models.layers import COMPUTE_DTYPES, MATMUL_PRECISIONS
from nt_robust.models.small import MLP, SmallCNN
from nt_robust.models.dm_wide_resnet import DMWideResNet
from nt_robust.models.wide_resnet import WideResNet

ARCHITECTURES = ("wrn", "mlp", "cnn", "dm_wrn")   # dm_wrn: RobustBench's Swish DMWideResNet (imports)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``arch``: "wrn" (WideResNet-depth-width), "mlp" (depth hidden layers of width
    units) or "cnn" (SmallCNN, channels x width; depth unused).

    ``width`` means something different for each architecture:

    * ``mlp``: units per hidden layer (typical 16 to 4096; parameters grow ~ width²·depth);
    * ``cnn``: a *multiplier* of the SmallCNN's channels 32-32-64-64 and dense units 200-200
      (typical 1 to 16; width = 256 is 8192-16384 channels, billions of parameters);
    * ``wrn``: the WideResNet widening factor k of WRN-depth-k, a multiplier of the channels
      16-32-64 (typical 1 to 20; the paper's WRN-34-10 has width = 10).

    Switching ``arch`` keeps ``width``: an MLP's 256 is not a sensible CNN multiplier
    (``nt-robust train`` estimates parameters and memory first and says so). ``input_mean`` /
    ``input_std``: optional per-channel normalization applied inside the model.
    ``conv_impl``: how convolutions and their gradients are computed — "auto" (on the CPU
    backend whichever of "flipped_dx", "shifted_matmul" and "native" was measured fastest on
    this machine, ``nt_robust.cpu.choice``; plain XLA elsewhere), "xla",
    "flipped_dx", "shifted_matmul" or "native" (hand-written CPU kernels, built with g++ on
    first use: ``nt_robust.cpu.native``). Same function and gradients up to float
    summation order; see ``nt_robust.cpu.conv`` (use "xla" for forward-mode autodiff
    through the model). ``dense_impl``: how an MLP's dense layers multiply — "auto" (on the CPU
    backend XLA's products or a hand-written matrix-product kernel, whichever was measured
    faster on this machine), "xla" or "native" (``nt_robust.cpu.dense``; the same function
    up to float summation order; "xla" for forward-mode autodiff). :func:`create_model` turns
    both into the model's ``conv`` / ``dot_general`` functions (``nt_robust.cpu.ops.layer_ops``).

    ``dtype``: the compute dtype of training, "float32" or "bfloat16" (mixed precision:
    docs/design.md). Parameters, optimizer state and BatchNorm statistics stay float32,
    BatchNorm normalizes in float32, the logits come out in float32 and attacks keep their
    iterates in float32; evaluation runs in ``eval.dtype`` (float32 by default).
    ``matmul_precision``: "default", "high" or "highest", the precision of every matmul and
    convolution (training and evaluation) — what float32 runs as on GPUs ("default" and
    "high": TF32 on NVIDIA Ampere and newer; "highest": float32) and TPUs. XLA:CPU ignores it."""

    arch: str = "wrn"
    width: int = 1
    depth: int = 16
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    conv_impl: str = "auto"
    dense_impl: str = "auto"
    dtype: str = "float32"
    matmul_precision: str = "default"

    def __post_init__(self) -> None:
        from nt_robust.cpu.ops import CONV_IMPLS, DENSE_IMPLS  # here: importing the models loads no CPU engine

        check_choice("model.arch", self.arch, ARCHITECTURES)
        check_choice("model.conv_impl", self.conv_impl, CONV_IMPLS)
        check_choice("model.dense_impl", self.dense_impl, DENSE_IMPLS)
        check_choice("model.dtype", self.dtype, COMPUTE_DTYPES)
        check_choice("model.matmul_precision", self.matmul_precision, tuple(MATMUL_PRECISIONS))
        for name in ("width", "depth"):
            check_int(f"model.{name}", getattr(self, name), minimum=1)
        require(self.arch not in ("wrn", "dm_wrn") or (self.depth - 4) % 6 == 0, "model.depth",
                f"for a WideResNet must be 6n+4 (10, 16, 22, 28, 34, ...), got {self.depth}")

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``WRN-34-10``, ``MLP-2x256``, ``CNNx4``."""
        if self.arch in ("wrn", "dm_wrn"):
            return f"{'DM-' if self.arch == 'dm_wrn' else ''}WRN-{self.depth}-{self.width}"
        if self.arch == "mlp":
            return f"MLP-{self.depth}x{self.width}"
        return f"CNNx{self.width}"


def create_model(config: ModelConfig, num_classes: int, dtype: str | None = None) -> nn.Module:
    """The Flax module for ``config``; every model is called as ``model.apply(v, x, train=...)``.
    ``dtype`` overrides ``config.dtype`` (evaluation builds the same model in ``eval.dtype``:
    the same parameters, another compute dtype). The one place where ``config.conv_impl`` and
    ``config.dense_impl`` become functions (on a CPU host "auto" may measure them here, once
    per machine), so no trace of the model measures or builds anything."""
    from nt_robust.cpu.ops import layer_ops

    dtype = config.dtype if dtype is None else dtype
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"the compute dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    norm = dict(input_mean=config.input_mean, input_std=config.input_std, dtype=jnp.dtype(dtype),
                precision=MATMUL_PRECISIONS[config.matmul_precision])
    ops = layer_ops(config)
    if config.arch == "wrn":
        return WideResNet(depth=config.depth, width=config.width, num_classes=num_classes, conv=ops["conv"], **norm)
    if config.arch == "dm_wrn":   # float32 only, plain convolutions (imported models: export/dm_import.py)
        return DMWideResNet(depth=config.depth, width=config.width, num_classes=num_classes,
                            **({} if config.input_mean is None else dict(input_mean=config.input_mean,
                                                                         input_std=config.input_std)))
    if config.arch == "mlp":
        return MLP(width=config.width, depth=config.depth, num_classes=num_classes, dot_general=ops["dot_general"],
                   **norm)
    return SmallCNN(width=config.width, num_classes=num_classes, conv=ops["conv"], **norm)


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> Any:
    """Initialize ``{'params': ..., ['batch_stats': ...]}`` for images of ``image_shape`` (H, W, C)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def count_parameters(params: Any) -> int:
    """Number of scalars in a parameter tree (BatchNorm running statistics excluded)."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


TYPICAL_MAX_WIDTH = {"mlp": 8192, "cnn": 16, "wrn": 20, "dm_wrn": 20}


def estimate_model_size(config: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Parameters and activations per example of ``config``, from shapes only: ``jax.eval_shape``
    of init and of the forward pass traces the model without allocating any array, so it is
    cheap even for a model far too large to build. Returns ``parameters`` (count, BatchNorm
    statistics excluded), ``state`` (BatchNorm statistics) and ``activations_per_example``
    (floats in the outputs of every layer of one forward pass)."""
    model = create_model(config, num_classes)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    _, intermediates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
        variables, x)
    size = lambda tree: int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))  # noqa: E731
    return {"parameters": size(variables.get("params", {})),
            "state": size({k: v for k, v in variables.items() if k != "params"}),
            "activations_per_example": size(intermediates)}


def width_hint(config: ModelConfig) -> str | None:
    """The likely mistake when ``width`` is far beyond what ``arch`` is normally given."""
    if config.width <= TYPICAL_MAX_WIDTH[config.arch]:
        return None
    meaning = {"cnn": "a multiplier of the SmallCNN's channels (32·width in the first conv)",
               "wrn": "the WideResNet widening factor (channels 16·width, 32·width, 64·width)",
               "dm_wrn": "the WideResNet widening factor (channels 16·width, 32·width, 64·width)",
               "mlp": "units per hidden layer"}[config.arch]
    mistake = (f" width = {config.width} looks like an MLP's units per layer (kept when model.arch was switched?); "
               f"for arch = {config.arch!r} try 1 to {TYPICAL_MAX_WIDTH[config.arch]}") if config.arch != "mlp" else ""
    return f"model.width = {config.width} for arch = {config.arch!r} is {meaning}.{mistake}"

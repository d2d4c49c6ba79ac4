"""The WideResNet of the TRADES code, with width as a first-class argument.

WRN-d-k: a 3x3 stem with 16 channels, then three groups of ``n = (d - 4) / 6``
pre-activation basic blocks with 16k, 32k and 64k channels (strides 1, 2, 2), a final
BatchNorm + ReLU, global average pooling and a linear classifier. No dropout; no module
that the forward pass does not use (the TRADES code builds one and never calls it)::

    model = WideResNet(depth=34, width=10, num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from nt_robust.models.layers import Normalize, conv_init, float32_logits, linear_init, to_compute_dtype


# PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1 = Flax momentum 0.9): the export
# to PyTorch (nt_robust.export) checks these before writing a RobustBench state_dict.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def _batch_norm(train: bool, name: str, dtype: Any = jnp.float32) -> nn.BatchNorm:
    """Flax's BatchNorm computes its batch statistics, running averages and the
    normalization itself in float32 whatever the input (``force_float32_reductions``);
    ``dtype`` is only the dtype it returns (the compute dtype)."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                        name=name)


class BasicBlock(nn.Module):
    """Pre-activation block. When channels change, BN+ReLU feed both the residual branch
    and the 1x1 shortcut convolution (as in the TRADES code); otherwise the shortcut is
    the raw input."""

    out_channels: int
    stride: int
    conv: Callable = lax.conv_general_dilated
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        equal_in_out = x.shape[-1] == self.out_channels and self.stride == 1
        conv = dict(use_bias=False, kernel_init=conv_init, conv_general_dilated=self.conv,
                    dtype=self.dtype, precision=self.precision)
        activated = nn.relu(_batch_norm(train, "bn1", self.dtype)(x))
        out = nn.Conv(self.out_channels, (3, 3), strides=self.stride, padding=1, name="conv1", **conv)(activated)
        out = nn.relu(_batch_norm(train, "bn2", self.dtype)(out))
        out = nn.Conv(self.out_channels, (3, 3), strides=1, padding=1, name="conv2", **conv)(out)
        if equal_in_out:
            shortcut = x
        else:
            shortcut = nn.Conv(self.out_channels, (1, 1), strides=self.stride, padding=0, name="shortcut",
                               **conv)(activated)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-``depth``-``width``; ``depth`` must be 6n + 4 and ``width`` an integer ≥ 1.
    ``conv``: the ``lax.conv_general_dilated`` of every convolution (``create_model`` passes
    the one ``model.conv_impl`` names, ``nt_robust.cpu.ops``; it changes speed, not the function).
    ``dtype``: the compute dtype of every convolution and the classifier (the input is cast
    to it after the float32 normalization; BatchNorm normalizes in float32 and returns it);
    ``precision``: every layer's matmul precision. Parameters and BatchNorm statistics are
    float32 and the logits are returned in float32 whatever ``dtype`` is."""

    depth: int = 34
    width: int = 10
    num_classes: int = 10
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    conv: Callable = lax.conv_general_dilated
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {self.depth}")
        if int(self.width) != self.width or self.width < 1:
            raise ValueError(f"WideResNet width must be an integer >= 1, got {self.width}")
        blocks_per_group = (self.depth - 4) // 6
        compute = dict(dtype=self.dtype, precision=self.precision)
        x = to_compute_dtype(Normalize(self.input_mean, self.input_std)(x), self.dtype)
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                    conv_general_dilated=self.conv, name="stem", **compute)(x)
        for group, (channels, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            for block in range(blocks_per_group):
                x = BasicBlock(channels * self.width, stride if block == 0 else 1, self.conv,
                               name=f"group{group + 1}_block{block + 1}", **compute)(x, train)
        x = nn.relu(_batch_norm(train, "final_bn", self.dtype)(x))
        x = jnp.mean(x, axis=(1, 2))
        return float32_logits(nn.Dense(self.num_classes, kernel_init=linear_init,
                                       bias_init=nn.initializers.zeros, name="classifier", **compute)(x))

"""Small networks with a width multiplier: an MLP and the TRADES-style small CNN.

    mlp = MLP(width=256, depth=2, num_classes=10)      # 2 hidden layers of 256 units
    cnn = SmallCNN(width=2, num_classes=10)            # channels 64, 128; dense 400

Both flatten/convolve any NHWC input and take an optional per-channel normalization.
``dtype`` is the compute dtype (float32 or bfloat16: the input is cast to it after the
normalization, which is float32), ``precision`` every layer's matmul precision; the
parameters are float32 and the logits are returned in float32 either way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from nt_robust.models.layers import Normalize, conv_init, float32_logits, linear_init, to_compute_dtype
from nt_robust.models.pooling import max_pool


class MLP(nn.Module):
    """ReLU MLP with ``depth`` hidden layers of ``width`` units. ``dot_general``: the product of
    every dense layer (``create_model`` passes the one ``model.dense_impl`` names,
    ``nt_robust.cpu.ops``; it changes speed, not the function)."""

    width: int = 256
    depth: int = 2
    num_classes: int = 10
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    dot_general: Callable = lax.dot_general
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm or dropout; kept for the common model signature
        x = to_compute_dtype(Normalize(self.input_mean, self.input_std)(x), self.dtype)
        x = jnp.reshape(x, (x.shape[0], -1))
        dense = dict(kernel_init=linear_init, dtype=self.dtype, precision=self.precision,
                     dot_general=self.dot_general)
        for layer in range(self.depth):
            x = nn.relu(nn.Dense(self.width, name=f"hidden{layer + 1}", **dense)(x))
        return float32_logits(nn.Dense(self.num_classes, name="classifier", **dense)(x))


class SmallCNN(nn.Module):
    """The TRADES MNIST SmallCNN (conv 32-32, pool, conv 64-64, pool, dense 200-200) with
    all channel and unit counts multiplied by ``width``. Convolutions use SAME padding so
    any input of at least 4x4 works (the TRADES code uses VALID on 28x28); no dropout.
    ``conv``: the ``lax.conv_general_dilated`` of every convolution (``create_model`` passes
    the one ``model.conv_impl`` names, ``nt_robust.cpu.ops``; it changes speed, not the function)."""

    width: int = 1
    num_classes: int = 10
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    conv: Callable = lax.conv_general_dilated
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if x.shape[1] < 4 or x.shape[2] < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4 pixels, got {x.shape[1]}x{x.shape[2]}")
        x = to_compute_dtype(Normalize(self.input_mean, self.input_std)(x), self.dtype)
        compute = dict(dtype=self.dtype, precision=self.precision)
        for stage, channels in enumerate((32, 64)):
            for conv in range(2):
                x = nn.Conv(channels * self.width, (3, 3), padding="SAME", kernel_init=conv_init,
                            conv_general_dilated=self.conv, name=f"conv{stage + 1}_{conv + 1}", **compute)(x)
                x = nn.relu(x)
            x = max_pool(x, 2)  # nn.max_pool's values and gradients; a faster gradient
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in range(2):
            x = nn.relu(nn.Dense(200 * self.width, kernel_init=linear_init, name=f"dense{layer + 1}", **compute)(x))
        return float32_logits(nn.Dense(self.num_classes, kernel_init=linear_init, name="classifier", **compute)(x))

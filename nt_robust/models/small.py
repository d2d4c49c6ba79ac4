"""Small networks with a width multiplier: an MLP and the TRADES-style small CNN.

    mlp = MLP(width=256, depth=2, num_classes=10)      # 2 hidden layers of 256 units
    cnn = SmallCNN(width=2, num_classes=10)            # channels 64, 128; dense 400

Both flatten/convolve any NHWC input and take an optional per-channel normalization.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from nt_robust.models.conv import conv_function
from nt_robust.models.layers import Normalize, conv_init, linear_init


class MLP(nn.Module):
    """ReLU MLP with ``depth`` hidden layers of ``width`` units."""

    width: int = 256
    depth: int = 2
    num_classes: int = 10
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm or dropout; kept for the common model signature
        x = Normalize(self.input_mean, self.input_std)(x)
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in range(self.depth):
            x = nn.relu(nn.Dense(self.width, kernel_init=linear_init, name=f"hidden{layer + 1}")(x))
        return nn.Dense(self.num_classes, kernel_init=linear_init, name="classifier")(x)


class SmallCNN(nn.Module):
    """The TRADES MNIST SmallCNN (conv 32-32, pool, conv 64-64, pool, dense 200-200) with
    all channel and unit counts multiplied by ``width``. Convolutions use SAME padding so
    any input of at least 4x4 works (the TRADES code uses VALID on 28x28); no dropout.
    ``conv_impl``: see ``nt_robust.models.conv`` (changes speed, not the function)."""

    width: int = 1
    num_classes: int = 10
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if x.shape[1] < 4 or x.shape[2] < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4 pixels, got {x.shape[1]}x{x.shape[2]}")
        x = Normalize(self.input_mean, self.input_std)(x)
        conv_fn = conv_function(self.conv_impl)
        for stage, channels in enumerate((32, 64)):
            for conv in range(2):
                x = nn.Conv(channels * self.width, (3, 3), padding="SAME", kernel_init=conv_init,
                            conv_general_dilated=conv_fn, name=f"conv{stage + 1}_{conv + 1}")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in range(2):
            x = nn.relu(nn.Dense(200 * self.width, kernel_init=linear_init, name=f"dense{layer + 1}")(x))
        return nn.Dense(self.num_classes, kernel_init=linear_init, name="classifier")(x)

"""Small pieces shared by the models: initializers and in-model input normalization."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's defaults in the TRADES WideResNet: convolutions N(0, 2 / (k*k*out)), linear
# weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Matching them keeps our runs comparable.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; identity when ``mean`` and ``std`` are None.

    Inputs everywhere in nt_robust live in [0, 1]; any normalization happens here,
    inside the model, so attacks and ε always act on raw pixels.
    """

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x):
        if self.mean is None and self.std is None:
            return x
        channels = x.shape[-1]
        mean = jnp.zeros(channels) if self.mean is None else jnp.asarray(self.mean, x.dtype)
        std = jnp.ones(channels) if self.std is None else jnp.asarray(self.std, x.dtype)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ValueError(
                f"input normalization has mean {tuple(mean.shape)} / std {tuple(std.shape)} "
                f"but the images have {channels} channels: give one value per channel"
            )
        return (x - mean) / std

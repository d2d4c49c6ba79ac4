"""Small pieces shared by the models: initializers, in-model input normalization and the
compute precision (``dtype``, ``precision``) every layer is given."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# model.dtype: the dtype of every matmul / convolution (operands and outputs). Parameters,
# optimizer state and BatchNorm statistics are float32 whatever it is (Flax's param_dtype).
COMPUTE_DTYPES = ("float32", "bfloat16")
# model.matmul_precision -> the ``precision`` of every Dense / Conv: what float32 matmuls
# run as on GPUs and TPUs ("default" leaves JAX's own choice: TF32 on NVIDIA Ampere and
# newer, one bfloat16 pass on TPUs). No effect on XLA:CPU, which computes float32 exactly.
MATMUL_PRECISIONS: dict[str, Any] = {"default": None, "high": lax.Precision.HIGH, "highest": lax.Precision.HIGHEST}


def to_compute_dtype(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` in the model's compute dtype (the input, after any normalization in float32)."""
    return x.astype(dtype)


def float32_logits(logits: jax.Array) -> jax.Array:
    """Logits in at least float32, so that every loss and softmax on them is float32."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

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

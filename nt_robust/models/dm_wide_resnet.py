"""DeepMind's WideResNet (RobustBench's ``DMWideResNet``, Gowal et al. 2020 / Rebuffi et al.
2021), the layout of RobustBench's widest CIFAR entries, in Flax (NHWC)::

    model = DMWideResNet(depth=28, width=10, activation="swish")
    variables = model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, images, train=False)      # images in [0, 1]

It differs from :class:`nt_robust.models.wide_resnet.WideResNet`:

- the input is normalized inside the model, ``(x − mean)/std`` (CIFAR-10's by default);
- the activation is Swish ``x·σ(x)`` (or ReLU);
- a block is pre-activation: ``a = act(bn_0(x))``; ``conv_0`` (3x3, stride s) sees ``a``
  padded "SAME" the TensorFlow way (stride 1: one pixel each side; stride 2: one pixel on the
  right and bottom only); then ``conv_1(act(bn_1(·)))``; the residual is ``x`` itself, or
  ``shortcut(a)`` (1x1, stride s) where the channel count changes;
- BatchNorm ε = 1e-5 (PyTorch's), and the head averages the final 8 x 8 map (32 x 32 inputs).

Parameter names follow the PyTorch keys (``init_conv``, ``layer_{g}_block_{i}``,
``batchnorm``, ``logits``), so :mod:`nt_robust.export.dm_import` maps a state_dict one to one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
ACTIVATIONS = {"swish": nn.swish, "relu": nn.relu}


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class DMBlock(nn.Module):
    """One pre-activation block (module docstring)."""

    planes: int
    stride: int
    activation: str = "swish"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        has_shortcut = x.shape[-1] != self.planes
        a = act(_batch_norm(train, "batchnorm_0")(x))
        pad = ((1, 1), (1, 1)) if self.stride == 1 else ((0, 1), (0, 1))
        out = nn.Conv(self.planes, (3, 3), strides=self.stride, padding=pad, use_bias=False, name="conv_0")(a)
        out = act(_batch_norm(train, "batchnorm_1")(out))
        out = nn.Conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv_1")(out)
        if has_shortcut:
            x = nn.Conv(self.planes, (1, 1), strides=self.stride, padding="VALID", use_bias=False,
                        name="shortcut")(a)
        return x + out


class DMWideResNet(nn.Module):
    """DMWideResNet-``depth``-``width`` (depth = 6n + 4) for ``num_classes`` classes."""

    depth: int = 28
    width: int = 10
    num_classes: int = 10
    activation: str = "swish"
    input_mean: Any = CIFAR10_MEAN
    input_std: Any = CIFAR10_STD

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if (self.depth - 4) % 6:
            raise ValueError(f"a DMWideResNet's depth is 6n + 4, got {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        blocks = (self.depth - 4) // 6
        x = (x - jnp.asarray(self.input_mean, x.dtype)) / jnp.asarray(self.input_std, x.dtype)
        x = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="init_conv")(x)
        for group, (planes, stride) in enumerate(((16 * self.width, 1), (32 * self.width, 2),
                                                  (64 * self.width, 2))):
            for index in range(blocks):
                x = DMBlock(planes, stride if index == 0 else 1, self.activation,
                            name=f"layer_{group}_block_{index}")(x, train)
        x = ACTIVATIONS[self.activation](_batch_norm(train, "batchnorm")(x))
        return nn.Dense(self.num_classes, name="logits")(jnp.mean(x, axis=(1, 2)))

"""Flax models with width as a first-class argument; see :func:`create_model`."""

from nt_robust.models.apply import BN_MODES, BNMode, LogitsFn, make_logits_fn
from nt_robust.models.registry import ARCHITECTURES, ModelConfig, count_parameters, create_model, init_variables
from nt_robust.models.small import MLP, SmallCNN
from nt_robust.models.wide_resnet import WideResNet

__all__ = [
    "ARCHITECTURES", "BN_MODES", "BNMode", "LogitsFn", "MLP", "ModelConfig", "SmallCNN",
    "WideResNet", "count_parameters", "create_model", "init_variables", "make_logits_fn",
]

"""Export a Flax MLP or SmallCNN to an equivalent PyTorch module (for cross-checking attacks).

    from nt_robust.attacks.torch_export import to_torch

    torch_model = to_torch(model, variables)       # torch.nn.Module, eval mode, float32
    logits = torch_model(x_nchw)                   # x: (N, C, H, W) in [0, 1], like torchvision

PyTorch attack libraries (torchattacks, AutoAttack) assume NCHW images: the exported
module takes NCHW and transposes to NHWC internally, so the same pixels give the same
logits, and a square patch or a column stripe means the same thing in both frameworks.
``torch`` is imported only when this module's functions are called; it is an optional
dependency (``pip install torch``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nt_robust.models.small import MLP, SmallCNN


def _tensor(torch: Any, array: Any) -> Any:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _normalization(torch: Any, model: Any) -> tuple[Any, Any]:
    mean = None if model.input_mean is None else _tensor(torch, model.input_mean)
    std = None if model.input_std is None else _tensor(torch, model.input_std)
    return mean, std


def _build(model: Any, params: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    def linear(name: str) -> Any:
        kernel, bias = params[name]["kernel"], params[name]["bias"]
        layer = nn.Linear(kernel.shape[0], kernel.shape[1])
        layer.weight.data = _tensor(torch, np.asarray(kernel).T)
        layer.bias.data = _tensor(torch, bias)
        return layer

    def conv(name: str) -> Any:
        kernel, bias = np.asarray(params[name]["kernel"]), params[name]["bias"]   # (kh, kw, in, out)
        layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], padding="same")
        layer.weight.data = _tensor(torch, kernel.transpose(3, 2, 0, 1))
        layer.bias.data = _tensor(torch, bias)
        return layer

    mean, std = _normalization(torch, model)

    class Exported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if isinstance(model, MLP):
                self.features = nn.ModuleList([])
                self.dense = nn.ModuleList([linear(f"hidden{i + 1}") for i in range(model.depth)])
            else:
                self.features = nn.ModuleList([conv(f"conv{s}_{c}") for s in (1, 2) for c in (1, 2)])
                self.dense = nn.ModuleList([linear("dense1"), linear("dense2")])
            self.classifier = linear("classifier")
            self.register_buffer("mean", mean if mean is not None else torch.zeros(0))
            self.register_buffer("std", std if std is not None else torch.zeros(0))

        def forward(self, x: Any) -> Any:
            if self.mean.numel():
                x = x - self.mean.view(1, -1, 1, 1)
            if self.std.numel():
                x = x / self.std.view(1, -1, 1, 1)
            for index, layer in enumerate(self.features):
                x = torch.relu(layer(x))
                if index % 2 == 1:
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)   # flatten in Flax's NHWC order
            for layer in self.dense:
                x = torch.relu(layer(x))
            return self.classifier(x)

    return Exported().eval()


def to_torch(model: Any, variables: Any) -> Any:
    """A ``torch.nn.Module`` computing ``model.apply(variables, x)`` on NCHW input.

    Supports :class:`~nt_robust.models.MLP` and :class:`~nt_robust.models.SmallCNN` (the
    WideResNet is not exported yet).
    """
    if not isinstance(model, (MLP, SmallCNN)):
        raise NotImplementedError(f"export of {type(model).__name__} to PyTorch is not implemented "
                                  "(MLP and SmallCNN are)")
    params = variables["params"] if "params" in variables else variables
    return _build(model, params)


def nhwc_to_nchw(x: Any) -> np.ndarray:
    """Image batch from our layout to PyTorch's."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


# The independent implementation: torchattacks (``pip install torch`` then
# ``pip install --no-deps torchattacks``; its torchvision dependency is not needed by the
# attacks used here, and PyPI's torchvision does not import beside the CPU torch wheel).

TORCHATTACKS_STAGES: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def torchattacks_attack(torch_model: Any, name: str, eps: float, seed: int = 0, num_classes: int = 10,
                        steps: int = 100, queries: int = 5000) -> Any:
    """The torchattacks attack matching our stage ``name``, with AutoAttack's settings
    (100 steps, 1 restart, 9 targets, Square 5000 queries, schedule not rescaled).

    torchattacks' own ``AutoAttack`` class leaves APGD/APGD-T/FAB at its default of 10
    steps; we build the attacks one by one to match the published protocol instead.
    """
    import torchattacks

    if name == "apgd-ce":
        return torchattacks.APGD(torch_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)
    if name == "apgd-dlr":
        return torchattacks.APGD(torch_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="dlr", seed=seed)
    if name == "apgd-t":
        return torchattacks.APGDT(torch_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                  n_classes=num_classes)
    if name in ("fab", "fab-t"):
        return torchattacks.FAB(torch_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                multi_targeted=name == "fab-t", n_classes=num_classes)
    if name == "square":
        return torchattacks.Square(torch_model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8,
                                   resc_schedule=False, seed=seed)
    raise ValueError(f"no torchattacks counterpart for {name!r}; choose one of {TORCHATTACKS_STAGES}")


def torchattacks_correct(torch_model: Any, name: str, x_nhwc: np.ndarray, y: np.ndarray, eps: float,
                         seed: int = 0, batch_size: int = 1000, **settings: Any) -> np.ndarray:
    """Per example: still correctly classified after torchattacks' ``name`` (a bool array).
    The adversarial points are checked to lie in B∞(x, ε) ∩ [0, 1] before they count."""
    import torch

    correct = []
    for start in range(0, len(y), batch_size):
        x = torch.from_numpy(nhwc_to_nchw(x_nhwc[start:start + batch_size]).astype(np.float32))
        labels = torch.from_numpy(np.asarray(y[start:start + batch_size], np.int64))
        adv = torchattacks_attack(torch_model, name, eps, seed, **settings)(x, labels)
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0.0, 1.0)   # only valid points count
        with torch.no_grad():
            correct.append((torch_model(adv).argmax(1) == labels).numpy())
    return np.concatenate(correct) if correct else np.zeros(0, bool)

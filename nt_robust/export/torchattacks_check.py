"""torchattacks (an independent PyTorch implementation of AutoAttack's stages) on our
models, for cross-checking our JAX attacks::

    from nt_robust.export import to_torch
    from nt_robust.export.torchattacks_check import torchattacks_correct

    correct = torchattacks_correct(to_torch(model, variables), "apgd-ce", x_nhwc, y, eps=8 / 255)

The model goes to PyTorch through :mod:`nt_robust.export` (NCHW input, same logits).
``torch`` and ``torchattacks`` are imported only when these functions are called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nt_robust.export.pytorch import nhwc_to_nchw

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

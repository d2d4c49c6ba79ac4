"""What every state_dict import shares: the error, the file's sha256, unwrapping and tensors to
NumPy (``nt_robust.export.importer`` for WideResNets, ``nt_robust.export.dm_import`` for
DMWideResNets)::

    state_dict, notes = unwrap(torch.load(path, weights_only=True))   # {"state_dict": ...}, module.
    arrays = as_numpy(state_dict)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from nt_robust.export.pytorch import ExportError


class ImportError_(ExportError):  # noqa: N801 (not the builtin ImportError)
    """The state_dict is not in a layout we read (or does not fit the request); nothing was written."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unwrap(loaded: Any) -> tuple[dict[str, Any], list[str]]:
    """The flat ``{key: tensor}`` inside ``loaded`` and what was done to reach it."""
    notes = []
    if isinstance(loaded, dict) and set(loaded) <= {"state_dict", "model_state_dict", "epoch", "optimizer"}:
        for name in ("state_dict", "model_state_dict"):
            if name in loaded:
                loaded, notes = loaded[name], [f"took the checkpoint's {name!r} entry"]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise ImportError_(f"expected a state_dict (a dict of tensors), got {type(loaded).__name__}")
    if all(isinstance(k, str) and k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
        notes.append("removed nn.DataParallel's 'module.' prefix")
    return dict(loaded), notes


def as_numpy(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):
            if str(value.dtype) == "torch.bfloat16":
                raise ImportError_(f"tensor {key!r} is torch.bfloat16; the layout stores float32: convert with "
                                   "{k: v.float() for k, v in sd.items()} (num_batches_tracked stays int64)")
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out


def layout_problems(arrays: dict[str, np.ndarray], expected: dict[str, tuple[tuple[int, ...], Any]]) -> list[str]:
    """What keeps ``arrays`` from being the layout ``expected`` ({key: (shape, dtype)}): missing
    and unexpected keys (the first 8 of each), then each shared key's wrong shape or dtype::

        layout_problems({"w": np.zeros(3)}, {"w": ((2,), np.float32)})   # ['w: shape (3,), expected (2,)']
    """
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    problems = [f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}"] if missing else []
    problems += [f"unexpected keys {extra[:8]}{' ...' if len(extra) > 8 else ''}"] if extra else []
    for key in sorted(set(expected) & set(arrays)):
        shape, dtype = expected[key]
        if tuple(arrays[key].shape) != tuple(shape):
            problems.append(f"{key}: shape {tuple(arrays[key].shape)}, expected {tuple(shape)}")
        elif arrays[key].dtype != np.dtype(dtype):
            problems.append(f"{key}: dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
    return problems

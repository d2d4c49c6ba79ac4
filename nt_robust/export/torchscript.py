"""A TorchScript file of a run's model, for layouts RobustBench has no class for (the MLP, the
SmallCNN, a WideResNet with in-model normalization or another input size)::

    result = export_torchscript("runs/quick_fmnist", out="model.ts.pt")
    # anywhere with torch, no nt_robust and no class definition needed:
    module = torch.jit.load("model.ts.pt"); logits = module(images_nchw)   # images in [0, 1]

The exported module (:func:`nt_robust.export.pytorch.to_torch`, eval mode, float32) is traced
on the run's image shape, so the file computes logits for NCHW batches of that shape (any
batch size). Before writing, the *loaded-back* file is run beside our model on random images
and refused if the logits differ by more than 1e-4 of their scale (a layout error moves them
by O(1); float32 summation order by ~1e-6). ``nt-robust export RUN --format torchscript``.
torch 2.13 marks TorchScript deprecated (in favour of ``torch.export``) but still loads it.
"""

from __future__ import annotations

import io as _io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nt_robust.export.pytorch import ExportError, nhwc_to_nchw, to_torch


def trace(model: Any, variables: Any, image_shape: tuple[int, int, int]) -> Any:
    """``torch.jit.trace`` of the exported module on a batch of two ``image_shape`` images."""
    import torch

    example = torch.from_numpy(nhwc_to_nchw(np.full((2, *image_shape), 0.5, np.float32)))
    with torch.no_grad(), warnings.catch_warnings():
        # the module's Python branches (normalization present or not) are fixed per model: what tracing records
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)   # torch 2.9+ deprecates TorchScript for torch.export
        return torch.jit.trace(to_torch(model, variables), example, check_trace=False)


def export_torchscript(run_dir: str | Path, checkpoint: str = "best_val", out: str | Path | None = None,
                       examples: int = 4, progress: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Write ``out`` (default ``RUN/export/<checkpoint>_torchscript.pt``); returns
    ``{torchscript, max_logit_difference, logit_scale, image_shape}``."""
    if dry_run:
        raise ExportError("--dry-run checks a state_dict layout; a TorchScript export is checked by running the "
                          "written file beside our model: drop --dry-run")
    try:
        import torch
    except ImportError:
        raise ExportError('a TorchScript export needs torch: pip install -e ".[torch]"') from None
    from nt_robust import storage
    from nt_robust.export.run import restore_variables

    restored = restore_variables(run_dir, checkpoint)
    model, variables, image_shape = restored["model"], restored["variables"], tuple(restored["image_shape"])
    buffer = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(trace(model, variables, image_shape), buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    x = np.random.default_rng(0).uniform(size=(examples, *image_shape)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x, train=False))
    with torch.no_grad():
        theirs = loaded(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    difference, scale = float(np.max(np.abs(ours - theirs))), float(np.max(np.abs(ours)))
    if not difference <= 1e-4 * max(1.0, scale):
        raise ExportError(f"the TorchScript module's logits differ from ours by {difference:.3g} (logits up to "
                          f"{scale:.3g}): not written")
    out = Path(out) if out is not None else Path(run_dir) / "export" / f"{checkpoint}_torchscript.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(out)
    details = {"torchscript": str(out), "run_dir": str(run_dir), "checkpoint": checkpoint,
               "image_shape": list(image_shape), "input": "NCHW float32 in [0, 1]",
               "max_logit_difference": difference, "logit_scale": scale, "torch_version": torch.__version__}
    storage.write_json(out.with_suffix(".nt_robust.json"), details)
    if progress:
        print(f"wrote {out} (TorchScript, input NCHW {image_shape[2]}x{image_shape[0]}x{image_shape[1]})",
              file=sys.stderr)
    return details

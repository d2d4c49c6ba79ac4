"""Export to PyTorch: our models as ``torch.nn.Module``\\ s, tensor-only state_dicts in
RobustBench's WideResNet layout (or our own), and RobustBench-style ``model_info``::

    from nt_robust.export import export_run, state_arrays, to_torch
    export_run("runs/wrn", checkpoint="best_val")        # nt-robust export runs/wrn

:mod:`.pytorch` has the layouts and modules (``torch`` imported only when a module is
built), :mod:`.run` the run-directory side (checkpoint, model_info), :mod:`.torchattacks_check`
torchattacks on our exported models (a cross-check of our attacks; not imported here).
"""

from nt_robust.export.pytorch import (FORMATS, ExportError, check_robustbench, default_format, nhwc_to_nchw,
                                      state_arrays, to_tensors, to_torch)
from nt_robust.export.run import export_run, model_info, restore_variables

__all__ = ["FORMATS", "ExportError", "check_robustbench", "default_format", "export_run", "model_info",
           "nhwc_to_nchw", "restore_variables", "state_arrays", "to_tensors", "to_torch"]

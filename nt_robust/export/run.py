"""``nt-robust export RUN``: a run's checkpoint as a PyTorch state_dict and a RobustBench
``model_info`` JSON::

    result = export_run("runs/wrn", checkpoint="best_val")     # RUN/export/best_val_robustbench.pt
    torch.load(result["state_dict"], weights_only=True)        # {key: tensor}

The state_dict is tensors only (loadable with ``weights_only=True``), in the layout of
:mod:`nt_robust.export.pytorch` (``robustbench`` for a WideResNet, ``torch`` otherwise).
Before writing, the exported module is run on random inputs beside our model and the
export is refused if their logits differ (a layout error would show as O(1)
differences). The checkpoint is restored without loading the dataset (its image shape and
classes are known from the config).

``model_info`` (``<out>.json`` next to the ``.pt``) has exactly the fields of RobustBench's
``ModelInfo`` (:data:`MODEL_INFO_FIELDS`; ``ModelInfo(**info)`` builds): ``name``,
``architecture`` in its spelling ("WideResNet-34-10"), ``dataset``, ``eps`` exactly as
configured (the text, e.g. "8/255", or the number), ``number_forward_passes`` 1,
``additional_data`` false for a trained run (null for an imported one: unknown), ``clean_acc``
and ``autoattack_acc`` as percentages with two decimals (strings, as RobustBench writes them)
from the ``autoattack-standard`` evaluation in ``RUN/eval/`` of the same checkpoint, step,
split (test), ε and norm on at least 1,000 points (fewer only with ``allow_few_points``;
``autoattack_acc`` is null otherwise and ``clean_acc`` then comes from the run's own
per-epoch test evaluation), ``footnote`` saying on how many points; ``link``, ``authors``,
``venue``, ``reported`` and ``corruptions_acc`` null, for the author to fill. The threat model
is not a ModelInfo field (RobustBench files model_info under ``<dataset>/<Linf|L2>/``): it is
in ``<out>.nt_robust.json`` with ``num_examples`` (the points behind the accuracies) at its
top level, the exact numbers, the checkpoint's selection rule, epoch, step and the files
they came from.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nt_robust import storage
from nt_robust.export.pytorch import ExportError, default_format, state_arrays, to_tensors, to_torch

AUTOATTACK = "autoattack-standard"


def restore_variables(run_dir: str | Path, checkpoint: str = "best_val") -> dict[str, Any]:
    """``{config, model, variables, image_shape, num_classes, step, record}`` of checkpoint
    ``checkpoint`` of ``run_dir``, without loading the dataset
    (:func:`nt_robust.train.restore.restore_run`, on this process's first device)."""
    from nt_robust.train.restore import SELECTION_RULES, restore_run

    if checkpoint not in SELECTION_RULES:
        raise ExportError(f"unknown checkpoint {checkpoint!r}; choose one of {sorted(SELECTION_RULES)}")
    run = restore_run(run_dir, checkpoint)
    return {"config": run.config, "model": run.model, "variables": jax.device_get(run.variables),
            "image_shape": run.image_shape, "num_classes": run.num_classes, "step": run.step, "record": run.record}


def max_logit_difference(model: Any, variables: Any, image_shape: tuple[int, int, int], examples: int = 4,
                         seed: int = 0) -> tuple[float, float]:
    """Largest |ours − exported| logit on ``examples`` uniform random images, and the
    largest |logit| (the scale it is relative to)."""
    import torch

    from nt_robust.export.pytorch import nhwc_to_nchw

    x = np.random.default_rng(seed).uniform(size=(examples, *image_shape)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x, train=False))
    with torch.no_grad():
        theirs = to_torch(model, variables)(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    return float(np.max(np.abs(ours - theirs))), float(np.max(np.abs(ours)))


def _eps_as_configured(config_json: dict[str, Any]) -> Any:
    """The run's eval ε as written: its text ("8/255") when it was written as a fraction, else the number."""
    attack = config_json.get("eval", {}).get("attack", {})
    return attack.get("eps_text") or attack.get("eps")


def _autoattack_result(run_dir: Path, checkpoint: str, step: int, eps: float,
                       norm: str = "linf") -> tuple[dict | None, list[str]]:
    """The largest finished autoattack-standard test evaluation of this checkpoint at
    this step, ε and norm (a result without a norm predates ℓ2 protocols: ℓ∞), and notes
    on the ones passed over."""
    notes, best = [], None
    for path in sorted((run_dir / "eval").glob(f"{checkpoint}_test_{AUTOATTACK}_eps*.json")):
        result = storage.read_json(path)
        if result.get("protocol") != AUTOATTACK or result.get("split") != "test":
            continue
        if result.get("norm", "linf") != norm:
            notes.append(f"{path.name}: in {result.get('norm', 'linf')}, not the run's {norm}")
            continue
        if float(result.get("eps", -1)) != float(eps):
            notes.append(f"{path.name}: at eps={result.get('eps')!r}, not the run's {eps!r}")
            continue
        if result.get("step") != step:
            notes.append(f"{path.name}: of step {result.get('step')}, the checkpoint is now step {step} (stale)")
            continue
        if best is None or result["num_examples"] > best[0]["num_examples"]:
            best = (result, path)
    if best is None:
        return None, notes
    return {**best[0], "result_file": str(best[1])}, notes


def _epoch_row(run_dir: Path, record: dict[str, Any], checkpoint: str, step: int) -> dict[str, Any]:
    """The per-epoch evaluation of the checkpoint: its record (best_*) or metrics row (latest)."""
    best = record.get("progress", {}).get(checkpoint)
    if isinstance(best, dict):
        return best
    path = run_dir / "metrics.jsonl"
    rows = [r for r in storage.read_jsonl(path) if r.get("step") == step] if path.exists() else []
    return rows[-1] if rows else {}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


MODEL_INFO_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                     "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "autoattack_acc", "footnote")
"""RobustBench's ``ModelInfo`` fields (robustbench/utils.py, 1.1.1), in its order: the
model_info JSON has exactly these keys, so ``ModelInfo(**json.load(f))`` builds."""
MIN_AUTOATTACK_POINTS = 1000
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}   # RobustBench's ThreatModel values (its directory names)


def _architecture(config: Any) -> str:
    """RobustBench's spelling: "WideResNet-34-10"; our label for other models."""
    if config.model.arch == "wrn":
        return f"WideResNet-{config.model.depth}-{config.model.width}"
    return config.model.label


def model_info(run_dir: str | Path, restored: dict[str, Any], format: str,
               allow_few_points: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(info, details)``: RobustBench's model_info (exactly :data:`MODEL_INFO_FIELDS`;
    see the module docstring) and our exact numbers (``num_examples``, the number of points
    behind ``autoattack_acc``, at the top level; the norm, checkpoint and files).
    ``autoattack_acc`` comes only from an autoattack-standard result on at least
    :data:`MIN_AUTOATTACK_POINTS` test points unless ``allow_few_points``."""
    from nt_robust.train.restore import selection_rule

    run_dir = Path(run_dir)
    config, checkpoint = restored["config"], restored["checkpoint"]
    config_json = storage.read_json(run_dir / "config.json")
    eps = config.eval.attack.eps
    norm = config.eval.attack.norm
    autoattack, notes = _autoattack_result(run_dir, checkpoint, restored["step"], eps, norm)
    if autoattack is not None and autoattack["num_examples"] < MIN_AUTOATTACK_POINTS and not allow_few_points:
        notes.append(f"{Path(autoattack['result_file']).name}: {autoattack['num_examples']} points, fewer than "
                     f"{MIN_AUTOATTACK_POINTS} (RobustBench evaluates the 10,000 test points): autoattack_acc "
                     "left empty; pass --allow-few-points to fill it anyway")
        autoattack = None
    record = restored["record"]
    epoch = record.get("progress", {}).get("epoch") if checkpoint == "latest" else \
        (record.get("progress", {}).get(checkpoint) or {}).get("epoch")
    details: dict[str, Any] = {
        "num_examples": None, "threat_model": THREAT_MODELS.get(norm, norm), "norm": norm,
        "run_dir": str(run_dir), "checkpoint": checkpoint, "checkpoint_selection": selection_rule(run_dir, checkpoint),
        "epoch": epoch, "step": restored["step"], "format": format, "eps_value": float(eps),
        "objective": config.objective.kind, "lam": config.objective.lam,
        "model": dataclasses.asdict(config.model), "skipped_evaluations": notes,
    }
    info: dict[str, Any] = dict.fromkeys(MODEL_INFO_FIELDS)
    info.update(name=config.name, dataset=config.data.dataset, architecture=_architecture(config),
                eps=_eps_as_configured(config_json), number_forward_passes=1,
                additional_data=False if not (run_dir / "imported.json").exists() else None)
    if autoattack is not None:
        info["clean_acc"] = _percent(autoattack["natural_accuracy"])
        info["autoattack_acc"] = _percent(autoattack["robust_accuracy"])
        info["footnote"] = (f"{THREAT_MODELS.get(norm, norm)} autoattack-standard (nt_robust, JAX) on the first "
                            f"{autoattack['num_examples']} test points")
        details.update(num_examples=autoattack["num_examples"], clean_accuracy=autoattack["natural_accuracy"],
                       autoattack_accuracy=autoattack["robust_accuracy"], evaluation=autoattack["result_file"],
                       protocol_version=autoattack.get("protocol_version"))
    else:
        clean = _epoch_row(run_dir, record, checkpoint, restored["step"]).get("test_natural_accuracy")
        if clean is not None:
            info["clean_acc"] = _percent(clean)
            info["footnote"] = f"clean accuracy on the first {config.eval.test_examples} test points"
            details.update(num_examples=config.eval.test_examples, clean_accuracy=clean,
                           clean_accuracy_source="the checkpoint's per-epoch test evaluation "
                           f"(eval.test_examples = {config.eval.test_examples})")
        notes.append(f"no usable {AUTOATTACK} test evaluation of this checkpoint at the run's eps and norm: run "
                     f"`nt-robust eval {run_dir} --checkpoint {checkpoint} --protocol {AUTOATTACK} --examples 10000` "
                     "for autoattack_acc")
    return info, details


def export_run(run_dir: str | Path, checkpoint: str = "best_val", format: str | None = None,
               out: str | Path | None = None, verify: bool = True, progress: bool = False,
               dry_run: bool = False, allow_few_points: bool = False) -> dict[str, Any]:
    """Write checkpoint ``checkpoint`` of ``run_dir`` as ``out`` (default
    ``RUN/export/<checkpoint>_<format>.pt``) and its model_info next to it (``.json``).
    and our exact numbers as ``<out>.nt_robust.json``.
    Returns ``{state_dict, model_info, details_file, format, keys, max_logit_difference, info,
    details, written}``.
    ``dry_run``: restore, check the layout and build model_info, write nothing (needs no torch).
    (A TorchScript file: :func:`nt_robust.export.torchscript.export_torchscript`.)"""
    try:
        import torch
    except ImportError:
        if dry_run:
            torch = None
        else:
            raise ExportError('nt-robust export writes PyTorch files and needs torch: pip install -e ".[torch]" '
                              "(CPU build: pip install torch==2.13.0 --index-url "
                              "https://download.pytorch.org/whl/cpu)") from None
    run_dir = Path(run_dir)
    restored = restore_variables(run_dir, checkpoint)
    restored["checkpoint"] = checkpoint
    model, variables = restored["model"], restored["variables"]
    format = format or default_format(model)
    arrays = state_arrays(model, variables, format, image_shape=restored["image_shape"], batches=restored["step"])
    difference = scale = None
    if verify and torch is not None:
        difference, scale = max_logit_difference(model, variables, restored["image_shape"])
        # float32 rounding differs by ~1e-6 of the logit scale (summation order); a layout
        # error by O(1). 1e-4 relative separates the two with room on either side.
        if not difference <= 1e-4 * max(1.0, scale):
            raise ExportError(f"the exported module's logits differ from ours by {difference:.3g} (logits up to "
                              f"{scale:.3g}): the export would not compute this model; not written")
    out = Path(out) if out is not None else run_dir / "export" / f"{checkpoint}_{format}.pt"
    info, details = model_info(run_dir, restored, format, allow_few_points)
    details.update(max_logit_difference=difference, logit_scale=scale, state_dict=str(out),
                   torch_version=None if torch is None else torch.__version__)
    info_path = out.with_suffix(".json")
    details_path = out.with_suffix(".nt_robust.json")
    result = {"state_dict": str(out), "model_info": str(info_path), "details_file": str(details_path),
              "format": format, "keys": list(arrays), "max_logit_difference": difference, "info": info,
              "details": details, "written": False}
    if dry_run:
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    torch.save(to_tensors(arrays), temporary)
    temporary.replace(out)
    storage.write_json(info_path, info)
    storage.write_json(details_path, details)
    if progress:
        print(f"wrote {out} ({len(arrays)} tensors, {format} layout) and {info_path}", file=sys.stderr)
    return {**result, "written": True}

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

``model_info`` (``<out>.json`` next to the ``.pt``) follows RobustBench's model_info
files: ``name``, ``architecture``, ``dataset``, ``eps`` exactly as configured (the text,
e.g. "8/255", or the number), ``clean_acc`` and ``autoattack_acc`` as percentages with two
decimals (strings, as RobustBench writes them) from the ``autoattack-standard`` evaluation
in ``RUN/eval/`` of the same checkpoint, step, split (test) and ε when there is one
(``autoattack_acc`` is left out otherwise and ``clean_acc`` then comes from the run's own
per-epoch test evaluation of that checkpoint), plus ``nt_robust`` with the exact numbers,
the checkpoint's selection rule, epoch, step and the files they came from.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nt_robust import io
from nt_robust.export.pytorch import ExportError, default_format, state_arrays, to_tensors, to_torch

AUTOATTACK = "autoattack-standard"


def _abstract_state(config: Any, model: Any, image_shape: tuple[int, int, int]) -> Any:
    from nt_robust.models import init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.step import init_key

    optimizer = make_optimizer(config.optim, config.train.epochs, 1)   # the state's structure, not its values
    shapes = jax.eval_shape(lambda: create_train_state(
        init_variables(model, init_key(config.train.seed), image_shape), optimizer, config.objective.lam,
        use_ema=config.optim.ema_decay is not None, seed=config.train.seed))
    # Restore every array onto this process's first device, whatever devices the run trained on
    # (without a target sharding, orbax would ask for the writer's topology and refuse).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)


def restore_variables(run_dir: str | Path, checkpoint: str = "best_val") -> dict[str, Any]:
    """``{config, model, variables, image_shape, num_classes, step, record}`` of checkpoint
    ``checkpoint`` of ``run_dir``, without loading the dataset."""
    from nt_robust.models import create_model
    from nt_robust.train.checkpoints import Checkpointer
    from nt_robust.train.config import input_shape
    from nt_robust.train.evaluate_run import SELECTION_RULES, load_run_config
    from nt_robust.train.state import model_variables

    if checkpoint not in SELECTION_RULES:
        raise ExportError(f"unknown checkpoint {checkpoint!r}; choose one of {sorted(SELECTION_RULES)}")
    config = load_run_config(run_dir)
    image_shape, num_classes = input_shape(config.data)
    model = create_model(config.model, num_classes)
    checkpoints = Checkpointer(Path(run_dir) / "checkpoints", keep=config.train.keep_checkpoints, writer=False)
    try:
        restored = checkpoints.restore(checkpoint, _abstract_state(config, model, image_shape))
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'checkpoints' / checkpoint} holds no checkpoint yet")
    state, record = restored
    variables = jax.device_get(model_variables(state, use_ema=config.optim.ema_decay is not None))
    return {"config": config, "model": model, "variables": variables, "image_shape": tuple(image_shape),
            "num_classes": num_classes, "step": int(state.step), "record": record}


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
        result = io.read_json(path)
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
    rows = [r for r in io.read_jsonl(path) if r.get("step") == step] if path.exists() else []
    return rows[-1] if rows else {}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def model_info(run_dir: str | Path, restored: dict[str, Any], format: str) -> dict[str, Any]:
    """RobustBench-style model_info for ``restored`` (see the module docstring)."""
    from nt_robust.train.evaluate_run import SELECTION_RULES

    run_dir = Path(run_dir)
    config, checkpoint = restored["config"], restored["checkpoint"]
    config_json = io.read_json(run_dir / "config.json")
    eps = config.eval.attack.eps
    norm = config.eval.attack.norm
    autoattack, notes = _autoattack_result(run_dir, checkpoint, restored["step"], eps, norm)
    record = restored["record"]
    epoch = record.get("progress", {}).get("epoch") if checkpoint == "latest" else \
        (record.get("progress", {}).get(checkpoint) or {}).get("epoch")
    exact: dict[str, Any] = {
        "run_dir": str(run_dir), "checkpoint": checkpoint, "checkpoint_selection": SELECTION_RULES[checkpoint],
        "epoch": epoch, "step": restored["step"], "format": format, "eps_value": float(eps),
        "norm": config.eval.attack.norm, "objective": config.objective.kind, "lam": config.objective.lam,
        "model": dataclasses.asdict(config.model), "skipped_evaluations": notes,
    }
    info: dict[str, Any] = {
        "name": config.name, "architecture": config.model.label, "dataset": config.data.dataset,
        "threat_model": {"linf": "Linf", "l2": "L2"}.get(config.eval.attack.norm, config.eval.attack.norm),
        "eps": _eps_as_configured(config_json),
    }
    if autoattack is not None:
        info["clean_acc"] = _percent(autoattack["natural_accuracy"])
        info["autoattack_acc"] = _percent(autoattack["robust_accuracy"])
        exact.update(clean_accuracy=autoattack["natural_accuracy"], autoattack_accuracy=autoattack["robust_accuracy"],
                     num_examples=autoattack["num_examples"], evaluation=autoattack["result_file"],
                     protocol_version=autoattack.get("protocol_version"))
    else:
        clean = _epoch_row(run_dir, record, checkpoint, restored["step"]).get("test_natural_accuracy")
        if clean is not None:
            info["clean_acc"] = _percent(clean)
            exact.update(clean_accuracy=clean, clean_accuracy_source="the checkpoint's per-epoch test evaluation "
                         f"(eval.test_examples = {config.eval.test_examples})")
        notes.append(f"no finished {AUTOATTACK} test evaluation of this checkpoint at the run's eps: run "
                     f"`nt-robust eval {run_dir} --checkpoint {checkpoint} --protocol {AUTOATTACK}` for autoattack_acc")
    info["nt_robust"] = exact
    return info


def export_run(run_dir: str | Path, checkpoint: str = "best_val", format: str | None = None,
               out: str | Path | None = None, verify: bool = True, progress: bool = False,
               dry_run: bool = False) -> dict[str, Any]:
    """Write checkpoint ``checkpoint`` of ``run_dir`` as ``out`` (default
    ``RUN/export/<checkpoint>_<format>.pt``) and its model_info next to it (``.json``).
    Returns ``{state_dict, model_info, format, keys, max_logit_difference, info, written}``.
    ``dry_run``: restore, check the layout and build model_info, write nothing (needs no torch)."""
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
    info = model_info(run_dir, restored, format)
    info["nt_robust"].update(max_logit_difference=difference, logit_scale=scale, state_dict=str(out),
                             torch_version=None if torch is None else torch.__version__)
    info_path = out.with_suffix(".json")
    result = {"state_dict": str(out), "model_info": str(info_path), "format": format, "keys": list(arrays),
              "max_logit_difference": difference, "info": info, "written": False}
    if dry_run:
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    torch.save(to_tensors(arrays), temporary)
    temporary.replace(out)
    io.write_json(info_path, info)
    if progress:
        print(f"wrote {out} ({len(arrays)} tensors, {format} layout) and {info_path}", file=sys.stderr)
    return {**result, "written": True}

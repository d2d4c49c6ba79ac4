"""The two readings of a finished run, and the missing ones computed from its checkpoints::

    missing_readings("runs/x")     # [] when both readings are stored, else [("final", "test"), ...]
    fill_readings("runs/x")        # evaluate the stored checkpoints for those, no retraining

Every finished run is read twice (issue 33): at its **final** epoch and at its **best
held-out** checkpoint (highest validation robust accuracy among the evaluated epochs). The
trainer stores both, on the same first ``eval.val_examples`` / ``eval.test_examples`` images:

    reading    summary.json key                    per-example arrays              checkpoint
    final      "final"                             eval/final_{val,test}.npz       checkpoints/latest
    best_val   "selected_by_val_robust_accuracy"   eval/best_val_{val,test}.npz    checkpoints/best_val

(a summary record has ``epoch`` and ``{val,test}_{natural_accuracy, robust_accuracy,
perturbation_stability, lipschitz_mean, ...}``; the arrays are ``labels``, ``clean_pred``,
``adv_pred``, ``clean_margin``, ... as :func:`nt_robust.metrics.evaluate_batch` returns them).
A run directory that lacks some of these files (copied without them, or made by other code)
gets them from :func:`fill_readings`: the checkpoint is restored and evaluated exactly as the
training loop evaluates an epoch (same images, attack, seeds and batch keys), so the arrays
are the ones training would have written. ``nt-robust eval RUN_DIR --readings`` does this.
"""

from __future__ import annotations

from pathlib import Path

from nt_robust import storage

# reading -> (checkpoint it is computed from, summary.json key)
READINGS = {"final": ("latest", "final"), "best_val": ("best_val", "selected_by_val_robust_accuracy")}
SPLITS = ("val", "test")


def reading_path(run_dir: str | Path, reading: str, split: str) -> Path:
    """``RUN_DIR/eval/<reading>_<split>.npz``."""
    return Path(run_dir) / "eval" / f"{reading}_{split}.npz"


def _evaluated_splits(config: dict) -> list[str]:
    """The splits training evaluated: the validation split unless data.val_size is 0, the test
    set always, each unless its eval.*_examples limit is 0 (as Trainer._evaluate)."""
    limits = {"val": config["eval"]["val_examples"], "test": config["eval"]["test_examples"]}
    return [split for split in SPLITS if (split != "val" or config["data"]["val_size"])
            and (limits[split] is None or limits[split] > 0)]


def missing_readings(run_dir: str | Path) -> list[tuple[str, str]]:
    """(reading, split) pairs whose per-example arrays a finished run lacks. Raises
    FileNotFoundError for a directory that holds no finished run."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists() or not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished run (no summary.json and config.json): finish "
                                f"it first with `nt-robust train {run_dir}`")
    splits = _evaluated_splits(storage.read_json(run_dir / "config.json"))
    best_needs_val = "val" in splits   # without a validation split there is no best_val checkpoint
    return [(reading, split) for reading in READINGS for split in splits
            if (reading == "final" or best_needs_val) and not reading_path(run_dir, reading, split).exists()]


def fill_readings(run_dir: str | Path) -> list[Path]:
    """Compute the missing readings of a finished run from its checkpoints; returns the
    files written ([] when nothing was missing)."""
    from nt_robust.metrics import summarize
    from nt_robust.train.splits import prepare_splits
    from nt_robust.train.evaluation import Evaluator
    from nt_robust.train.restore import load_run_config, restore_run
    from nt_robust.train.run_dir import RunDirectory
    from nt_robust.train.sharding import data_mesh, replicated_sharding

    run_dir = Path(run_dir)
    missing = missing_readings(run_dir)
    if not missing:
        return []
    config = load_run_config(run_dir)
    mesh = data_mesh()
    splits = prepare_splits(config.data, sample_seed=config.train.seed)
    summary = storage.read_json(run_dir / "summary.json")
    run, written, changed, evaluator = RunDirectory(run_dir), [], False, None
    for reading in dict.fromkeys(r for r, _ in missing):
        checkpoint, key = READINGS[reading]
        restored = restore_run(run_dir, checkpoint, config, replicated_sharding(mesh))
        progress = restored.record["progress"]
        if reading == "final" and progress["epoch"] != config.train.epochs:
            raise RuntimeError(f"{run_dir / 'checkpoints' / checkpoint} holds the state after epoch "
                               f"{progress['epoch']}, not the final epoch {config.train.epochs}: the final reading "
                               "cannot be computed from it")
        # the evaluator the training loop evaluates every epoch with: same images, attack, seeds, keys
        evaluator = evaluator or Evaluator(restored.eval_model, config.eval, mesh, seed=config.train.seed,
                                           num_classes=restored.num_classes)
        results = evaluator.splits(restored.variables, splits)
        stored = summary.get(key) or ({"epoch": config.train.epochs} if reading == "final"
                                      else {"epoch": (progress.get("best_val") or {}).get("epoch")})
        for split in (s for r, s in missing if r == reading):
            run.save_eval(f"{reading}_{split}", results[split])
            written.append(reading_path(run_dir, reading, split))
            if f"{split}_robust_accuracy" not in stored:   # the summary's record too, where it lacks the split
                stored = {**stored, **{f"{split}_{k}": v for k, v in summarize(results[split]).items()}}
                summary[key], changed = stored, True
    if changed:
        run.write_summary(summary)
    return written

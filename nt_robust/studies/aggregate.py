"""One tidy table from run directories (config.json, summary.json, metrics.jsonl; eval/*.npz
for the per-example arrays)::

    rows = collect_runs(Path("runs/studies/quick_fmnist").iterdir())
    write_table(rows, Path("runs/studies/quick_fmnist/results"))   # results.csv + results.json
    curves = collect_curves(run_dirs)                               # one row per run and epoch
    examples = collect_examples(run_dirs)   # run -> split -> per-example metric arrays (eval/*.npz)

A row is one run under one checkpoint-selection rule: ``final`` (last epoch),
``best_val`` (highest held-out robust accuracy) or ``best_test`` (highest test robust
accuracy: the paper's protocol, optimistic by construction).

A run whose files are damaged (unreadable JSON or JSONL, an .npz that is not one) is left
out with a warning naming the file, so one bad run never stops a study's report or the map.
"""

from __future__ import annotations

import csv
import io as _io
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nt_robust import storage

log = logging.getLogger("nt_robust.studies")

SELECTIONS = {"final": "final", "best_val": "selected_by_val_robust_accuracy",
              "best_test": "selected_by_test_robust_accuracy_paper_protocol"}
METRICS = ("natural_accuracy", "robust_accuracy", "perturbation_stability", "lipschitz_mean")


def _run_fields(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": config["name"],
        "dataset": config["data"]["dataset"],
        "arch": config["model"]["arch"],
        "depth": config["model"]["depth"],
        "width": config["model"]["width"],
        "model": summary["model"],
        "objective": config["objective"]["kind"],
        "lam": config["objective"]["lam"],
        "war": config["war"]["enabled"],
        # configs from before WAR had modes used reading A
        "war_mode": config["war"].get("mode", "weighted_ratio") if config["war"]["enabled"] else None,
        "lam_final": summary.get("lam_final", config["objective"]["lam"]),
        "seed": config["train"]["seed"],
        # which training images: "first" (the same N for every seed; runs from before the option)
        # or "seed" (drawn from the seed: the seed spread then includes the training sample)
        "train_sample": config["data"].get("train_sample", "first"),
        "epochs": config["train"]["epochs"],
        "train_eps": config["train_attack"]["eps"],
        "eval_eps": config["eval"]["attack"]["eps"],
        # ε as written ("8/255", or the float's repr): what reports print
        "train_eps_text": config["train_attack"].get("eps_text") or repr(config["train_attack"]["eps"]),
        "eval_eps_text": config["eval"]["attack"].get("eps_text") or repr(config["eval"]["attack"]["eps"]),
        "train_seconds": summary.get("train_seconds_total"),
        "backend": summary.get("backend"),
        "devices": summary.get("devices"),
    }


def finished_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """The finished runs among ``paths`` whose config, summary and metrics read back; a damaged
    one is skipped with a warning naming the file."""
    finished = sorted(Path(p) for p in paths if (Path(p) / "summary.json").exists()
                      and (Path(p) / "config.json").exists())
    readable = []
    for run_dir in finished:
        try:
            for name in ("config.json", "summary.json"):
                if not isinstance(storage.read_json(run_dir / name), dict):
                    raise storage.DamagedFileError(f"{run_dir / name} is damaged (not a JSON object)")
            storage.read_jsonl(run_dir / "metrics.jsonl")
        except (OSError, ValueError) as error:
            log.warning("skipping the damaged run %s: %s", run_dir, error)
            continue
        readable.append(run_dir)
    return readable


def collect_runs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows for every finished run directory among ``paths`` (others are ignored)."""
    rows = []
    for run_dir in finished_run_dirs(paths):
        config, summary = storage.read_json(run_dir / "config.json"), storage.read_json(run_dir / "summary.json")
        fields = _run_fields(config, summary)
        for selection, key in SELECTIONS.items():
            record = summary.get(key)
            if not record:
                continue
            # the epoch's clean accuracy on its training batches (final records; None where not stored)
            row = {**fields, "selection": selection, "epoch": record["epoch"],
                   "train_accuracy": record.get("train_accuracy")}
            for split in ("val", "test"):
                for metric in METRICS:
                    row[f"{split}_{metric}"] = record.get(f"{split}_{metric}")
            rows.append(row)
    return rows


def collect_curves(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """One row per run and epoch, from metrics.jsonl (for per-epoch figures)."""
    rows = []
    for run_dir in finished_run_dirs(paths):
        config, summary = storage.read_json(run_dir / "config.json"), storage.read_json(run_dir / "summary.json")
        fields = _run_fields(config, summary)
        for record in storage.read_jsonl(run_dir / "metrics.jsonl"):
            rows.append({**fields, **record})
    return rows


def per_example_metrics(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-example values whose means are the summary metrics (metrics.summarize)."""
    labels, clean, adv = (np.asarray(arrays[k]) for k in ("labels", "clean_pred", "adv_pred"))
    out = {"labels": labels, "natural_accuracy": (clean == labels).astype(np.float64),
           "robust_accuracy": (adv == labels).astype(np.float64),
           "perturbation_stability": (clean == adv).astype(np.float64)}
    if "lipschitz" in arrays:
        out["lipschitz_mean"] = np.asarray(arrays["lipschitz"], np.float64)
    if "clean_margin" in arrays:
        out["clean_margin"] = np.asarray(arrays["clean_margin"], np.float64)
    return out


def collect_examples(paths: Iterable[Path], selection: str = "best_val") -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per finished run (by name) and split, the per-example metrics of the ``selection``
    checkpoint, from ``RUN_DIR/eval/{selection}_{split}.npz`` (runs without them are left out)."""
    examples: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for run_dir in finished_run_dirs(paths):
        name = storage.read_json(Path(run_dir) / "config.json")["name"]
        for split in ("val", "test"):
            path = Path(run_dir) / "eval" / f"{selection}_{split}.npz"
            if path.exists():
                try:
                    arrays = storage.load_arrays(path)
                except (OSError, ValueError) as error:
                    log.warning("skipping the per-example results of %s: %s", run_dir, error)
                    continue
                examples.setdefault(name, {})[split] = per_example_metrics(arrays)
    return examples


def write_table(rows: list[dict[str, Any]], stem: Path) -> None:
    """``stem.csv`` and ``stem.json``, atomically."""
    storage.write_json(stem.with_suffix(".json"), rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(stem.with_suffix(".csv"), buffer.getvalue())

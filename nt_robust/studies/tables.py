"""Plain-text tables of run summaries, and the comparison of run directories::

    print(format_run_table([summary_a, summary_b]))
    print(compare_runs(["runs/a", "runs/b"], split="val"))   # what `nt-robust compare` prints
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nt_robust import storage

COLUMNS = (("natural", "natural_accuracy"), ("robust", "robust_accuracy"),
           ("stability", "perturbation_stability"), ("lipschitz", "lipschitz_mean"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_run_table(summaries: Sequence[dict[str, Any]], split: str = "test") -> str:
    """One row per run and checkpoint rule: final epoch, best by validation robust accuracy,
    best by test robust accuracy (the paper's protocol)."""
    rules = (("final", "final"), ("best val-robust", "selected_by_val_robust_accuracy"),
             ("best test-robust", "selected_by_test_robust_accuracy_paper_protocol"))
    rows = []
    for summary in summaries:
        for rule_name, key in rules:
            record = summary.get(key)
            if not record or f"{split}_natural_accuracy" not in record:
                continue
            rows.append([summary["model"], summary["objective"], f"{summary['lam']:g}", rule_name, record["epoch"],
                         *(record.get(f"{split}_{metric}") for _, metric in COLUMNS)])
    header = ["model", "objective", "lam", "checkpoint", "epoch", *(f"{split} {name}" for name, _ in COLUMNS)]
    return format_table(header, rows)


CHECKPOINT_LEGEND = ("checkpoint: final = last epoch; best_val = highest validation robust accuracy; best_test = "
                     "highest test robust accuracy (the paper's protocol, optimistic on test)")


def read_run(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(run directory, its config.json); FileNotFoundError, saying how runs are made, if it is none."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are made by "
                                "`nt-robust train`")
    return run_dir, storage.read_json(run_dir / "config.json")


def run_label(run_dir: Path, config: dict[str, Any], labels: Sequence[str]) -> str:
    """The run's name, or its path where an earlier run in ``labels`` has that name."""
    name = config.get("name") or run_dir.name
    return name if name not in labels else str(run_dir)


def _checkpoint_records(run_dir: Path, config: dict[str, Any], split: str) -> list[tuple[str, Any]]:
    """(checkpoint rule, its metrics record) of a finished run; the latest evaluated epoch of an unfinished one."""
    rules = (("final", "final"), ("best_val", "selected_by_val_robust_accuracy"),
             ("best_test (paper)", "selected_by_test_robust_accuracy_paper_protocol"))
    if (run_dir / "summary.json").exists():
        summary = storage.read_json(run_dir / "summary.json")
        return [(name, summary.get(key)) for name, key in rules]
    metrics = storage.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    evaluated = [r for r in metrics if f"{split}_robust_accuracy" in r]
    return [(f"latest of {config['train']['epochs']} (unfinished)", evaluated[-1] if evaluated else None)]


def compare_runs(runs: Sequence[str | Path], split: str = "test") -> str:
    """The runs side by side: one row per run and checkpoint rule (metrics on ``split``), then
    one per stored evaluation (RUN_DIR/eval/*.json), then what the checkpoint rules mean.
    FileNotFoundError when no run has evaluated an epoch on ``split`` and none has an evaluation."""
    rows, evaluations, labels = [], [], []
    for path in runs:
        run_dir, config = read_run(path)
        label = run_label(run_dir, config, labels)
        labels.append(label)
        fields = [label, config["model"]["arch"], config["model"]["width"], config["objective"]["kind"],
                  f"{config['objective']['lam']:g}",
                  config["eval"]["attack"].get("eps_text") or repr(config["eval"]["attack"]["eps"])]  # ε exactly
        for name, record in _checkpoint_records(run_dir, config, split):
            if record and f"{split}_natural_accuracy" in record:
                rows.append([*fields, name, record["epoch"], *(record.get(f"{split}_{m}") for _, m in COLUMNS)])
        for result_path in sorted((run_dir / "eval").glob("*.json")):
            result = storage.read_json(result_path)
            if not isinstance(result, dict) or "robust_accuracy" not in result or "checkpoint" not in result:
                continue
            evaluations.append([label, result.get("protocol") or result.get("attack_name"), repr(result.get("eps")),
                                result["checkpoint"], result.get("split"), result.get("num_examples"),
                                result.get("natural_accuracy"), result["robust_accuracy"]])
    if not rows and not evaluations:
        raise FileNotFoundError(f"none of {', '.join(map(str, runs))} has evaluated an epoch on the "
                                f"{split} split yet")
    header = ["run", "arch", "width", "objective", "lam", "eval eps", "checkpoint", "epoch",
              *(f"{split} {name}" for name, _ in COLUMNS)]
    parts = [format_table(header, rows)]
    if evaluations:
        parts.append("\nevaluations (nt-robust eval; RUN_DIR/eval/*.json):\n"
                     + format_table(["run", "attack", "eps", "checkpoint", "split", "examples", "natural", "robust"],
                                    evaluations))
    parts.append("\n" + CHECKPOINT_LEGEND)
    return "\n".join(parts)

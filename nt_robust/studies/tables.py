"""Plain-text tables of run summaries::

    print(format_run_table([summary_a, summary_b]))
"""

from __future__ import annotations

from typing import Any, Sequence

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

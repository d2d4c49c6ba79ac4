"""Robust overfitting: how far each run's final epoch falls below its best held-out checkpoint::

    rows = collect_runs(run_dirs)
    best, final = collect_examples(run_dirs, "best_val"), collect_examples(run_dirs, "final")
    table = robust_overfitting(rows, best, final)
    table["primary"]["interval"].describe()   # widest width, best − final robust accuracy, mean over λ
    table["cells"]                            # every (width, λ): the same contrast, Holm-adjusted p
    table["narrowest_natural"]                # per λ: the narrowest width's natural accuracy (is it trained?)
    table["widest_fit"]                       # per λ: the widest width's final training vs test accuracy
    lines = overfitting_lines(table)          # a report section

Rice et al. ("Overfitting in adversarially robust deep learning", 2020) found that after the
learning-rate decay, robust *test* accuracy falls while the training loss keeps dropping, and
that the best-checkpoint and final-epoch pictures of width differ. The long-training axis of
the regime map (issue 33) needs to know whether that happens in our runs at all.

**The measurement** (declared in docs/paper.md §9.1, word for word ``OVERFITTING_TEST``): at the
widest width, test robust accuracy at the best held-out checkpoint minus at the final epoch,
per seed and test image, averaged over the grid's λ: one contrast, with the interval of
:mod:`nt_robust.studies.uncertainty` (√(t²_{n−1}·V_seed + z²·V_test)). Overfitting *shows*
when the interval lies above zero. The checkpoint is chosen on the validation split and both
readings are scored on the same test images, so the selection's own luck on validation does
not carry over to test. It is still no pure measure of a decline: where the model itself
varies from one evaluated epoch to the next, the validation pick tends to be a genuinely
better checkpoint than the last one, and the contrast is a little above zero on a flat
plateau. Rice et al.'s pattern is larger and has a shape: the best checkpoint sits at the
first decay and the later epochs fall. So the table also gives the mean epoch of the best
checkpoint, and the widest width's final training accuracy beside its test accuracy (has it
fitted its training set at all?). Every (width, λ) cell is a secondary test, Holm-adjusted
over all cells. Cells whose runs lack the per-example arrays fall back to the seed spread of the
summary numbers, and say so.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from nt_robust.studies.contrasts import grid_rows
from nt_robust.studies.uncertainty import Interval, contrast_interval, holm, no_interval

__all__ = ["OVERFITTING_TEST", "robust_overfitting", "overfitting_lines", "overfitting_json"]

OVERFITTING_TEST = ("at the widest width, test robust accuracy at the best held-out checkpoint minus at the "
                    "final epoch, averaged over the grid's λ (one contrast, paired by seed and test image); "
                    "robust overfitting shows if its 95% interval lies above 0")

Examples = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


def _per_seed(best_rows: Sequence[dict[str, Any]], final_rows: Sequence[dict[str, Any]],
              best: Examples | None, final: Examples | None, metric: str) -> dict[int, np.ndarray]:
    """seed -> best − final of ``metric`` per test image (or a 1-vector of the summary
    difference when a run lacks either reading's arrays)."""
    finals = {r["seed"]: r for r in final_rows}
    out: dict[int, np.ndarray] = {}
    for row in best_rows:
        other = finals.get(row["seed"])
        if other is None:
            continue
        a = (best or {}).get(row["run"], {}).get("test")
        b = (final or {}).get(row["run"], {}).get("test")
        if a is not None and b is not None and np.array_equal(a["labels"], b["labels"]):
            out[row["seed"]] = np.asarray(a[metric], np.float64) - np.asarray(b[metric], np.float64)
        else:
            out[row["seed"]] = np.array([row[f"test_{metric}"] - other[f"test_{metric}"]])
    return out


def _interval(per_seed: Mapping[int, np.ndarray]) -> Interval:
    if not per_seed:
        return no_interval(math.nan, 0, 0, "no run has both readings")
    sizes = {v.size for v in per_seed.values()}
    if len(sizes) > 1:   # some runs without arrays: compare seed means only
        return contrast_interval(np.array([v.mean() for v in per_seed.values()]))
    return contrast_interval(np.stack(list(per_seed.values())))


def robust_overfitting(rows: list[dict[str, Any]], best: Examples | None, final: Examples | None,
                       metric: str = "robust_accuracy") -> dict[str, Any]:
    """The primary contrast (widest width, mean over λ), every (width, λ) cell with
    Holm-adjusted p, and the narrowest width's natural accuracy per λ (final epoch)."""
    best_rows, final_rows = grid_rows(rows, "best_val"), grid_rows(rows, "final")
    if not best_rows or not final_rows:
        return {"primary": None, "cells": [], "narrowest_natural": [], "test": OVERFITTING_TEST,
                "missing": "the runs lack a best held-out or a final reading"}
    widths, lams = sorted({r["width"] for r in final_rows}), sorted({r["lam"] for r in final_rows})

    def at(rs, width, lam):
        return [r for r in rs if r["width"] == width and r["lam"] == lam]

    cells = []
    for width in widths:
        for lam in lams:
            per_seed = _per_seed(at(best_rows, width, lam), at(final_rows, width, lam), best, final, metric)
            if per_seed:
                epochs = [r["epoch"] for r in at(best_rows, width, lam) if r.get("epoch") is not None]
                cells.append({"width": width, "lam": lam, "per_seed": per_seed, "interval": _interval(per_seed),
                              "best_epoch_mean": float(np.mean(epochs)) if epochs else math.nan})
    adjusted = holm([c["interval"].p_value for c in cells]) if cells else []
    for cell, p in zip(cells, adjusted):
        cell["holm_p"] = float(p)

    widest = [c for c in cells if c["width"] == widths[-1]]
    seeds = sorted(set.intersection(*(set(c["per_seed"]) for c in widest))) if widest else []
    primary = None
    if seeds:
        stacked = [np.stack([c["per_seed"][s] for s in seeds]) if len({c["per_seed"][s].size for s in seeds}) == 1
                   else np.array([[c["per_seed"][s].mean()] for s in seeds]) for c in widest]
        if len({x.shape for x in stacked}) > 1:
            stacked = [x.mean(axis=1, keepdims=True) for x in stacked]
        primary = {"width": widths[-1], "lams": [c["lam"] for c in widest], "seeds": seeds,
                   "interval": contrast_interval(np.mean(stacked, axis=0))}
    narrowest = [{"lam": lam, "natural": float(np.mean([r["test_natural_accuracy"] for r in rs])),
                  "seeds": len(rs)} for lam in lams if (rs := at(final_rows, widths[0], lam))]
    widest_fit = [_fit(lam, rs) for lam in lams if (rs := at(final_rows, widths[-1], lam))]
    return {"primary": primary, "cells": cells, "narrowest_natural": narrowest, "widest_fit": widest_fit,
            "test": OVERFITTING_TEST, "widths": widths, "lams": lams}


def _fit(lam: float, final_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of one cell's final-epoch training accuracy (None where no run stored it)
    and natural and robust test accuracy."""
    train = [r["train_accuracy"] for r in final_rows if r.get("train_accuracy") is not None]
    return {"lam": lam, "train_accuracy": float(np.mean(train)) if train else None,
            "test_natural": float(np.mean([r["test_natural_accuracy"] for r in final_rows])),
            "test_robust": float(np.mean([r["test_robust_accuracy"] for r in final_rows])), "seeds": len(final_rows)}


def _shows(iv: Interval) -> str:
    if math.isnan(iv.se):
        return "undecided (no interval)"
    return "shows" if iv.low > 0 else ("reversed (final above best)" if iv.high < 0 else "not shown")


def _interval_dict(iv: Interval) -> dict[str, Any]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "p": iv.p_value, "n_seeds": iv.seeds,
            "n_examples": iv.examples, "text": iv.describe(), "overfitting": _shows(iv)}


def overfitting_json(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` without arrays, for ``results/overfitting.json`` and the regime map."""
    primary = table.get("primary")
    return {"test": table["test"], "missing": table.get("missing"),
            "primary": None if primary is None else {**{k: primary[k] for k in ("width", "lams", "seeds")},
                                                     **_interval_dict(primary["interval"])},
            "cells": [{"width": c["width"], "lam": c["lam"], "holm_p": c["holm_p"],
                       "best_epoch_mean": c["best_epoch_mean"], **_interval_dict(c["interval"])}
                      for c in table["cells"]],
            "narrowest_natural": table["narrowest_natural"], "widest_fit": table.get("widest_fit", [])}


def overfitting_lines(table: dict[str, Any]) -> list[str]:
    """A markdown section for a study report."""
    lines = ["## Robust overfitting: best held-out checkpoint minus final epoch", "",
             f"Declared measurement (docs/paper.md §9.1): {table['test']}."]
    if table.get("missing"):
        return lines + ["", f"Not measured: {table['missing']}.", ""]
    primary = table["primary"]
    if primary is None:
        lines += ["", "Not measured: the widest width has no seed with both readings at every λ.", ""]
    else:
        iv = primary["interval"]
        lines += ["", f"**Primary, width {primary['width']}, mean over λ = {primary['lams']}: "
                      f"{iv.describe()} — overfitting {_shows(iv)}.**"]
    lines += ["", "Every cell (secondary; p Holm-adjusted over all cells; mean epoch of the best held-out "
                  "checkpoint in brackets):", "",
              "| width | λ | best − final robust accuracy | Holm p | best epoch |", "|---|---|---|---|---|"]
    for c in table["cells"]:
        lines.append(f"| {c['width']} | {c['lam']:g} | {c['interval'].short()} | {c['holm_p']:.2g} | "
                     f"{c['best_epoch_mean']:.0f} |")
    if table["narrowest_natural"]:
        lines += ["", f"Narrowest width ({table['widths'][0]}), final-epoch natural test accuracy: "
                  + ", ".join(f"λ = {n['lam']:g}: {n['natural']:.3f} ({n['seeds']} seeds)"
                              for n in table["narrowest_natural"]) + "."]
    if table.get("widest_fit"):
        lines += ["", f"Widest width ({table['widths'][-1]}), final epoch: clean training accuracy (its last epoch's "
                  "training batches) against natural and robust test accuracy: "
                  + ", ".join(f"λ = {f['lam']:g}: {_accuracy(f['train_accuracy'])} / {f['test_natural']:.3f} / "
                              f"{f['test_robust']:.3f}" for f in table["widest_fit"]) + "."]
    return lines + [""]


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

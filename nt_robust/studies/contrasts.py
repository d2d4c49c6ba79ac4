"""Seed statistics and contrasts of a study's tidy table (one row per run and checkpoint
reading), paired by seed and by test example::

    stats = group_stats(rows, ("width", "lam"), "test_robust_accuracy")   # seed mean ± std
    iv = contrast(rows_a, rows_b, "robust_accuracy", examples)   # Interval of B − A on the test set
    iv = width_slope(select(rows, lam=6.0), "robust_accuracy", examples)   # slope per doubling of width
    best_lam_by_width(grid_rows(rows, "best_val"))               # {width: λ chosen on validation}

Every interval is :mod:`nt_robust.studies.uncertainty`'s: the spread over seeds *and* over
test points counted, a t quantile with Welch–Satterthwaite degrees of freedom. The claims
that read these contrasts are in :mod:`nt_robust.studies.claims`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nt_robust.studies.uncertainty import Interval, contrast_interval, no_interval

# run name -> split ("test", "val") -> metric ("robust_accuracy", …, "labels") -> (N,) array
Examples = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Stats:
    mean: float
    std: float
    n: int

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    def __str__(self) -> str:
        if self.n > 1:
            return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"
        return f"{self.mean:.4f} (n=1)"


def stats_of(values: Sequence[float]) -> Stats:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return Stats(math.nan, math.nan, 0)
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return Stats(mean, math.sqrt(var), len(values))


def select(rows: Iterable[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def group_stats(rows: Iterable[dict[str, Any]], keys: Sequence[str], metric: str) -> dict[tuple, Stats]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row.get(metric))
    return {k: stats_of(v) for k, v in sorted(groups.items())}


def contrast(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], terms: str | Mapping[str, float],
             examples: Examples | None = None, split: str = "test") -> Interval:
    """Interval for the seed mean of Σ coef · (metric of B − metric of A) on ``split``, pairing
    the runs of A and B by seed, and by test example where ``examples`` holds every run's
    per-example arrays (else from the seed spread alone, which the interval's note says)."""
    return linear_contrast([(-1.0, rows_a), (1.0, rows_b)], terms, examples, split)


def linear_contrast(groups: Sequence[tuple[float, Sequence[dict[str, Any]]]], terms: str | Mapping[str, float],
                    examples: Examples | None = None, split: str = "test") -> Interval:
    """Interval for the seed mean of Σ_g weight_g · Σ_m coef_m · (metric m of group g), the
    runs of every group paired by seed (only seeds all groups have) and by test example, as
    in :func:`contrast` (which is the two-group case with weights −1, +1)::

        linear_contrast([(-1, narrow), (1, wide)], "robust_accuracy", examples)   # wide − narrow
        linear_contrast(list(zip(slope_weights(widths), rows_by_width)), "robust_accuracy")
    """
    terms = {terms: 1.0} if isinstance(terms, str) else dict(terms)
    by_seed = [(weight, {r["seed"]: r for r in rows}) for weight, rows in groups]
    seeds = sorted(set.intersection(*(set(runs) for _, runs in by_seed))) if by_seed else []
    if not seeds:
        return no_interval(math.nan, 0, 0, "no seed in common")
    table = [[(weight, runs[s]) for weight, runs in by_seed] for s in seeds]
    rows_used = [row for per_seed in table for _, row in per_seed]
    if examples is not None and all(r["run"] in examples and split in examples[r["run"]]
                                    and all(m in examples[r["run"]][split] for m in terms) for r in rows_used):
        first = rows_used[0]
        for row in rows_used[1:]:
            if not np.array_equal(examples[first["run"]][split]["labels"], examples[row["run"]][split]["labels"]):
                raise ValueError(f"{first['run']} and {row['run']} were evaluated on different {split} examples: "
                                 "per-example pairing needs the same images in the same order")
        d = np.stack([sum(weight * coef * _per_example(row, examples, split, m)
                          for weight, row in per_seed for m, coef in terms.items())
                      for per_seed in table])
        return contrast_interval(d)
    values = [sum(weight * coef * row[f"{split}_{m}"] for weight, row in per_seed for m, coef in terms.items())
              for per_seed in table]
    return contrast_interval(np.asarray(values, dtype=np.float64))


def slope_weights(widths: Sequence[float]) -> np.ndarray:
    """Weights c_w with Σ_w c_w · y_w = the least-squares slope of y against log2(width):
    c_w = (x_w − x̄) / Σ (x − x̄)², x = log2 width. The slope is a linear contrast, so its
    interval over seeds and test points is :func:`linear_contrast`'s."""
    x = np.log2(np.asarray(widths, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a slope needs at least two distinct widths, got {list(widths)}")
    centred = x - x.mean()
    return centred / float(np.sum(centred ** 2))


def width_slope(rows: Sequence[dict[str, Any]], metric: str, examples: Examples | None = None,
                split: str = "test") -> Interval:
    """Interval for the least-squares slope of ``metric`` against log2 width (change per
    doubling of width) over the widths of ``rows`` (one λ, grid runs), per seed and test
    example: every width's runs are paired by seed and by example."""
    widths = sorted({r["width"] for r in rows})
    weights = slope_weights(widths)
    return linear_contrast([(float(c), select(rows, width=w)) for c, w in zip(weights, widths)], metric,
                           examples, split)


def _per_example(row: dict[str, Any], examples: Examples, split: str, metric: str) -> np.ndarray:
    values = np.asarray(examples[row["run"]][split][metric], dtype=np.float64)
    summary = row.get(f"{split}_{metric}")
    if summary is not None and abs(float(values.mean()) - summary) > 1e-5 * max(1.0, abs(summary)):
        raise ValueError(f"{row['run']}: the per-example {split} {metric} averages to {values.mean():.6f} but "
                         f"the summary says {summary:.6f} (arrays from another checkpoint?)")
    return values


def grid_rows(rows: list[dict[str, Any]], selection: str = "best_val") -> list[dict[str, Any]]:
    return [r for r in rows if r["selection"] == selection and not r["war"]]


def best_lam_by_width(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Per width, the λ with the highest mean *held-out* robust accuracy (ties: the smaller λ)."""
    best = {}
    for width in sorted({r["width"] for r in rows}):
        stats = group_stats(select(rows, width=width), ("lam",), "val_robust_accuracy")
        stats = {k: s for k, s in stats.items() if not math.isnan(s.mean)}
        if stats:
            best[width] = max(stats, key=lambda k: (stats[k].mean, -k[0]))[0]
    return best


def lam_averaged_slope(rows: Sequence[dict[str, Any]], terms: str | Mapping[str, float],
                       examples: Examples | None = None, split: str = "test") -> Interval:
    """The least-squares slope against log2 width at every λ of ``rows``, averaged over λ:
    one linear contrast over every (width, λ) cell, paired by seed and test example."""
    lams = [lam for lam in sorted({r["lam"] for r in rows}) if len({r["width"] for r in select(rows, lam=lam)}) > 1]
    groups = []
    for lam in lams:
        at_lam = select(rows, lam=lam)
        widths = sorted({r["width"] for r in at_lam})
        groups += [(float(c) / len(lams), select(at_lam, width=w)) for c, w in zip(slope_weights(widths), widths)]
    if not groups:
        return no_interval(math.nan, 0, 0, "needs two widths at some λ")
    return linear_contrast(groups, terms, examples, split)

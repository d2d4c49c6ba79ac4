"""The paper's mechanism and its positive message, read again from the per-example arrays on disk::

    split = stability_split(natural, stable)        # P(stable), P(stable | correct), P(stable | wrong)
    table = stability_split_table(rows, examples)  # per λ and width (seed means), slopes per λ
    margins = margin_slopes(rows, examples)         # clean logit margin vs local Lipschitz, per λ
    tuned = tuned_robust(rows, examples)            # robust accuracy at each width's own best λ

``rows`` are grid rows of one checkpoint reading (contrasts.grid_rows(rows, "best_val") or
"final") and ``examples`` that reading's arrays (aggregate.collect_examples(dirs, selection)).

*Why the split.* Stability mixes two populations: a wrong prediction is "stable" when the
attack leaves it wrong in the same way, which is easy, and a correct one only when the
attack fails. As width raises natural accuracy, fewer points are wrong, so the plain rate
can rise with width while stability among correct points falls — the paper's mechanism. The
conditional rates are ratios with their own denominators, not means over a fixed image set,
so their width slopes are per seed (a least-squares fit per seed) with the seed spread only
(t with n − 1 df); the note says so.

*Margins.* Stability needs the clean logit margin to outlast what an ε-perturbation can
change: to first order that change is at most ε times the local Lipschitz constant. If the
margin grows with width faster than the gradient, stability can rise although the gradient
grows (claim 4 without claim 2). Both slopes are given per doubling of width, also relative
to their means over the widths, so the two growth rates can be compared.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from nt_robust.studies.contrasts import Examples, best_lam_by_width, linear_contrast, select, slope_weights, width_slope
from nt_robust.studies.uncertainty import Interval, contrast_interval, no_interval

__all__ = ["stability_split", "stability_split_table", "margin_slopes", "tuned_robust"]


def stability_split(natural: np.ndarray, stable: np.ndarray) -> dict[str, float]:
    """P(stable), P(stable | correct), P(stable | wrong) and the counts, from 0/1 arrays of
    natural correctness and perturbation stability over the same images (nan where a
    group is empty)::

        stability_split(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 1]))
        # {'stable': 0.75, 'stable_given_correct': 0.5, 'stable_given_wrong': 1.0, 'correct': 2, 'wrong': 2}
    """
    natural, stable = np.asarray(natural, bool), np.asarray(stable, bool)
    if natural.shape != stable.shape:
        raise ValueError(f"natural and stability arrays differ in shape: {natural.shape} vs {stable.shape}")
    correct, wrong = int(natural.sum()), int((~natural).sum())
    return {"stable": float(stable.mean()) if stable.size else math.nan,
            "stable_given_correct": float(stable[natural].mean()) if correct else math.nan,
            "stable_given_wrong": float(stable[~natural].mean()) if wrong else math.nan,
            "correct": correct, "wrong": wrong}


def _arrays(row: dict[str, Any], examples: Examples | None, split: str = "test") -> Mapping[str, np.ndarray] | None:
    if examples is None:
        return None
    return examples.get(row["run"], {}).get(split)


def _seed_slope(rows: Sequence[dict[str, Any]], values: Mapping[str, float]) -> Interval:
    """Per-seed least-squares slope against log2 width of ``values[run]``, seed spread only."""
    widths = sorted({r["width"] for r in rows})
    if len(widths) < 2:
        return no_interval(math.nan, 0, 0, "needs two widths")
    weights = dict(zip(widths, slope_weights(widths)))
    seeds = sorted(set.intersection(*({r["seed"] for r in rows if r["width"] == w} for w in widths)))
    per_seed = []
    for seed in seeds:
        cells = {r["width"]: values.get(r["run"], math.nan) for r in rows if r["seed"] == seed}
        per_seed.append(sum(weights[w] * cells[w] for w in widths))
    per_seed = [v for v in per_seed if not math.isnan(v)]
    if not per_seed:
        return no_interval(math.nan, 0, 0, "no value in some width")
    return contrast_interval(np.asarray(per_seed))


def stability_split_table(rows: Sequence[dict[str, Any]], examples: Examples | None) -> dict[str, Any]:
    """Per λ and width, seed means of P(stable), P(stable | correct), P(stable | wrong); per
    λ the width slope of each (seed spread only, module docstring). Runs without arrays
    are left out and counted in ``missing``."""
    cells, slopes, missing = [], [], sorted(r["run"] for r in rows if _arrays(r, examples) is None)
    split = {r["run"]: stability_split(a["natural_accuracy"], a["perturbation_stability"])
             for r in rows if (a := _arrays(r, examples)) is not None}
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = [r for r in select(rows, lam=lam) if r["run"] in split]
        for width in sorted({r["width"] for r in at_lam}):
            runs = [split[r["run"]] for r in select(at_lam, width=width)]
            cells.append({"lam": lam, "width": width, "seeds": len(runs),
                          **{k: float(np.nanmean([s[k] for s in runs])) for k in
                             ("stable", "stable_given_correct", "stable_given_wrong")}})
        if len({r["width"] for r in at_lam}) > 1:
            for key in ("stable", "stable_given_correct", "stable_given_wrong"):
                iv = _seed_slope(at_lam, {run: s[key] for run, s in split.items()})
                slopes.append({"lam": lam, "quantity": key, "estimate": iv.estimate, "low": iv.low, "high": iv.high,
                               "p": iv.p_value, "text": iv.describe(mde=False)})
    return {"cells": cells, "slopes": slopes, "missing": missing,
            "note": "conditional rates: per-seed slopes, seed spread only (their denominators differ by run)"}


def margin_slopes(rows: Sequence[dict[str, Any]], examples: Examples | None) -> dict[str, Any]:
    """Per λ: the width slopes (per doubling) of the mean clean logit margin and of local
    Lipschitzness, paired by seed and image, and each relative to its mean over the widths.
    Needs ``clean_margin`` and ``lipschitz_mean`` in every run's arrays; else ``missing``
    names the runs without them."""
    have = [r for r in rows if (a := _arrays(r, examples)) is not None and "clean_margin" in a and "lipschitz_mean" in a]
    missing = sorted({r["run"] for r in rows} - {r["run"] for r in have})
    out = []
    if missing:
        return {"per_lam": out, "missing": missing}
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = select(rows, lam=lam)
        if len({r["width"] for r in at_lam}) < 2:
            continue
        entry: dict[str, Any] = {"lam": lam}
        for metric in ("clean_margin", "lipschitz_mean"):
            iv = width_slope(at_lam, metric, examples)
            mean = float(np.mean([np.mean(examples[r["run"]]["test"][metric]) for r in at_lam]))
            entry[metric] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "p": iv.p_value, "mean": mean,
                             "relative": iv.estimate / mean if mean else math.nan, "text": iv.describe(mde=False)}
        out.append(entry)
    return {"per_lam": out, "missing": missing}


def tuned_robust(rows: Sequence[dict[str, Any]], examples: Examples | None) -> dict[str, Any]:
    """Robust accuracy at each width's own best λ (chosen on validation) against width: the
    paper's positive message (tune λ per width and wider helps). The slope's interval
    treats the chosen λ as fixed, so it ignores the choice (optimistic; the note says so)."""
    best = best_lam_by_width(list(rows))
    widths = sorted(best)
    cells = []
    for width in widths:
        at = select(rows, width=width, lam=best[width])
        cells.append({"width": width, "lam": best[width], "seeds": len(at),
                      "robust": float(np.mean([r["test_robust_accuracy"] for r in at])),
                      "natural": float(np.mean([r["test_natural_accuracy"] for r in at]))})
    if len(widths) < 2:
        return {"cells": cells, "slope": None}
    groups = [(float(c), select(rows, width=w, lam=best[w])) for c, w in zip(slope_weights(widths), widths)]
    iv = linear_contrast(groups, "robust_accuracy", examples)
    return {"cells": cells, "slope": {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "p": iv.p_value,
                                      "text": iv.describe(mde=False)},
            "note": "λ chosen per width on validation, then treated as fixed: the interval ignores that choice"}

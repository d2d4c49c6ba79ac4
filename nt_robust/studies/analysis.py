"""Seed statistics and the claim-by-claim verdicts of docs/paper.md §7, from the tidy table and
the runs' per-example arrays::

    stats = group_stats(rows, ("width", "lam"), "test_robust_accuracy")   # seed mean ± std
    examples = collect_examples(run_dirs)   # aggregate.py: per-example arrays by run and split
    claims = evaluate_claims(rows, examples=examples)   # list of Claim(number, text, verdict, evidence)
    claims = evaluate_claims(rows, attack_rows, "pgd20-0.007", examples, attack_examples)  # + claim 8
    iv = contrast(rows_a, rows_b, "robust_accuracy", examples)   # Interval of B − A on the test set
    iv = width_slope(select(rows, lam=6.0), "robust_accuracy", examples)   # slope per doubling of width

Every comparison is an interval from :mod:`nt_robust.studies.uncertainty`: the difference of
two configurations, paired by seed and by test example, with the spread over seeds *and*
over test points counted and a t quantile with Welch–Satterthwaite degrees of freedom.
A verdict is *supported* or *contradicted* only when its 95% interval excludes zero (or the
stated margin); otherwise *inconclusive*, with the smallest effect the study could have
detected (80% power). With one seed every verdict is inconclusive. Checkpoints are those
with the best *held-out* robust accuracy; metrics are on the test set.

Per claim (the paper gives no thresholds; these are ours):

1, 2, 4. At each λ, the metric at the widest minus at the narrowest width.
3. At each λ, g = robust gain − ½ · natural gain from the narrowest to the widest width.
   Supported if g's interval lies below 0 ("rises far less": less than half as much) or some
   step between neighbouring widths has a robust difference whose interval lies below 0
   (not monotone); contradicted if g's interval lies above 0 and no step drops.
5. At the widest width, stability at the largest minus at the smallest λ.
6. λ_s = the narrowest width's best λ and λ* the widest width's, both chosen on *validation*
   robust accuracy; on the test set, robust(widest, λ*) − robust(widest, λ_s). If λ* > λ_s:
   supported if that interval lies above 0, contradicted if below. If λ* < λ_s: contradicted
   if the interval lies above 0 (a smaller λ is significantly better). If λ* = λ_s:
   contradicted if λ_s beats every larger λ of the grid at the widest width (each interval
   below 0). Else inconclusive.
7. Per WAR width, WAR − the grid-tuned λ (chosen on validation) on the test set, against a
   margin δ = 0.01: supported ("reaches") if the interval lies above −δ, contradicted if it
   lies below −δ, else inconclusive. With several WAR modes (readings), each is reported and
   the verdict is the study's primary mode's.
8. See :mod:`nt_robust.studies.attack_check` (bootstrap over test examples).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, Interval,
                                           contrast_interval, no_interval, verdict)

__all__ = ["SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "NOT_EVALUATED", "Stats", "stats_of", "select",
           "group_stats", "contrast", "linear_contrast", "slope_weights", "width_slope", "Claim", "evaluate_claims", "best_lam_by_width", "grid_rows", "war_costs"]

WAR_MARGIN = 0.01  # claim 7: "reaches" = not more than this below the tuned robust accuracy

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
    if examples is not None and all(r["run"] in examples and split in examples[r["run"]] for r in rows_used):
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


@dataclasses.dataclass(frozen=True)
class Claim:
    number: int
    text: str
    verdict: str
    evidence: list[str]


def _combine(verdicts: list[str]) -> str:
    if not verdicts:
        return NOT_EVALUATED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if all(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    if SUPPORTED in verdicts and CONTRADICTED not in verdicts:
        return f"{SUPPORTED} at {verdicts.count(SUPPORTED)} of {len(verdicts)} λ values, else {INCONCLUSIVE}"
    if CONTRADICTED in verdicts and SUPPORTED not in verdicts:
        return f"{CONTRADICTED} at {verdicts.count(CONTRADICTED)} of {len(verdicts)} λ values, else {INCONCLUSIVE}"
    if SUPPORTED in verdicts:
        return f"mixed ({verdicts.count(SUPPORTED)} supported, {verdicts.count(CONTRADICTED)} contradicted)"
    return INCONCLUSIVE


def _width_trend(rows, metric: str, expect_increase: bool, examples: Examples | None) -> tuple[list[str], list[str]]:
    verdicts, evidence = [], []
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = select(rows, lam=lam)
        stats = group_stats(at_lam, ("width",), f"test_{metric}")
        if len(stats) < 2:
            continue
        widths = sorted(w for (w,) in stats)
        iv = contrast(select(at_lam, width=widths[0]), select(at_lam, width=widths[-1]), metric, examples)
        v = verdict(iv, expect_increase)
        verdicts.append(v)
        series = ", ".join(f"{w}: {stats[(w,)].mean:.4f}" for w in widths)
        evidence.append(f"λ={lam:g}: width {widths[0]}→{widths[-1]} {iv.describe()} → {v} [{series}]")
    return verdicts, evidence


def grid_rows(rows: list[dict[str, Any]], selection: str = "best_val") -> list[dict[str, Any]]:
    return [r for r in rows if r["selection"] == selection and not r["war"]]


def best_lam_by_width(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Per width, the λ with the highest mean *held-out* robust accuracy."""
    best = {}
    for width in sorted({r["width"] for r in rows}):
        stats = group_stats(select(rows, width=width), ("lam",), "val_robust_accuracy")
        best[width] = max(stats, key=lambda k: (stats[k].mean, -k[0]))[0]
    return best


def evaluate_claims(all_rows: list[dict[str, Any]], attack_rows: list[dict[str, Any]] | None = None,
                    attack_reference: str | None = None, examples: Examples | None = None,
                    attack_examples: Mapping[tuple[str, str], np.ndarray] | None = None,
                    war_modes: Sequence[str] | None = None) -> list[Claim]:
    """Every claim of docs/paper.md §7. ``examples``: per-example arrays of the best-held-out
    checkpoints (:func:`nt_robust.studies.aggregate.collect_examples`); claim 8 needs the
    attack check's rows and per-example results (:mod:`nt_robust.studies.attack_check`),
    compared against ``attack_reference``. ``war_modes``: the study's WAR modes, primary
    first (claim 7's verdict is the primary mode's; default: reading B first)."""
    from nt_robust.studies.attack_check import attack_agreement_claim

    rows = grid_rows(all_rows)
    claims = []
    for number, text, metric, up in (
        (1, "At fixed λ, natural accuracy rises with width.", "natural_accuracy", True),
        (2, "At fixed λ, perturbation stability falls with width.", "perturbation_stability", False),
        (4, "Local Lipschitzness rises with width at fixed λ.", "lipschitz_mean", True),
    ):
        verdicts, evidence = _width_trend(rows, metric, up, examples)
        claims.append(Claim(number, text, _combine(verdicts), evidence))
    claims.append(_claim_robust_vs_natural(rows, examples))
    claims.append(_claim_stability_vs_lam(rows, examples))
    claims.append(_claim_best_lam(rows, examples))
    claims.append(_claim_war(all_rows, examples, war_modes))
    claims.append(attack_agreement_claim(attack_rows or [], attack_reference or "", attack_examples))
    return sorted(claims, key=lambda c: c.number)


def _claim_robust_vs_natural(rows, examples: Examples | None) -> Claim:
    text = ("At fixed λ, robust accuracy does not rise monotonically with width "
            "(or rises far less than natural accuracy).")
    verdicts, evidence = [], []
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = select(rows, lam=lam)
        widths = sorted({r["width"] for r in at_lam})
        if len(widths) < 2:
            continue
        narrow, wide = select(at_lam, width=widths[0]), select(at_lam, width=widths[-1])
        gain_nat = contrast(narrow, wide, "natural_accuracy", examples)
        gain_rob = contrast(narrow, wide, "robust_accuracy", examples)
        g = contrast(narrow, wide, {"robust_accuracy": 1.0, "natural_accuracy": -0.5}, examples)
        steps = [(w0, w1, contrast(select(at_lam, width=w0), select(at_lam, width=w1), "robust_accuracy", examples))
                 for w0, w1 in zip(widths, widths[1:])]
        drops = [(w0, w1, iv) for w0, w1, iv in steps if verdict(iv, True) == CONTRADICTED]
        g_verdict = verdict(g, expect_increase=False)   # the claim: g < 0
        if drops or g_verdict == SUPPORTED:
            v = SUPPORTED
        elif g_verdict == CONTRADICTED:
            v = CONTRADICTED
        else:
            v = INCONCLUSIVE
        verdicts.append(v)
        evidence.append(
            f"λ={lam:g}: width {widths[0]}→{widths[-1]} robust gain {gain_rob.short()}, natural gain "
            f"{gain_nat.short()}; robust − ½·natural {g.describe()}; "
            + (f"significant robust drop at {', '.join(f'{a}→{b}' for a, b, _ in drops)}" if drops
               else "no step between neighbouring widths drops significantly")
            + f" → {v}")
    return Claim(3, text, _combine(verdicts), evidence)


def _claim_stability_vs_lam(rows, examples: Examples | None) -> Claim:
    text = "For a wide model, stability rises with λ."
    if not rows:
        return Claim(5, text, NOT_EVALUATED, [])
    widest = max(r["width"] for r in rows)
    at_width = select(rows, width=widest)
    stats = group_stats(at_width, ("lam",), "test_perturbation_stability")
    if len(stats) < 2:
        return Claim(5, text, NOT_EVALUATED, ["needs at least two λ values"])
    lams = sorted(lam for (lam,) in stats)
    iv = contrast(select(at_width, lam=lams[0]), select(at_width, lam=lams[-1]), "perturbation_stability", examples)
    v = verdict(iv, True)
    series = ", ".join(f"{lam:g}: {stats[(lam,)].mean:.4f}" for lam in lams)
    return Claim(5, text, v, [f"width {widest}: λ {lams[0]:g}→{lams[-1]:g} {iv.describe()} → {v} [{series}]"])


def _claim_best_lam(rows, examples: Examples | None) -> Claim:
    text = "The best λ grows with width; the small model's best λ is suboptimal for the wide one."
    widths = sorted({r["width"] for r in rows})
    if len(widths) < 2 or len({r["lam"] for r in rows}) < 2:
        return Claim(6, text, NOT_EVALUATED, ["needs several widths and λ values"])
    best = best_lam_by_width(rows)
    wide, lam_s, lam_star = widths[-1], best[widths[0]], best[widths[-1]]
    at_wide = select(rows, width=wide)
    evidence = ["best λ by held-out (validation) robust accuracy: "
                + ", ".join(f"width {w}: {best[w]:g}" for w in widths)]
    if lam_star != lam_s:
        iv = contrast(select(at_wide, lam=lam_s), select(at_wide, lam=lam_star), "robust_accuracy", examples)
        v = verdict(iv, True)
        if lam_star < lam_s:   # the wide model prefers a smaller λ: contradicted if that is significant
            v = CONTRADICTED if v == SUPPORTED else INCONCLUSIVE
        evidence.append(f"width {wide}, test robust accuracy at its own best λ={lam_star:g} minus at the small "
                        f"model's λ_s={lam_s:g}: {iv.describe()} → {v}")
    else:
        larger = sorted({r["lam"] for r in at_wide if r["lam"] > lam_s})
        ivs = [(lam, contrast(select(at_wide, lam=lam_s), select(at_wide, lam=lam), "robust_accuracy", examples))
               for lam in larger]
        v = CONTRADICTED if ivs and all(verdict(iv, True) == CONTRADICTED for _, iv in ivs) else INCONCLUSIVE
        evidence.append(f"width {wide} has the same best λ as width {widths[0]} (λ_s={lam_s:g}); "
                        + ("; ".join(f"test robust accuracy at λ={lam:g} minus at λ_s: {iv.describe()}"
                                     for lam, iv in ivs) if ivs else "no larger λ in the grid")
                        + f" → {v}")
    return Claim(6, text, v, evidence)


def war_costs(all_rows: list[dict[str, Any]], width: int, reference_width: int,
              mode: str | None = None) -> dict[str, float]:
    """Tuning cost (runs, device-seconds) of a λ grid at ``width`` versus WAR: the grid
    at the reference width plus the WAR runs at ``width`` (of ``mode``, if given)."""
    final = [r for r in all_rows if r["selection"] == "final"]
    grid_wide = [r for r in final if not r["war"] and r["width"] == width]
    grid_small = [r for r in final if not r["war"] and r["width"] == reference_width]
    war = [r for r in final if r["war"] and r["width"] == width and (mode is None or _war_mode(r) == mode)]
    seconds = lambda rs: sum(r["train_seconds"] or 0.0 for r in rs)  # noqa: E731
    return {"grid_runs": len(grid_wide), "grid_seconds": seconds(grid_wide),
            "war_runs": len(grid_small) + len(war), "war_seconds": seconds(grid_small) + seconds(war),
            "war_only_runs": len(war), "war_only_seconds": seconds(war)}


def _war_mode(row: dict[str, Any]) -> str:
    return row.get("war_mode") or "weighted_ratio"   # rows from before WAR had modes: reading A


WAR_READINGS = {"unweighted_ratio": "reading B, enlarges λ", "weighted_ratio": "reading A, holds λ·R_rob/R_nat"}


def _claim_war(all_rows, examples: Examples | None, modes: Sequence[str] | None = None) -> Claim:
    """Claim 7 for each WAR mode in the study; the verdict is the first (primary) mode's."""
    text = "WAR started from the small model's λ reaches the wide model's tuned robust accuracy at a fraction of the tuning cost."
    war_rows = [r for r in all_rows if r["selection"] == "best_val" and r["war"]]
    rows = grid_rows(all_rows)
    if not war_rows or not rows:
        return Claim(7, text, NOT_EVALUATED, ["no WAR runs in this study"])
    present = {_war_mode(r) for r in war_rows}
    order = [m for m in (modes or WAR_READINGS) if m in present] + sorted(present - set(modes or WAR_READINGS))
    best = best_lam_by_width(rows)
    reference_width = min(best)
    primary_verdicts, evidence = [], []
    for mode in order:
        role = "primary: the verdict" if mode == order[0] else "secondary: not in the verdict"
        for width in sorted({r["width"] for r in war_rows}):
            war = [r for r in select(war_rows, width=width) if _war_mode(r) == mode]
            tuned = select(rows, width=width, lam=best.get(width))
            if not war or not tuned:
                continue
            iv = contrast(tuned, war, "robust_accuracy", examples)
            margin = iv.shifted(-WAR_MARGIN)   # WAR − tuned + δ: above 0 ⇔ WAR − tuned above −δ
            v = verdict(margin, True)
            if mode == order[0]:
                primary_verdicts.append(v)
            war_stats = stats_of([r["test_robust_accuracy"] for r in war])
            tuned_stats = stats_of([r["test_robust_accuracy"] for r in tuned])
            fixed = stats_of([r["test_robust_accuracy"] for r in select(rows, width=width, lam=best[reference_width])])
            lam_path = stats_of([r["lam_final"] for r in war])
            cost = war_costs(all_rows, width, reference_width, mode)
            evidence.append(
                f"WAR {mode} ({WAR_READINGS.get(mode, mode)}; {role}), width {width}: WAR {war_stats} vs "
                f"grid-tuned (λ={best.get(width):g}) {tuned_stats}"
                + (f" vs fixed λ_s={best[reference_width]:g} {fixed}" if fixed.n else "")
                + f"; WAR − tuned {iv.describe(mde=False)} vs margin −{WAR_MARGIN:g}; WAR's final λ {lam_path.mean:.2f}"
                f" → {v}. Cost: λ grid {cost['grid_runs']} runs / {cost['grid_seconds']:.0f} s vs WAR "
                f"{cost['war_only_runs']} run(s) / {cost['war_only_seconds']:.0f} s at this width "
                f"(+ the reference grid, shared by all widths)")
    return Claim(7, text, _combine(primary_verdicts).replace("λ values", "widths"), evidence)

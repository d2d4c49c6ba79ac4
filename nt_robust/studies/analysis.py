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
8. :func:`attack_agreement_claim` below, on :mod:`nt_robust.studies.attack_check`'s rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, LEVEL, NOT_EVALUATED, SUPPORTED, Interval,
                                           contrast_interval, holm, no_interval, verdict)

__all__ = ["SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "NOT_EVALUATED", "Stats", "stats_of", "select",
           "group_stats", "contrast", "linear_contrast", "slope_weights", "width_slope", "lam_averaged_slope", "Claim", "HypothesisTest",
           "PRIMARY_TESTS", "primary_tests_hash", "decide", "evaluate_claims", "best_lam_by_width", "grid_rows",
           "war_costs", "war_moved"]

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


# ---------------------------------------------------------------- declared primary tests
# One primary test (or, for claim 3, one family) per claim and regime, declared in
# docs/paper.md §9 with exactly these words (tests/studies/test_analysis.py checks); their
# hash is stored with every report and map, which say so when it changes.
PRIMARY_TESTS: dict[int, str] = {
    1: "natural accuracy: the least-squares slope against log2 width, averaged over the grid's λ (one contrast); "
       "supported if its 95% interval lies above 0, contradicted if below",
    2: "perturbation stability: the least-squares slope against log2 width, averaged over λ; supported if its "
       "interval lies below 0, contradicted if above",
    3: "one Holm family: the slope of robust − ½·natural accuracy against log2 width averaged over λ, and the "
       "robust-accuracy difference of every pair of neighbouring widths averaged over λ; supported if the slope "
       "lies below 0 or some step below 0 (Holm-adjusted), contradicted if the slope lies above 0 and no step "
       "below 0",
    4: "local Lipschitzness (lipschitz_mean): the slope against log2 width, averaged over λ; supported if above 0, "
       "contradicted if below",
    5: "at the widest width, stability at the largest minus at the smallest λ; supported if above 0, contradicted "
       "if below",
    6: "λ_s, λ* = the narrowest and the widest width's best λ on validation robust accuracy; at the widest width, "
       "test robust accuracy at λ_up minus at λ_s, where λ_up = λ* if λ* > λ_s, else the next grid λ above λ_s; "
       "supported if above 0, contradicted if below; no verdict (grid edge) when λ_s is the grid's largest λ",
    7: "WAR (the study's primary reading) minus the fixed λ_s (the reference width's best λ) at the same width, "
       "averaged over the WAR widths whose λ moved (superiority); supported if above 0, contradicted if below; "
       "'not exercised' when no WAR run moved λ",
    8: "AutoAttack − reference robust accuracy, mean over the checked runs, with an interval over seeds and "
       "test images; and Kendall τ-b of the rankings with a bootstrap over seeds and images; supported if the gap "
       "lies below 0 and every τ at or above 0.7",
}
MAP_FAMILY = "Holm across the map's regimes, per claim (claim 3: all its tests in all regimes)"


def primary_tests_hash() -> str:
    """A short hash of :data:`PRIMARY_TESTS` (stored with reports and maps)."""
    import hashlib
    import json

    text = json.dumps({str(k): v for k, v in sorted(PRIMARY_TESTS.items())}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class HypothesisTest:
    """One hypothesis test of a claim: its contrast's interval and the direction the claim
    predicts (``expect_increase``); ``role`` is "primary" or "secondary"."""
    label: str
    interval: Interval
    expect_increase: bool
    role: str = "primary"
    kind: str = "main"        # claim 3: "main" (the g slope) or "step"

    @property
    def p(self) -> float:
        return self.interval.p_value


def _direction_verdict(test: HypothesisTest, adjusted_p: float, alpha: float = 1 - LEVEL) -> str:
    if math.isnan(adjusted_p) or adjusted_p >= alpha:
        return INCONCLUSIVE
    return SUPPORTED if (test.interval.estimate > 0) == test.expect_increase else CONTRADICTED


def decide(number: int, tests: Sequence[HypothesisTest], adjusted: Sequence[float]) -> str:
    """A claim's verdict from its primary family and their (Holm-)adjusted p-values."""
    if not tests:
        return NOT_EVALUATED
    verdicts = [_direction_verdict(t, p) for t, p in zip(tests, adjusted)]
    if number == 3:
        main = [v for t, v in zip(tests, verdicts) if t.kind == "main"]
        drops = [t for t, v in zip(tests, verdicts) if t.kind == "step" and v == CONTRADICTED]
        if SUPPORTED in main or drops:
            return SUPPORTED
        return CONTRADICTED if CONTRADICTED in main else INCONCLUSIVE
    return verdicts[0]


@dataclasses.dataclass(frozen=True)
class Claim:
    number: int
    text: str
    verdict: str
    evidence: list[str]
    tests: list[HypothesisTest] = dataclasses.field(default_factory=list)       # the primary family
    secondary: list[HypothesisTest] = dataclasses.field(default_factory=list)   # per λ / per width; Holm within
    notes: list[str] = dataclasses.field(default_factory=list)        # what is missing, edges, …

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (claims.json, map.json)."""
        return {"number": self.number, "text": self.text, "verdict": self.verdict, "evidence": self.evidence,
                "notes": self.notes, "tests": [_test_dict(t) for t in self.tests],
                "secondary": [_test_dict(t) for t in self.secondary]}


def _test_dict(test: HypothesisTest) -> dict[str, Any]:
    iv = test.interval
    return {"label": test.label, "role": test.role, "kind": test.kind, "expect_increase": test.expect_increase,
            "estimate": iv.estimate, "low": iv.low, "high": iv.high, "se": iv.se, "se_seed": iv.se_seed,
            "se_test": iv.se_test, "df": iv.df, "seeds": iv.seeds, "examples": iv.examples, "p": test.p,
            "text": iv.describe()}


def _finish_claim(number: int, text: str, tests: list[HypothesisTest], secondary: list[HypothesisTest], notes: list[str],
                  lines: list[str] | None = None) -> Claim:
    """Holm within the primary family and within the secondary one; evidence lines."""
    adjusted = list(holm([t.p for t in tests])) if tests else []
    verdict = decide(number, tests, adjusted)
    evidence = []
    for test, p in zip(tests, adjusted):
        evidence.append(f"primary: {test.label}: {test.interval.describe()}; p {_p(test.p)}"
                        + (f", Holm {_p(p)}" if len(tests) > 1 else "") + f" → {_direction_verdict(test, p)}")
    sec_adjusted = holm([t.p for t in secondary]) if secondary else []
    for test, p in zip(secondary, sec_adjusted):
        evidence.append(f"secondary: {test.label}: {test.interval.describe(mde=False)}; p {_p(test.p)}, "
                        f"Holm over {len(secondary)}: {_p(p)} → {_direction_verdict(test, p)}")
    evidence += list(lines or []) + [f"note: {n}" for n in notes]
    return Claim(number, text, verdict, evidence, tests, secondary, notes)


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<0.0001"


# ---------------------------------------------------------------- claims
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


def _has(rows: Sequence[dict[str, Any]], metric: str, split: str = "test") -> bool:
    return bool(rows) and all(r.get(f"{split}_{metric}") is not None for r in rows)


def evaluate_claims(all_rows: list[dict[str, Any]], attack_rows: list[dict[str, Any]] | None = None,
                    attack_reference: str | None = None, examples: Examples | None = None,
                    attack_examples: Mapping[tuple[str, str], np.ndarray] | None = None,
                    war_modes: Sequence[str] | None = None, selection: str = "best_val") -> list[Claim]:
    """Every claim of docs/paper.md §7, judged by its primary test (§9) at the ``selection``
    checkpoint ("best_val": best held-out robust accuracy; "final": the last epoch).
    ``examples``: per-example arrays of that checkpoint
    (:func:`nt_robust.studies.aggregate.collect_examples`); claim 8 needs the attack check's
    rows and per-example results (:mod:`nt_robust.studies.attack_check`), compared against
    ``attack_reference``. ``war_modes``: the study's WAR modes, primary first."""
    rows = grid_rows(all_rows, selection)
    claims = []
    for number, text, metric, up in (
        (1, "At fixed λ, natural accuracy rises with width.", "natural_accuracy", True),
        (2, "At fixed λ, perturbation stability falls with width.", "perturbation_stability", False),
        (4, "Local Lipschitzness rises with width at fixed λ.", "lipschitz_mean", True),
    ):
        claims.append(_claim_width_trend(number, text, rows, metric, up, examples))
    claims.append(_claim_robust_vs_natural(rows, examples))
    claims.append(_claim_stability_vs_lam(rows, examples))
    claims.append(_claim_best_lam(rows, examples))
    claims.append(_claim_war(all_rows, examples, war_modes, selection))
    claims.append(attack_agreement_claim(attack_rows or [], attack_reference or "", attack_examples))
    return sorted(claims, key=lambda c: c.number)


def _lams_with_widths(rows) -> list[float]:
    return [lam for lam in sorted({r["lam"] for r in rows}) if len({r["width"] for r in select(rows, lam=lam)}) > 1]


def _claim_width_trend(number: int, text: str, rows, metric: str, up: bool, examples: Examples | None) -> Claim:
    lams = _lams_with_widths(rows)
    if not lams:
        return Claim(number, text, NOT_EVALUATED, ["needs at least two widths at some λ"])
    if not _has(rows, metric):
        note = f"no {metric} in these runs (e.g. eval.lipschitz = none, or runs from before it was recorded)"
        return Claim(number, text, NOT_EVALUATED, [f"note: {note}"], notes=[note])
    primary = [HypothesisTest(f"{metric} slope per doubling of width, averaged over λ ∈ {{{', '.join(f'{x:g}' for x in lams)}}}",
                    lam_averaged_slope(rows, metric, examples), up)]
    secondary, lines = [], []
    for lam in lams:
        at_lam = select(rows, lam=lam)
        stats = group_stats(at_lam, ("width",), f"test_{metric}")
        secondary.append(HypothesisTest(f"λ={lam:g} slope", width_slope(at_lam, metric, examples), up, "secondary"))
        lines.append(f"λ={lam:g}: " + ", ".join(f"width {w}: {s.mean:.4f}" for (w,), s in stats.items()))
    return _finish_claim(number, text, primary, secondary, [], lines)


def _claim_robust_vs_natural(rows, examples: Examples | None) -> Claim:
    text = ("At fixed λ, robust accuracy does not rise monotonically with width "
            "(or rises far less than natural accuracy).")
    lams = _lams_with_widths(rows)
    if not lams:
        return Claim(3, text, NOT_EVALUATED, ["needs at least two widths at some λ"])
    g = {"robust_accuracy": 1.0, "natural_accuracy": -0.5}
    tests = [HypothesisTest(f"slope of robust − ½·natural per doubling, averaged over λ ∈ {{{', '.join(f'{x:g}' for x in lams)}}}",
                  lam_averaged_slope(rows, g, examples), False)]
    widths = sorted(set.intersection(*({r["width"] for r in select(rows, lam=lam)} for lam in lams)))
    for w0, w1 in zip(widths, widths[1:]):
        groups = [(sign / len(lams), select(rows, lam=lam, width=w)) for lam in lams for sign, w in ((-1.0, w0), (1.0, w1))]
        # a step "supports" claim 3 when robust accuracy *drops*: expect_increase=True, so a drop reads contradicted
        tests.append(HypothesisTest(f"robust accuracy width {w0}→{w1}, averaged over λ (a drop supports claim 3)", linear_contrast(groups, "robust_accuracy",
                                                                                                 examples), True,
                          kind="step"))
    secondary, lines = [], []
    for lam in lams:
        at_lam = select(rows, lam=lam)
        secondary.append(HypothesisTest(f"λ={lam:g} slope of robust − ½·natural", width_slope(at_lam, g, examples), False,
                              "secondary"))
        lines.append(f"λ={lam:g}: slopes per doubling: robust {width_slope(at_lam, 'robust_accuracy', examples).short()}, "
                     f"natural {width_slope(at_lam, 'natural_accuracy', examples).short()}")
    return _finish_claim(3, text, tests, secondary, [], lines)


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
    series = ", ".join(f"{lam:g}: {stats[(lam,)].mean:.4f}" for lam in lams)
    return _finish_claim(5, text, [HypothesisTest(f"width {widest}: stability λ {lams[0]:g}→{lams[-1]:g}", iv, True)], [], [],
                         [f"width {widest}, stability by λ: {series}"])


def _claim_best_lam(rows, examples: Examples | None) -> Claim:
    text = "The best λ grows with width; the small model's best λ is suboptimal for the wide one."
    widths = sorted({r["width"] for r in rows})
    lams = sorted({r["lam"] for r in rows})
    if len(widths) < 2 or len(lams) < 2:
        return Claim(6, text, NOT_EVALUATED, ["needs several widths and λ values"])
    best = best_lam_by_width(rows)
    if widths[0] not in best or widths[-1] not in best:
        note = "no validation robust accuracy at the narrowest or widest width (eval.val_examples = 0?)"
        return Claim(6, text, NOT_EVALUATED, [f"note: {note}"], notes=[note])
    wide, lam_s, lam_star = widths[-1], best[widths[0]], best[widths[-1]]
    at_wide = select(rows, width=wide)
    edge = lambda lam: " (grid edge)" if lam in (lams[0], lams[-1]) else ""  # noqa: E731
    lines = ["best λ by held-out (validation) robust accuracy: "
             + ", ".join(f"width {w}: {best[w]:g}{edge(best[w])}" for w in widths if w in best)]
    notes, secondary = [], []
    above = [lam for lam in sorted({r["lam"] for r in at_wide}) if lam > lam_s]
    if lam_star < lam_s:
        secondary.append(HypothesisTest(f"width {wide}: robust at λ_s={lam_s:g} minus at its own best λ*={lam_star:g}",
                              contrast(select(at_wide, lam=lam_star), select(at_wide, lam=lam_s), "robust_accuracy",
                                       examples), True, "secondary"))
    if not above:
        if lam_s == lams[-1]:
            notes.append(f"λ_s={lam_s:g}, the narrowest width's best λ, is the grid's largest λ: whether the best λ "
                         f"grows with width cannot be read from this grid (it needs λ above {lam_s:g}); no verdict")
            claim = _finish_claim(6, text, [], secondary, notes, lines)
            return dataclasses.replace(claim, verdict=f"{INCONCLUSIVE} (grid edge)")
        notes.append(f"no run with λ above λ_s={lam_s:g} has finished at the widest width {wide}: claim 6 is not "
                     "evaluated until it has")
        claim = _finish_claim(6, text, [], secondary, notes, lines)
        return dataclasses.replace(claim, verdict=NOT_EVALUATED)
    lam_up = lam_star if lam_star > lam_s else above[0]
    if lam_star == lams[-1] and lam_star > lam_s:
        notes.append(f"λ*={lam_star:g}, the widest width's best λ, is the grid's largest λ: its best λ may lie higher "
                     "(the direction of the test stands; its size is a lower bound)")
    iv = contrast(select(at_wide, lam=lam_s), select(at_wide, lam=lam_up), "robust_accuracy", examples)
    role = "its own best λ*" if lam_up == lam_star else "the next larger λ (λ* = λ_s)" if lam_star == lam_s else \
        "the next larger λ (λ* < λ_s)"
    test = HypothesisTest(f"width {wide}: test robust accuracy at λ_up={lam_up:g} ({role}) minus at λ_s={lam_s:g}", iv, True)
    return _finish_claim(6, text, [test], secondary, notes, lines)


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
            "war_only_runs": len(war), "war_only_seconds": seconds(war),
            "reference_runs": len(grid_small), "reference_seconds": seconds(grid_small)}


def _war_mode(row: dict[str, Any]) -> str:
    return row.get("war_mode") or "weighted_ratio"   # rows from before WAR had modes: reading A


def war_moved(row: dict[str, Any]) -> bool:
    """Whether WAR changed λ in this run (else the run never exercised WAR)."""
    start, end = row["lam"], row.get("lam_final")
    return end is not None and abs(end - start) > 1e-6 * max(1.0, abs(start))


WAR_READINGS = {"unweighted_ratio": "reading B, enlarges λ", "weighted_ratio": "reading A, holds λ·R_rob/R_nat"}
NOT_EXERCISED = "not exercised"


def _claim_war(all_rows, examples: Examples | None, modes: Sequence[str] | None = None,
               selection: str = "best_val") -> Claim:
    """Claim 7 (docs/paper.md §9): WAR against the fixed λ_s at the same width, primary
    reading only; the other readings and WAR − tuned (margin δ) are secondary."""
    text = ("WAR started from the small model's λ reaches the wide model's tuned robust accuracy at a fraction of "
            "the tuning cost.")
    war_rows = [r for r in all_rows if r["selection"] == selection and r["war"]]
    rows = grid_rows(all_rows, selection)
    if not war_rows or not rows:
        return Claim(7, text, NOT_EVALUATED, ["no WAR runs in this study"])
    present = {_war_mode(r) for r in war_rows}
    order = [m for m in (modes or WAR_READINGS) if m in present] + sorted(present - set(modes or WAR_READINGS))
    best = best_lam_by_width(rows)
    reference_width = min(r["width"] for r in rows)
    primary_mode = order[0]
    notes, lines, secondary, groups = [], [], [], []
    exercised_widths = []
    for mode in order:
        for width in sorted({r["width"] for r in war_rows}):
            war = [r for r in select(war_rows, width=width) if _war_mode(r) == mode]
            if not war:
                continue
            lam_s = war[0]["lam"]
            fixed = select(rows, width=width, lam=lam_s)
            moved = sum(war_moved(r) for r in war)
            cost = war_costs(all_rows, width, reference_width, mode)
            tuned_lam = best.get(width)
            tuned = select(rows, width=width, lam=tuned_lam) if tuned_lam is not None else []
            lam_path = stats_of([r["lam_final"] for r in war])
            line = (f"WAR {mode} ({WAR_READINGS.get(mode, mode)}; {'primary' if mode == primary_mode else 'secondary'}), "
                    f"width {width}: from λ_s={lam_s:g} to final λ {lam_path.mean:.2f} ({moved} of {len(war)} runs "
                    f"moved λ); robust {stats_of([r['test_robust_accuracy'] for r in war])}. Cost: WAR "
                    f"{cost['war_only_runs']} run(s) / {cost['war_only_seconds']:.0f} s + the reference grid "
                    f"{cost['reference_runs']} runs / {cost['reference_seconds']:.0f} s (shared by all widths) vs the λ "
                    f"grid at this width {cost['grid_runs']} runs / {cost['grid_seconds']:.0f} s")
            if tuned:
                iv_tuned = contrast(tuned, war, "robust_accuracy", examples)
                line += (f"; WAR − grid-tuned (λ={tuned_lam:g}) {iv_tuned.short()} (margin −{WAR_MARGIN:g}: "
                         f"{verdict(iv_tuned.shifted(-WAR_MARGIN), True)})")
            lines.append(line)
            if not moved:
                notes.append(f"WAR {mode} at width {width}: λ never moved from λ_s={lam_s:g} in any run: "
                             f"{NOT_EXERCISED}")
                continue
            if not fixed:
                notes.append(f"width {width}: the λ grid lacks WAR's starting λ_s={lam_s:g}, so WAR cannot be compared "
                             "with the fixed small-model λ there")
                continue
            if mode == primary_mode:
                exercised_widths.append(width)
                groups += [(1.0, war), (-1.0, fixed)]
            secondary.append(HypothesisTest(f"WAR {mode} − fixed λ_s={lam_s:g} at width {width}",
                                  contrast(fixed, war, "robust_accuracy", examples), True, "secondary"))
    if not groups:
        reason = NOT_EXERCISED if any(NOT_EXERCISED in n for n in notes) else NOT_EVALUATED
        claim = _finish_claim(7, text, [], secondary, notes, lines)
        return dataclasses.replace(claim, verdict=reason)
    k = len(exercised_widths)
    iv = linear_contrast([(w / k, g) for w, g in groups], "robust_accuracy", examples)
    test = HypothesisTest(f"WAR {primary_mode} − fixed λ_s, averaged over widths {exercised_widths}", iv, True)
    return _finish_claim(7, text, [test], secondary, notes, lines)


# --------------------------------------------------------------------------- claim 8
# The attack check's rows come from nt_robust.studies.attack_check (which runs the protocols);
# its verdict is judged here, beside the other claims.

TAU_SUPPORTED = 0.7             # claim 8: "rankings agree" means Kendall τ-b ≥ this
N_BOOT, BOOT_SEED = 2000, 0     # bootstrap over test examples: resamples, seed (deterministic)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two equally long sequences (ties in either count against neither)."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau_b needs sequences of equal length, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else math.nan


def kendall_tau_b_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`kendall_tau_b` of every row of ``a`` (k, m) with the same row of ``b`` (vectorised)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    i, j = np.triu_indices(a.shape[1], 1)
    sa, sb = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    both = (sa != 0) & (sb != 0)
    score = np.sum(sa * sb * both, axis=1)
    n_a, n_b = np.sum(sa != 0, axis=1), np.sum(sb != 0, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_a > 0) & (n_b > 0), score / np.sqrt(n_a * n_b), np.nan)


def attack_agreement_claim(rows: list[dict[str, Any]], reference: str,
                           examples: dict[tuple[str, str], np.ndarray] | None = None, n_boot: int = N_BOOT):
    """Claim 8's verdict and evidence from :func:`collect_attack_check` rows and the
    per-example results of :func:`collect_attack_examples` (without them: no interval, so
    inconclusive). The intervals count seeds as well as test images (module docstring); with
    one checked seed they cannot, and the verdict is inconclusive with a note saying so."""
    from nt_robust.studies.uncertainty import bootstrap_interval, contrast_interval

    text = "Rankings agree across PGD-20, CW-20 and AutoAttack; AutoAttack ≤ PGD accuracy."
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    means = {p: {k: s.mean for k, s in group_stats(select(rows, protocol=p), ("width", "lam"),
                                                    "robust_accuracy").items()}
             for p in protocols}
    configs = sorted(set.intersection(*(set(m) for m in means.values()))) if means else []
    if reference not in means or len(protocols) < 2 or len(configs) < 3:
        return Claim(8, text, NOT_EVALUATED, ["needs an [attack_check] section in the study spec and at least "
                                              "three finished (width, λ) configurations"])
    n = rows[0]["num_examples"]
    seeds = sorted({r["seed"] for r in rows})
    # run of each (configuration, seed), where every protocol finished
    run_of = {(c, r["seed"]): r["run"] for c in configs for r in select(rows, width=c[0], lam=c[1])}
    seeds = [s for s in seeds if all((c, s) in run_of for c in configs)]
    have_examples = examples is not None and bool(seeds) and all(
        (run_of[(c, s)], p) in examples for p in protocols for c in configs for s in seeds)
    notes = []
    if len(seeds) < 2:
        notes.append(f"the attack check ran on seed(s) {seeds} only: its intervals cannot count the spread over "
                     "seeds, so claim 8 stays inconclusive (set [attack_check] seeds to at least 2 seeds)")
    if have_examples:
        sizes = {len(examples[(run_of[(c, s)], p)]) for p in protocols for c in configs for s in seeds}
        if len(sizes) != 1:
            raise ValueError(f"attack check per-example arrays of different lengths {sorted(sizes)}")
        n_examples = sizes.pop()
        # x[p][k, s, i]: per-example robust correctness of configuration k, seed s, image i
        x = {p: np.stack([[np.asarray(examples[(run_of[(c, s)], p)], np.float64) for s in seeds] for c in configs])
             for p in protocols}
        rng = np.random.default_rng(BOOT_SEED + 1)
        seed_weights = rng.multinomial(len(seeds), np.full(len(seeds), 1.0 / len(seeds)), size=n_boot) \
            .astype(np.float64) / len(seeds)                       # (n_boot, S): seeds resampled too

        def config_means(weights: np.ndarray, protocol: str) -> np.ndarray:   # (n_boot, configs)
            per_seed = np.einsum("bi,ksi->bks", weights, x[protocol]) / n_examples
            return np.einsum("bs,bks->bk", seed_weights, per_seed)

    evidence, parts, tests = [], [], []
    for protocol in protocols:
        series = ", ".join(f"{w}/λ{lam:g}: {means[protocol][(w, lam)]:.3f}" for w, lam in configs)
        evidence.append(f"{protocol} robust accuracy (width/λ, first {n} test images, seeds {seeds}): {series}")
    for protocol in protocols:
        if protocol == reference:
            continue
        tau = kendall_tau_b([means[reference][c] for c in configs], [means[protocol][c] for c in configs])
        line = f"Kendall τ-b of {protocol} vs {reference} over {len(configs)} configurations: {tau:+.2f}"
        if have_examples:
            low, high = bootstrap_interval(lambda w, p=protocol: kendall_tau_b_rows(config_means(w, reference),
                                                                                    config_means(w, p)),
                                           n_examples, n_boot, BOOT_SEED)
            v = SUPPORTED if low >= TAU_SUPPORTED else CONTRADICTED if high < TAU_SUPPORTED else INCONCLUSIVE
            if len(seeds) < 2 and v != CONTRADICTED:
                v = INCONCLUSIVE
            line += f" [{low:+.2f}, {high:+.2f}] (bootstrap over seeds and images) → {v}"
        else:
            v = INCONCLUSIVE
            line += " (no per-example arrays: no interval) → inconclusive"
        parts.append(v)
        evidence.append(line)
    by_run = {(r["run"], r["protocol"]): r["robust_accuracy"] for r in rows}
    for protocol in (p for p in protocols if p.startswith("autoattack")):
        runs = [run for (run, p) in by_run if p == protocol and (run, reference) in by_run]
        gaps = {run: by_run[(run, protocol)] - by_run[(run, reference)] for run in runs}
        if not runs:
            continue
        if have_examples:
            diffs = {run: examples[(run, protocol)] - examples[(run, reference)] for run in runs}
            run_ivs = {run: bootstrap_interval(lambda w, d=d: w @ d / n_examples, n_examples, n_boot, BOOT_SEED)
                       for run, d in diffs.items()}
            table = (x[protocol] - x[reference]).mean(axis=0)          # seeds × images, mean over configurations
            iv = contrast_interval(table)
            tests.append(HypothesisTest(f"{protocol} − {reference}, mean over configurations", iv, False))
            above = [run for run in runs if run_ivs[run][0] > 0]
            gap_v = SUPPORTED if iv.high < 0 else CONTRADICTED if iv.low > 0 else INCONCLUSIVE
            v = CONTRADICTED if above else gap_v
            evidence.append(
                f"{protocol} − {reference} robust accuracy: mean over {len(runs)} runs "
                f"{float(np.mean(list(gaps.values()))):+.4f}, interval over seeds × images {iv.describe(mde=False)}; "
                f"at or below 0 in {sum(g <= 0 for g in gaps.values())} of {len(runs)} runs; significantly above 0 "
                "(per run, bootstrap over images) in "
                + (", ".join(f"{run} ({gaps[run]:+.3f} [{run_ivs[run][0]:+.3f}, {run_ivs[run][1]:+.3f}])"
                             for run in above) if above else "none")
                + f" → {v}")
        else:
            v = INCONCLUSIVE
            evidence.append(f"{protocol} ≤ {reference} in {sum(g <= 0 for g in gaps.values())} of {len(runs)} runs, "
                            f"mean gap {float(np.mean(list(gaps.values()))):+.4f} (no per-example arrays: no "
                            f"interval) → inconclusive")
        parts.append(v)
    if CONTRADICTED in parts:
        verdict = CONTRADICTED
    elif parts and all(v == SUPPORTED for v in parts):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    evidence.append(
        f"rule (our choice, docs/paper.md §9): intervals over seeds {seeds} and the {n} test images (the gap: the "
        f"seed × image interval of uncertainty.py; τ: a bootstrap resampling seeds and images jointly, {n_boot} "
        f"resamples, paired across runs and protocols). Supported if every τ's interval lies at or above "
        f"{TAU_SUPPORTED} and the mean AutoAttack − {reference} gap's interval lies below 0; contradicted if some τ's "
        f"interval lies below {TAU_SUPPORTED} or the gap (or some run's gap) lies above 0; else inconclusive")
    evidence += [f"note: {note}" for note in notes]
    return Claim(8, text, verdict, evidence, tests, [], notes)

"""Seed statistics and the claim-by-claim verdicts of docs/paper.md §7, from the tidy table.

    stats = group_stats(rows, ("width", "lam"), "test_robust_accuracy")
    claims = evaluate_claims(rows)          # list of Claim(number, text, verdict, evidence)
    claims = evaluate_claims(rows, attack_rows, "pgd20-0.007")   # with claim 8 (attack_check.py)

Rule for every comparison: the difference of two seed means, with standard error
sqrt(sem_a² + sem_b²); "supported" if it points the claimed way by more than two
standard errors, "contradicted" if it points the other way by more than two,
"inconclusive" otherwise (and always with a single seed, where there is no spread).
Checkpoints are those with the best *held-out* robust accuracy; metrics are on the test set.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED = "supported", "contradicted", "inconclusive", "not evaluated"


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


def compare(a: Stats, b: Stats, expect_increase: bool) -> tuple[str, float, float]:
    """Verdict on "b > a" (or "b < a"), the difference b − a and its standard error."""
    diff = b.mean - a.mean
    se = math.sqrt(a.sem ** 2 + b.sem ** 2) if a.n > 1 and b.n > 1 else math.nan
    if math.isnan(se) or math.isnan(diff):
        return INCONCLUSIVE, diff, se
    signed = diff if expect_increase else -diff
    if signed > 2 * se:
        return SUPPORTED, diff, se
    if signed < -2 * se:
        return CONTRADICTED, diff, se
    return INCONCLUSIVE, diff, se


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


def _fmt(diff: float, se: float) -> str:
    return f"{diff:+.4f} ± {se:.4f}" if not math.isnan(se) else f"{diff:+.4f} (no spread)"


def _width_trend(rows, metric: str, expect_increase: bool) -> tuple[list[str], list[str]]:
    verdicts, evidence = [], []
    for lam in sorted({r["lam"] for r in rows}):
        stats = group_stats(select(rows, lam=lam), ("width",), metric)
        if len(stats) < 2:
            continue
        widths = sorted(stats)
        verdict, diff, se = compare(stats[widths[0]], stats[widths[-1]], expect_increase)
        verdicts.append(verdict)
        series = ", ".join(f"{w[0]}: {stats[w].mean:.4f}" for w in widths)
        evidence.append(f"λ={lam:g}: width {widths[0][0]}→{widths[-1][0]} {_fmt(diff, se)} → {verdict} [{series}]")
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
                    attack_reference: str | None = None) -> list[Claim]:
    """Every claim of docs/paper.md §7; claim 8 needs the study's attack check rows
    (:mod:`nt_robust.studies.attack_check`), compared against ``attack_reference``."""
    from nt_robust.studies.attack_check import attack_agreement_claim

    rows = grid_rows(all_rows)
    claims = []
    for number, text, metric, up in (
        (1, "At fixed λ, natural accuracy rises with width.", "test_natural_accuracy", True),
        (2, "At fixed λ, perturbation stability falls with width.", "test_perturbation_stability", False),
        (4, "Local Lipschitzness rises with width at fixed λ.", "test_lipschitz_mean", True),
    ):
        verdicts, evidence = _width_trend(rows, metric, up)
        claims.append(Claim(number, text, _combine(verdicts), evidence))

    verdicts, evidence = [], []
    for lam in sorted({r["lam"] for r in rows}):
        nat = group_stats(select(rows, lam=lam), ("width",), "test_natural_accuracy")
        rob = group_stats(select(rows, lam=lam), ("width",), "test_robust_accuracy")
        if len(rob) < 2:
            continue
        widths = sorted(rob)
        gain_nat = nat[widths[-1]].mean - nat[widths[0]].mean
        gain_rob = rob[widths[-1]].mean - rob[widths[0]].mean
        means = [rob[w].mean for w in widths]
        monotone = all(b >= a for a, b in zip(means, means[1:]))
        holds = (not monotone) or gain_rob < 0.5 * gain_nat
        verdict = SUPPORTED if holds else CONTRADICTED
        if min(s.n for s in rob.values()) < 2:
            verdict = INCONCLUSIVE  # one seed: no way to tell a trend from noise
        verdicts.append(verdict)
        evidence.append(f"λ={lam:g}: robust gain {gain_rob:+.4f} vs natural gain {gain_nat:+.4f}, "
                        f"robust {'monotone' if monotone else 'not monotone'} in width → {verdict}")
    claims.append(Claim(3, "At fixed λ, robust accuracy does not rise monotonically with width "
                           "(or rises far less than natural accuracy).", _combine(verdicts), evidence))
    claims.append(_claim_stability_vs_lam(rows))
    claims.append(_claim_best_lam(rows))
    claims.append(_claim_war(all_rows))
    claims.append(attack_agreement_claim(attack_rows or [], attack_reference or ""))
    return sorted(claims, key=lambda c: c.number)


def _claim_stability_vs_lam(rows) -> Claim:
    text = "For a wide model, stability rises with λ."
    if not rows:
        return Claim(5, text, NOT_EVALUATED, [])
    widest = max(r["width"] for r in rows)
    stats = group_stats(select(rows, width=widest), ("lam",), "test_perturbation_stability")
    if len(stats) < 2:
        return Claim(5, text, NOT_EVALUATED, ["needs at least two λ values"])
    lams = sorted(stats)
    verdict, diff, se = compare(stats[lams[0]], stats[lams[-1]], True)
    series = ", ".join(f"{k[0]:g}: {stats[k].mean:.4f}" for k in lams)
    return Claim(5, text, verdict, [f"width {widest}: λ {lams[0][0]:g}→{lams[-1][0]:g} {_fmt(diff, se)} [{series}]"])


def _claim_best_lam(rows) -> Claim:
    text = "The best λ grows with width; the small model's best λ is suboptimal for the wide one."
    widths = sorted({r["width"] for r in rows})
    if len(widths) < 2 or len({r["lam"] for r in rows}) < 2:
        return Claim(6, text, NOT_EVALUATED, ["needs several widths and λ values"])
    best = best_lam_by_width(rows)
    evidence = [f"best λ by held-out robust accuracy: " + ", ".join(f"width {w}: {best[w]:g}" for w in widths)]
    grows = best[widths[-1]] > best[widths[0]]
    wide = group_stats(select(rows, width=widths[-1]), ("lam",), "test_robust_accuracy")
    verdict, diff, se = compare(wide[(best[widths[0]],)], wide[(best[widths[-1]],)], True)
    if best[widths[-1]] == best[widths[0]]:
        verdict = CONTRADICTED
    evidence.append(f"width {widths[-1]}: test robust at its own best λ minus at the small model's λ "
                    f"{_fmt(diff, se)} → {verdict}")
    overall = SUPPORTED if grows and verdict == SUPPORTED else (CONTRADICTED if not grows else INCONCLUSIVE)
    if min(s.n for s in wide.values()) < 2:
        overall = INCONCLUSIVE
    return Claim(6, text, overall, evidence)


def war_costs(all_rows: list[dict[str, Any]], width: int, reference_width: int) -> dict[str, float]:
    """Tuning cost (runs, device-seconds) of a λ grid at ``width`` versus WAR: the grid
    at the reference width plus the WAR runs at ``width``."""
    final = [r for r in all_rows if r["selection"] == "final"]
    grid_wide = [r for r in final if not r["war"] and r["width"] == width]
    grid_small = [r for r in final if not r["war"] and r["width"] == reference_width]
    war = [r for r in final if r["war"] and r["width"] == width]
    seconds = lambda rs: sum(r["train_seconds"] or 0.0 for r in rs)  # noqa: E731
    return {"grid_runs": len(grid_wide), "grid_seconds": seconds(grid_wide),
            "war_runs": len(grid_small) + len(war), "war_seconds": seconds(grid_small) + seconds(war),
            "war_only_runs": len(war), "war_only_seconds": seconds(war)}


def _claim_war(all_rows) -> Claim:
    text = "WAR started from the small model's λ reaches the wide model's tuned robust accuracy at a fraction of the tuning cost."
    war_rows = [r for r in all_rows if r["selection"] == "best_val" and r["war"]]
    rows = grid_rows(all_rows)
    if not war_rows or not rows:
        return Claim(7, text, NOT_EVALUATED, ["no WAR runs in this study"])
    best = best_lam_by_width(rows)
    reference_width = min(best)
    verdicts, evidence = [], []
    for width in sorted({r["width"] for r in war_rows}):
        war = stats_of([r["test_robust_accuracy"] for r in select(war_rows, width=width)])
        tuned = group_stats(select(rows, width=width), ("lam",), "test_robust_accuracy").get((best.get(width),))
        fixed = group_stats(select(rows, width=width), ("lam",), "test_robust_accuracy").get((best[reference_width],))
        if tuned is None:
            continue
        verdict, diff, se = compare(tuned, war, True)
        within = not math.isnan(se) and abs(diff) <= 2 * se
        reaches = SUPPORTED if within or verdict == SUPPORTED else (CONTRADICTED if verdict == CONTRADICTED else INCONCLUSIVE)
        verdicts.append(reaches)
        lam_path = stats_of([r["lam_final"] for r in select(war_rows, width=width)])
        cost = war_costs(all_rows, width, reference_width)
        evidence.append(
            f"width {width}: WAR {war} vs grid-tuned (λ={best.get(width):g}) {tuned}"
            + (f" vs fixed λ_s={best[reference_width]:g} {fixed}" if fixed else "")
            + f"; WAR − tuned {_fmt(diff, se)}; WAR's final λ {lam_path.mean:.2f} → {reaches}. "
            f"Cost: λ grid {cost['grid_runs']} runs / {cost['grid_seconds']:.0f} s vs WAR "
            f"{cost['war_only_runs']} run(s) / {cost['war_only_seconds']:.0f} s at this width "
            f"(+ the reference grid, shared by all widths)")
    return Claim(7, text, _combine(verdicts).replace("λ values", "widths"), evidence)

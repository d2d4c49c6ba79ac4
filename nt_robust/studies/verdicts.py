"""How a claim's verdict is reached: the declared primary tests (docs/paper.md §9), a test's
direction, Holm within a family, and the :class:`Claim` record every claim returns::

    test = HypothesisTest("slope of natural accuracy", interval, expect_increase=True)
    claim = finish_claim(1, "At fixed λ, natural accuracy rises with width.", [test], [], [])
    claim.verdict, claim.to_dict()         # "supported" | "contradicted" | "inconclusive"
    decide(3, tests, holm([t.p for t in tests]))

The claims themselves are computed in :mod:`nt_robust.studies.claims`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, LEVEL, NOT_EVALUATED, SUPPORTED, Interval,
                                           holm)

# One primary test (or, for claim 3, one family) per claim and regime, declared in
# docs/paper.md §9 with exactly these words (tests/studies/test_claims.py checks); their
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


def finish_claim(number: int, text: str, tests: list[HypothesisTest], secondary: list[HypothesisTest], notes: list[str],
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

"""Claim 8 of docs/paper.md §7: do PGD-20, CW-20 and AutoAttack rank a study's models alike, and
is AutoAttack's robust accuracy never above PGD's?

A study spec may ask for the check (protocols from :mod:`nt_robust.attacks.protocols`,
run on the finished grid runs' best held-out checkpoints, the first ``examples`` test
images, for the listed seeds)::

    [attack_check]
    protocols = ["pgd20-0.007", "cw20", "autoattack-standard"]   # the first is the reference
    examples = 200
    seeds = [0]

    run_attack_check(study)              # resumable: finished evaluations are not recomputed
    rows = collect_attack_check(study)   # one row per run and protocol
    claim = attack_agreement_claim(rows, plan.protocols[0])

Agreement is Kendall's τ-b between the reference protocol's and each other protocol's
seed-mean robust accuracies over the (width, λ) configurations. Our thresholds (the paper
gives none): *supported* when every τ ≥ 0.7 and AutoAttack ≤ the reference in every run,
*contradicted* when some τ < 0.3 or AutoAttack exceeds the reference in some run,
*inconclusive* otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from nt_robust import io
from nt_robust.attacks.protocols import PROTOCOLS
from nt_robust.config import ConfigError

log = logging.getLogger("nt_robust.studies")

CHECKPOINT = "best_val"
TAU_SUPPORTED, TAU_CONTRADICTED = 0.7, 0.3


@dataclasses.dataclass(frozen=True)
class AttackCheckPlan:
    protocols: tuple[str, ...]
    examples: int = 200
    seeds: tuple[int, ...] | None = None   # None: every seed of the study

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if len(self.protocols) < 2 or unknown or len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(f"[attack_check] protocols needs at least two different ones of {sorted(PROTOCOLS)}; "
                              f"got {list(self.protocols)}" + (f" (unknown: {unknown})" if unknown else ""))
        if isinstance(self.examples, bool) or not isinstance(self.examples, int) or self.examples < 1:
            raise ConfigError(f"[attack_check] examples must be an integer >= 1, got {self.examples!r}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "AttackCheckPlan":
        unknown = set(spec) - {"protocols", "examples", "seeds"}
        if unknown:
            raise ConfigError(f"unknown [attack_check] keys {sorted(unknown)} (known: protocols, examples, seeds)")
        seeds = spec.get("seeds")
        return cls(tuple(spec.get("protocols", ())), spec.get("examples", 200),
                   None if seeds is None else tuple(int(s) for s in seeds))


def _checked_runs(study) -> list:
    plan = study.attack_check
    return [r for r in study.grid_runs() if plan.seeds is None or r.seed in plan.seeds]


def run_attack_check(study) -> None:
    """Evaluate every checked grid run with every protocol (skips what is already done)."""
    from nt_robust.train.evaluate_run import evaluate_run

    plan = study.attack_check
    runs = _checked_runs(study)
    missing = [r.name for r in runs if not study.is_finished(r)]
    if missing:
        raise RuntimeError(f"the attack check needs finished grid runs; missing: {', '.join(missing[:5])}"
                           f"{' …' if len(missing) > 5 else ''} (run the grid stage first)")
    for number, run in enumerate(runs, 1):
        for protocol in plan.protocols:
            if _finished_result(study, run, protocol) is not None:
                continue  # a finished run's checkpoint never changes: no need to load it again
            log.info("[attack check %d/%d] %s: %s on %d test images", number, len(runs), run.name, protocol,
                     plan.examples)
            result = evaluate_run(study.run_dir(run), checkpoint=CHECKPOINT, split="test",
                                  examples=plan.examples, protocol=protocol)
            if result["num_examples"] < plan.examples:
                raise ConfigError(f"[attack_check] examples = {plan.examples} but the test split of {run.name} "
                                  f"has only {result['num_examples']} images: set examples <= "
                                  f"{result['num_examples']}")


def _finished_result(study, run, protocol: str) -> dict[str, Any] | None:
    """The finished evaluation of ``run`` by ``protocol`` at the run's own evaluation ε on
    this check's number of examples, in the protocol's current version; else None."""
    run_dir = study.run_dir(run)
    if not (run_dir / "config.json").exists():
        return None
    from nt_robust.train.evaluate_run import protocol_result_stem

    eps = io.read_json(run_dir / "config.json")["eval"]["attack"]["eps"]
    stem = protocol_result_stem(run_dir, CHECKPOINT, "test", protocol, eps, study.attack_check.examples)
    path = Path(f"{stem}.json")
    if not path.exists():
        return None
    result = io.read_json(path)
    if (result.get("num_examples") != study.attack_check.examples
            or result.get("protocol_version", PROTOCOLS[protocol].version) != PROTOCOLS[protocol].version):
        return None
    return result


def collect_attack_check(study) -> list[dict[str, Any]]:
    """One row per checked run and protocol whose evaluation has finished."""
    rows = []
    for run in _checked_runs(study):
        for protocol in study.attack_check.protocols:
            result = _finished_result(study, run, protocol)
            if result is not None:
                rows.append({"run": run.name, "width": run.width, "lam": run.lam, "seed": run.seed,
                             "protocol": protocol, "eps": result["eps"], "num_examples": result["num_examples"],
                             "natural_accuracy": result["natural_accuracy"],
                             "robust_accuracy": result["robust_accuracy"]})
    return rows


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


def attack_agreement_claim(rows: list[dict[str, Any]], reference: str):
    """Claim 8's verdict and evidence from :func:`collect_attack_check` rows."""
    from nt_robust.studies.analysis import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, Claim,
                                            group_stats, select)

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
    evidence, taus, violations = [], {}, []
    for protocol in protocols:
        series = ", ".join(f"{w}/λ{lam:g}: {means[protocol][(w, lam)]:.3f}" for w, lam in configs)
        evidence.append(f"{protocol} robust accuracy (width/λ, first {n} test images): {series}")
    for protocol in protocols:
        if protocol == reference:
            continue
        taus[protocol] = kendall_tau_b([means[reference][c] for c in configs], [means[protocol][c] for c in configs])
        evidence.append(f"Kendall τ-b of {protocol} vs {reference} over {len(configs)} configurations: "
                        f"{taus[protocol]:+.2f}")
    by_run = {(r["run"], r["protocol"]): r["robust_accuracy"] for r in rows}
    for protocol in (p for p in protocols if p.startswith("autoattack")):
        pairs = [(run, acc, by_run[(run, reference)]) for (run, p), acc in by_run.items()
                 if p == protocol and (run, reference) in by_run]
        worse = [(run, acc, ref) for run, acc, ref in pairs if acc > ref]
        violations += worse
        evidence.append(f"{protocol} ≤ {reference} in {len(pairs) - len(worse)} of {len(pairs)} runs"
                        + (f"; above it in {', '.join(f'{r} ({a:.3f} > {b:.3f})' for r, a, b in worse)}" if worse else "")
                        + f"; mean gap {sum(acc - ref for _, acc, ref in pairs) / max(len(pairs), 1):+.4f}")
    if violations or any(t < TAU_CONTRADICTED for t in taus.values()):
        verdict = CONTRADICTED
    elif all(t >= TAU_SUPPORTED for t in taus.values()):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    evidence.append(f"rule (our choice): supported if every τ ≥ {TAU_SUPPORTED} and AutoAttack never above "
                    f"{reference}; contradicted if some τ < {TAU_CONTRADICTED} or AutoAttack above it in some run")
    return Claim(8, text, verdict, evidence)

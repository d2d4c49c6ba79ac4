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
    claim = attack_agreement_claim(rows, plan.protocols[0])   # nt_robust.studies.claims

Agreement is Kendall's τ-b between the reference protocol's and each other protocol's
seed-mean robust accuracies over the (width, λ) configurations. Uncertainty counts seeds as
well as test images (issue 33): the mean AutoAttack − reference gap gets the seed × image
interval of :mod:`nt_robust.studies.uncertainty` (per seed, the gap averaged over the
configurations), τ a percentile bootstrap that resamples the checked seeds and the test
images jointly (paired across runs and protocols; seeded, 2000 resamples). With one checked
seed neither can count the seed spread, so the verdict stays inconclusive and says why.
Our rule (the paper gives no thresholds): *supported* when every τ's 95% interval lies at or
above 0.7 and the gap's interval lies below 0; *contradicted* when some τ's interval lies
below 0.7 or the gap (or one run's gap, bootstrap over images) lies above 0; *inconclusive*
otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from nt_robust import storage
from nt_robust.attacks.protocols import PROTOCOLS
from nt_robust.config import ConfigError

log = logging.getLogger("nt_robust.studies")

CHECKPOINT = "best_val"


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
    from nt_robust.evaluate import evaluate_run

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


def _result_stem(study, run, protocol: str) -> Path | None:
    run_dir = study.run_dir(run)
    if not (run_dir / "config.json").exists():
        return None
    from nt_robust.evaluate import protocol_result_stem

    eps = storage.read_json(run_dir / "config.json")["eval"]["attack"]["eps"]
    return protocol_result_stem(run_dir, CHECKPOINT, "test", protocol, eps, study.attack_check.examples)


def _finished_result(study, run, protocol: str) -> dict[str, Any] | None:
    """The finished evaluation of ``run`` by ``protocol`` at the run's own evaluation ε on
    this check's number of examples, in the protocol's current version; else None."""
    stem = _result_stem(study, run, protocol)
    if stem is None:
        return None
    path = Path(f"{stem}.json")
    if not path.exists():
        return None
    try:
        result = storage.read_json(path)
    except ValueError as error:  # damaged: left out of the report, evaluated again by the attacks stage
        log.warning("%s; treated as not evaluated", error)
        return None
    if not isinstance(result, dict) or (result.get("num_examples") != study.attack_check.examples
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


def collect_attack_examples(study) -> dict[tuple[str, str], np.ndarray]:
    """Per finished (run, protocol) evaluation, the per-example robust correctness (1.0 where
    the protocol did not break a correctly classified test image), in test-image order."""
    from nt_robust.attacks.protocols import ROBUST

    examples = {}
    for run in _checked_runs(study):
        for protocol in study.attack_check.protocols:
            if _finished_result(study, run, protocol) is None:
                continue
            path = Path(f"{_result_stem(study, run, protocol)}.npz")
            if path.exists():
                try:
                    arrays = storage.load_arrays(path)
                except (OSError, ValueError) as error:
                    log.warning("%s; its per-example results are left out", error)
                    continue
                examples[(run.name, protocol)] = (arrays["broken_by"] == ROBUST).astype(np.float64)
    return examples

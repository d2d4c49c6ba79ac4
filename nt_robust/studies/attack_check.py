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
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nt_robust import io
from nt_robust.attacks.protocols import PROTOCOLS
from nt_robust.config import ConfigError

log = logging.getLogger("nt_robust.studies")

CHECKPOINT = "best_val"
TAU_SUPPORTED = 0.7             # claim 8: "rankings agree" means Kendall τ-b ≥ this
N_BOOT, BOOT_SEED = 2000, 0     # bootstrap over test examples: resamples, seed (deterministic)


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


def _result_stem(study, run, protocol: str) -> Path | None:
    run_dir = study.run_dir(run)
    if not (run_dir / "config.json").exists():
        return None
    from nt_robust.train.evaluate_run import protocol_result_stem

    eps = io.read_json(run_dir / "config.json")["eval"]["attack"]["eps"]
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
        result = io.read_json(path)
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
                    arrays = io.load_arrays(path)
                except (OSError, ValueError) as error:
                    log.warning("%s; its per-example results are left out", error)
                    continue
                examples[(run.name, protocol)] = (arrays["broken_by"] == ROBUST).astype(np.float64)
    return examples


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
    from nt_robust.studies.analysis import Claim, HypothesisTest, group_stats, select
    from nt_robust.studies.uncertainty import CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, \
        bootstrap_interval, contrast_interval

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

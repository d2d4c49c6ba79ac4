"""The claim-by-claim verdicts of docs/paper.md §7, from the tidy table and the runs'
per-example arrays::

    examples = collect_examples(run_dirs)   # aggregate.py: per-example arrays by run and split
    claims = evaluate_claims(rows, examples=examples)   # list of Claim(number, text, verdict, evidence)
    claims = evaluate_claims(rows, attack_rows, "pgd20-0.007", examples, attack_examples)  # + claim 8

Every comparison is an interval of :mod:`nt_robust.studies.contrasts` (statistics from
:mod:`nt_robust.studies.uncertainty`): the difference of two configurations, paired by seed
and by test example, with the spread over seeds *and* over test points counted and a t
quantile with Welch–Satterthwaite degrees of freedom. A verdict
(:mod:`nt_robust.studies.verdicts`: the declared primary tests, Holm, :class:`Claim`) is
*supported* or *contradicted* only when its 95% interval excludes zero (or the stated
margin); otherwise *inconclusive*, with the smallest effect the study could have detected
(80% power). With one seed every verdict is inconclusive. Checkpoints are those with the
best *held-out* robust accuracy; metrics are on the test set.

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
from typing import Any, Mapping, Sequence

import numpy as np

from nt_robust.studies.contrasts import (Examples, best_lam_by_width, contrast, grid_rows, group_stats,
                                         lam_averaged_slope, linear_contrast, select, stats_of, width_slope)
from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, bootstrap_interval,
                                           contrast_interval, kendall_tau_b, kendall_tau_b_rows, verdict)
from nt_robust.studies.verdicts import Claim, HypothesisTest, finish_claim

__all__ = ["attack_agreement_claim", "evaluate_claims", "war_costs", "war_moved"]

WAR_MARGIN = 0.01  # claim 7: "reaches" = not more than this below the tuned robust accuracy


# ---------------------------------------------------------------- claims

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
    return finish_claim(number, text, primary, secondary, [], lines)


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
    return finish_claim(3, text, tests, secondary, [], lines)


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
    return finish_claim(5, text, [HypothesisTest(f"width {widest}: stability λ {lams[0]:g}→{lams[-1]:g}", iv, True)], [], [],
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
            claim = finish_claim(6, text, [], secondary, notes, lines)
            return dataclasses.replace(claim, verdict=f"{INCONCLUSIVE} (grid edge)")
        notes.append(f"no run with λ above λ_s={lam_s:g} has finished at the widest width {wide}: claim 6 is not "
                     "evaluated until it has")
        claim = finish_claim(6, text, [], secondary, notes, lines)
        return dataclasses.replace(claim, verdict=NOT_EVALUATED)
    lam_up = lam_star if lam_star > lam_s else above[0]
    if lam_star == lams[-1] and lam_star > lam_s:
        notes.append(f"λ*={lam_star:g}, the widest width's best λ, is the grid's largest λ: its best λ may lie higher "
                     "(the direction of the test stands; its size is a lower bound)")
    iv = contrast(select(at_wide, lam=lam_s), select(at_wide, lam=lam_up), "robust_accuracy", examples)
    role = "its own best λ*" if lam_up == lam_star else "the next larger λ (λ* = λ_s)" if lam_star == lam_s else \
        "the next larger λ (λ* < λ_s)"
    test = HypothesisTest(f"width {wide}: test robust accuracy at λ_up={lam_up:g} ({role}) minus at λ_s={lam_s:g}", iv, True)
    return finish_claim(6, text, [test], secondary, notes, lines)


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
        claim = finish_claim(7, text, [], secondary, notes, lines)
        return dataclasses.replace(claim, verdict=reason)
    k = len(exercised_widths)
    iv = linear_contrast([(w / k, g) for w, g in groups], "robust_accuracy", examples)
    test = HypothesisTest(f"WAR {primary_mode} − fixed λ_s, averaged over widths {exercised_widths}", iv, True)
    return finish_claim(7, text, [test], secondary, notes, lines)


# --------------------------------------------------------------------------- claim 8
# The attack check's rows come from nt_robust.studies.attack_check (which runs the protocols);
# its verdict is judged here, beside the other claims.

TAU_SUPPORTED = 0.7             # claim 8: "rankings agree" means Kendall τ-b ≥ this
N_BOOT, BOOT_SEED = 2000, 0     # bootstrap over test examples: resamples, seed (deterministic)


def attack_agreement_claim(rows: list[dict[str, Any]], reference: str,
                           examples: dict[tuple[str, str], np.ndarray] | None = None, n_boot: int = N_BOOT):
    """Claim 8's verdict and evidence from :func:`collect_attack_check` rows and the
    per-example results of :func:`collect_attack_examples` (without them: no interval, so
    inconclusive). The intervals count seeds as well as test images (module docstring); with
    one checked seed they cannot, and the verdict is inconclusive with a note saying so."""
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

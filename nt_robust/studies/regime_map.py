"""The regime map: where each of the paper's claims holds, across any set of studies::

    regimes = [load_regime(load_study(spec)) for spec in ("experiments/regime_mlp_n1000.toml", ...)]
    result = build_map(regimes)                  # slopes vs log width and verdicts, per regime and λ
    paths = write_map(result, Path("figures/regime_map"))   # map.json, map.md, slopes.png/pdf, claims.png/pdf

(``nt-robust map experiments/regime_*.toml`` does all of it.) A *regime* is one study: an
architecture, a training-set size, a training length, the rest shared. For each regime and
λ the map gives the least-squares slope of natural accuracy, robust accuracy, perturbation
stability and local Lipschitzness against log2 width (the change per doubling of width),
with the 95% interval over seeds and test images of :func:`contrasts.width_slope` and its
Benjamini–Hochberg q-value over all the map's slopes, and each claim's verdict from its
primary test (:func:`claims.evaluate_claims`, docs/paper.md §9) with Holm across the
regimes. Every regime is read twice, side by side: at the best held-out checkpoint
("best_val") and at the final epoch ("final"); each reading says where its numbers come from
(per-example arrays ``eval/{best_val,final}_test.npz``, else the summary's test metrics of
that epoch, seed spread only). Beside them: stability split by correctness, clean margin
against local Lipschitzness, robust accuracy at each width's own best λ
(:mod:`nt_robust.studies.mechanism`). Only finished runs count; a regime with unfinished runs
is drawn from what has finished and marked partial, and one with none is listed with the
command that runs it. What a regime lacks (a metric, final arrays, a λ) is a note naming
the regime and the gap, never a crash and never a silent verdict.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

from nt_robust import storage
from nt_robust.environment import describe_cpu, environment_info
from nt_robust.studies.aggregate import METRICS, collect_examples, collect_runs
from nt_robust.studies.claims import evaluate_claims
from nt_robust.studies.contrasts import grid_rows, select, width_slope
from nt_robust.studies.map_report import readings_of
from nt_robust.studies.overfitting import overfitting_json, robust_overfitting
from nt_robust.studies.mechanism import margin_slopes, stability_split_table, tuned_robust
from nt_robust.studies.sweep import Study
from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, benjamini_hochberg,
                                           holm)
from nt_robust.studies.verdicts import Claim, HypothesisTest, decide, primary_tests_hash

# For each metric, the direction the paper predicts with width at fixed λ (claims 1, 2, 4;
# robust accuracy: claim 3 says it does not rise much, so no direction is predicted).
MAP_FAMILY_TEXT = ("verdict: each claim's primary test (docs/paper.md §9), Holm-adjusted across the map's regimes "
                   "per claim and reading; slopes: Benjamini–Hochberg q over every slope of a reading")
PAPER_DIRECTION = {"natural_accuracy": "rises", "robust_accuracy": None, "perturbation_stability": "falls",
                   "lipschitz_mean": "rises"}


@dataclasses.dataclass(frozen=True)
class Regime:
    """One study's finished runs, with what describes its regime."""

    name: str
    spec: str
    label: str
    axes: dict[str, Any]
    rows: list[dict[str, Any]]
    examples: dict[str, Any]       # reading ("best_val", "final") -> run -> split -> arrays
    runs_total: int
    runs_finished: int
    war_modes: tuple[str, ...] | None

    @property
    def status(self) -> str:
        if self.runs_finished == 0:
            return "not run"
        return "complete" if self.runs_finished == self.runs_total else "partial"


def regime_axes(study: Study) -> dict[str, Any]:
    """Architecture, training-set size, epochs, image size and widths of a study's grid."""
    from nt_robust.config import load_config
    from nt_robust.train.config import ExperimentConfig, input_shape

    config = load_config(ExperimentConfig, study.base_config, list(study.grid_runs()[0].overrides))
    arch = {"mlp": f"MLP-{config.model.depth}", "cnn": "SmallCNN", "wrn": f"WRN-{config.model.depth}"}[config.model.arch]
    shape, _ = input_shape(config.data)
    return {"arch": arch, "dataset": config.data.dataset, "train_examples": config.data.train_subset,
            "epochs": config.train.epochs, "milestones": list(config.optim.milestones or []),
            "image_size": f"{shape[0]}x{shape[1]}", "widths": sorted({r.width for r in study.grid_runs()}),
            "lams": sorted({r.lam for r in study.grid_runs()}), "seeds": list(study.seeds)}


def _label(axes: dict[str, Any]) -> str:
    n = axes["train_examples"]
    size = "all" if n is None else (f"{n // 1000}k" if n % 1000 == 0 else str(n))
    return f"{axes['arch']} · n={size} · {axes['epochs']} ep · {axes['image_size']}"


def load_regime(study: Study) -> Regime:
    """The study's finished grid (and WAR) runs with their per-example arrays."""
    run_dirs = [study.run_dir(r) for r in study.runs()]
    rows = collect_runs(run_dirs)
    finished = sum(study.is_finished(r) for r in study.runs())
    axes = regime_axes(study)
    examples = {reading: collect_examples(run_dirs, reading) for reading in READINGS} if rows else {}
    return Regime(study.name, str(study.spec_path), _label(axes), axes, rows, examples, len(study.runs()), finished,
                  study.war.modes if study.war else None)


READINGS = {"best_val": "best held-out checkpoint", "final": "final epoch"}


def _verdict_class(verdict: str) -> str:
    """supported / contradicted / inconclusive / mixed / not evaluated, from a claim's verdict text."""
    for word in (SUPPORTED, CONTRADICTED):
        if verdict == word:
            return word
    if verdict.startswith("mixed"):
        return "mixed"
    if verdict.startswith(SUPPORTED):
        return "partly supported"
    if verdict.startswith(CONTRADICTED):
        return "partly contradicted"
    return INCONCLUSIVE if verdict.startswith(INCONCLUSIVE) or verdict == "not exercised" else NOT_EVALUATED


def _direction(low: float, high: float) -> str:
    if math.isnan(low):
        return "no interval"
    return "rises" if low > 0 else ("falls" if high < 0 else "inconclusive")


def _source(rows: list[dict[str, Any]], examples: dict[str, Any], reading: str) -> tuple[str, list[str]]:
    """Where a reading's numbers come from, and notes on what is missing."""
    runs = sorted({r["run"] for r in rows})
    with_arrays = [run for run in runs if "test" in examples.get(run, {})]
    files = f"eval/{reading}_test.npz"
    if len(with_arrays) == len(runs):
        return f"per-example arrays ({files}) of all {len(runs)} runs", []
    missing = sorted(set(runs) - set(with_arrays))
    what = "the last epoch's test metrics" if reading == "final" else "the selected epoch's test metrics"
    return (f"{what} from summary.json for {len(missing)} of {len(runs)} runs (no {files}; seed spread only), "
            f"per-example arrays for the rest",
            [f"{len(missing)} of {len(runs)} grid runs have no {files} (e.g. {missing[0]}): their comparisons use "
             f"summary.json's test metrics and the seed spread only (runs from before per-example arrays, or "
             f"interrupted)"])


def _reading(regime: Regime, reading: str) -> dict[str, Any] | None:
    all_rows = [r for r in regime.rows if r["selection"] == reading]
    rows = grid_rows(regime.rows, reading)
    if not rows:
        return None
    examples = regime.examples.get(reading, {})
    # pairing by example needs every run of a comparison to have arrays: use them only if all do
    complete = all("test" in examples.get(r["run"], {}) for r in all_rows)
    source, notes = _source(rows, examples, reading)
    use = examples if complete else None
    out: dict[str, Any] = {"reading": reading, "source": source, "notes": notes, "slopes": []}
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = select(rows, lam=lam)
        widths = sorted({r["width"] for r in at_lam})
        if len(widths) < 2:
            continue
        for metric in METRICS:
            if any(r.get(f"test_{metric}") is None for r in at_lam):
                continue
            iv = width_slope(at_lam, metric, use)
            out["slopes"].append({"lam": lam, "metric": metric, "widths": widths, "estimate": iv.estimate,
                                  "low": iv.low, "high": iv.high, "se": iv.se, "se_seed": iv.se_seed,
                                  "se_test": iv.se_test, "df": iv.df, "seeds": iv.seeds, "examples": iv.examples,
                                  "p": iv.p_value, "direction": _direction(iv.low, iv.high),
                                  "paper": PAPER_DIRECTION[metric], "text": iv.describe()})
    for metric in METRICS:
        if any(r.get(f"test_{metric}") is None for r in rows):
            out["notes"].append(f"no {metric} in {sum(r.get(f'test_{metric}') is None for r in rows)} of {len(rows)} "
                                f"runs: its slopes and claim are not evaluated")
    claims: list[Claim] = evaluate_claims(regime.rows, examples=use, war_modes=regime.war_modes, selection=reading)
    out["claims"] = [{**c.to_dict(), "class": _verdict_class(c.verdict)} for c in claims]
    out["split"] = stability_split_table(rows, use)
    out["margins"] = margin_slopes(rows, use)
    if out["margins"]["missing"]:
        out["notes"].append(f"no per-image clean_margin and Lipschitz arrays for {len(out['margins']['missing'])} runs "
                            "(runs from before they were recorded, or no arrays): margin vs Lipschitz not computed")
    out["tuned_robust"] = tuned_robust(rows, use)
    return out


def regime_result(regime: Regime) -> dict[str, Any]:
    """Per reading (best held-out checkpoint, final epoch): slopes per λ and metric, verdicts
    per claim, the stability split, margins and tuned-λ robust accuracy (JSON-ready)."""
    out: dict[str, Any] = {"name": regime.name, "spec": regime.spec, "label": regime.label, "axes": regime.axes,
                           "status": regime.status, "runs_finished": regime.runs_finished,
                           "runs_total": regime.runs_total, "readings": {}, "notes": []}
    if not regime.rows:
        out["command"] = f"nt-robust study {regime.spec}"
        return out
    final = [r for r in regime.rows if r["selection"] == "final"]
    out["train_seconds"] = sum(r["train_seconds"] or 0.0 for r in final)
    out["backends"] = sorted({f"{r['devices']} x {r['backend']}" for r in final})
    runs = {r["run"] for r in regime.rows}
    for reading in READINGS:
        have = {r["run"] for r in regime.rows if r["selection"] == reading}
        if have and have != runs:
            out["notes"].append(f"{regime.label}: {len(runs - have)} of {len(runs)} runs have no {READINGS[reading]} "
                                f"record in summary.json (e.g. {sorted(runs - have)[0]}; runs from before it was "
                                f"stored, or interrupted): that reading uses the other {len(have)}")
        try:
            result = _reading(regime, reading)
        except ValueError as error:   # arrays that contradict their summary, other images, …
            out["notes"].append(f"{regime.label} ({READINGS[reading]}): not judged: {error}")
            continue
        if result is None:
            out["notes"].append(f"{regime.label}: no {READINGS[reading]} in any run's summary.json: that reading is "
                                "missing")
            continue
        out["readings"][reading] = result
        out["notes"] += [f"{regime.label} ({READINGS[reading]}): {n}" for n in result["notes"]]
        out["notes"] += [f"{regime.label} ({READINGS[reading]}), claim {c['number']}: {n}"
                         for c in result["claims"] for n in c["notes"]]
    if len(out["readings"]) == len(READINGS):
        out["overfitting"] = overfitting_json(robust_overfitting(regime.rows, regime.examples.get("best_val"),
                                                                 regime.examples.get("final")))
    return out


def _adjust_across_regimes(results: list[dict[str, Any]]) -> None:
    """Holm across regimes per claim and reading (claim 3: all its tests), and the verdicts
    that follow; BH q-values over every slope of a reading; Holm across regimes of the
    robust-overfitting measurement ("shows in at least one regime" is a union). In place."""
    primaries = [r["overfitting"]["primary"] for r in results if (r.get("overfitting") or {}).get("primary")]
    finite = [o for o in primaries if not math.isnan(o["p"])]
    for o, p in zip(finite, holm([o["p"] for o in finite]) if finite else []):
        o["p_holm_map"] = float(p)
        o["overfitting_map"] = "shows" if p < 0.05 and o["estimate"] > 0 else "not shown"
    for reading in READINGS:
        present = [r["readings"][reading] for r in results if reading in r.get("readings", {})]
        slopes = [s for rd in present for s in rd["slopes"]]
        for s, q in zip(slopes, benjamini_hochberg([s["p"] for s in slopes]) if slopes else []):
            s["q_bh"] = float(q)
        numbers = sorted({c["number"] for rd in present for c in rd["claims"]})
        for number in (n for n in numbers if n != 8):   # claim 8 is two-part (τ and gap): its own rule
            claims = [c for rd in present for c in rd["claims"] if c["number"] == number]
            tests = [t for c in claims for t in c["tests"]]
            adjusted = iter(holm([t["p"] for t in tests]) if tests else [])
            for claim in claims:
                claim["verdict_in_regime"] = claim["verdict"]
                if not claim["tests"]:
                    continue
                for t in claim["tests"]:
                    t["p_holm_map"] = float(next(adjusted))
                objects = [HypothesisTest(t["label"], _Interval(t["estimate"]), t["expect_increase"], t["role"], t["kind"])
                           for t in claim["tests"]]
                claim["verdict"] = decide(number, objects, [t["p_holm_map"] for t in claim["tests"]])
                claim["class"] = _verdict_class(claim["verdict"])


class _Interval:
    """Just the estimate, which :func:`verdicts.decide` reads besides the adjusted p."""

    def __init__(self, estimate: float):
        self.estimate = estimate


ARCH_ORDER = ("MLP", "SmallCNN", "WRN")


def _order(regime: Regime) -> tuple:
    """Architecture family, then training-set size, then epochs: each axis reads top to bottom."""
    axes = regime.axes
    family = next((i for i, a in enumerate(ARCH_ORDER) if axes["arch"].startswith(a)), len(ARCH_ORDER))
    return family, axes["arch"], axes["train_examples"] or math.inf, axes["epochs"]


def build_map(regimes: Sequence[Regime]) -> dict[str, Any]:
    """Every regime's result (ordered by architecture, data size, epochs), plus where and how
    the map was built."""
    info = environment_info()
    results = [regime_result(r) for r in sorted(regimes, key=_order)]
    _adjust_across_regimes(results)
    return {"regimes": results, "primary_tests": primary_tests_hash(), "map_family": MAP_FAMILY_TEXT,
            "readings": READINGS,
            "built_on": {"cpu": describe_cpu(info["cpu"]), "backend": info["backend"],
                         "devices": info["device_count"], "time_utc": info["time_utc"],
                         "jax": info["packages"]["jax"]},
            "slope_unit": "change per doubling of width (least-squares slope against log2 width)",
            "interval": "95%, over seeds and test images: √(t²_{n−1}·V_seed + z²·V_test) "
                        "(nt_robust/studies/uncertainty.py)"}


def write_map(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """map.json, the figures and map.md in ``out_dir``; returns the paths. A map.json
    already there, judged under other primary tests, puts a note in the new one."""
    from nt_robust.studies.map_figures import plot_claims, plot_slopes
    from nt_robust.studies.map_report import declaration_note, render_map

    out_dir = Path(out_dir)
    old = storage.read_json(out_dir / "map.json") if (out_dir / "map.json").exists() else None
    note = declaration_note(old, result)
    if note:
        result["declaration_note"] = note
    figures = []
    if any(rd["slopes"] for r in result["regimes"] for rd in readings_of(r).values()):
        figures += plot_slopes(result, out_dir / "slopes")
        figures += plot_claims(result, out_dir / "claims")
    storage.write_json(out_dir / "map.json", result)
    storage.write_text(out_dir / "map.md", render_map(result, figures, out_dir))
    return [out_dir / "map.json", out_dir / "map.md", *figures]

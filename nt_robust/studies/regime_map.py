"""The regime map: where each of the paper's claims holds, across any set of studies::

    regimes = [load_regime(load_study(spec)) for spec in ("experiments/regime_mlp_n1000.toml", ...)]
    result = build_map(regimes)                  # slopes vs log width and verdicts, per regime and λ
    paths = write_map(result, Path("figures/regime_map"))   # map.json, map.md, slopes.png/pdf, claims.png/pdf

(``nt-robust map experiments/regime_*.toml`` does all of it.) A *regime* is one study: an
architecture, a training-set size, a training length, the rest shared. For each regime and
λ the map gives the least-squares slope of natural accuracy, robust accuracy, perturbation
stability and local Lipschitzness against log2 width (the change per doubling of width),
with the 95% interval over seeds and test images of :func:`analysis.width_slope`, and each
claim's verdict from :func:`analysis.evaluate_claims`, the same rules as the study report
(docs/paper.md §7: narrowest vs widest width). Only finished runs count; a regime with
unfinished runs is drawn from what has finished and marked partial, and one with none is
listed with the command that runs it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

from nt_robust import io
from nt_robust.environment import describe_cpu, environment_info
from nt_robust.studies.aggregate import METRICS, collect_examples, collect_runs
from nt_robust.studies.analysis import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, Claim,
                                        evaluate_claims, grid_rows, select, width_slope)
from nt_robust.studies.sweep import Study
from nt_robust.studies.tables import format_table

# For each metric, the direction the paper predicts with width at fixed λ (claims 1, 2, 4;
# robust accuracy: claim 3 says it does not rise much, so no direction is predicted).
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
    examples: dict[str, Any]
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
    return Regime(study.name, str(study.spec_path), _label(axes), axes, rows,
                  collect_examples(run_dirs) if rows else {}, len(study.runs()), finished,
                  study.war.modes if study.war else None)


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
    return INCONCLUSIVE if verdict == INCONCLUSIVE else NOT_EVALUATED


def _direction(low: float, high: float) -> str:
    if math.isnan(low):
        return "no interval"
    return "rises" if low > 0 else ("falls" if high < 0 else "inconclusive")


def regime_result(regime: Regime) -> dict[str, Any]:
    """Slopes per λ and metric, and verdicts per claim, of one regime (JSON-ready)."""
    out: dict[str, Any] = {"name": regime.name, "spec": regime.spec, "label": regime.label, "axes": regime.axes,
                           "status": regime.status, "runs_finished": regime.runs_finished,
                           "runs_total": regime.runs_total, "slopes": [], "claims": []}
    if not regime.rows:
        out["command"] = f"nt-robust study {regime.spec}"
        return out
    rows = grid_rows(regime.rows)
    final = [r for r in regime.rows if r["selection"] == "final"]
    out["train_seconds"] = sum(r["train_seconds"] or 0.0 for r in final)
    out["backends"] = sorted({f"{r['devices']} x {r['backend']}" for r in final})
    for lam in sorted({r["lam"] for r in rows}):
        at_lam = select(rows, lam=lam)
        widths = sorted({r["width"] for r in at_lam})
        if len(widths) < 2:
            continue
        for metric in METRICS:
            if any(r.get(f"test_{metric}") is None for r in at_lam):
                continue
            iv = width_slope(at_lam, metric, regime.examples)
            out["slopes"].append({"lam": lam, "metric": metric, "widths": widths, "estimate": iv.estimate,
                                  "low": iv.low, "high": iv.high, "se": iv.se, "df": iv.df, "seeds": iv.seeds,
                                  "examples": iv.examples, "direction": _direction(iv.low, iv.high),
                                  "paper": PAPER_DIRECTION[metric], "text": iv.describe()})
    claims: list[Claim] = evaluate_claims(regime.rows, examples=regime.examples, war_modes=regime.war_modes)
    out["claims"] = [{"number": c.number, "text": c.text, "verdict": c.verdict,
                      "class": _verdict_class(c.verdict), "evidence": c.evidence} for c in claims]
    return out


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
    return {"regimes": [regime_result(r) for r in sorted(regimes, key=_order)],
            "built_on": {"cpu": describe_cpu(info["cpu"]), "backend": info["backend"],
                         "devices": info["device_count"], "time_utc": info["time_utc"],
                         "jax": info["packages"]["jax"]},
            "slope_unit": "change per doubling of width (least-squares slope against log2 width)",
            "interval": "95%, over seeds and test images (nt_robust/studies/uncertainty.py)"}


def render_map(result: dict[str, Any], figures: Sequence[Path], out_dir: Path) -> str:
    """map.md: what was covered, the claims grid and the slopes, as tables."""
    import os

    regimes = result["regimes"]
    built = result["built_on"]
    lines = ["# Regime map: where the paper's claims hold", "",
             f"Built by `nt-robust map` on {built['devices']} {built['backend']} device(s), CPU {built['cpu']}, "
             f"jax {built['jax']} ({built['time_utc']}). Slopes: {result['slope_unit']}; intervals "
             f"{result['interval']}. Verdicts: the study report's rules (docs/paper.md §7).", "",
             "## Coverage", ""]
    lines.append(format_table(
        ["regime", "spec", "status", "runs", "widths", "λ", "train time (min)"],
        [[r["label"], r["spec"], r["status"], f"{r['runs_finished']}/{r['runs_total']}",
          ", ".join(map(str, r["axes"]["widths"])), ", ".join(f"{x:g}" for x in r["axes"]["lams"]),
          f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else "-"] for r in regimes]))
    missing = [r for r in regimes if r["status"] != "complete"]
    if missing:
        lines += ["", "Not finished: " + "; ".join(f"`nt-robust study {r['spec']}`" for r in missing)
                  + " (finished runs are skipped)."]
    ran = [r for r in regimes if r["claims"]]
    if ran:
        lines += ["", "## Claims per regime", ""]
        numbers = sorted({c["number"] for r in ran for c in r["claims"]})
        lines.append(format_table(["claim"] + [r["label"] for r in ran],
                                  [[n] + [next((c["verdict"] for c in r["claims"] if c["number"] == n), "-")
                                          for r in ran] for n in numbers]))
        lines += ["", "## Slopes against log2 width (per doubling), 95% intervals", ""]
        table = []
        for r in ran:
            for s in r["slopes"]:
                table.append([r["label"], f"{s['lam']:g}", s["metric"], f"{s['estimate']:+.4f}",
                              f"[{s['low']:+.4f}, {s['high']:+.4f}]", s["direction"], s["paper"] or "-"])
        lines.append(format_table(["regime", "λ", "metric", "slope", "95% interval", "measured", "paper"], table))
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({os.path.relpath(p, out_dir)})" for p in pngs]
    return "\n".join(lines) + "\n"


def write_map(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """map.json, the figures and map.md in ``out_dir``; returns the paths."""
    from nt_robust.studies.map_figures import plot_claims, plot_slopes

    out_dir = Path(out_dir)
    figures = []
    if any(r["slopes"] for r in result["regimes"]):
        figures += plot_slopes(result, out_dir / "slopes")
        figures += plot_claims(result, out_dir / "claims")
    io.write_json(out_dir / "map.json", result)
    io.write_text(out_dir / "map.md", render_map(result, figures, out_dir))
    return [out_dir / "map.json", out_dir / "map.md", *figures]

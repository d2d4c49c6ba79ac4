"""The regime map as Markdown (map.md) and as the generated block of docs/results.md::

    text = render_map(result, figures, out_dir)      # map.md
    block = render_results_block(result)             # the claim table, from map.json alone
    new_doc = replace_block(doc_text, block)         # between the BEGIN/END markers
    note = declaration_note(old_result, result)      # "primary tests changed …" or None

``result`` is :func:`nt_robust.studies.regime_map.build_map`'s dictionary, or map.json read
back (also one from before issue 33: then only the best held-out reading exists, judged
under the old per-λ rules, and the text says so).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from nt_robust.studies.tables import format_table

BEGIN = "<!-- BEGIN generated from figures/regime_map/map.json by `nt-robust map --results-doc`; do not edit -->"
END = "<!-- END generated -->"
READING_NAMES = {"best_val": "best held-out", "final": "final epoch"}


def readings_of(regime: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A regime's readings from map.json; a map from before readings existed has only the
    best held-out checkpoint, at the top level."""
    if "readings" in regime:
        return regime["readings"]
    if regime.get("claims") or regime.get("slopes"):
        return {"best_val": {"reading": "best_val", "slopes": regime.get("slopes", []),
                             "claims": regime.get("claims", []), "source": "map.json from before issue 33",
                             "notes": []}}
    return {}


def _num(x: Any, fmt: str = "+.4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def declaration_note(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """A note when the primary tests (docs/paper.md §9) differ from those the earlier
    results in the same place were judged with (``old``: the previous map.json)."""
    if old is None:
        return None
    before, now = old.get("primary_tests"), new.get("primary_tests")
    if before == now:
        return old.get("declaration_note")   # keep saying it once it was said
    if before is None:
        return (f"The primary tests (docs/paper.md §9, hash {now}) were declared after the earlier map in this "
                f"directory was built (built {old.get('built_on', {}).get('time_utc', '?')} under the per-λ rules, "
                "with no declared primary tests): these runs existed before their tests were declared.")
    return (f"The primary tests changed after results existed: the earlier map here was judged with declaration "
            f"{before}, this one with {now} (docs/paper.md §9).")


def _claims_table(regimes: list[dict[str, Any]]) -> str:
    numbers = sorted({c["number"] for r in regimes for rd in readings_of(r).values() for c in rd["claims"]})
    header = ["claim"] + [f"{r['label']}: best / final" for r in regimes]
    rows = []
    for n in numbers:
        row = [n]
        for r in regimes:
            readings = readings_of(r)
            cells = []
            for reading in ("best_val", "final"):
                claim = next((c for c in readings.get(reading, {}).get("claims", []) if c["number"] == n), None)
                cells.append(claim["verdict"] if claim else "-")
            row.append(" / ".join(cells))
        rows.append(row)
    return format_table(header, rows)


def render_results_block(result: dict[str, Any]) -> str:
    """The claim table of docs/results.md, from map.json alone (what `--results-doc` writes
    between the markers)."""
    regimes = [r for r in result["regimes"] if readings_of(r)]
    lines = [BEGIN, ""]
    if result.get("primary_tests"):
        lines.append(f"Verdicts: {result.get('map_family', '')}; primary tests: docs/paper.md §9 "
                     f"(declaration {result['primary_tests']}). Each cell: best held-out checkpoint / final epoch.")
    else:
        lines.append("This map.json predates issue 33: verdicts under the old per-λ rules (Satterthwaite df, "
                     "no correction across λ or regimes), best held-out checkpoint only; '-' where a reading "
                     "was not recorded.")
    if result.get("declaration_note"):
        lines += ["", result["declaration_note"]]
    lines += ["", _claims_table(regimes), "", END]
    return "\n".join(lines)


def replace_block(doc: str, block: str) -> str:
    """``doc`` with the text between :data:`BEGIN` and :data:`END` (markers included)
    replaced by ``block``; a doc without the markers is refused."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no generated block: add the two lines\n{BEGIN}\n{END}\nwhere it goes")
    return doc[:start] + block + doc[end + len(END):]


def render_map(result: dict[str, Any], figures: Sequence[Path], out_dir: Path) -> str:
    """map.md: coverage, what is missing, verdicts (best / final), primary tests, slopes with
    BH q-values, stability split, margins, tuned-λ robust accuracy, figures."""
    regimes = result["regimes"]
    built = result["built_on"]
    lines = ["# Regime map: where the paper's claims hold", "",
             f"Built by `nt-robust map` on {built['devices']} {built['backend']} device(s), CPU {built['cpu']}, "
             f"jax {built['jax']} ({built['time_utc']}). Slopes: {result['slope_unit']}; intervals "
             f"{result['interval']}. {result.get('map_family', '')}; primary tests: docs/paper.md §9 (declaration "
             f"{result.get('primary_tests', 'none')}).", ""]
    if result.get("declaration_note"):
        lines += [f"**{result['declaration_note']}**", ""]
    lines += ["## Coverage", ""]
    lines.append(format_table(
        ["regime", "spec", "status", "runs", "widths", "λ", "train time (min)"],
        [[r["label"], r["spec"], r["status"], f"{r['runs_finished']}/{r['runs_total']}",
          ", ".join(map(str, r["axes"]["widths"])), ", ".join(f"{x:g}" for x in r["axes"]["lams"]),
          f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else "-"] for r in regimes]))
    missing = [r for r in regimes if r["status"] != "complete"]
    if missing:
        lines += ["", "Not finished: " + "; ".join(f"`nt-robust study {r['spec']}`" for r in missing)
                  + " (finished runs are skipped)."]
    notes = [n for r in regimes for n in r.get("notes", [])]
    if notes:
        lines += ["", "## What is missing or flagged", ""] + [f"- {n}" for n in notes]
    ran = [r for r in regimes if readings_of(r)]
    if ran:
        lines += ["", "## Claims per regime (best held-out checkpoint / final epoch)", "", _claims_table(ran), "",
                  "Sources: " + "; ".join(f"{r['label']} {READING_NAMES[k]}: {rd.get('source', '-')}"
                                          for r in ran for k, rd in readings_of(r).items()) + "."]
        lines += ["", "## Primary tests", ""]
        table = []
        for r in ran:
            for reading, rd in readings_of(r).items():
                for c in rd["claims"]:
                    for t in c.get("tests", []):
                        table.append([r["label"], READING_NAMES[reading], c["number"], t["label"],
                                      f"{_num(t['estimate'])} [{_num(t['low'])}, {_num(t['high'])}]", _p(t["p"]),
                                      _p(t.get("p_holm_map")), c["verdict"]])
        lines.append(format_table(["regime", "reading", "claim", "test", "estimate [95%]", "p", "Holm (map)",
                                   "verdict"], table) if table else "No primary tests (a map from before issue 33).")
        lines += ["", "## Slopes against log2 width (per doubling): best held-out | final epoch", ""]
        table = []
        for r in ran:
            readings = readings_of(r)
            keys = [(s["lam"], s["metric"]) for s in readings.get("best_val", readings.get("final", {})).get("slopes", [])]
            for lam, metric in keys:
                row = [r["label"], f"{lam:g}", metric]
                for reading in ("best_val", "final"):
                    s = next((s for s in readings.get(reading, {}).get("slopes", [])
                              if s["lam"] == lam and s["metric"] == metric), None)
                    row += ([f"{s['estimate']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]", _p(s.get("q_bh"))]
                            if s else ["-", "-"])
                row.append(PAPER(metric, readings))
                table.append(row)
        lines.append(format_table(["regime", "λ", "metric", "best: slope [95%]", "best: q (BH)", "final: slope [95%]",
                                   "final: q (BH)", "paper"], table))
        lines += _extras(ran)
        lines += _overfitting(ran)
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({os.path.relpath(p, out_dir)})" for p in pngs]
    return "\n".join(lines) + "\n"


def PAPER(metric: str, readings: dict[str, Any]) -> str:  # noqa: N802 (a column, not a function to the reader)
    for rd in readings.values():
        for s in rd.get("slopes", []):
            if s["metric"] == metric:
                return s.get("paper") or "-"
    return "-"


def _overfitting(regimes: list[dict[str, Any]]) -> list[str]:
    """Best held-out minus final-epoch robust accuracy at each regime's widest width
    (docs/paper.md §9.1), Holm across the regimes."""
    rows = []
    for r in regimes:
        o = (r.get("overfitting") or {}).get("primary")
        if o:
            cells = [c for c in r["overfitting"]["cells"] if c["width"] == o["width"]]
            best_epoch = _mean([c["best_epoch_mean"] for c in cells])
            fit = r["overfitting"].get("widest_fit") or []
            train = _mean([f["train_accuracy"] for f in fit if f["train_accuracy"] is not None])
            natural = _mean([f["test_natural"] for f in fit])
            rows.append([r["label"], o["width"], o["n_seeds"], f"{_num(o['estimate'])} [{_num(o['low'])}, "
                         f"{_num(o['high'])}]", _p(o["p"]), _p(o.get("p_holm_map")),
                         o.get("overfitting_map", o["overfitting"]),
                         "-" if best_epoch is None else f"{best_epoch:.0f} of {r['axes']['epochs']}",
                         "-" if train is None or natural is None else f"{train:.3f} / {natural:.3f}"])
    if not rows:
        return []
    return ["", "## Robust overfitting: best held-out minus final epoch (docs/paper.md §9.1)", "",
            "Test robust accuracy at the best held-out checkpoint minus at the final epoch, at the regime's widest "
            "width, mean over its λ, paired by seed and test image; Holm across the regimes. Every (width, λ) "
            "cell is in map.json and each study's report. Beside it, means over λ at the widest width: the epoch of "
            "the best held-out checkpoint, and at the final epoch the clean training accuracy (its last epoch's "
            "batches) against the natural test accuracy: a model that has not fitted its training set has little "
            "to overfit.", "",
            format_table(["regime", "widest width", "seeds", "best − final [95%]", "p", "Holm (map)", "overfitting",
                          "best epoch", "final: train / test natural"], rows)]


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _extras(regimes: list[dict[str, Any]]) -> list[str]:
    """Stability split, margins and tuned-λ robust accuracy, where recorded."""
    lines: list[str] = []
    split, margins, tuned = [], [], []
    for r in regimes:
        for reading, rd in readings_of(r).items():
            name = READING_NAMES[reading]
            for s in rd.get("split", {}).get("slopes", []):
                split.append([r["label"], name, f"{s['lam']:g}", s["quantity"].replace("_", " "),
                              f"{_num(s['estimate'])} [{_num(s['low'])}, {_num(s['high'])}]"])
            for m in rd.get("margins", {}).get("per_lam", []):
                cm, lip = m["clean_margin"], m["lipschitz_mean"]
                margins.append([r["label"], name, f"{m['lam']:g}",
                                f"{_num(cm['estimate'])} [{_num(cm['low'])}, {_num(cm['high'])}]",
                                f"{_num(cm['relative'], '+.1%')}",
                                f"{_num(lip['estimate'])} [{_num(lip['low'])}, {_num(lip['high'])}]",
                                f"{_num(lip['relative'], '+.1%')}"])
            t = rd.get("tuned_robust") or {}
            if t.get("slope"):
                cells = ", ".join(f"{c['width']} (λ {c['lam']:g}): {c['robust']:.3f}" for c in t["cells"])
                s = t["slope"]
                tuned.append([r["label"], name, cells, f"{_num(s['estimate'])} [{_num(s['low'])}, {_num(s['high'])}]"])
    if split:
        lines += ["", "## Stability split by correctness: width slopes per doubling (seed spread only)", "",
                  format_table(["regime", "reading", "λ", "quantity", "slope [95%]"], split)]
    if margins:
        lines += ["", "## Clean logit margin vs local Lipschitzness: width slopes per doubling (and relative to "
                  "their mean)", "", format_table(["regime", "reading", "λ", "margin slope", "relative",
                                                   "Lipschitz slope", "relative"], margins)]
    if tuned:
        lines += ["", "## Robust accuracy at each width's own best λ (validation), against width", "",
                  format_table(["regime", "reading", "width (λ*): robust", "slope per doubling [95%] (λ choice "
                                "ignored)"], tuned)]
    return lines

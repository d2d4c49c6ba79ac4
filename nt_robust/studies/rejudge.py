"""Re-judge committed verdicts under the issue-33 rules when the runs are gone::

    python -m nt_robust.studies.rejudge figures/quick_fmnist/report.md figures/regime_map/map.json

The runs' per-example arrays are not committed, but every interval the old reports printed
carries its estimate and the two parts of its standard error ("SE 0.0079 = seeds 0.0062 ⊕
test points 0.0048"), to four decimals. From those:

* each stored comparison gets the new interval √(t²_{n−1}·V_seed + z²·V_test) and its p-value
  (:mod:`nt_robust.studies.uncertainty`); per-λ comparisons are secondary, Holm over λ;
* the primary test of claims 1–4 (an average over λ, docs/paper.md §9) needs the covariance
  between λ, which the text does not hold. By Cauchy–Schwarz the standard deviation of a sum
  is at most the sum of the standard deviations, so Σ|w|·SE_seed and Σ|w|·SE_test bound the
  parts of the average's SE: an interval from the bounds is conservative. A verdict it
  excludes zero for stands; "inconclusive (bound)" may be the bound's doing. Claim 3's step
  tests are not in the stored text, so its family here is the g term alone.
* Old reports compare the narrowest with the widest width (not the slope): their primary
  here is the λ-averaged narrowest-to-widest difference, the map's the λ-averaged slope.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Sequence

from nt_robust import storage
from nt_robust.studies.uncertainty import _half_width, benjamini_hochberg, holm, interval_p_value

NUMBER = r"([+-]?\d+\.\d+)"
DESCRIBED = re.compile(NUMBER + r" \[" + NUMBER + r", " + NUMBER + r"\] \((\d+) seeds × (\d+) test images; SE "
                       r"(\d+\.\d+) = seeds (\d+\.\d+)(?: \(t, [\d.]+ df\))? ⊕ test points (\d+\.\d+)")


def parse(text: str) -> dict[str, float] | None:
    """The first stored interval in ``text``: estimate, old low/high, seeds, se_seed, se_test."""
    m = DESCRIBED.search(text)
    if not m:
        return None
    est, low, high, n, _, _, ss, st = m.groups()
    return {"estimate": float(est), "old_low": float(low), "old_high": float(high), "seeds": int(n),
            "se_seed": float(ss), "se_test": float(st)}


def rejudge(parts: Sequence[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """New interval and p of Σ w·(stored comparison); with more than one part the SE parts
    are the Cauchy–Schwarz bounds Σ|w|·SE (module docstring)."""
    est = sum(w * p["estimate"] for w, p in parts)
    ss = sum(abs(w) * p["se_seed"] for w, p in parts)
    st = sum(abs(w) * p["se_test"] for w, p in parts)
    df = min(p["seeds"] for _, p in parts) - 1
    half = _half_width(ss ** 2, st ** 2, df, 0.95)
    return {"estimate": est, "low": est - half, "high": est + half,
            "p": interval_p_value(est, ss ** 2, st ** 2, df), "bound": len(parts) > 1}


def _verdict(r: dict[str, float], up: bool, p: float | None = None) -> str:
    p = r["p"] if p is None else p
    if p >= 0.05:
        return "inconclusive (bound)" if r.get("bound") else "inconclusive"
    return "supported" if (r["estimate"] > 0) == up else "contradicted"


CLAIMS = {1: ("natural", True), 2: ("stability", False), 3: ("robust − ½·natural", False), 4: ("Lipschitz", True)}


def from_report(path: Path) -> dict[int, dict[str, Any]]:
    """Claims 1–6 of an old study report.md, re-judged."""
    blocks = re.split(r"\n\*\*(\d)\. ", path.read_text())
    out: dict[int, dict[str, Any]] = {}
    for number, body in zip(blocks[1::2], blocks[2::2]):
        number = int(number)
        lines = [line for line in body.splitlines() if line.startswith("- ")]
        if number in CLAIMS:
            key = "robust − ½·natural " if number == 3 else "width "
            per_lam = []
            for line in lines:
                lam = re.match(r"- λ=([\d.]+):", line)
                stored = parse(line.split(key, 1)[1]) if lam and key in line else None
                if stored:
                    per_lam.append((float(lam.group(1)), stored))
            if per_lam:
                out[number] = _judge(number, per_lam)
        elif number in (5, 6):
            stored = next((parse(line) for line in lines if parse(line)), None)
            if stored:
                r = rejudge([(1.0, stored)])
                out[number] = {"primary": r, "verdict": _verdict(r, True), "secondary": []}
    return out


def _judge(number: int, per_lam: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    up = CLAIMS[number][1]
    secondary = [(lam, rejudge([(1.0, p)])) for lam, p in per_lam]
    adjusted = holm([r["p"] for _, r in secondary])
    primary = rejudge([(1.0 / len(per_lam), p) for _, p in per_lam])
    return {"primary": primary, "verdict": _verdict(primary, up),
            "secondary": [(lam, r, float(a), _verdict(r, up, a)) for (lam, r), a in zip(secondary, adjusted)]}


def from_map(path: Path) -> dict[str, Any]:
    """Claims 1–5 of an old map.json, re-judged per regime; Holm across regimes for the
    primaries, BH over every slope."""
    result = storage.read_json(path)
    regimes, slopes = {}, []
    metric_of = {1: "natural_accuracy", 2: "perturbation_stability", 4: "lipschitz_mean"}
    for regime in result["regimes"]:
        stored = {(s["metric"], s["lam"]): parse(s["text"]) for s in regime.get("slopes", [])}
        slopes += [(regime["label"], k, rejudge([(1.0, v)])) for k, v in stored.items() if v]
        claims: dict[int, dict[str, Any]] = {}
        lams = sorted({lam for _, lam in stored})
        for number, metric in metric_of.items():
            per_lam = [(lam, stored[(metric, lam)]) for lam in lams if stored.get((metric, lam))]
            if per_lam:
                claims[number] = _judge(number, per_lam)
        g_parts = [(w / len(lams), stored[(m, lam)]) for lam in lams for m, w in
                   (("robust_accuracy", 1.0), ("natural_accuracy", -0.5))
                   if stored.get(("robust_accuracy", lam)) and stored.get(("natural_accuracy", lam))]
        if g_parts:
            primary = rejudge(g_parts)
            claims[3] = {"primary": primary, "verdict": _verdict(primary, False), "secondary": []}
        claim5 = next((c for c in regime.get("claims", []) if c["number"] == 5), None)
        five = parse(claim5["evidence"][0]) if claim5 and claim5["evidence"] else None
        if five:
            r = rejudge([(1.0, five)])
            claims[5] = {"primary": r, "verdict": _verdict(r, True), "secondary": []}
        regimes[regime["label"]] = {"old": {c["number"]: c["verdict"] for c in regime.get("claims", [])},
                                    "claims": claims}
    for number in range(1, 6):
        labels = [label for label, r in regimes.items() if number in r["claims"]]
        adjusted = holm([regimes[label]["claims"][number]["primary"]["p"] for label in labels])
        for label, p in zip(labels, adjusted):
            claim = regimes[label]["claims"][number]
            claim["p_holm_map"] = float(p)
            claim["verdict_map"] = _verdict(claim["primary"], number not in (2, 3), float(p))
    q = benjamini_hochberg([r["p"] for _, _, r in slopes])
    return {"regimes": regimes, "slopes": [(label, key, r, float(qq)) for (label, key, r), qq in zip(slopes, q)]}


def _iv(r: dict[str, float]) -> str:
    return f"{r['estimate']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]"


def render(paths: Sequence[Path]) -> str:
    """Markdown tables of the re-judged verdicts of old reports and maps."""
    lines = []
    for path in paths:
        path = Path(path)
        if path.suffix == ".json":
            out = from_map(path)
            lines += [f"### {path}", "", "| regime | claim | old verdict | primary (λ-averaged slope; bound) | p | "
                      "Holm across regimes | new verdict |", "|---|---|---|---|---|---|---|"]
            for label, r in out["regimes"].items():
                for number, c in sorted(r["claims"].items()):
                    lines.append(f"| {label} | {number} | {r['old'].get(number, '-')} | {_iv(c['primary'])} | "
                                 f"{c['primary']['p']:.2g} | {c['p_holm_map']:.2g} | {c['verdict_map']} |")
            survivors = [(label, key, r, q) for label, key, r, q in out["slopes"] if q < 0.05]
            lines += ["", f"{len(survivors)} of {len(out['slopes'])} slopes have a BH q below 0.05; by metric: "
                      + ", ".join(f"{m}: {sum(1 for _, k, r, _ in survivors if k[0] == m)} "
                                  f"({sum(1 for _, k, r, _ in survivors if k[0] == m and r['estimate'] > 0)} rising)"
                                  for m in ("natural_accuracy", "robust_accuracy", "perturbation_stability",
                                            "lipschitz_mean")), ""]
        else:
            out = from_report(path)
            lines += [f"### {path}", "", "| claim | primary (λ-averaged; bound) | p | new verdict | per λ, Holm over λ |",
                      "|---|---|---|---|---|"]
            for number, c in sorted(out.items()):
                per_lam = "; ".join(f"λ={lam:g}: {_iv(r)} p_Holm {a:.2g} → {v}" for lam, r, a, v in c["secondary"])
                lines.append(f"| {number} | {_iv(c['primary'])} | {c['primary']['p']:.2g} | {c['verdict']} | "
                             f"{per_lam or '-'} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render([Path(p) for p in sys.argv[1:]]))

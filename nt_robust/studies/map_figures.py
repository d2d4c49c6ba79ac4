"""The regime map's figures (:mod:`nt_robust.studies.regime_map`), in the study figures' style::

    plot_slopes(result, Path("figures/regime_map/slopes"))   # slope per doubling of width, with intervals
    plot_claims(result, Path("figures/regime_map/claims"))   # verdict of each claim per regime

Both draw the best held-out checkpoint and the final epoch side by side (circles and
squares; two panels of verdicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nt_robust.studies.aggregate import METRICS  # noqa: E402
from nt_robust.studies.figures import METRIC_LABELS, STYLE, _colors, _save  # noqa: E402
from nt_robust.studies.map_report import readings_of  # noqa: E402

VERDICT_COLORS = {"supported": "#2e7d32", "partly supported": "#a5d6a7", "contradicted": "#c62828",
                  "partly contradicted": "#ef9a9a", "mixed": "#ffcc80", "inconclusive": "#e0e0e0",
                  "not evaluated": "#ffffff"}
CLAIM_NAMES = {1: "1 natural ↑ width", 2: "2 stability ↓ width", 3: "3 robust ↑ little", 4: "4 Lipschitz ↑ width",
               5: "5 stability ↑ λ", 6: "6 best λ ↑ width", 7: "7 WAR reaches tuned", 8: "8 attacks agree"}
SHORT = {"supported": "S", "partly supported": "s", "contradicted": "C", "partly contradicted": "c",
         "mixed": "M", "inconclusive": "?", "not evaluated": "–"}


MARKERS = {"best_val": "o", "final": "s"}
READING_TITLES = {"best_val": "best held-out checkpoint", "final": "final epoch"}


def plot_slopes(result: dict[str, Any], stem: Path) -> list[Path]:
    """One panel per metric: each regime's slope against log2 width (per doubling) at every
    λ, with its 95% interval, at the best held-out checkpoint (circles) and the final epoch
    (squares); the paper's predicted direction in the panel's title."""
    regimes = [r for r in result["regimes"] if any(rd["slopes"] for rd in readings_of(r).values())]
    entries = [(reading, s) for r in regimes for reading, rd in readings_of(r).items() for s in rd["slopes"]]
    lams = sorted({s["lam"] for _, s in entries})
    readings = [k for k in MARKERS if any(reading == k for reading, _ in entries)]
    colors = dict(zip(lams, _colors(len(lams))))
    slots = [(lam, reading) for lam in lams for reading in readings]
    labelled: set = set()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 0.7 * len(regimes) + 2.4),
                                 sharey=True)
        for ax, metric in zip(axes, METRICS):
            for i, regime in enumerate(regimes):
                for j, (lam, reading) in enumerate(slots):
                    s = next((s for s in readings_of(regime).get(reading, {}).get("slopes", [])
                              if s["metric"] == metric and s["lam"] == lam), None)
                    if s is None:
                        continue
                    y = i + (j - (len(slots) - 1) / 2) * 0.8 / max(1, len(slots))
                    has_interval = np.isfinite(s["low"])
                    xerr = [[s["estimate"] - s["low"]], [s["high"] - s["estimate"]]] if has_interval else None
                    label = None if (lam, reading) in labelled else f"λ={lam:g}, {READING_TITLES[reading]}"
                    labelled.add((lam, reading))
                    ax.errorbar(s["estimate"], y, xerr=xerr, fmt=MARKERS[reading], color=colors[lam], capsize=2,
                                ms=4, label=label,
                                mfc=colors[lam] if has_interval and s["direction"] != "inconclusive" else "white")
            ax.axvline(0.0, color="black", lw=0.8)
            paper = {"rises": "paper: rises", "falls": "paper: falls", None: "paper: rises little"}
            ax.set_title(f"{METRIC_LABELS[metric]}\n({paper[_paper(metric, regimes)]})")
            ax.set_xlabel("slope per doubling of width")
        axes[0].set_yticks(range(len(regimes)), [r["label"] for r in regimes])
        axes[0].invert_yaxis()
        handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
        names = [n for ax in axes for n in ax.get_legend_handles_labels()[1]]
        axes[-1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
        fig.text(0.5, -0.06, "Least-squares slope against log2 width at each λ, with its 95% interval over seeds × "
                 "test images; circles: best held-out checkpoint, squares: final epoch; filled: the interval "
                 "excludes 0", ha="center", va="top")
        return _save(fig, stem)


def _paper(metric: str, regimes: list[dict[str, Any]]) -> str | None:
    return next((s["paper"] for r in regimes for rd in readings_of(r).values() for s in rd["slopes"]
                 if s["metric"] == metric), None)


def plot_claims(result: dict[str, Any], stem: Path) -> list[Path]:
    """Two grids side by side (best held-out checkpoint, final epoch): regimes × claims,
    coloured by verdict (S supported, C contradicted, lower case at some λ or widths only
    (old maps), M mixed, ? inconclusive, – not evaluated)."""
    regimes = [r for r in result["regimes"] if readings_of(r)]
    readings = [k for k in MARKERS if any(k in readings_of(r) for r in regimes)]
    numbers = sorted({c["number"] for r in regimes for rd in readings_of(r).values() for c in rd["claims"]})
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(1, len(readings), figsize=((0.75 * len(numbers) + 1.0) * len(readings) + 3.0,
                                                            0.45 * len(regimes) + 1.6), squeeze=False)
        for ax, reading in zip(axes[0], readings):
            for i, regime in enumerate(regimes):
                claims = readings_of(regime).get(reading, {}).get("claims", [])
                for j, number in enumerate(numbers):
                    claim = next((c for c in claims if c["number"] == number), None)
                    klass = claim["class"] if claim else "not evaluated"
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=VERDICT_COLORS[klass],
                                               edgecolor="white", lw=1.5))
                    ax.text(j, i, SHORT[klass], ha="center", va="center",
                            color="white" if klass in ("supported", "contradicted") else "black")
            ax.set_xlim(-0.5, len(numbers) - 0.5)
            ax.set_ylim(len(regimes) - 0.5, -0.5)
            ax.set_xticks(range(len(numbers)), [CLAIM_NAMES.get(n, f"claim {n}") for n in numbers], rotation=45,
                          ha="right")
            ax.set_yticks(range(len(regimes)), [r["label"] for r in regimes] if ax is axes[0][0] else [])
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            ax.set_title(READING_TITLES[reading])
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="grey", lw=0.5) for c in VERDICT_COLORS.values()]
        axes[0][-1].legend(handles, [f"{SHORT[k]} {k}" for k in VERDICT_COLORS], loc="upper left",
                           bbox_to_anchor=(1.01, 1))
        fig.suptitle("The paper's claims (docs/paper.md §7, primary tests §9) per regime", y=1.08)
        return _save(fig, stem)

"""Log-log scaling exponents with confidence intervals, and figure saving.

    from nt_robust.theory.scaling import fit_loglog, save_figure
    fit = fit_loglog(widths, values)   # one row per (width, seed) observation
    fit["slope"], fit["ci95"]          # Q ∝ m^slope; 95% CI of the OLS slope (t, n−2 dof)
    save_figure(fig, "figures/theory/init_gradients")   # writes .png and .pdf

The interval treats each (width, seed) observation as independent noise around a
power law: it says how well the exponent is pinned *given* a power law, not that the
power law holds (look at the figure for curvature).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> dict[str, float | list[float] | int]:
    """OLS fit of log y = a + slope·log x; slope, its standard error and 95% CI."""
    from scipy import stats  # jax depends on scipy

    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    n = lx.size
    if n < 3 or np.ptp(lx) == 0:
        raise ValueError("need at least 3 observations at 2 or more distinct x")
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    stderr = float(np.sqrt(np.sum(resid**2) / (n - 2) / np.sum((lx - lx.mean()) ** 2)))
    half = float(stats.t.ppf(0.975, n - 2)) * stderr
    return {"slope": float(slope), "stderr": stderr, "ci95": [float(slope - half), float(slope + half)],
            "n": int(n)}


def save_figure(fig, stem: str) -> list[str]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (creating the folder); returns the paths."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = [f"{stem}.png", f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return paths

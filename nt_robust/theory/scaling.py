"""Log-log scaling exponents with confidence intervals, and figure saving.

    from nt_robust.theory.scaling import fit_log_mean, fit_loglog, save_figure
    fit = fit_log_mean(widths, seeds, values)   # one row per (width, seed) observation
    fit["slope"], fit["ci95"]          # log(mean over seeds of Q) ∝ slope·log m; seed-level 95% CI
    fit = fit_loglog(widths, values)   # OLS of log Q on log m over all rows, t-interval
    save_figure(fig, "figures/theory/init_gradients")   # writes .png and .pdf

Which fit: a claim about E Q (the mean over initializations) is a claim about log E Q, and
:func:`fit_log_mean` fits exactly that: the log of the seed mean at each width against log m,
with an interval from resampling *seeds* (every width's value for one seed moves together:
seeds are the independent units). :func:`fit_loglog` on per-seed values estimates the slope
of E log Q instead, which differs from that of log E Q whenever the spread of Q changes with
width (E log Q ≤ log E Q, more so where Q is noisier, i.e. at narrow widths), and its
t-interval treats every (width, seed) row as an independent draw. Neither says the power
law holds (look at the figure for curvature).
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


def _ols_slope(lx: np.ndarray, ly: np.ndarray) -> float:
    lx = lx - lx.mean()
    return float(np.dot(lx, ly - ly.mean()) / np.dot(lx, lx))


def fit_log_mean(x: Sequence[float], seeds: Sequence[int], y: Sequence[float], n_boot: int = 4000,
                 rng_seed: int = 0) -> dict:
    """Slope of log(mean over seeds of y) on log x, with a 95% interval over seeds.

    Rows are (x, seed, y) observations; every x must have the same set of seeds (seed s at
    two widths may share data or random streams, so a seed is one unit across all widths).
    The interval is the wider envelope of two seed-level intervals:

    * the percentile interval of ``n_boot`` bootstrap resamples of the seeds (the same
      resampled seeds at every x; fixed ``rng_seed``, so the numbers are reproducible);
    * the jackknife (leave one seed out) standard error times the t quantile with S − 1
      degrees of freedom. With few seeds the percentile bootstrap under-covers (it is
      roughly √((S−1)/S)·z/t_{S−1} as wide as it should be: half at S = 4); the jackknife-t
      interval does not, and at 30+ seeds the two agree.

    With one seed there is no seed-level interval: ``ci95`` is None.
    """
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    seeds = np.asarray(seeds)
    xs, ss = np.unique(x), np.unique(seeds)
    if xs.size < 2:
        raise ValueError("need 2 or more distinct x")
    table = np.full((xs.size, ss.size), np.nan)
    for xi, si, yi in zip(x, seeds, y):
        i, j = np.searchsorted(xs, xi), np.searchsorted(ss, si)
        if not np.isnan(table[i, j]):
            raise ValueError(f"two observations for x={xi}, seed={si}")
        table[i, j] = yi
    if np.isnan(table).any():
        raise ValueError("every x needs a value for every seed (seeds are paired across x)")
    if (table <= 0).any():
        raise ValueError("values must be positive")
    lx = np.log(xs)
    slope = _ols_slope(lx, np.log(table.mean(axis=1)))
    out = {"slope": slope, "ci95": None, "ci95_bootstrap": None, "ci95_jackknife_t": None,
           "seeds": int(ss.size), "n_x": int(xs.size), "n": int(x.size),
           "fit": "OLS of log(seed mean) on log x; CI: envelope of seed bootstrap and jackknife-t"}
    s = ss.size
    if s < 2:
        return out
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, s, size=(n_boot, s))
    boot_means = table[:, picks].mean(axis=2)  # (n_x, n_boot)
    lxc = lx - lx.mean()
    boot = (lxc @ (np.log(boot_means) - np.log(boot_means).mean(axis=0))) / np.dot(lxc, lxc)
    lo_b, hi_b = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    loo = np.array([_ols_slope(lx, np.log(np.delete(table, j, axis=1).mean(axis=1))) for j in range(s)])
    se = float(np.sqrt((s - 1) / s * np.sum((loo - loo.mean()) ** 2)))
    half = float(stats.t.ppf(0.975, s - 1)) * se
    out.update(ci95_bootstrap=[lo_b, hi_b], ci95_jackknife_t=[slope - half, slope + half], jackknife_se=se,
               ci95=[min(lo_b, slope - half), max(hi_b, slope + half)])
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of b − a over paired seeds with a t-interval (S − 1 dof); None without 2 seeds."""
    from scipy import stats

    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    out = {"mean": float(d.mean()), "ci95": None, "seeds": int(d.size)}
    if d.size >= 2:
        half = float(stats.t.ppf(0.975, d.size - 1)) * float(d.std(ddof=1)) / np.sqrt(d.size)
        out["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
    return out


def save_figure(fig, stem: str) -> list[str]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (creating the folder); returns the paths."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = [f"{stem}.png", f"{stem}.pdf"]
    for path in paths:
        # No creation date in PDFs: the same numbers give the same bytes (no churn in git).
        fig.savefig(path, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if path.endswith(".pdf") else None)
    return paths

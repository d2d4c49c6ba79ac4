"""Intervals and verdicts for the study's comparisons, counting the spread over seeds *and*
over test points (numpy only)::

    # a[s, i], b[s, i]: per-example values (e.g. 1.0 if example i is robustly correct) of two
    # configurations for seed s; the rows are paired by seed, the columns by test example.
    iv = paired_difference(a, b)          # Interval for mean(b) − mean(a)
    iv.low, iv.high, iv.se, iv.p_value    # 95% interval d̄ ± √(t²·V_seed + z²·V_test), its p-value
    verdict(iv, expect_increase=True)     # "supported" / "contradicted" / "inconclusive"
    iv.describe()                         # "+0.0123 [+0.0040, +0.0206] …; MDE …" for a report
    contrast_interval(d)                  # the same for any per-seed, per-example contrast d[s, i]
    t_quantile(0.975, 2)                  # 4.303 (Student t, regularized incomplete beta + bisection)
    lo, hi = bootstrap_interval(statistic, n_examples)   # percentile bootstrap over test examples

**The model.** A metric of the study (natural or robust accuracy, stability, local
Lipschitzness) is a mean over the same N test examples for every run. For a comparison of
configuration B with A, d[s, i] = b[s, i] − a[s, i] for seed s = 1..n and example i = 1..N,
and the estimate is d̄ = mean over s and i. We treat d as a two-way random-effects table,
d[s, i] = μ + α_s + β_i + ε_si: α_s is what seed s (initialisation, data order, attack
noise) does to the difference, β_i what test example i does (drawn once from the test
distribution, *shared by all seeds*), ε their interaction. Then

    Var(d̄) = σ_α²/n + σ_β²/N + σ_ε²/(nN)

and with the mean squares of the table (rows = seeds, columns = examples; Σ over the table)

    MS_seed = N·Σ_s (d̄_s − d̄)²/(n − 1)          E = Nσ_α² + σ_ε²
    MS_test = n·Σ_i (d̄_i − d̄)²/(N − 1)          E = nσ_β² + σ_ε²
    MS_err  = Σ (d − d̄_s − d̄_i + d̄)²/((n − 1)(N − 1))     E = σ_ε²

the unbiased estimate is SE² = (MS_seed + MS_test − MS_err)/(nN) = V_seed + V_test with
V_seed = s_d²/n (the spread of the per-seed differences d̄_s: it already contains the
interaction) and V_test = (MS_test − MS_err)/(nN) (the test-point part the seed spread
misses, because every seed sees the same test images; clipped at 0). The 95% interval is

    d̄ ± √(t²_{0.975, n−1} · V_seed + z²_{0.975} · V_test)

each part with the quantile of its own estimate: the seed part has n − 1 degrees of freedom
(with 3 seeds, t = 4.30, not 2), the test part N − 1 ≈ ∞ (z = 1.96). Why not one t with
Welch–Satterthwaite df (this module's rule until issue 33): that df is itself estimated, and
with 3 seeds it jumps from 2 to 20–180 whenever the 2-df seed variance happens to be small,
so the interval narrows exactly when the seed part is underestimated; in the balanced design
(seed and test parts of similar size) it covered 92–94 %. The sum of squared half-widths
never uses fewer than n − 1 df for the seed part, so it is conservative where the two parts
are balanced and exact in either limit (seed part only: Student's t; test part only: z).
tests/studies/test_uncertainty.py simulates test-point-dominated, seed-dominated and
balanced designs, with normal and with 0/1 outcomes, at 3 seeds: coverage ≥ 0.94 in each.
``Interval.df`` is the seed part's n − 1; ``Interval.p_value`` inverts the same rule (the α
at which the level-(1 − α) interval touches zero), so p < 0.05 exactly when the 95%
interval excludes zero. A closed form, not a resampling: deterministic, and for a mean of
0/1 differences V_test equals what a bootstrap over test examples estimates.

**Pairing by seed.** Runs with the same seed at different widths or λ share the data order
and the attack noise stream but not the initialisation (the parameter shapes differ); the
train/validation split is the same for every run. We pair by seed: d̄_s is a legitimate
per-seed contrast whatever the correlation, so V_seed stays unbiased, and it removes any
effect the shared data order has on both runs. The price is n − 1 rather than up to
2(n − 1) degrees of freedom when the runs are in fact independent. Pairing by example is
what makes the test-point term small: both configurations are scored on the same images.

**One seed.** With n = 1 there is no seed spread to estimate, so there is no interval and
every verdict is *inconclusive* ("one seed"). Rows without per-example arrays fall back to
the seed spread alone (V_test not counted), and the evidence says so.

**Verdicts.** A claim "B > A" (or "B < A") is *supported* only when the 95% interval lies
entirely on the claimed side of zero, *contradicted* only when it lies entirely on the
other side, else *inconclusive*, reported with the smallest effect this design could have
detected with 80% power (``Interval.mde``: the half-width plus the same combination at the
0.80 quantiles).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import numpy as np

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED = "supported", "contradicted", "inconclusive", "not evaluated"
LEVEL, POWER = 0.95, 0.80


# ---------------------------------------------------------------- Student t distribution
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom (inf: the normal)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return normal_cdf(t)
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _invert(cdf: Callable[[float], float], p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -_invert(cdf, 1.0 - p)
    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2.0 * high
    for _ in range(200):  # bisection: monotone, no derivative, converges to machine precision
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return 0.5 * (low + high)


@functools.lru_cache(maxsize=4096)
def normal_quantile(p: float) -> float:
    return _invert(normal_cdf, p)


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (non-integer allowed)."""
    if math.isinf(df) or df > 1e7:
        return normal_quantile(p)
    return _invert(lambda t: t_cdf(t, df), p)


def minimum_detectable_effect(se: float, df: float, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true effect a two-sided level-``level`` test detects with probability ``power``."""
    if math.isnan(se) or math.isnan(df):
        return math.nan
    return (t_quantile(0.5 + level / 2, df) + t_quantile(power, df)) * se


# ---------------------------------------------------------------- intervals
P_FLOOR = 1e-12   # p-values below this are reported as this


def interval_p_value(estimate: float, v_seed: float, v_test: float, seed_df: float) -> float:
    """Two-sided p-value of zero under this module's interval: the α at which
    √(t²_{1−α/2, seed_df} · V_seed + z²_{1−α/2} · V_test) = |estimate| (bisection on log α;
    the half-width falls as α grows). Floored at :data:`P_FLOOR`."""
    if any(math.isnan(x) for x in (estimate, v_seed, v_test, seed_df)):
        return math.nan
    if v_seed + v_test <= 0.0:
        return 1.0 if estimate == 0 else P_FLOOR
    target = abs(estimate)

    def half(alpha: float) -> float:
        return _half_width(v_seed, v_test, seed_df, 1.0 - alpha)

    low, high = math.log(P_FLOOR), 0.0
    if half(P_FLOOR) <= target:
        return P_FLOOR
    for _ in range(50):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if half(math.exp(mid)) > target else (low, mid)
    return min(1.0, math.exp(0.5 * (low + high)))


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its standard error, degrees of freedom and ``level`` interval."""
    estimate: float
    se: float
    df: float
    low: float
    high: float
    seeds: int
    examples: int                  # test examples per seed (1: seed spread only)
    se_seed: float = math.nan      # sqrt(V_seed)
    se_test: float = math.nan      # sqrt(V_test); nan when the test-point spread is not counted
    level: float = LEVEL
    note: str = ""
    seed_df: float = math.nan      # n − 1: the degrees of freedom of the seed part

    @property
    def p_value(self) -> float:
        """Two-sided p of "no effect", consistent with the interval: the level-(1 − p)
        interval of this rule has zero at its edge (so p < 0.05 ⇔ the 95% interval
        excludes zero). nan without an interval."""
        if math.isnan(self.se):
            return math.nan
        if math.isnan(self.seed_df):     # built elsewhere as one t interval
            return interval_p_value(self.estimate, self.se ** 2, 0.0, self.df)
        return interval_p_value(self.estimate, self.se_seed ** 2,
                                0.0 if math.isnan(self.se_test) else self.se_test ** 2, self.seed_df)

    @property
    def mde(self) -> float:
        """The smallest true effect this design detects with 80% power: the interval's
        half-width plus the same combination at the power quantile (each part with its own
        quantile, as the interval; for a seed-spread-only interval, (t_{0.975} + t_{0.80})·SE)."""
        if math.isnan(self.seed_df):
            return minimum_detectable_effect(self.se, self.df, self.level)
        v_seed, v_test = self.se_seed ** 2, 0.0 if math.isnan(self.se_test) else self.se_test ** 2
        return (_half_width(v_seed, v_test, self.seed_df, self.level)
                + _half_width(v_seed, v_test, self.seed_df, 2 * POWER - 1))

    def shifted(self, offset: float) -> "Interval":
        """The same interval for estimate − offset (for margins and thresholds)."""
        return dataclasses.replace(self, estimate=self.estimate - offset, low=self.low - offset,
                                   high=self.high - offset)

    def short(self) -> str:
        """``+0.0123 [+0.0040, +0.0206]`` (the estimate and its interval only)."""
        if math.isnan(self.se):
            return f"{self.estimate:+.4f} (no interval: {self.note or 'no spread'})"
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"

    def describe(self, mde: bool = True) -> str:
        if math.isnan(self.se):
            return f"{self.estimate:+.4f} (no interval: {self.note or 'no spread'})"
        parts = [f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"]
        if self.examples > 1:
            parts.append(f"({self.seeds} seeds × {self.examples} test images; SE {self.se:.4f} = "
                         f"seeds {self.se_seed:.4f} (t, {self.df:g} df) ⊕ test points {self.se_test:.4f} (z))")
        else:
            parts.append(f"({self.seeds} seeds, SE {self.se:.4f}, df {self.df:.1f}; {self.note or 'seed spread only'})")
        if mde and self.low <= 0 <= self.high:
            parts.append(f"MDE {self.mde:.4f}")
        return " ".join(parts)


def _half_width(v_seed: float, v_test: float, seed_df: float, level: float) -> float:
    """√(t²_{q, n−1} · V_seed + z²_q · V_test), q = (1 + level)/2 (module docstring)."""
    q = 0.5 + level / 2
    return math.sqrt(t_quantile(q, seed_df) ** 2 * v_seed + normal_quantile(q) ** 2 * v_test)


def _finish(estimate: float, v_seed: float, v_test: float, seed_df: float, seeds: int, examples: int,
            level: float, note: str = "") -> Interval:
    se = math.sqrt(v_seed + v_test)
    half = _half_width(v_seed, v_test, seed_df, level) if se > 0 else 0.0
    return Interval(estimate, se, float(seed_df), estimate - half, estimate + half, seeds, examples, math.sqrt(v_seed),
                    math.sqrt(v_test) if examples > 1 else math.nan, level, note, seed_df)


def no_interval(estimate: float, seeds: int, examples: int, note: str) -> Interval:
    return Interval(estimate, math.nan, math.nan, math.nan, math.nan, seeds, examples, note=note)


def contrast_interval(d: np.ndarray, level: float = LEVEL) -> Interval:
    """Interval for the mean of ``d[s, i]`` (seeds × test examples), counting both spreads
    (module docstring). A 1-D ``d`` is one value per seed: the seed spread only."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    n, big_n = d.shape
    estimate = float(d.mean())
    if n < 2:
        return no_interval(estimate, n, big_n, "one seed: the seed spread cannot be estimated")
    seed_means, example_means = d.mean(axis=1), d.mean(axis=0)
    v_seed = float(np.sum((seed_means - estimate) ** 2)) / (n - 1) / n    # s_d² / n
    if big_n < 2:
        return _finish(estimate, v_seed, 0.0, n - 1, n, 1, level, "seed spread only: no per-example arrays")
    ms_test = n * float(np.sum((example_means - estimate) ** 2)) / (big_n - 1)
    residual = d - seed_means[:, None] - example_means[None, :] + estimate
    ms_err = float(np.sum(residual ** 2)) / ((n - 1) * (big_n - 1))
    v_test = max(0.0, (ms_test - ms_err) / (n * big_n))
    return _finish(estimate, v_seed, v_test, n - 1, n, big_n, level)


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> Interval:
    """Interval for mean(b) − mean(a); rows paired by seed, columns by test example."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs equal shapes (seeds × examples), got {a.shape} and {b.shape}")
    return contrast_interval(b - a, level)


def example_mean_variance(d: np.ndarray) -> float:
    """Variance of the mean over test examples of the seed-averaged ``d[s, i]`` when the
    examples are resampled and the seeds held fixed: var_i(d̄_i)/N (population variance),
    which is exactly what a bootstrap over test examples estimates."""
    d = np.asarray(d, dtype=np.float64)
    example_means = d.mean(axis=0) if d.ndim == 2 else d
    return float(np.mean((example_means - example_means.mean()) ** 2)) / example_means.shape[0]


def verdict(interval: Interval, expect_increase: bool) -> str:
    """*supported* if the interval lies on the claimed side of zero, *contradicted* if on
    the other side, else (and without an interval) *inconclusive*."""
    if math.isnan(interval.se):
        return INCONCLUSIVE
    if interval.low > 0 or interval.high < 0:
        return SUPPORTED if (interval.low > 0) == expect_increase else CONTRADICTED
    return INCONCLUSIVE


# ---------------------------------------------------------------- bootstrap over test examples
def bootstrap_weights(n_examples: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_examples) resampling counts: row b says how often each example is drawn."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples), size=n_boot).astype(np.float64)


def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n_examples: int, n_boot: int = 2000,
                       seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of ``statistic(weights)`` (weights: (n_boot, n_examples) counts,
    returns (n_boot,) values; NaNs dropped), resampling test examples jointly for every run
    the statistic reads, so the pairing by example is kept. Seeded: deterministic."""
    values = np.asarray(statistic(bootstrap_weights(n_examples, n_boot, seed)), dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


# ---------------------------------------------------------------- multiple testing
def _finite(p_values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_values, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p_values}")
    return p, np.flatnonzero(~np.isnan(p))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error): sorted ascending,
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). NaN entries (no test) stay NaN and do
    not count in m. Reject at level α where p̃ < α::

        holm([0.01, 0.04, 0.03])   # [0.03, 0.06, 0.06]
    """
    p, keep = _finite(p_values)
    out = np.full(p.shape, np.nan)
    m = keep.size
    order = keep[np.argsort(p[keep], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg q-values (false discovery rate): sorted ascending,
    q_(i) = min_{j ≥ i} min(1, m · p_(j) / j). NaN entries stay NaN and do not count::

        benjamini_hochberg([0.01, 0.04, 0.03])   # [0.03, 0.04, 0.04]
    """
    p, keep = _finite(p_values)
    out = np.full(p.shape, np.nan)
    m = keep.size
    order = keep[np.argsort(p[keep], kind="stable")]
    running = 1.0
    for rank in range(m - 1, -1, -1):
        index = order[rank]
        running = min(running, m * p[index] / (rank + 1))
        out[index] = running
    return out


# --------------------------------------------------------------------------- rank agreement

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

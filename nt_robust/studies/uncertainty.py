"""Intervals and verdicts for the study's comparisons, counting the spread over seeds *and*
over test points (numpy only)::

    # a[s, i], b[s, i]: per-example values (e.g. 1.0 if example i is robustly correct) of two
    # configurations for seed s; the rows are paired by seed, the columns by test example.
    iv = paired_difference(a, b)          # Interval for mean(b) − mean(a)
    iv.low, iv.high, iv.se, iv.df         # 95% interval d̄ ± t_{0.975, df} · SE
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
misses, because every seed sees the same test images; clipped at 0). The interval is
d̄ ± t_{0.975, df} · SE with Welch–Satterthwaite degrees of freedom
df = SE⁴ / Σ_j (k_j MS_j)²/df_j (df = n − 1 when V_test is clipped). With 3 seeds the
seed part has 2 df, so t ≈ 4.3, not 2. A closed form, not a resampling: deterministic, and
for a mean of 0/1 differences it equals what a bootstrap over test examples estimates
(tests/studies/test_uncertainty.py checks both that and the interval's coverage).

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
detected with 80% power: MDE = (t_{0.975, df} + t_{0.80, df}) · SE.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

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

    @property
    def mde(self) -> float:
        return minimum_detectable_effect(self.se, self.df, self.level)

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
                         f"seeds {self.se_seed:.4f} ⊕ test points {self.se_test:.4f}, df {self.df:.1f})")
        else:
            parts.append(f"({self.seeds} seeds, SE {self.se:.4f}, df {self.df:.1f}; {self.note or 'seed spread only'})")
        if mde and self.low <= 0 <= self.high:
            parts.append(f"MDE {self.mde:.4f}")
        return " ".join(parts)


def _finish(estimate: float, v_seed: float, v_test: float, df: float, seeds: int, examples: int,
            level: float, note: str = "") -> Interval:
    se = math.sqrt(v_seed + v_test)
    half = t_quantile(0.5 + level / 2, df) * se if se > 0 else 0.0
    return Interval(estimate, se, df, estimate - half, estimate + half, seeds, examples, math.sqrt(v_seed),
                    math.sqrt(v_test) if examples > 1 else math.nan, level, note)


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
    ms_seed = big_n * float(np.sum((seed_means - estimate) ** 2)) / (n - 1)
    v_seed = ms_seed / (n * big_n)
    if big_n < 2:
        return _finish(estimate, v_seed, 0.0, n - 1, n, 1, level, "seed spread only: no per-example arrays")
    ms_test = n * float(np.sum((example_means - estimate) ** 2)) / (big_n - 1)
    residual = d - seed_means[:, None] - example_means[None, :] + estimate
    df_err = (n - 1) * (big_n - 1)
    ms_err = float(np.sum(residual ** 2)) / df_err
    scale = 1.0 / (n * big_n)
    v_test = (ms_test - ms_err) * scale
    if v_test <= 0.0:
        return _finish(estimate, v_seed, 0.0, n - 1, n, big_n, level)
    total = v_seed + v_test
    denominator = ((ms_seed * scale) ** 2 / (n - 1) + (ms_test * scale) ** 2 / (big_n - 1)
                   + (ms_err * scale) ** 2 / df_err)
    df = total ** 2 / denominator if denominator > 0 else n - 1
    return _finish(estimate, v_seed, v_test, max(df, 1.0), n, big_n, level)


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

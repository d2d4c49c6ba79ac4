"""Seed-level log-log fits: fit_log_mean fits log E Q (what a claim about the mean is about)."""

import numpy as np
import pytest

from nt_robust.theory.scaling import fit_log_mean, fit_loglog, paired_difference


def test_exact_power_law_with_seed_factors_gives_the_exponent():
    widths, seeds = [64, 128, 256, 512], range(5)
    factor = {s: 1 + 0.1 * s for s in seeds}  # a per-seed level that is the same at every width
    rows = [(w, s, factor[s] * w**0.3) for w in widths for s in seeds]
    fit = fit_log_mean(*zip(*rows))
    assert fit["slope"] == pytest.approx(0.3, abs=1e-12)
    assert fit["ci95"][0] == pytest.approx(0.3, abs=1e-9) and fit["ci95"][1] == pytest.approx(0.3, abs=1e-9)
    assert fit["seeds"] == 5 and fit["n_x"] == 4


def test_constant_mean_with_width_dependent_spread():
    """E Q = 1 at every width, spread shrinking with width: log E Q is flat, E log Q rises.

    Q = exp(σ z − σ²/2) with z ~ N(0, 1) has mean exactly 1 and E log Q = −σ²/2, so with
    σ = 2·m^(−1/4) the per-row OLS of log Q estimates the slope of −2/√m, clearly positive;
    200 seeds make both estimates precise enough to separate (fixed generator).
    """
    rng = np.random.default_rng(0)
    widths, n_seeds = [64, 256, 1024, 4096], 200
    rows = []
    for w in widths:
        sigma = 2 * w**-0.25
        rows += [(w, s, float(np.exp(sigma * z - sigma**2 / 2))) for s, z in enumerate(rng.standard_normal(n_seeds))]
    x, seeds, y = zip(*rows)
    mean_fit, log_fit = fit_log_mean(x, seeds, y), fit_loglog(x, y)
    assert mean_fit["ci95"][0] < 0 < mean_fit["ci95"][1], mean_fit
    assert log_fit["ci95"][0] > 0, log_fit


def test_one_seed_has_no_interval_and_unpaired_rows_are_refused():
    assert fit_log_mean([64, 128], [0, 0], [1.0, 2.0])["ci95"] is None
    with pytest.raises(ValueError, match="every x needs"):
        fit_log_mean([64, 64, 128], [0, 1, 0], [1.0, 1.0, 2.0])
    assert paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])["mean"] == pytest.approx(7 / 6)

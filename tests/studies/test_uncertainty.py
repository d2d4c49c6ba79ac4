"""The statistics behind every verdict (nt_robust/studies/uncertainty.py), against truths
that do not come from the module: printed t tables, closed-form distribution functions, a
bootstrap, and the coverage of the interval on simulated studies with a known effect.
Seeded and deterministic; comparisons use tolerances, never exact float sums."""

import math

import numpy as np
import pytest

from nt_robust.studies.claims import evaluate_claims
from nt_robust.studies.contrasts import contrast
from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, benjamini_hochberg,
                                           bootstrap_interval, bootstrap_weights, contrast_interval,
                                           example_mean_variance, holm, minimum_detectable_effect, normal_cdf,
                                           normal_quantile, regularized_beta, t_cdf,
                                           t_quantile, verdict)


@pytest.mark.parametrize("p, df, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 10, 2.228),
    (0.975, 30, 2.042), (0.975, 120, 1.980), (0.975, math.inf, 1.960), (0.975, 1e9, 1.960),
    (0.80, 1, 1.376), (0.80, 2, 1.061), (0.80, 10, 0.879), (0.80, math.inf, 0.842),
    (0.995, 5, 4.032), (0.95, 20, 1.725),
])
def test_t_quantiles_match_the_printed_table(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=6e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=6e-4)   # symmetry


def test_t_cdf_matches_closed_forms_and_inverts():
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 4.0, 50.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)          # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)  # df = 2
    for df in (1.0, 2.5, 7.0, 200.0):
        assert t_cdf(t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-10)
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    # I_x(a, 1) = x^a, I_x(1, b) = 1 − (1 − x)^b
    assert regularized_beta(2.5, 1.0, 0.3) == pytest.approx(0.3 ** 2.5, rel=1e-12)
    assert regularized_beta(1.0, 3.5, 0.8) == pytest.approx(1 - 0.2 ** 3.5, rel=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_test_point_variance_of_bernoulli_differences_closed_form_and_bootstrap():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.6).astype(float)
    b = (rng.random(400) < 0.7).astype(float)
    d = b - a
    p_up, p_down = np.mean(d == 1), np.mean(d == -1)
    # variance of the mean of a {−1, 0, +1} variable: (p₊ + p₋ − (p₊ − p₋)²)/N
    assert example_mean_variance(d) == pytest.approx((p_up + p_down - (p_up - p_down) ** 2) / 400, rel=1e-9)
    # … which is what a bootstrap over test examples estimates (here for a 3-seed table)
    table = np.stack([d, np.roll(d, 1), (rng.random(400) < 0.1).astype(float)])
    weights = bootstrap_weights(400, n_boot=4000, seed=1)
    boot = weights @ table.mean(axis=0) / 400
    assert np.var(boot) == pytest.approx(example_mean_variance(table), rel=0.08)


def test_two_way_decomposition_without_interaction_is_exact():
    seed_effect = np.array([0.01, -0.02, 0.04])
    example_effect = np.linspace(-0.5, 0.5, 101)
    d = 0.1 + seed_effect[:, None] + example_effect[None, :]
    iv = contrast_interval(d)
    assert iv.estimate == pytest.approx(0.1 + seed_effect.mean(), abs=1e-12)
    assert iv.se_seed ** 2 == pytest.approx(np.var(seed_effect, ddof=1) / 3, rel=1e-9)
    assert iv.se_test ** 2 == pytest.approx(np.var(example_effect, ddof=1) / 101, rel=1e-9)
    # each part with its own quantile: t with n − 1 = 2 df for the seeds, z for the test points
    half = math.sqrt(4.302653 ** 2 * np.var(seed_effect, ddof=1) / 3 + 1.959964 ** 2 * np.var(example_effect, ddof=1) / 101)
    assert iv.low < iv.estimate < iv.high and iv.high - iv.estimate == pytest.approx(half, rel=1e-6)
    assert iv.df == 2


def simulate(rng, n_seeds, n_examples, effect, sd_seed, sd_example, sd_noise):
    return (effect + rng.normal(0, sd_seed, (n_seeds, 1)) + rng.normal(0, sd_example, (1, n_examples))
            + rng.normal(0, sd_noise, (n_seeds, n_examples)))


def test_interval_covers_a_known_effect_95_percent_of_the_time_where_seed_only_does_not():
    rng = np.random.default_rng(0)
    hits = seed_only_hits = 0
    reps = 400
    for _ in range(reps):
        d = simulate(rng, 3, 200, effect=0.03, sd_seed=0.005, sd_example=0.6, sd_noise=0.3)
        iv = contrast_interval(d)
        hits += iv.low <= 0.03 <= iv.high
        seed_only = contrast_interval(d.mean(axis=1))   # the old rule's input: one number per seed
        seed_only_hits += seed_only.low <= 0.03 <= seed_only.high
    assert 0.94 <= hits / reps <= 0.99
    assert seed_only_hits / reps < 0.90   # the shared test set's noise is invisible to the seed spread


def satterthwaite_interval(d):
    """The rule before issue 33 (a second implementation, for comparison): one t quantile
    with Welch–Satterthwaite df over the three mean squares."""
    n, big_n = d.shape
    seed_means, example_means, mean = d.mean(axis=1), d.mean(axis=0), d.mean()
    ms = [big_n * np.sum((seed_means - mean) ** 2) / (n - 1), n * np.sum((example_means - mean) ** 2) / (big_n - 1),
          np.sum((d - seed_means[:, None] - example_means[None, :] + mean) ** 2) / ((n - 1) * (big_n - 1))]
    dfs = [n - 1, big_n - 1, (n - 1) * (big_n - 1)]
    v_seed, v_test = ms[0] / (n * big_n), max(0.0, (ms[1] - ms[2]) / (n * big_n))
    if v_test == 0:
        df = n - 1
    else:
        df = max(1.0, (v_seed + v_test) ** 2 / sum((m / (n * big_n)) ** 2 / f for m, f in zip(ms, dfs)))
    half = t_quantile(0.975, df) * math.sqrt(v_seed + v_test)
    return mean - half, mean + half


def normal_design(sd_seed, sd_example, sd_noise):
    def draw(rng):
        return simulate(rng, 3, 200, 0.03, sd_seed, sd_example, sd_noise), 0.03
    return draw


def binary_design(seed_shift, example_spread):
    """0/1 outcomes of two configurations per (seed, test image), coupled through one uniform
    draw u (a = u < p_i, b = u < p_i + e_i + s_s), so that d ∈ {−1, 0, 1}; e_i varies over a
    fresh test set (mean 0.05, the true effect: no probability is clipped), s_s over seeds
    (mean 0)."""
    def draw(rng):
        p = rng.uniform(0.4, 0.5, 300)
        e = 0.05 + rng.uniform(-example_spread, example_spread, 300)
        s = rng.uniform(-seed_shift, seed_shift, (3, 1))
        u = rng.random((3, 300))
        return (u < p + e + s).astype(float) - (u < p).astype(float), 0.05
    return draw


@pytest.mark.parametrize("design, seed_to_test", [
    (normal_design(0.005, 0.6, 0.3), (0.15, 0.4)),      # test points dominate
    (normal_design(0.05, 0.05, 0.1), (3.0, 15.0)),      # seeds dominate
    (normal_design(0.04, 0.3, 0.3), (0.7, 1.4)),        # balanced: the old rule covered 0.935 here
    (binary_design(0.0, 0.1), (1.5, 3.0)),              # 0/1, seed (interaction) part dominates
    (binary_design(0.02, 0.4), (0.7, 1.4)),             # 0/1, balanced (old rule: 0.94)
], ids=["test-dominated", "seed-dominated", "balanced", "binary", "binary-balanced"])
def test_interval_covers_95_percent_at_3_seeds_in_every_design(design, seed_to_test):
    rng = np.random.default_rng(5)
    reps, hits, old_hits, ratios = 400, 0, 0, []
    for _ in range(reps):
        d, effect = design(rng)
        iv = contrast_interval(d)
        hits += iv.low <= effect <= iv.high
        low, high = satterthwaite_interval(d)
        old_hits += low <= effect <= high
        ratios.append(iv.se_seed / iv.se_test if iv.se_test > 0 else math.inf)
    # the design is what its name says: the typical ratio of the seed to the test part of the SE
    assert seed_to_test[0] <= float(np.median(ratios)) <= seed_to_test[1]
    assert hits / reps >= 0.94, f"coverage {hits / reps:.3f} (Satterthwaite rule: {old_hits / reps:.3f})"
    assert hits / reps <= 0.995 and hits >= old_hits   # never narrower than the old rule's coverage


def test_p_value_inverts_the_interval_and_matches_closed_forms():
    # seed part only, 2 df: the two-sided t-test p-value, closed form for df 2: 1 − |t|/√(2 + t²)
    iv = contrast_interval(np.array([0.01, 0.02, 0.04]))
    t = iv.estimate / iv.se
    assert iv.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-6)
    # test part only (no seed spread): the z-test p-value
    example_effect = np.linspace(-0.5, 0.5, 101)
    d = 0.1 + np.zeros((3, 1)) + example_effect[None, :]
    flat = contrast_interval(d)
    assert flat.se_seed < 1e-12 and flat.p_value == pytest.approx(2 * (1 - normal_cdf(0.1 / flat.se_test)), rel=1e-6)
    # p < 0.05 exactly when the 95% interval excludes zero, and at p the interval touches zero
    rng = np.random.default_rng(6)
    for _ in range(30):
        iv = contrast_interval(simulate(rng, 3, 100, rng.uniform(-0.1, 0.1), 0.03, 0.3, 0.3))
        assert (iv.p_value < 0.05) == (iv.low > 0 or iv.high < 0)
        level = 1 - iv.p_value
        q = 0.5 + level / 2
        half = math.sqrt(t_quantile(q, 2) ** 2 * iv.se_seed ** 2 + normal_quantile(q) ** 2 * iv.se_test ** 2)
        assert half == pytest.approx(abs(iv.estimate), rel=1e-6)


def test_holm_and_benjamini_hochberg_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running max
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted × 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04 → running min from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    # the three stability slopes among 15 (the other 12 at p = 0.5): none survives either
    fifteen = [0.0068, 0.0082, 0.049] + [0.5] * 12
    assert holm(fifteen)[0] == pytest.approx(15 * 0.0068) and np.all(holm(fifteen) > 0.05)
    assert benjamini_hochberg(fifteen)[0] == pytest.approx(15 * 0.0082 / 2) and np.all(benjamini_hochberg(fifteen) > 0.05)
    # missing tests do not count; one test is its own adjustment; caps at 1
    np.testing.assert_allclose(holm([0.02, math.nan, 0.04]), [0.04, math.nan, 0.04])
    np.testing.assert_allclose(benjamini_hochberg([0.3]), [0.3])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    with pytest.raises(ValueError, match="must lie in"):
        holm([1.5])


def test_verdicts_need_the_interval_to_exclude_zero():
    rng = np.random.default_rng(2)
    clear = contrast_interval(simulate(rng, 3, 500, 0.2, 0.01, 0.1, 0.1))
    assert verdict(clear, True) == SUPPORTED and verdict(clear, False) == CONTRADICTED
    null = contrast_interval(simulate(rng, 3, 500, 0.0, 0.05, 0.1, 0.3))
    assert null.low < 0 < null.high and verdict(null, True) == INCONCLUSIVE == verdict(null, False)
    assert "MDE" in null.describe() and "MDE" not in clear.describe()
    v_seed, v_test = null.se_seed ** 2, null.se_test ** 2
    assert null.mde == pytest.approx(math.sqrt(4.302653 ** 2 * v_seed + 1.959964 ** 2 * v_test)
                                     + math.sqrt(1.060660 ** 2 * v_seed + 0.841621 ** 2 * v_test), rel=1e-5)
    assert minimum_detectable_effect(1.0, math.inf) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    one_seed = contrast_interval(simulate(rng, 1, 500, 0.5, 0.0, 0.1, 0.1))
    assert verdict(one_seed, True) == INCONCLUSIVE and "one seed" in one_seed.describe()
    # two seeds that agree closely: t with 1 df (12.7), not 2, so a tiny spread can still straddle 0
    two = contrast_interval(np.array([0.010, 0.016]))
    assert two.low < 0 < two.high and two.df == 1
    margin = two.shifted(-0.05)    # "above −0.05?"
    assert verdict(margin, True) == SUPPORTED


def test_bootstrap_interval_is_seeded_and_matches_the_normal_interval_for_a_mean():
    rng = np.random.default_rng(4)
    x = (rng.random(300) < 0.4).astype(float)
    first = bootstrap_interval(lambda w: w @ x / 300, 300, n_boot=3000, seed=7)
    assert first == bootstrap_interval(lambda w: w @ x / 300, 300, n_boot=3000, seed=7)
    half = 1.96 * math.sqrt(np.var(x) / 300)
    assert first[0] == pytest.approx(x.mean() - half, abs=0.01) and first[1] == pytest.approx(x.mean() + half, abs=0.01)


def synthetic_rows_and_examples(effect_natural: float, n_seeds=3, n_examples=600, seed=0):
    """Grid rows (best_val) and per-example arrays for widths 16/1024 × λ 1/4, where the wide
    model's natural accuracy is ``effect_natural`` higher; robust accuracy is identical."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.2, 0.8, n_examples)
    labels = np.zeros(n_examples, np.int32)
    rows, examples = [], {}
    for width in (16, 1024):
        for lam in (1.0, 4.0):
            for s in range(n_seeds):
                name = f"width{width}_lam{lam:g}_seed{s}"
                p = difficulty + (effect_natural if width == 1024 else 0.0)
                arrays = {"labels": labels, "natural_accuracy": (rng.random(n_examples) < p).astype(float),
                          "robust_accuracy": (rng.random(n_examples) < difficulty / 2).astype(float),
                          "perturbation_stability": (rng.random(n_examples) < 0.7).astype(float),
                          "lipschitz_mean": rng.gamma(2.0, 1.0, n_examples)}
                examples[name] = {"test": arrays, "val": arrays}
                row = {"run": name, "width": width, "lam": lam, "seed": s, "war": False, "selection": "best_val",
                       "lam_final": lam, "train_seconds": 1.0}
                for split in ("test", "val"):
                    row.update({f"{split}_{m}": float(v.mean()) for m, v in arrays.items() if m != "labels"})
                rows.append(row)
    return rows, examples


def test_claims_from_per_example_arrays_count_the_test_points():
    rows, examples = synthetic_rows_and_examples(effect_natural=0.15)
    claims = {c.number: c for c in evaluate_claims(rows, examples=examples)}
    assert claims[1].verdict == SUPPORTED
    assert "3 seeds × 600 test images" in claims[1].evidence[0]
    assert claims[4].verdict == INCONCLUSIVE and "MDE" in claims[4].evidence[0]   # no Lipschitz effect
    null_rows, null_examples = synthetic_rows_and_examples(effect_natural=0.0, seed=1)
    null = {c.number: c for c in evaluate_claims(null_rows, examples=null_examples)}
    assert null[1].verdict == INCONCLUSIVE
    # without the arrays the same rows give a seed-spread-only interval, and say so
    narrow = [r for r in rows if r["width"] == 16 and r["lam"] == 1.0]
    wide = [r for r in rows if r["width"] == 1024 and r["lam"] == 1.0]
    assert "seed spread only" in contrast(narrow, wide, "natural_accuracy").describe()
    broken = {k: {"test": {**v["test"], "natural_accuracy": 1 - v["test"]["natural_accuracy"]}} for k, v in
              examples.items()}
    with pytest.raises(ValueError, match="averages to"):
        contrast(narrow, wide, "natural_accuracy", broken)

"""Claim 8: Kendall's τ-b against hand-counted pairs, verdicts (with bootstrap intervals) on
fabricated attack results, collection from fabricated evaluation files, and spec validation."""

import math

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.config import ConfigError
from nt_robust.studies.attack_check import AttackCheckPlan, collect_attack_check
from nt_robust.studies.claims import attack_agreement_claim
from nt_robust.studies.uncertainty import (CONTRADICTED, INCONCLUSIVE, NOT_EVALUATED, SUPPORTED, kendall_tau_b,
                                           kendall_tau_b_rows)
from nt_robust.studies.sweep import load_study

from test_studies import write_spec  # noqa: E402 (pytest puts this folder on sys.path)


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # [1,2,3,4] vs [1,3,2,4]: 6 pairs, only (2,3) discordant -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie in b: C = 5, D = 0, n0 = 6 pairs, 0 tied in a, 1 tied in b -> 5 / sqrt((6 - 0)(6 - 1))
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau_b([1, 1, 1], [2, 3, 4]))
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau_b([1, 2], [1])


CONFIGS = [(16, 1.0), (16, 4.0), (64, 1.0), (64, 4.0)]


def rows_for(accuracies: dict[str, list[float]], seeds=(0, 1)) -> list[dict]:
    return [{"run": f"w{w}_l{lam:g}_s{s}", "width": w, "lam": lam, "seed": s, "protocol": protocol, "eps": 0.1,
             "num_examples": 200, "natural_accuracy": 0.8, "robust_accuracy": acc}
            for s in seeds for protocol, values in accuracies.items() for (w, lam), acc in zip(CONFIGS, values)]


def examples_for(accuracies: dict[str, list[float]], n: int = 200, seeds=(0, 1)) -> dict:
    """Per-example robust correctness with the given accuracies: the first k images robust
    (nested, so a weaker attack's robust set contains a stronger one's); seed s shifts the
    images by 7·s (same accuracies, other images)."""
    return {(f"w{w}_l{lam:g}_s{s}", protocol): np.roll((np.arange(n) < round(acc * n)).astype(float), 7 * s)
            for s in seeds for protocol, values in accuracies.items() for (w, lam), acc in zip(CONFIGS, values)}


def claim_for(accuracies: dict[str, list[float]], with_examples: bool = True, seeds=(0, 1)):
    return attack_agreement_claim(rows_for(accuracies, seeds), "pgd20-0.007",
                                  examples_for(accuracies, seeds=seeds) if with_examples else None, n_boot=500)


def test_same_ranking_and_autoattack_below_pgd_is_supported():
    accuracies = {"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "cw20": [0.38, 0.44, 0.47, 0.52],
                  "autoattack-standard": [0.35, 0.41, 0.45, 0.50]}
    claim = claim_for(accuracies)
    assert claim.number == 8 and claim.verdict == SUPPORTED
    assert any("Kendall τ-b of cw20 vs pgd20-0.007 over 4 configurations: +1.00 [+1.00, +1.00]" in e
               for e in claim.evidence)
    assert any("at or below 0 in 8 of 8 runs; significantly above 0 (per run, bootstrap over images) in none" in e
               for e in claim.evidence)
    assert any("interval over seeds × images" in e and "2 seeds × 200 test images" in e for e in claim.evidence)
    # the same numbers without per-example arrays have no interval: inconclusive, not supported
    assert claim_for(accuracies, with_examples=False).verdict == INCONCLUSIVE
    # one checked seed: the seed spread cannot be counted, so inconclusive, and the note says why
    one = claim_for(accuracies, seeds=(0,))
    assert one.verdict == INCONCLUSIVE and any("at least 2 seeds" in n for n in one.notes)


def test_autoattack_clearly_above_pgd_in_one_run_contradicts_but_a_slight_excess_does_not():
    clear = claim_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "autoattack-standard": [0.35, 0.60, 0.45, 0.50]})
    assert clear.verdict == CONTRADICTED
    assert any("significantly above 0 (per run, bootstrap over images) in w16_l4_s0 (+0.150" in e for e in clear.evidence)
    slight = claim_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "autoattack-standard": [0.35, 0.46, 0.45, 0.50]})
    assert slight.verdict == INCONCLUSIVE   # 2 of 200 images above: within test-point noise


def test_reversed_ranking_contradicts_and_a_partial_one_depends_on_its_interval():
    assert claim_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "cw20": [0.55, 0.50, 0.45, 0.40]}).verdict \
        == CONTRADICTED
    # τ = 2/3 for sure (gaps of 10 images): its interval lies below 0.7 → contradicted
    assert claim_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "cw20": [0.40, 0.50, 0.45, 0.55]}).verdict \
        == CONTRADICTED
    # τ = 2/3 from a swap of two configurations 1 image apart: could be 1 → inconclusive
    assert claim_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "cw20": [0.40, 0.475, 0.47, 0.55]}).verdict \
        == INCONCLUSIVE


def test_vectorised_tau_matches_the_pairwise_count():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (50, 7)), rng.integers(0, 4, (50, 7))   # integers: many ties
    expected = np.array([kendall_tau_b(list(x), list(y)) for x, y in zip(a, b)])
    np.testing.assert_allclose(kendall_tau_b_rows(a, b), expected, rtol=1e-12, atol=1e-12)


def test_without_attack_rows_claim_8_is_not_evaluated():
    assert attack_agreement_claim([], "pgd20-0.007").verdict == NOT_EVALUATED


def test_plan_validation_and_spec_parsing(tmp_path):
    with pytest.raises(ConfigError, match="at least two"):
        AttackCheckPlan(("cw20",))
    with pytest.raises(ConfigError, match="unknown: \\['autoattack'\\]"):
        AttackCheckPlan(("cw20", "autoattack"))
    with pytest.raises(ConfigError, match="examples must be an integer"):
        AttackCheckPlan(("cw20", "pgd20-0.007"), examples=0)
    with pytest.raises(ConfigError, match="unknown \\[attack_check\\] keys"):
        AttackCheckPlan.from_spec({"protocols": ["cw20", "pgd20-0.007"], "checkpoint": "latest"})
    spec = write_spec(tmp_path, war=False)
    spec.write_text(spec.read_text() + '[attack_check]\nprotocols = ["pgd20-0.007", "cw20"]\nexamples = 50\n'
                    'seeds = [0]\n')
    study = load_study(spec)
    assert study.attack_check == AttackCheckPlan(("pgd20-0.007", "cw20"), 50, (0,))


def test_collect_reads_only_matching_finished_evaluations(tmp_path):
    spec = write_spec(tmp_path, war=False, seeds=(0,))
    spec.write_text(spec.read_text() + '[attack_check]\nprotocols = ["pgd20-0.007", "cw20"]\nexamples = 50\n')
    study = load_study(spec)
    run = study.grid_runs()[0]
    storage.write_json(study.run_dir(run) / "config.json", {"eval": {"attack": {"eps": 0.1}}})
    eval_dir = study.run_dir(run) / "eval"
    storage.write_json(eval_dir / "best_val_test_cw20_eps0.1_n50.json",
                  {"eps": 0.1, "num_examples": 50, "natural_accuracy": 0.7, "robust_accuracy": 0.3})
    storage.write_json(eval_dir / "best_val_test_pgd20-0.007_eps0.1_n500.json",  # another size: not this check's
                  {"eps": 0.1, "num_examples": 500, "natural_accuracy": 0.7, "robust_accuracy": 0.35})
    storage.write_json(eval_dir / "best_val_test_cw20_eps0.2_n50.json",          # another ε: not this run's
                  {"eps": 0.2, "num_examples": 50, "natural_accuracy": 0.7, "robust_accuracy": 0.1})
    rows = collect_attack_check(study)
    assert rows == [{"run": run.name, "width": run.width, "lam": run.lam, "seed": 0, "protocol": "cw20",
                     "eps": 0.1, "num_examples": 50, "natural_accuracy": 0.7, "robust_accuracy": 0.3}]


def test_attack_check_figure_is_written_from_fabricated_rows(tmp_path):
    from nt_robust.studies.figures import plot_attack_check

    rows = rows_for({"pgd20-0.007": [0.40, 0.45, 0.50, 0.55], "cw20": [0.38, 0.44, 0.47, 0.52]})
    paths = plot_attack_check(rows, tmp_path / "attack_check")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    assert plot_attack_check([], tmp_path / "none") is None


def test_attack_stage_without_a_plan_is_a_clear_error(tmp_path):
    from nt_robust.studies.pipeline import run_study

    study = load_study(write_spec(tmp_path, war=False))
    with pytest.raises(ConfigError, match="no \\[attack_check\\] section"):
        run_study(study, "attacks")

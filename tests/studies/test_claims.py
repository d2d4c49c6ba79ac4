"""The declared primary tests (docs/paper.md §9), claims 6 and 7 redesigned, the second
readings (stability split, margins, tuned λ) and the generated block of docs/results.md,
against hand-made rows and arrays and the committed files."""

import math
from pathlib import Path

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.studies.claims import evaluate_claims
from nt_robust.studies.contrasts import lam_averaged_slope, slope_weights
from nt_robust.studies.uncertainty import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from nt_robust.studies.verdicts import PRIMARY_TESTS, HypothesisTest, decide, primary_tests_hash
from nt_robust.studies.map_report import BEGIN, END, declaration_note, render_results_block, replace_block
from nt_robust.studies.mechanism import margin_slopes, stability_split, stability_split_table, tuned_robust
from nt_robust.studies.uncertainty import contrast_interval

ROOT = Path(__file__).resolve().parents[2]


def test_every_primary_test_is_declared_word_for_word_in_docs_paper():
    text = " ".join((ROOT / "docs" / "paper.md").read_text().split())
    for number, declaration in PRIMARY_TESTS.items():
        assert f"{number}. {declaration}." in text, f"claim {number}'s primary test is not declared in docs/paper.md §9"
    assert len(primary_tests_hash()) == 12


def test_stability_split_against_a_hand_made_example():
    # 6 images: correct ones 0-3 (stable: 0, 1), wrong ones 4-5 (stable: both)
    natural = np.array([1, 1, 1, 1, 0, 0])
    stable = np.array([1, 1, 0, 0, 1, 1])
    split = stability_split(natural, stable)
    assert split == {"stable": pytest.approx(4 / 6), "stable_given_correct": 0.5, "stable_given_wrong": 1.0,
                     "correct": 4, "wrong": 2}
    # P(stable) = P(correct)·P(stable | correct) + P(wrong)·P(stable | wrong)
    assert split["stable"] == pytest.approx(4 / 6 * 0.5 + 2 / 6 * 1.0)
    assert math.isnan(stability_split(np.ones(3), np.ones(3))["stable_given_wrong"])
    with pytest.raises(ValueError, match="differ in shape"):
        stability_split(np.ones(3), np.ones(4))


def grid(values, lams=(1.0, 4.0), widths=(16, 64, 256), seeds=(0, 1, 2), n=400, seed=0, margin_growth=0.0):
    """Rows and per-example arrays where ``values(width, lam, seed)`` gives (natural,
    stability, robust) probabilities; val = test arrays."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, np.int32)
    rows, examples = [], {}
    for width in widths:
        for lam in lams:
            for s in seeds:
                nat_p, stab_p, rob_p = values(width, lam, s)
                natural = (rng.random(n) < nat_p).astype(float)
                stable = (rng.random(n) < stab_p).astype(float)
                robust = (rng.random(n) < rob_p).astype(float)
                arrays = {"labels": labels, "natural_accuracy": natural, "perturbation_stability": stable,
                          "robust_accuracy": robust, "lipschitz_mean": rng.gamma(2.0, 1.0, n),
                          "clean_margin": rng.normal(1.0 + margin_growth * math.log2(width), 0.5, n)}
                name = f"w{width}_l{lam:g}_s{s}"
                examples[name] = {"test": arrays, "val": arrays}
                row = {"run": name, "width": width, "lam": lam, "seed": s, "war": False, "selection": "best_val",
                       "lam_final": lam, "train_seconds": 2.0}
                for split in ("test", "val"):
                    row.update({f"{split}_{m}": float(v.mean()) for m, v in arrays.items()
                                if m not in ("labels", "clean_margin")})
                rows.append(row)
    return rows, examples


def test_lam_averaged_slope_is_the_mean_of_the_per_lam_slopes_and_one_contrast():
    rows, examples = grid(lambda w, lam, s: (0.5 + 0.05 * math.log2(w / 16), 0.7, 0.3))
    iv = lam_averaged_slope(rows, "natural_accuracy", examples)
    # second implementation: per seed and image, numpy's fit at each λ, averaged over λ, then the interval
    x = np.log2([16, 64, 256])
    d = np.mean([[np.polyfit(x, np.stack([examples[f"w{w}_l{lam:g}_s{s}"]["test"]["natural_accuracy"]
                                          for w in (16, 64, 256)]), 1)[0] for s in range(3)] for lam in (1.0, 4.0)],
                axis=0)
    expected = contrast_interval(d)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((expected.estimate, expected.low, expected.high))
    assert np.allclose(slope_weights([16, 64, 256]), [-0.25, 0.0, 0.25])


def test_claim_3_is_one_holm_family_of_the_g_slope_and_the_steps():
    # robust accuracy drops from 64 to 256 (a step), natural rises: the family supports claim 3
    rows, examples = grid(lambda w, lam, s: (0.5 + 0.1 * math.log2(w / 16), 0.7, 0.5 if w < 256 else 0.3), seed=2)
    claim = {c.number: c for c in evaluate_claims(rows, examples=examples)}[3]
    assert [t.kind for t in claim.tests] == ["main", "step", "step"] and claim.verdict == SUPPORTED
    assert any("Holm" in e for e in claim.evidence if e.startswith("primary"))
    # decide() against hand-set adjusted p-values: a significant drop supports, a rising g alone contradicts
    up = HypothesisTest("g", contrast_interval(np.array([0.1, 0.11, 0.12])), False)
    drop = HypothesisTest("step", contrast_interval(np.array([-0.1, -0.11, -0.12])), True, kind="step")
    flat = HypothesisTest("step", contrast_interval(np.array([0.01, -0.01, 0.0])), True, kind="step")
    assert decide(3, [up, drop], [0.01, 0.02]) == SUPPORTED
    assert decide(3, [up, flat], [0.01, 0.9]) == CONTRADICTED
    assert decide(3, [up, drop], [0.2, 0.2]) == INCONCLUSIVE


def test_claim_6_flags_a_best_lam_at_the_grid_edge_instead_of_reading_a_trend():
    # every width's validation robust accuracy peaks at the largest λ (4): λ_s is at the edge
    rows, examples = grid(lambda w, lam, s: (0.6, 0.7, 0.3 + 0.05 * lam), seed=3)
    claim = {c.number: c for c in evaluate_claims(rows, examples=examples)}[6]
    assert claim.verdict == "inconclusive (grid edge)" and not claim.tests
    assert any("grid's largest λ" in n for n in claim.notes) and "(grid edge)" in claim.evidence[-2]
    # λ_s = 1 for the narrow model, λ* = 4 for the widest: tested, and λ* at the edge is flagged
    rows, examples = grid(lambda w, lam, s: (0.6, 0.7, 0.3 + (0.1 * lam if w == 256 else -0.1 * lam)), seed=4)
    claim = {c.number: c for c in evaluate_claims(rows, examples=examples)}[6]
    assert claim.verdict == SUPPORTED and "λ_up=4" in claim.tests[0].label
    assert any("may lie higher" in n for n in claim.notes)


def war_rows(rows, lam_s, lam_final, robust, width=256):
    out = []
    for s in (0, 1, 2):
        base = next(r for r in rows if r["width"] == width and r["lam"] == lam_s and r["seed"] == s)
        out.append({**base, "run": f"war_w{width}_s{s}", "war": True, "war_mode": "unweighted_ratio",
                    "lam_final": lam_final, "test_robust_accuracy": robust + 0.002 * s})
    return out


def test_claim_7_is_war_against_the_fixed_lam_and_flags_war_that_never_moved():
    rows, _ = grid(lambda w, lam, s: (0.6, 0.7, 0.4), seed=5)
    rows = [{**r, "test_robust_accuracy": 0.40 + 0.001 * r["seed"]} for r in rows]   # summaries only: seed spread
    final = [{**r, "selection": "final"} for r in rows]
    moved = war_rows(rows, 1.0, 7.5, 0.45)
    claim = {c.number: c for c in evaluate_claims(rows + final + moved + [{**r, "selection": "final"} for r in moved])}[7]
    assert claim.verdict == SUPPORTED   # +0.05 over the fixed λ_s, seed spread only
    assert claim.tests[0].interval.estimate == pytest.approx(0.051)
    cost = next(e for e in claim.evidence if e.startswith("WAR unweighted_ratio"))
    assert "3 run(s) / 6 s" in cost and "the λ grid at this width 6 runs / 12 s" in cost   # 2 s per run
    still = war_rows(rows, 1.0, 1.0, 0.45)
    claim = {c.number: c for c in evaluate_claims(rows + still)}[7]
    assert claim.verdict == "not exercised" and any("never moved" in n for n in claim.notes)
    # a grid without WAR's starting λ at that width: a note, never a silent verdict
    absent = war_rows(rows, 1.0, 7.5, 0.45)
    absent = [{**r, "lam": 2.0} for r in absent]
    claim = {c.number: c for c in evaluate_claims(rows + absent)}[7]
    assert claim.verdict == "not evaluated" and any("lacks WAR's starting λ_s=2" in n for n in claim.notes)


def test_readings_split_margins_and_tuned_lam():
    rows, examples = grid(lambda w, lam, s: (0.5 + 0.1 * math.log2(w / 16), 0.8, 0.3 + 0.02 * lam),
                          margin_growth=0.5, seed=6)
    table = stability_split_table(rows, examples)
    cell = next(c for c in table["cells"] if c["lam"] == 1.0 and c["width"] == 16)
    runs = [examples[f"w16_l1_s{s}"]["test"] for s in range(3)]
    assert cell["stable_given_correct"] == pytest.approx(np.mean([
        a["perturbation_stability"][a["natural_accuracy"] == 1].mean() for a in runs]))
    margins = margin_slopes(rows, examples)
    assert margins["missing"] == [] and margins["per_lam"][0]["clean_margin"]["estimate"] == pytest.approx(0.5, abs=0.05)
    tuned = tuned_robust(rows, examples)
    assert [c["lam"] for c in tuned["cells"]] == [4.0, 4.0, 4.0] and tuned["slope"] is not None
    # arrays from before clean_margin was recorded: named, not a crash
    for name in list(examples)[:2]:
        del examples[name]["test"]["clean_margin"]
    assert margin_slopes(rows, examples)["missing"] == sorted(list(examples)[:2])


def test_results_block_regenerates_from_the_committed_map_json():
    doc = (ROOT / "docs" / "results.md").read_text()
    block = render_results_block(storage.read_json(ROOT / "figures" / "regime_map" / "map.json"))
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    assert doc[start:end] == block, "docs/results.md's generated block is stale: run " \
        "`nt-robust map --from-json figures/regime_map/map.json --results-doc docs/results.md`"
    assert replace_block(doc, block) == doc
    with pytest.raises(ValueError, match="no generated block"):
        replace_block("# a doc without markers\n", block)


def test_declaration_note_says_when_the_primary_tests_changed_after_results():
    new = {"primary_tests": "aaaa"}
    assert declaration_note(None, new) is None and declaration_note({"primary_tests": "aaaa"}, new) is None
    assert "changed after results existed" in declaration_note({"primary_tests": "bbbb"}, new)
    assert "declared after" in declaration_note({"built_on": {"time_utc": "t"}}, new)


def test_rejudge_recomputes_a_stored_interval_and_bounds_an_average(tmp_path):
    from nt_robust.studies.rejudge import from_report, parse, rejudge

    line = "- λ=1: width 16→1024 +0.0370 [+0.0168, +0.0572] (3 seeds × 1000 test images; SE 0.0079 = seeds " \
           "0.0062 ⊕ test points 0.0048, df 5.0) → supported [16: 0.6967]"
    stored = parse(line)
    assert stored == {"estimate": 0.037, "old_low": 0.0168, "old_high": 0.0572, "seeds": 3, "se_seed": 0.0062,
                      "se_test": 0.0048}
    new = rejudge([(1.0, stored)])
    half = math.sqrt(4.302653 ** 2 * 0.0062 ** 2 + 1.959964 ** 2 * 0.0048 ** 2)
    assert (new["low"], new["high"]) == pytest.approx((0.037 - half, 0.037 + half), rel=1e-5)
    # the average of two: the SE parts are bounded by the average of the parts (Cauchy–Schwarz)
    two = rejudge([(0.5, stored), (0.5, {**stored, "estimate": 0.017})])
    assert two["estimate"] == pytest.approx(0.027) and two["high"] - two["estimate"] == pytest.approx(half, rel=1e-5)
    report = tmp_path / "report.md"
    report.write_text("# x\n\n**1. At fixed λ, natural accuracy rises with width.** — *supported*\n" + line + "\n"
                      + line.replace("λ=1", "λ=4").replace("+0.0370", "-0.0370") + "\n")
    claim = from_report(report)[1]
    assert claim["primary"]["estimate"] == pytest.approx(0.0) and claim["verdict"] == "inconclusive (bound)"
    assert [lam for lam, *_ in claim["secondary"]] == [1.0, 4.0]


def test_study_results_keep_the_first_declaration_and_say_when_it_changed(tmp_path):
    from nt_robust.studies.pipeline import declaration_check

    path = tmp_path / "results" / "primary_tests.json"
    assert declaration_check(path) is None                                  # first report: stored
    assert storage.read_json(path)["hash"] == primary_tests_hash() and declaration_check(path) is None
    storage.write_json(path, {**storage.read_json(path), "hash": "0123456789ab"})    # tests changed since
    note = declaration_check(path)
    assert "changed after these results were first stored" in note and "0123456789ab" in note


def test_map_from_json_rewrites_only_the_block_and_refuses_what_it_cannot_do(tmp_path, capsys):
    from nt_robust.cli import main

    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nbefore\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    source = str(ROOT / "figures" / "regime_map" / "map.json")
    assert main(["map", "--from-json", source, "--results-doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert render_results_block(storage.read_json(Path(source))) in text
    assert main(["map", "--from-json", source]) == 2                       # nothing to write
    assert main(["map"]) == 2                                               # nothing to read
    (tmp_path / "plain.md").write_text("no markers\n")
    assert main(["map", "--from-json", source, "--results-doc", str(tmp_path / "plain.md")]) == 2
    assert "no generated block" in capsys.readouterr().err

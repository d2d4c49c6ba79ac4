"""Robust overfitting (best held-out minus final epoch) against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nt_robust.studies.overfitting import overfitting_json, overfitting_lines, robust_overfitting

T_975_2DF = 4.302652729911275      # Student t quantile, 0.975 at 2 df (tables)
LABELS = np.array([0, 1, 2, 3])


def _rows_and_examples(drop_by_seed: dict[int, float], arrays: bool = True):
    """2 widths × 2 λ × 3 seeds. The best-held-out robust accuracy of every image is 1 at the
    widest width; the final epoch loses ``drop`` of the four images (the same share on each
    image, as a fraction), so best − final = drop for every image of that seed."""
    rows, best, final = [], {}, {}
    for width in (16, 64):
        for lam in (1.0, 6.0):
            for seed, drop in drop_by_seed.items():
                run = f"w{width}_l{lam}_s{seed}"
                d = drop if width == 64 else 0.0
                b = np.ones(4)
                f = np.full(4, 1.0 - d)
                for selection, values in (("best_val", b), ("final", f)):
                    rows.append({"run": run, "selection": selection, "war": False, "width": width, "lam": lam,
                                 "seed": seed, "epoch": 40 if selection == "best_val" else 100,
                                 "test_robust_accuracy": float(values.mean()),
                                 "test_natural_accuracy": 0.5 + 0.1 * seed})
                    if arrays:
                        target = best if selection == "best_val" else final
                        target[run] = {"test": {"labels": LABELS, "robust_accuracy": values}}
    return rows, (best if arrays else None), (final if arrays else None)


def test_primary_is_widest_width_mean_over_lam_with_student_t_when_images_agree():
    rows, best, final = _rows_and_examples({0: 0.1, 1: 0.2, 2: 0.3})
    table = robust_overfitting(rows, best, final)
    iv = table["primary"]["interval"]
    assert table["primary"]["width"] == 64 and table["primary"]["lams"] == [1.0, 6.0]
    # per-seed differences 0.1, 0.2, 0.3 (no spread over images): mean 0.2, s = 0.1, n = 3
    half = T_975_2DF * 0.1 / math.sqrt(3)
    assert iv.estimate == pytest.approx(0.2)
    assert (iv.low, iv.high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert iv.low < 0 < iv.high          # 0.2 ± 0.248: not shown with 3 seeds this spread
    assert "not shown" in "\n".join(overfitting_lines(table))


def test_overfitting_shows_when_every_seed_drops_alike():
    rows, best, final = _rows_and_examples({0: 0.2, 1: 0.25, 2: 0.3})
    table = robust_overfitting(rows, best, final)
    iv = table["primary"]["interval"]
    half = T_975_2DF * 0.05 / math.sqrt(3)
    assert iv.estimate == pytest.approx(0.25) and iv.low == pytest.approx(0.25 - half) and iv.low > 0
    assert overfitting_json(table)["primary"]["overfitting"] == "shows"


def test_cells_are_holm_adjusted_over_all_cells():
    rows, best, final = _rows_and_examples({0: 0.2, 1: 0.25, 2: 0.3})
    cells = robust_overfitting(rows, best, final)["cells"]
    assert [(c["width"], c["lam"]) for c in cells] == [(16, 1.0), (16, 6.0), (64, 1.0), (64, 6.0)]
    raw = [c["interval"].p_value for c in cells]
    # width 16 never drops: estimate 0, no spread at all -> nan p; Holm over the finite ones by hand
    finite = sorted((p, i) for i, p in enumerate(raw) if not math.isnan(p))
    m, running, expected = len(finite), 0.0, {}
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        expected[i] = running
    for i, cell in enumerate(cells):
        if i in expected:
            assert cell["holm_p"] == pytest.approx(expected[i])
    assert cells[2]["best_epoch_mean"] == 40


def test_without_arrays_the_seed_spread_of_the_summaries_is_used():
    rows, _, _ = _rows_and_examples({0: 0.1, 1: 0.2, 2: 0.3}, arrays=False)
    iv = robust_overfitting(rows, None, None)["primary"]["interval"]
    assert iv.examples == 1 and iv.estimate == pytest.approx(0.2)
    assert iv.high - iv.estimate == pytest.approx(T_975_2DF * 0.1 / math.sqrt(3))


def test_narrowest_natural_accuracy_is_reported_per_lam():
    rows, best, final = _rows_and_examples({0: 0.1, 1: 0.2, 2: 0.3})
    narrow = robust_overfitting(rows, best, final)["narrowest_natural"]
    assert narrow == [{"lam": 1.0, "natural": pytest.approx(0.6), "seeds": 3},
                      {"lam": 6.0, "natural": pytest.approx(0.6), "seeds": 3}]


def test_missing_final_reading_is_a_note_not_a_crash():
    rows, best, final = _rows_and_examples({0: 0.1, 1: 0.2})
    rows = [r for r in rows if r["selection"] != "final"]
    table = robust_overfitting(rows, best, final)
    assert table["primary"] is None and "final" in table["missing"]
    assert any(line.startswith("Not measured") for line in overfitting_lines(table))
    assert overfitting_json(table)["cells"] == []


def test_the_measurement_is_declared_word_for_word_in_the_paper_notes():
    from pathlib import Path

    from nt_robust.studies.overfitting import OVERFITTING_TEST

    text = (Path(__file__).resolve().parents[2] / "docs" / "paper.md").read_text()
    assert f"- {OVERFITTING_TEST}\n" in text


def test_widest_fit_sets_final_training_accuracy_beside_test_accuracy():
    rows, best, final = _rows_and_examples({0: 0.1, 1: 0.2, 2: 0.3})
    for row in rows:   # the trainer stores train_accuracy in the final record only
        row["train_accuracy"] = (0.9 + 0.01 * row["seed"]) if row["selection"] == "final" else None
    table = robust_overfitting(rows, best, final)
    fit = table["widest_fit"]
    assert [f["lam"] for f in fit] == [1.0, 6.0] and all(f["seeds"] == 3 for f in fit)
    assert fit[0]["train_accuracy"] == pytest.approx(0.91)                # (0.90 + 0.91 + 0.92) / 3
    assert fit[0]["test_natural"] == pytest.approx(0.6)                   # (0.5 + 0.6 + 0.7) / 3
    assert fit[0]["test_robust"] == pytest.approx(1 - 0.2)                # mean final robust at width 64
    assert overfitting_json(table)["widest_fit"] == fit
    assert "λ = 1: 0.910 / 0.600 / 0.800" in "\n".join(overfitting_lines(table))
    for row in rows:
        row["train_accuracy"] = None                                      # runs that did not store it
    lines = "\n".join(overfitting_lines(robust_overfitting(rows, best, final)))
    assert "λ = 1: - / 0.600 / 0.800" in lines

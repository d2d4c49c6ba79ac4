"""The width slope (a least-squares fit against log2 width, as a linear contrast) and the
regime map, against hand computations and fabricated studies."""

import math
from pathlib import Path

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.cli import main
from nt_robust.studies.contrasts import contrast, linear_contrast, slope_weights, width_slope
from nt_robust.studies.regime_map import build_map, load_regime, write_map
from nt_robust.studies.sweep import load_study
from nt_robust.studies.uncertainty import SUPPORTED, contrast_interval, t_quantile

from test_studies import fabricate_run, write_spec  # noqa: E402 (pytest puts this folder on sys.path)


def test_slope_weights_by_hand_and_their_invariants():
    np.testing.assert_allclose(slope_weights([1, 2, 4]), [-0.5, 0.0, 0.5])
    # x = 4, 6, 8, 10: centred −3, −1, 1, 3 over Σ = 20
    np.testing.assert_allclose(slope_weights([16, 64, 256, 1024]), [-0.15, -0.05, 0.05, 0.15])
    for widths in ([1, 2, 4], [16, 64, 256, 1024], [3, 5, 40]):
        c, x = slope_weights(widths), np.log2(widths)
        assert c.sum() == pytest.approx(0.0, abs=1e-12)          # a constant has slope 0
        assert float(c @ x) == pytest.approx(1.0)                 # a unit-slope line has slope 1
    with pytest.raises(ValueError, match="two distinct widths"):
        slope_weights([8, 8])


def rows_for(values: dict[tuple[int, int], float], metric: str = "robust_accuracy"):
    return [{"run": f"w{w}_s{s}", "width": w, "seed": s, f"test_{metric}": v} for (w, s), v in values.items()]


def test_width_slope_is_the_seed_mean_of_least_squares_fits_with_a_t_interval():
    widths, seeds = [8, 32, 128, 512], [0, 1, 2]
    rng = np.random.default_rng(0)
    values = {(w, s): 0.3 + 0.01 * s + 0.02 * math.log2(w) + rng.normal(0, 0.005) for w in widths for s in seeds}
    iv = width_slope(rows_for(values), "robust_accuracy")
    per_seed = [np.polyfit(np.log2(widths), [values[(w, s)] for w in widths], 1)[0] for s in seeds]
    assert iv.estimate == pytest.approx(np.mean(per_seed))
    assert iv.df == 2
    half = t_quantile(0.975, 2) * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert (iv.low, iv.high) == pytest.approx((np.mean(per_seed) - half, np.mean(per_seed) + half))
    # two widths: the slope is the difference over log2 of their ratio
    two = {k: v for k, v in values.items() if k[0] in (8, 128)}
    diff = contrast(rows_for({k: v for k, v in two.items() if k[0] == 8}),
                    rows_for({k: v for k, v in two.items() if k[0] == 128}), "robust_accuracy")
    assert width_slope(rows_for(two), "robust_accuracy").estimate == pytest.approx(diff.estimate / 4)


def test_width_slope_with_per_example_arrays_matches_a_fit_per_seed_and_image():
    widths, seeds, n = [1, 2, 4], [0, 1, 2], 40
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, n)
    per = {(w, s): (rng.random(n) < 0.4 + 0.05 * math.log2(w)).astype(np.float64) for w in widths for s in seeds}
    rows = rows_for({k: float(v.mean()) for k, v in per.items()})
    examples = {f"w{w}_s{s}": {"test": {"robust_accuracy": per[(w, s)], "labels": labels}} for w, s in per}
    iv = width_slope(rows, "robust_accuracy", examples)
    # a second implementation: numpy's least-squares fit for every (seed, image), then the interval of their table
    d = np.array([[np.polyfit(np.log2(widths), [per[(w, s)][i] for w in widths], 1)[0] for i in range(n)]
                  for s in seeds])
    expected = contrast_interval(d)
    assert iv.examples == n
    assert (iv.estimate, iv.low, iv.high, iv.df) == pytest.approx((expected.estimate, expected.low, expected.high,
                                                                   expected.df))
    # pairing by example needs the same images: other labels are refused
    examples["w4_s2"]["test"]["labels"] = (labels + 1) % 10
    with pytest.raises(ValueError, match="different test examples"):
        width_slope(rows, "robust_accuracy", examples)


def test_linear_contrast_uses_only_seeds_every_group_has():
    a = rows_for({(1, 0): 0.1, (1, 1): 0.2, (1, 2): 0.3})
    b = rows_for({(2, 1): 0.5, (2, 2): 0.9})
    iv = linear_contrast([(-1.0, a), (1.0, b)], "robust_accuracy")
    assert iv.seeds == 2 and iv.estimate == pytest.approx(((0.5 - 0.2) + (0.9 - 0.3)) / 2)


def regime_spec(tmp_path, name: str, subset: int):
    spec = write_spec(tmp_path / name, war=False, seeds=(0, 1, 2))
    spec.write_text(spec.read_text().replace('name = "fab"', f'name = "{name}"')
                    .replace('set = ["train.epochs=3"]', f'set = ["train.epochs=3", "data.train_subset={subset}"]'))
    return spec


def test_map_of_two_fabricated_regimes_marks_each_claim_and_lists_an_unrun_one(tmp_path, capsys):
    noise = {0: -0.002, 1: 0.001, 2: 0.003}
    specs = []
    for name, subset, stability_slope in (("small", 1000, -0.03), ("large", 5000, 0.03)):
        spec = regime_spec(tmp_path, name, subset)
        study = load_study(spec)
        for run in study.grid_runs():
            w = math.log2(run.width)
            fabricate_run(study, run, natural=0.5 + 0.05 * w + noise[run.seed], robust=0.35 + noise[run.seed],
                          stability=0.8 + stability_slope * w + 0.002 * run.lam + noise[run.seed],
                          lipschitz=2.0 * w + noise[run.seed])
        specs.append(spec)
    specs.append(regime_spec(tmp_path, "unrun", 20000))
    out = tmp_path / "map"
    assert main(["map", *map(str, specs), "--out", str(out)]) == 0
    result = storage.read_json(out / "map.json")
    small, large, unrun = result["regimes"]
    assert small["label"] == "MLP-2 · n=1k · 3 ep · 28x28" and small["status"] == "complete"
    assert unrun["status"] == "not run" and unrun["readings"] == {} and "nt-robust study" in unrun["command"]
    for reading in ("best_val", "final"):   # both readings, side by side
        claim2 = {r["name"]: next(c for c in r["readings"][reading]["claims"] if c["number"] == 2)
                  for r in (small, large)}
        assert claim2["small"]["verdict"] == SUPPORTED and claim2["large"]["verdict"] == "contradicted"
        assert claim2["small"]["tests"][0]["p_holm_map"] == pytest.approx(min(1.0, 2 * min(
            claim2["small"]["tests"][0]["p"], claim2["large"]["tests"][0]["p"])) if claim2["small"]["tests"][0]["p"] <=
            claim2["large"]["tests"][0]["p"] else max(claim2["small"]["tests"][0]["p"], 2 * claim2["large"]["tests"][0]["p"]))
    # fabricated runs have no per-example arrays: each reading says so, per regime, and the map lists it
    assert "summary.json" in small["readings"]["final"]["source"]
    assert any("MLP-2 · n=1k" in n and "eval/final_test.npz" in n for n in small["notes"])
    assert result["primary_tests"] and all("q_bh" in s for s in small["readings"]["best_val"]["slopes"])
    slope = next(s for s in small["readings"]["best_val"]["slopes"]
                 if s["metric"] == "perturbation_stability" and s["lam"] == 1.0)
    assert slope["estimate"] == pytest.approx(-0.03) and slope["direction"] == "falls"
    assert slope["high"] < 0 and slope["paper"] == "falls"
    flat = next(s for s in large["readings"]["best_val"]["slopes"] if s["metric"] == "robust_accuracy" and s["lam"] == 6.0)
    assert flat["estimate"] == pytest.approx(0.0, abs=1e-12)   # robust accuracy has no width trend
    for name in ("map.md", "slopes.png", "slopes.pdf", "claims.png", "claims.pdf"):
        assert (out / name).stat().st_size > 0
    text = (out / "map.md").read_text()
    assert "not run" in text and f"nt-robust study {specs[2]}" in text
    # fabricated best and final readings are equal: no overfitting, measured at the widest width
    overfit = small["overfitting"]["primary"]
    assert overfit["width"] == max(small["axes"]["widths"]) and overfit["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert "## Robust overfitting" in text and "overfitting" not in unrun
    # beside it: the best checkpoint's epoch (the fabricated runs' last, 3) and no stored training accuracy
    row = next(line for line in text.splitlines() if line.startswith("| MLP-2 · n=1k") and "not shown" in line)
    assert [c.strip() for c in row.strip("|").split("|")][-2:] == ["3 of 3", "-"]
    assert "MLP-2 · n=1k · 3 ep · 28x28" in capsys.readouterr().out


def test_map_refuses_a_training_config_and_a_repeated_study(tmp_path):
    spec = regime_spec(tmp_path, "small", 1000)
    assert main(["map", "experiments/quick_fmnist.toml"]) == 2
    assert main(["map", str(spec), str(spec), "--out", str(tmp_path / "m")]) == 2


def test_partial_regime_is_drawn_from_its_finished_runs(tmp_path):
    study = load_study(regime_spec(tmp_path, "part", 1000))
    for run in study.grid_runs()[: len(study.grid_runs()) // 2]:
        fabricate_run(study, run, natural=0.5, robust=0.3, stability=0.8, lipschitz=1.0)
    regime = load_regime(study)
    assert regime.status == "partial" and 0 < regime.runs_finished < regime.runs_total
    result = build_map([regime])
    paths = write_map(result, tmp_path / "m")
    assert all(p.exists() for p in paths)


def test_study_report_links_the_predicted_vs_measured_figure_of_its_architecture(tmp_path, monkeypatch):
    from nt_robust.studies import pipeline

    study = load_study(regime_spec(tmp_path, "small", 1000))
    for run in study.grid_runs():
        fabricate_run(study, run, natural=0.5, robust=0.3, stability=0.8, lipschitz=1.0)
    theory = tmp_path / "theory"
    monkeypatch.setattr(pipeline, "THEORY_DIR", theory)
    assert pipeline.theory_figures("small", {"mlp"}) == []            # nothing measured yet
    storage.write_json(theory / "trained.json", {"studies": {"other_mlp": {"arch": "mlp"}, "a_wrn": {"arch": "wrn"}}})
    for name in ("other_mlp", "a_wrn"):
        (theory / f"trained_{name}.png").write_bytes(b"png")
    assert pipeline.theory_figures("small", {"mlp"}) == [theory / "trained_other_mlp.png"]
    report = pipeline.build_report(study, tmp_path / "report")
    text = report.read_text()
    assert "## Predicted vs measured" in text and "trained_other_mlp.png" in text and "a_wrn" not in text
    (theory / "trained_small.png").write_bytes(b"png")                # its own runs' figure wins
    assert pipeline.theory_figures("small", {"mlp"}) == [theory / "trained_small.png"]


def test_runs_parent_puts_each_study_under_its_own_name(tmp_path):
    spec = regime_spec(tmp_path, "small", 1000)
    assert load_study(spec, runs_parent=tmp_path / "build").runs_root == tmp_path / "build" / "small"
    assert load_study(spec, tmp_path / "exact").runs_root == tmp_path / "exact"
    with pytest.raises(ValueError, match="not both"):
        load_study(spec, tmp_path / "exact", runs_parent=tmp_path / "build")


def test_bad_input_gives_notes_naming_the_regime_and_the_gap_never_a_crash(tmp_path):
    """Regimes with different metric sets (no Lipschitz), runs without a final record
    (from before it was stored), and a regime whose arrays contradict their summaries."""
    specs = []
    for name, subset in (("nolip", 1000), ("nofinal", 5000), ("broken", 20000)):
        spec = regime_spec(tmp_path, name, subset)
        study = load_study(spec)
        for run in study.grid_runs():
            w = math.log2(run.width)
            fabricate_run(study, run, natural=0.5 + 0.05 * w + 0.001 * run.seed, robust=0.35 + 0.001 * run.seed,
                          stability=0.8 - 0.01 * w, lipschitz=None if name == "nolip" else 1.0 + w)
            if name == "nofinal" and run.seed == 0:
                summary = storage.read_json(study.run_dir(run) / "summary.json")
                del summary["final"]
                storage.write_json(study.run_dir(run) / "summary.json", summary)
            if name == "broken":   # per-example arrays whose mean is not the summary's
                n = 10
                storage.save_arrays(study.run_dir(run) / "eval" / "best_val_test.npz",
                               {"labels": np.zeros(n, np.int32), "clean_pred": np.zeros(n, np.int32),
                                "adv_pred": np.zeros(n, np.int32), "lipschitz": np.ones(n)})
        specs.append(spec)
    out = tmp_path / "map"
    assert main(["map", *map(str, specs), "--out", str(out)]) == 0
    result = storage.read_json(out / "map.json")
    nolip, nofinal, broken = result["regimes"]
    assert any("MLP-2 · n=1k" in n and "no lipschitz_mean" in n for n in nolip["notes"])
    claim4 = next(c for c in nolip["readings"]["best_val"]["claims"] if c["number"] == 4)
    assert claim4["verdict"] == "not evaluated" and claim4["notes"]
    assert any("n=5k" in n and "no final epoch record" in n for n in nofinal["notes"])
    assert nofinal["readings"]["final"]["claims"]                   # judged on the runs that have it
    assert any("n=20k" in n and "not judged" in n and "averages to" in n for n in broken["notes"])
    assert "final" in broken["readings"]                             # the other reading still stands
    text = (out / "map.md").read_text()
    assert "## What is missing or flagged" in text and "no lipschitz_mean" in text


def test_committed_maps_render_from_their_committed_json():
    # Every committed map of the current format (both readings, primary tests): its map.md is
    # what map_report renders from its map.json, so the numbers docs/results.md quotes from
    # either are the same numbers. (figures/regime_map predates issue 33's format.)
    from nt_robust.studies.map_report import render_map

    root = Path(__file__).resolve().parents[2] / "figures"
    maps = [p.parent for p in sorted(root.glob("**/map.json")) if "primary_tests" in storage.read_json(p)]
    assert maps, "no committed map of the current format"
    for folder in maps:
        figures = [folder / name for name in ("slopes.png", "claims.png") if (folder / name).exists()]
        assert render_map(storage.read_json(folder / "map.json"), figures, folder) == (folder / "map.md").read_text(), folder

"""Sweeps, aggregation, WAR's λ rule, claims and figures, on fabricated run directories."""

import math
from pathlib import Path

import pytest

from nt_robust import storage
from nt_robust.config import ConfigError, load_config, to_dict
from nt_robust.studies.aggregate import collect_curves, collect_runs, write_table
from nt_robust.studies.claims import evaluate_claims
from nt_robust.studies.contrasts import contrast
from nt_robust.studies.uncertainty import SUPPORTED
from nt_robust.studies.figures import make_all_figures
from nt_robust.studies.sweep import load_study, resolve_overrides, run_index
from nt_robust.train import ExperimentConfig
from nt_robust.train.config import WarConfig
from nt_robust.train.war import WarController, epoch_ratio, reference_ratio

REPO = Path(__file__).parents[2]


def write_tiny_base(path: Path, data: str = "", eval: str = "") -> Path:
    """A tiny synthetic-data MLP config for end-to-end study tests; ``data`` and ``eval`` add
    lines to those sections."""
    path.write_text(f'''name = "tiny"
[data]
dataset = "synthetic"
val_size = 64
crop_padding = 1
{data}
[model]
arch = "mlp"
depth = 1
[train_attack]
num_steps = 2
[eval]
val_examples = 64
test_examples = 64
batch_size = 64
{eval}
[eval.attack]
num_steps = 3
[optim]
lr = 0.05
[train]
epochs = 2
batch_size = 64
progress = false
''')
    return path


def write_spec(tmp_path: Path, war: bool = True, seeds=(0, 1)) -> Path:
    spec = tmp_path / "experiments" / "study.toml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    text = f'''name = "fab"
base_config = "{REPO / 'experiments' / 'quick_fmnist.toml'}"
runs_root = "{tmp_path / 'runs'}"
seeds = {list(seeds)}
set = ["train.epochs=3"]
[grid]
"model.width" = [8, 32, 128]
"objective.lam" = [1.0, 6.0]
'''
    if war:
        text += '[war]\nreference_width = 8\nwidths = [32, 128]\n'
    spec.write_text(text)
    return spec


def fabricate_run(study, run, natural: float, robust: float, stability: float, lipschitz: float,
                  lam_final: float | None = None, seconds: float = 10.0) -> None:
    """A finished run directory with the files the engine writes, with given test metrics."""
    config = load_config(ExperimentConfig, study.base_config, resolve_overrides(study, run)
                         if run.stage == "grid" else list(run.overrides) + ["war.enabled=true", "war.target_ratio=0.2"])
    run_dir = study.run_dir(run)
    storage.write_json(run_dir / "config.json", to_dict(config))
    rows = []
    for epoch in (1, 2, 3):
        scale = epoch / 3
        record = {"epoch": epoch, "lam": config.objective.lam, "train_natural_loss": 1.0 / epoch,
                  "train_regularizer": 0.1, "epoch_seconds": seconds / 3}
        for split in ("val", "test"):
            record.update({f"{split}_natural_accuracy": natural * scale, f"{split}_robust_accuracy": robust * scale,
                           f"{split}_perturbation_stability": stability, f"{split}_lipschitz_mean": lipschitz,
                           f"{split}_num_examples": 100})
        rows.append(record)
    storage.write_jsonl(run_dir / "metrics.jsonl", rows)
    best = {k: v for k, v in rows[-1].items() if k.startswith(("epoch", "val_", "test_"))}
    storage.write_json(run_dir / "summary.json", {
        "model": config.model.label, "objective": "trades", "lam": config.objective.lam,
        "lam_final": lam_final or config.objective.lam, "final": rows[-1], "train_seconds_total": seconds,
        "selected_by_val_robust_accuracy": best, "selected_by_test_robust_accuracy_paper_protocol": best,
        "backend": "cpu", "devices": 1})


def test_sweep_expands_to_indexed_runs_grid_first(tmp_path):
    study = load_study(write_spec(tmp_path))
    runs = study.runs()
    assert len(runs) == 3 * 2 * 2 + 2 * 2
    assert [r.index for r in runs] == list(range(len(runs)))
    assert len({r.name for r in runs}) == len(runs)
    assert [r.stage for r in runs] == ["grid"] * 12 + ["war"] * 4
    first = runs[0]
    assert first.width == 8 and first.lam == 1.0 and first.seed == 0
    config = load_config(ExperimentConfig, study.base_config, list(first.overrides))
    assert config.model.width == 8 and config.objective.lam == 1.0 and config.train.epochs == 3


def test_bad_specs_are_clear_errors(tmp_path):
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('"model.width" = [8, 32, 128]', '"model.widht" = [8]'))
    with pytest.raises(ConfigError):
        load_study(spec)
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(tmp_path / "nope.toml")


def test_finished_runs_are_skipped_and_war_waits_for_the_grid(tmp_path):
    study = load_study(write_spec(tmp_path))
    war_run = study.war_runs()[0]
    with pytest.raises(RuntimeError, match="need the λ grid of width 8"):
        resolve_overrides(study, war_run)
    grid = study.grid_runs()
    # λ=6 is better than λ=1 for width 8 on held-out robust accuracy.
    for run in grid:
        fabricate_run(study, run, 0.8, 0.4 if run.lam == 6.0 else 0.3, 0.7, 5.0)
    summary = run_index(study, 0)  # finished: returns the summary without training
    assert summary["lam"] == 1.0
    overrides = resolve_overrides(study, war_run)
    assert "objective.lam=6.0" in overrides and "war.enabled=true" in overrides
    reference = next(o for o in overrides if o.startswith("war.reference_run="))
    assert "width8_lam6_seed0" in reference
    with pytest.raises(ConfigError, match="out of range"):
        run_index(study, 99)


def test_aggregation_reads_fabricated_run_directories(tmp_path):
    study = load_study(write_spec(tmp_path, war=False))
    for run in study.grid_runs():
        fabricate_run(study, run, natural=0.5 + run.width / 1000, robust=0.3, stability=0.9 - run.width / 1000,
                      lipschitz=run.width)
    (study.runs_root / "not_finished").mkdir()
    rows = collect_runs(study.runs_root.iterdir())
    assert len(rows) == 12 * 3  # final, best_val, best_test per run
    row = next(r for r in rows if r["run"] == "width128_lam6_seed1" and r["selection"] == "best_val")
    assert row["width"] == 128 and row["lam"] == 6.0 and row["seed"] == 1 and row["epoch"] == 3
    assert row["test_natural_accuracy"] == pytest.approx(0.628)
    assert row["eval_eps"] == 0.1 and row["train_eps"] == 0.1
    write_table(rows, tmp_path / "out" / "results")
    assert storage.read_json(tmp_path / "out" / "results.json") == rows
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows) and csv_lines[0].startswith("run,")
    assert len(collect_curves(study.runs_root.iterdir())) == 12 * 3


def test_claims_follow_fabricated_trends(tmp_path):
    study = load_study(write_spec(tmp_path))
    noise = {0: -0.002, 1: 0.002}
    for run in study.grid_runs():
        w = math.log2(run.width)
        fabricate_run(study, run, natural=0.5 + 0.05 * w + noise[run.seed],
                      robust=0.35 + noise[run.seed] + (0.01 * run.lam if run.width == 128 else 0.0),
                      stability=0.9 - 0.03 * w + 0.002 * run.lam + noise[run.seed],
                      lipschitz=2.0 * w + noise[run.seed])
    for run in study.war_runs():
        fabricate_run(study, run, natural=0.8, robust=0.41 + noise[run.seed], stability=0.7, lipschitz=10.0,
                      lam_final=9.0)
    claims = {c.number: c for c in evaluate_claims(collect_runs(study.runs_root.iterdir()))}
    assert claims[1].verdict == SUPPORTED          # natural accuracy rises with width
    assert claims[2].verdict == SUPPORTED          # stability falls with width
    assert claims[4].verdict == SUPPORTED          # Lipschitz rises
    assert claims[3].verdict == SUPPORTED          # robust rises far less than natural
    assert claims[6].verdict == SUPPORTED          # best λ: 1 at width 8 (tie → smaller), 6 at width 128
    assert claims[8].verdict == "not evaluated"


def test_contrast_pairs_by_seed_and_uses_t_not_two_standard_errors():
    def rows(values, width):
        return [{"run": f"w{width}_s{s}", "seed": s, "test_robust_accuracy": v} for s, v in enumerate(values)]
    # two seeds, differences 0.10 and 0.12: SE 0.01 with 1 df, so the interval is ±12.7 SE
    two = contrast(rows([0.50, 0.52], 8), rows([0.60, 0.64], 128), "robust_accuracy")
    assert two.df == 1 and two.estimate == pytest.approx(0.11) and two.high - two.estimate == pytest.approx(
        12.706 * 0.01, abs=1e-4)
    assert "seed spread only" in two.describe()
    # a difference of 0.02 ± 0.005 (1 df) is "two standard errors" away from 0 but inconclusive
    small = contrast(rows([0.50, 0.52], 8), rows([0.515, 0.545], 128), "robust_accuracy")
    assert small.low < 0 < small.high
    # pairing by seed: the seeds' common offset cancels
    paired = contrast(rows([0.40, 0.60], 8), rows([0.45, 0.65], 128), "robust_accuracy")
    assert paired.se == pytest.approx(0.0, abs=1e-12) and paired.low > 0
    one = contrast(rows([0.5], 8), rows([0.9], 128), "robust_accuracy")
    assert math.isnan(one.se) and "one seed" in one.describe()   # one seed: no spread, no interval


def test_figures_are_written_from_a_fabricated_table(tmp_path):
    study = load_study(write_spec(tmp_path))
    for run in study.grid_runs():
        fabricate_run(study, run, 0.5 + run.width / 1000, 0.3 + run.lam / 100, 0.8, run.width / 10)
    for run in study.war_runs():
        fabricate_run(study, run, 0.6, 0.35, 0.8, 5.0, lam_final=7.5)
    rows = collect_runs(study.runs_root.iterdir())
    paths = make_all_figures(rows, collect_curves(study.runs_root.iterdir()), tmp_path / "figs", lam=6.0)
    names = {p.name for p in paths}
    for stem in ("epoch_curves", "robust_vs_epoch_widest", "metrics_vs_width", "metrics_vs_lambda",
                 "lipschitz_vs_width", "war"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for path in paths:
        assert path.stat().st_size > 1000


def war(target=0.5, **kwargs) -> WarController:
    config = WarConfig(enabled=True, target_ratio=target, **{"momentum": 0.0, **kwargs})
    return WarController(config, base_lam=6.0, target_ratio=target)


def test_war_follows_the_target_ratio_on_a_synthetic_loss_stream():
    controller, state, lam = war(target=0.5), None, 6.0
    # Natural risk 1.0 and regularizer 0.05: keeping λ·R_rob/R_nat = 0.5 needs λ = 10.
    for epoch in range(1, 6):
        lam, state = controller.update(state, epoch, natural_loss=1.0, regularizer=0.05, lam=lam)
    assert lam == pytest.approx(10.0)
    assert epoch_ratio(lam, 1.0, 0.05) == pytest.approx(0.5)


def test_war_respects_its_bounds_and_warmup():
    controller, state = war(target=0.5, warmup_epochs=3, max_lam=20.0), None
    lam, state = controller.update(state, 1, natural_loss=1.0, regularizer=0.001, lam=6.0)
    assert lam == 6.0                                   # warm-up: unchanged
    lam, state = controller.update(state, 3, natural_loss=1.0, regularizer=0.001, lam=lam)
    assert lam == 20.0                                  # 500 clipped to max_lam
    lam, state = controller.update(state, 4, natural_loss=0.01, regularizer=1.0, lam=lam)
    assert lam == 6.0                                   # 0.005 clipped to min_lam = λ_s


def test_war_moving_average():
    controller = WarController(WarConfig(enabled=True, target_ratio=1.0, momentum=0.5), base_lam=0.0, target_ratio=1.0)
    _, state = controller.update(None, 1, natural_loss=2.0, regularizer=1.0, lam=1.0)
    lam, state = controller.update(state, 2, natural_loss=4.0, regularizer=1.0, lam=1.0)
    assert state["natural"] == pytest.approx(3.0) and lam == pytest.approx(3.0)


def test_war_modes_expand_after_the_grid_with_their_own_names(tmp_path):
    spec = tmp_path / "modes.toml"
    spec.write_text(write_spec(tmp_path).read_text().replace("[war]", '[war]\nmodes = ["unweighted_ratio", "weighted_ratio"]'))
    study = load_study(spec)
    war_runs = [r for r in study.runs() if r.stage == "war"]
    assert len(war_runs) == 2 * 2 * 2 and war_runs[0].index == len(study.grid_runs())
    assert [r.name for r in war_runs[:4]] == [f"war_unweighted_width{w}_seed{s}" for w in (32, 128) for s in (0, 1)]
    assert all(r.name.startswith("war_width") for r in war_runs[4:])   # reading A keeps the old names
    assert "war.mode=\"unweighted_ratio\"" in war_runs[0].overrides
    spec.write_text(spec.read_text().replace('"weighted_ratio"]', '"hold"]'))
    with pytest.raises(ConfigError, match="modes must be distinct values"):
        load_study(spec)


def test_unweighted_war_enlarges_lambda_to_the_small_models_ratio():
    # Reading B on a loss stream where the regularizer falls as c/λ (R_nat = 1): the ratio
    # r = c/λ equals r_s at λ* = c/r_s. From λ_s = 6 with r = 0.2 > r_s = 0.05 the update
    # λ ← λ·(r/r_s)^γ gives log λ_{t+1} = (1−γ)·log λ_t + γ·log λ*, so λ rises monotonically
    # to λ* = 24 (one step at γ = 1; geometrically at γ = 1/2).
    c, r_s = 1.2, 0.05
    for gain, steps in ((1.0, 1), (0.5, 40)):
        controller, state, lam, path = war(target=r_s, mode="unweighted_ratio", gain=gain), None, 6.0, []
        for epoch in range(1, steps + 1):
            lam, state = controller.update(state, epoch, natural_loss=1.0, regularizer=c / lam, lam=lam)
            path.append(lam)
        assert path == sorted(path) and path[0] > 6.0
        assert lam == pytest.approx(c / r_s, rel=1e-9)


def test_unweighted_war_step_by_hand_and_its_floor():
    controller = war(target=0.1, mode="unweighted_ratio", gain=0.5)
    lam, _ = controller.update(None, 1, natural_loss=2.0, regularizer=0.4, lam=6.0)
    assert lam == pytest.approx(6.0 * (0.2 / 0.1) ** 0.5)           # 6·√2
    lam, _ = controller.update(None, 1, natural_loss=2.0, regularizer=0.02, lam=6.0)
    assert lam == 6.0                                                # 6·√0.1 clipped to min_lam = λ_s
    # Reading A on the same stream lowers λ: ρ_s·R_nat/R_rob with ρ_s = 6·r_s.
    lam_a, _ = war(target=0.6).update(None, 1, natural_loss=2.0, regularizer=0.4, lam=6.0)
    assert lam_a == 6.0                                              # 3.0 clipped to λ_s


def test_reference_ratio_is_the_mean_epoch_ratio(tmp_path):
    storage.write_jsonl(tmp_path / "metrics.jsonl", [
        {"lam": 6.0, "train_natural_loss": 1.0, "train_regularizer": 0.1},
        {"lam": 6.0, "train_natural_loss": 0.5, "train_regularizer": 0.1}])
    assert reference_ratio(tmp_path) == pytest.approx((0.6 + 1.2) / 2)
    assert reference_ratio(tmp_path, "unweighted_ratio") == pytest.approx((0.1 + 0.2) / 2)
    with pytest.raises(FileNotFoundError, match="train the small model first"):
        reference_ratio(tmp_path / "missing")


def test_war_config_validation():
    with pytest.raises(ValueError, match="war.target_ratio"):
        WarConfig(enabled=True)
    with pytest.raises(ValueError, match="war.mode"):
        WarConfig(mode="enlarge")
    with pytest.raises(ValueError, match="war.gain"):
        WarConfig(gain=0.0)
    with pytest.raises(ConfigError, match="war.enabled"):
        load_config(ExperimentConfig, None, ["war.enabled=true", "war.target_ratio=0.3", "objective.kind=natural"])


def test_study_command_end_to_end_on_synthetic_data(tmp_path, capsys):
    from nt_robust.cli import main

    base = write_tiny_base(tmp_path / "base.toml")
    spec = tmp_path / "study.toml"
    spec.write_text(f'''name = "tiny_study"
base_config = "{base}"
runs_root = "{tmp_path / 'runs'}"
seeds = [0]
[grid]
"model.width" = [4, 32]
"objective.lam" = [1.0, 6.0]
[war]
reference_width = 4
widths = [32]
modes = ["unweighted_ratio", "weighted_ratio"]
[attack_check]
protocols = ["pgd20-0.007", "cw20"]
examples = 32
''')
    figures = tmp_path / "figures"
    assert main(["study", str(spec), "--figures-dir", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "Estimated cost" in out and "report:" in out
    assert "| model" in out and "stability" in out and "claim 8: " in out  # the table and verdicts, printed
    report = (figures / "report.md").read_text()
    assert "**1. At fixed λ, natural accuracy rises with width.**" in report
    # both readings side by side, each from the real run directories' per-example arrays
    assert "— best held-out: *" in report and "; final epoch: *" in report and "## Results (final epoch)" in report
    assert "final epoch: per-example arrays (eval/final_test.npz)" in report
    stored = storage.read_json(tmp_path / "runs" / "results" / "primary_tests.json")
    assert stored["hash"] and (tmp_path / "runs" / "results" / "claims_final.json").exists()
    assert "WAR (unweighted_ratio) from" in report and "WAR (weighted_ratio) from" in report
    assert (figures / "war.png").exists()
    rows = storage.read_json(tmp_path / "runs" / "results" / "results.json")
    assert {r["run"] for r in rows} == {"width4_lam1_seed0", "width4_lam6_seed0", "width32_lam1_seed0",
                                        "width32_lam6_seed0", "war_width32_seed0", "war_unweighted_width32_seed0"}
    for name, mode in (("war_width32_seed0", "weighted_ratio"), ("war_unweighted_width32_seed0", "unweighted_ratio")):
        war_config = storage.read_json(tmp_path / "runs" / name / "config.json")
        assert war_config["war"]["enabled"] and war_config["war"]["reference_run"].endswith("seed0")
        assert war_config["war"]["mode"] == mode
        war_metrics = storage.read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
        assert all("lam_next" in r for r in war_metrics)
    claim7 = next(c for c in storage.read_json(tmp_path / "runs" / "results" / "claims.json") if c["number"] == 7)
    readings = [e for e in claim7["evidence"] if e.startswith("WAR ")]
    assert [e.split(" (")[0] for e in readings] == ["WAR unweighted_ratio", "WAR weighted_ratio"]
    assert "primary" in readings[0] and "secondary" in readings[1] and "runs moved λ" in readings[0]
    # Claim 8 from the attack check: both protocols on the four grid runs' best_val checkpoints.
    checks = storage.read_json(tmp_path / "runs" / "results" / "attack_check.json")
    assert sorted((r["run"], r["protocol"]) for r in checks) == sorted(
        (run, p) for run in ("width4_lam1_seed0", "width4_lam6_seed0", "width32_lam1_seed0", "width32_lam6_seed0")
        for p in ("pgd20-0.007", "cw20"))
    assert all(r["num_examples"] == 32 and 0 <= r["robust_accuracy"] <= r["natural_accuracy"] for r in checks)
    claim8 = next(c for c in storage.read_json(tmp_path / "runs" / "results" / "claims.json") if c["number"] == 8)
    assert claim8["verdict"] != "not evaluated" and "Kendall τ-b of cw20" in " ".join(claim8["evidence"])
    # A second invocation finds everything finished and only rebuilds the report.
    before = (tmp_path / "runs" / "width4_lam1_seed0" / "summary.json").stat().st_mtime_ns
    evaluated = next((tmp_path / "runs" / "width4_lam1_seed0" / "eval").glob("best_val_test_cw20_eps*.json"))
    evaluated_before = evaluated.stat().st_mtime_ns
    assert main(["study", str(spec), "--figures-dir", str(figures), "--no-estimate"]) == 0
    assert (tmp_path / "runs" / "width4_lam1_seed0" / "summary.json").stat().st_mtime_ns == before
    assert evaluated.stat().st_mtime_ns == evaluated_before  # finished evaluations are not recomputed
    assert main(["study", str(spec), "--list"]) == 0
    assert capsys.readouterr().out.count("finished") == 6

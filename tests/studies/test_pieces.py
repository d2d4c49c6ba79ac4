"""--pieces K --piece i: round-robin pieces of a study, their cost, and a study run piece by
piece with seeded training samples on synthetic data."""

from pathlib import Path

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.config import ConfigError
from nt_robust.studies.pieces import check_piece, format_pieces, piece_hours, piece_runs
from nt_robust.studies.sweep import load_study

from test_studies import write_tiny_base  # noqa: E402 (pytest puts this folder on sys.path)

REPO = Path(__file__).parents[2]


def write_spec(tmp_path: Path, seeds=(0, 1, 2), widths=(8, 32, 128), base: Path | None = None) -> Path:
    spec = tmp_path / "study.toml"
    spec.write_text(f'''name = "pieces"
base_config = "{base or REPO / 'experiments' / 'quick_fmnist.toml'}"
runs_root = "{tmp_path / 'runs'}"
seeds = {list(seeds)}
set = ["train.epochs=2"]
[grid]
"model.width" = {list(widths)}
"objective.lam" = [1.0, 6.0]
''')
    return spec


def test_pieces_partition_the_runs_and_with_k_seeds_a_piece_is_a_seed(tmp_path):
    study = load_study(write_spec(tmp_path))
    runs = study.runs()
    for k in (1, 2, 3, 4, 7, 18, 25):
        pieces = [piece_runs(study, k, i) for i in range(k)]
        names = [r.name for p in pieces for r in p]
        assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    for seed in range(3):   # 3 seeds, 3 pieces: piece i is seed i, every (width, λ) once
        piece = piece_runs(study, 3, seed)
        assert {r.seed for r in piece} == {seed}
        assert sorted((r.width, r.lam) for r in piece) == sorted((w, l) for w in (8, 32, 128) for l in (1.0, 6.0))


def test_piece_hours_add_the_hours_of_each_runs_width(tmp_path):
    study = load_study(write_spec(tmp_path))
    estimates = [{"width": 8, "hours_per_run": 0.5}, {"width": 32, "hours_per_run": 1.0},
                 {"width": 128, "hours_per_run": 4.0}]
    # 18 runs in 2 pieces: every second run; each piece has 3 runs of each width (2 λ x 3 seeds = 6 per width)
    assert piece_hours(study, 2, estimates) == [3 * 0.5 + 3 * 1.0 + 3 * 4.0] * 2
    assert sum(piece_hours(study, 4, estimates)) == pytest.approx(6 * (0.5 + 1.0 + 4.0))
    text = format_pieces(study, 2, estimates)
    assert "piece 0: 9 runs (9 unfinished), 16.50 h estimated" in text


def test_impossible_pieces_are_clear_errors():
    for pieces, piece, message in ((None, 0, "together"), (3, None, "together"), (0, 0, "K >= 1"),
                                   (3, 3, "0 <= i < 3"), (3, -1, "0 <= i < 3")):
        with pytest.raises(ConfigError, match=message):
            check_piece(pieces, piece)
    check_piece(3, None, need_piece=False)   # --estimate --pieces 3: every piece's cost


def test_a_study_run_piece_by_piece_with_seeded_samples_keeps_both_readings(tmp_path, capsys):
    from nt_robust.cli import main

    base = write_tiny_base(tmp_path / "base.toml", data='train_subset = 128\ntrain_sample = "seed"',
                           eval='lipschitz = "none"')
    spec = write_spec(tmp_path, seeds=(0, 1), widths=(4,), base=base)
    study = load_study(spec)
    figures = tmp_path / "figures"
    assert main(["study", str(spec), "--pieces", "2", "--piece", "0", "--no-estimate",
                 "--figures-dir", str(figures)]) == 0
    assert "piece 0 of 2 finished; 2 runs of pieces are not" in capsys.readouterr().out
    assert [r.seed for r in study.runs() if study.is_finished(r)] == [0, 0]
    assert not (figures / "report.md").exists()
    assert main(["study", str(spec), "--pieces", "2", "--piece", "1", "--no-estimate",
                 "--figures-dir", str(figures)]) == 0
    assert all(study.is_finished(r) for r in study.runs()) and (figures / "report.md").exists()
    rows = storage.read_json(tmp_path / "runs" / "results" / "results.json")
    assert {r["train_sample"] for r in rows} == {"seed"} and {r["seed"] for r in rows} == {0, 1}
    summaries = {r.seed: storage.read_json(study.run_dir(r) / "summary.json") for r in study.runs() if r.lam == 1.0}
    for seed, summary in summaries.items():
        data = summary["data"]
        assert data["train_sample"] == "seed" and data["sample_seed"] == seed == summary["seed"]
        assert data["split_seed"] == 0 and data["train_examples"] == 128 and data["train_class_counts"] == [32] * 4
        # both readings of the run: the final epoch and the best held-out checkpoint
        assert summary["final"]["epoch"] == 2 and summary["selected_by_val_robust_accuracy"]["epoch"] in (1, 2)
        for reading in ("final", "best_val"):
            for split in ("val", "test"):
                with np.load(study.run_dir(next(r for r in study.runs() if r.seed == seed and r.lam == 1.0))
                             / "eval" / f"{reading}_{split}.npz") as arrays:
                    assert len(arrays["labels"]) == 64


def test_the_estimate_counts_one_evaluation_every_eval_every_epochs(tmp_path):
    from nt_robust.studies.cost import estimate_cost

    base = tmp_path / "base.toml"
    base.write_text('''name = "tiny"
[data]
dataset = "synthetic"
val_size = 64
[model]
arch = "mlp"
depth = 1
[eval]
val_examples = 32
test_examples = 100
batch_size = 32
[train]
epochs = 7
batch_size = 64
''')
    for every, evaluations in ((1, 7), (3, 3), (10, 1)):   # ⌈7 / every⌉: every 3rd epoch and the last
        spec = tmp_path / f"every{every}.toml"
        spec.write_text(f'''name = "every{every}"
base_config = "{base}"
set = ["eval.every_epochs={every}"]
[grid]
"model.width" = [4]
''')
        (estimate,) = estimate_cost(load_study(spec), timed_steps=1)
        # 512 synthetic images - 64 held out = 448: 7 steps of 64; 32 val + 100 test points an evaluation,
        # each (20 + 12) / (10 + 2) training examples (PGD-20 + Lipschitz against the 10-step TRADES attack)
        steps = 7 * 7 + evaluations * 132 * (32 / 12) / 64
        assert estimate["hours_per_run"] * 3600 == pytest.approx(estimate["seconds_per_step"] * steps)

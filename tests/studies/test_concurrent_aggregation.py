"""Two job-array tasks that finish at the same moment and each aggregate the study: the
table written last must hold both runs (build_report serialises on results/.lock)."""

import contextlib
import threading
from pathlib import Path

from nt_robust import storage
from nt_robust.config import load_config, to_dict
from nt_robust.studies import pipeline
from nt_robust.studies.sweep import load_study
from nt_robust.train import ExperimentConfig

REPO = Path(__file__).parents[2]


def finish(study, run) -> None:
    config = load_config(ExperimentConfig, study.base_config, list(run.overrides))
    record = {"epoch": 1, "test_natural_accuracy": 0.5, "test_robust_accuracy": 0.3}
    storage.write_json(study.run_dir(run) / "config.json", to_dict(config))
    storage.write_json(study.run_dir(run) / "summary.json", {
        "model": config.model.label, "final": record, "selected_by_val_robust_accuracy": record,
        "selected_by_test_robust_accuracy_paper_protocol": record})


def race(tmp_path, monkeypatch) -> list[str]:
    """Task A reads the run directories, then stalls until task B (which finished just
    after A read them) has written its table or has waited 1 s; returns A and B's final table."""
    spec = tmp_path / "study.toml"
    spec.write_text(f'name = "race"\nbase_config = "{REPO / "experiments" / "quick_fmnist.toml"}"\n'
                    f'runs_root = "{tmp_path / "runs"}"\n[grid]\n"model.width" = [4, 8]\n')
    study = load_study(spec)
    run_a, run_b = study.runs()
    finish(study, run_a)
    for name, value in (("make_all_figures", {}), ("evaluate_claims", []), ("render_report", "")):
        monkeypatch.setattr(pipeline, name, lambda *a, value=value, **k: value)
    a_has_read, b_wrote = threading.Event(), threading.Event()
    real_collect, real_write = pipeline.collect_runs, pipeline.write_table

    def collect(paths):
        rows = real_collect(paths)
        if threading.current_thread().name == "A":
            a_has_read.set()
            b_wrote.wait(timeout=1.0)
        return rows

    def write(rows, stem):
        real_write(rows, stem)
        if threading.current_thread().name == "B" and stem.name == "results":
            b_wrote.set()

    monkeypatch.setattr(pipeline, "collect_runs", collect)
    monkeypatch.setattr(pipeline, "write_table", write)

    def task_b():
        a_has_read.wait(timeout=5)
        finish(study, run_b)  # B's run finishes after A read the directories
        pipeline.build_report(study, tmp_path / "figures")

    threads = [threading.Thread(target=pipeline.build_report, args=(study, tmp_path / "figures"), name="A"),
               threading.Thread(target=task_b, name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return sorted({row["run"] for row in storage.read_json(study.runs_root / "results" / "results.json")})


def test_two_tasks_aggregating_at_the_same_moment_lose_no_row(tmp_path, monkeypatch):
    assert race(tmp_path, monkeypatch) == ["width4_seed0", "width8_seed0"]


def test_without_the_lock_the_race_loses_a_row(tmp_path, monkeypatch):
    """The scenario above is a real race: with the lock removed, A's stale table wins."""
    monkeypatch.setattr(pipeline.storage, "file_lock", lambda path: contextlib.nullcontext())
    assert race(tmp_path, monkeypatch) == ["width4_seed0"]

"""nt_robust.theory.experiment: the one runner of experiments/theory_*.py, on a toy experiment
(a real output folder), and the seven scripts' experiments against theory_all and theory_report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from nt_robust.theory.experiment import TheoryExperiment

EXPERIMENTS = Path(__file__).parents[2] / "experiments"


def _toy(calls: list, **kwargs) -> TheoryExperiment:
    def measure(preset: str, out_dir: str) -> dict:
        calls.append(("measure", preset))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(f"{out_dir}/toy.partial.json").write_text("{}")
        return {"preset": preset, "rows": [1, 2, 3]}

    def summarize(result: dict) -> dict:
        return {"total": sum(result["rows"])}

    def plot(result: dict, out_dir: str) -> None:
        calls.append(("plot", result["fits"]["total"]))

    def resummarize(result: dict) -> dict:
        """recompute the toy fits"""
        result["fits"] = summarize(result)
        return result

    def again(preset: str, out_dir: str) -> dict:
        """run the other mode"""
        calls.append(("again", preset))
        return {"mode": "again"}

    return TheoryExperiment("toy", "A toy experiment.", measure, summarize, plot, resummarize=resummarize,
                            modes={"--run-again": again}, **kwargs)


def test_a_run_writes_the_result_with_fits_and_seconds_then_plots(tmp_path):
    calls = []
    result = _toy(calls, partial=True).main(["--preset", "smoke", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "toy.json").read_text())
    assert set(written) == {"preset", "rows", "fits", "seconds"} and written == result
    assert written["fits"] == {"total": 6} and written["preset"] == "smoke" and written["seconds"] >= 0
    assert calls == [("measure", "smoke"), ("plot", 6)]
    assert not (tmp_path / "toy.partial.json").exists()  # the progress file goes once the result is written


def test_the_progress_file_stays_unless_the_experiment_says_it_is_its(tmp_path):
    _toy([]).main(["--out", str(tmp_path)])
    assert (tmp_path / "toy.partial.json").exists()


@pytest.mark.parametrize("replot", [True, False])
def test_resummarize_refits_what_is_on_disk_without_measuring(tmp_path, replot):
    (tmp_path / "toy.json").write_text(json.dumps({"preset": "cpu", "rows": [10, 20], "seconds": 5.0}))
    calls = []
    result = _toy(calls, replot=replot).main(["--resummarize", "--out", str(tmp_path)])
    assert result == json.loads((tmp_path / "toy.json").read_text())
    assert result["fits"] == {"total": 30} and result["seconds"] == 5.0   # the measurement's own time stays
    assert calls == ([("plot", 30)] if replot else [])


def test_a_mode_runs_instead_of_the_measurement(tmp_path, capsys):
    calls = []
    assert _toy(calls).main(["--run-again", "--preset", "gpu", "--out", str(tmp_path)]) == {"mode": "again"}
    assert calls == [("again", "gpu")] and not (tmp_path / "toy.json").exists()
    with pytest.raises(SystemExit):
        _toy([]).main(["--help"])
    help_text = capsys.readouterr().out
    assert all(text in help_text for text in ("A toy experiment.", "run the other mode", "recompute the toy fits"))


def test_an_unknown_preset_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _toy([]).main(["--preset", "huge", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err and not (tmp_path / "toy.json").exists()


def test_the_seven_scripts_are_theory_all_stages_and_theory_report_sections(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("theory_all_under_test", EXPERIMENTS / "theory_all.py")
    theory_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theory_all)
    scripts = sorted(p.stem for p in EXPERIMENTS.glob("theory_*.py")
                     if "EXPERIMENT = TheoryExperiment(" in p.read_text())
    assert len(scripts) == 7 and sorted(f"theory_{name}" for name in theory_all.STAGES) == scripts
    for name, experiment in theory_all.STAGES.items():
        assert experiment is sys.modules[f"theory_{name}"].EXPERIMENT and experiment.name == name
        assert Path(experiment.path("out")).name in sys.modules["theory_report"].SECTIONS

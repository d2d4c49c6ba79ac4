"""`make figures` (experiments/make_figures.py): it must cover every committed figure, and
never reuse or delete runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_committed_figure_directory_has_a_producing_stage():
    tracked = subprocess.run(["git", "ls-files", "figures"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    directories = {str(Path(p).parent) for p in tracked if p.endswith((".png", ".pdf"))}
    produced = {stage.figures for stage in _module().STAGES}
    assert directories and directories <= produced, f"no make-figures stage writes {sorted(directories - produced)}"
    for stage in _module().STAGES:
        if stage.study_spec:
            assert (ROOT / stage.study_spec).is_file()


def test_each_build_trains_into_a_new_directory_outside_runs_studies(tmp_path):
    module = _module()
    build = tmp_path / "build"
    for stage in module.STAGES:
        command = stage.command(build)
        if stage.study_spec:
            root = Path(command[command.index("--runs-root") + 1])
            assert root == build / stage.name           # a fresh root per build, never runs/studies/
            assert command[command.index("--figures-dir") + 1] == stage.figures


def test_list_runs_nothing_and_resume_needs_an_existing_build(tmp_path):
    script = str(ROOT / "experiments" / "make_figures.py")
    listed = subprocess.run([sys.executable, script, "--list"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert all(f"{stage}:" in listed.stdout for stage in ("quick_fmnist", "quick_fmnist_seeds345", "theory"))
    missing = subprocess.run([sys.executable, script, "--resume", str(tmp_path / "nope")], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 2 and "no such build directory" in missing.stderr


@pytest.mark.parametrize("argv", [["--only", "theory", "--list"]])
def test_only_selects_stages(argv):
    listed = subprocess.run([sys.executable, str(ROOT / "experiments" / "make_figures.py"), *argv],
                            capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "theory:" in listed and "quick_fmnist:" not in listed


def test_a_build_split_over_two_sittings_records_every_stage_once(tmp_path, monkeypatch):
    module = _module()

    class Fake(module.Stage):
        def command(self, build_dir):
            return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(module, "STAGES", (Fake("a", "figures/a", "x.toml"), Fake("b", "figures/b", None)))
    monkeypatch.setattr(module, "RECORD", tmp_path / "make_figures.json")
    build = tmp_path / "build"
    build.mkdir()
    assert module.main(["--resume", str(build), "--only", "a"]) == 0
    assert not module.RECORD.exists()                      # b has not run: no total yet
    assert module.main(["--resume", str(build), "--only", "b"]) == 0
    record = json.loads(module.RECORD.read_text())
    assert set(record["stages"]) == {"a", "b"}
    assert record["total_wall_s"] == pytest.approx(sum(s["wall_s"] for s in record["stages"].values()), abs=0.11)


def test_a_map_stage_reads_the_runs_its_studys_stage_trains(tmp_path):
    # `map --runs-root B` looks for a study's runs in B/<study name>; the study's stage trains into
    # B/<stage name>: the two names must agree, and the study must have a stage of its own.
    from nt_robust.studies.sweep import load_study

    stages = _module().STAGES
    maps = [s for s in stages if s.map_of]
    assert maps
    for stage in maps:
        [trainer] = [s for s in stages if s.study_spec == stage.map_of]
        assert trainer.name == load_study(ROOT / stage.map_of).name
        command = stage.command(tmp_path)
        assert command[command.index("--runs-root") + 1] == str(tmp_path)
        assert command[command.index("--out") + 1] == stage.figures

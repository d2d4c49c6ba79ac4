"""The thin CLI's pieces: one handler per parsed command, which TOML a file is, the compare
table of hand-written run directories, and the memory budget's units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nt_robust.cli import COMMANDS, main
from nt_robust.cli_parser import build_parser
from nt_robust.config import toml_kind
from nt_robust.studies.sweep import STUDY_KEYS
from nt_robust.studies.tables import compare_runs
from nt_robust.train.memory_budget import gib

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"study": STUDY_KEYS, "train": ["name", "data", "model", "objective", "train_attack", "optim", "eval",
                                        "train", "war"]}


def test_every_parsed_command_has_exactly_one_handler():
    assert set(COMMANDS) == set(build_parser().commands)


@pytest.mark.parametrize("text, kind", [
    ('name = "a"\n[model]\nwidth = 4\n', "train"),
    ('name = "a"\nbase_config = "x.toml"\n[grid]\nlam = [1]\n', "study"),
    ('name = "a"\n[war]\nmode = "b"\n', None),           # keys both kinds know: neither
    ('[model]\nwidth = 4\n[grid]\nlam = [1]\n', None),     # own keys of both: neither
    ('name = "a"\nmodel = [\n', None),                     # not TOML
])
def test_toml_kind_is_the_one_kind_whose_own_keys_a_file_uses(tmp_path, text, kind):
    path = tmp_path / "x.toml"
    path.write_text(text)
    assert toml_kind(path, KINDS) == kind
    assert toml_kind(tmp_path / "missing.toml", KINDS) is None


def test_toml_kind_of_the_shipped_configs_and_specs():
    assert toml_kind(ROOT / "experiments/quick_fmnist.toml", KINDS) == "train"
    assert toml_kind(ROOT / "experiments/study_quick_fmnist.toml", KINDS) == "study"


def test_a_study_spec_given_to_train_is_named(capsys):
    spec = ROOT / "experiments/study_quick_fmnist.toml"
    assert main(["train", str(spec)]) == 2
    assert f"is a study spec, not a run directory: did you mean `nt-robust study {spec}`?" in capsys.readouterr().err


def _run(root: Path, name: str, **summary) -> Path:
    run = root / name
    run.mkdir()
    config = {"name": name, "model": {"arch": "mlp", "width": 8}, "objective": {"kind": "trades", "lam": 6.0},
              "eval": {"attack": {"eps": 0.1, "eps_text": "1/10"}}, "train": {"epochs": 3}}
    (run / "config.json").write_text(json.dumps(config))
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_compare_runs_lists_each_checkpoint_rule_and_evaluation(tmp_path):
    record = {"epoch": 2, "val_natural_accuracy": 0.5, "val_robust_accuracy": 0.25}
    finished = _run(tmp_path, "a", final=record, selected_by_val_robust_accuracy={**record, "epoch": 1})
    (finished / "eval").mkdir()
    (finished / "eval" / "r.json").write_text(json.dumps(
        {"attack_name": "pgd20", "eps": 0.1, "checkpoint": "best_val", "split": "test", "num_examples": 16,
         "natural_accuracy": 0.75, "robust_accuracy": 0.125}))
    unfinished = _run(tmp_path, "b")
    (unfinished / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_natural_accuracy": 0.5,
                                                          "val_robust_accuracy": 0.375}) + "\n")
    text = compare_runs([finished, unfinished], split="val")
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| a ") or line.startswith("| b ")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    table = [c for c in cells if len(c) == 12]      # the run table: 8 fields + 4 metrics
    evaluations = [c for c in cells if len(c) == 8]
    assert [(c[0], c[5], c[6], c[7], c[8], c[9]) for c in table] == [
        ("a", "1/10", "final", "2", "0.5000", "0.2500"), ("a", "1/10", "best_val", "1", "0.5000", "0.2500"),
        ("b", "1/10", "latest of 3 (unfinished)", "1", "0.5000", "0.3750")]
    assert evaluations == [["a", "pgd20", "0.1", "best_val", "test", "16", "0.7500", "0.1250"]]
    assert lines[-1].startswith("checkpoint: final = last epoch")


def test_compare_runs_refuses_runs_with_nothing_evaluated(tmp_path):
    with pytest.raises(FileNotFoundError, match="has evaluated an epoch on the test split"):
        compare_runs([_run(tmp_path, "a")])
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        compare_runs([tmp_path / "none"])


def test_gib_units():
    assert gib(3 * 2**30) == "3.0 GiB" and gib(2**29) == "0.5 GiB" and gib(2**28 - 2**20) == "255 MiB"

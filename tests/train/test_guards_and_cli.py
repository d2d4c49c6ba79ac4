"""Guards (config validation, NaN stop, run-directory and checkpoint mismatches) and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.cli import main
from nt_robust.config import ConfigError, load_config
from nt_robust.train import ExperimentConfig, RunConfigMismatchError, Trainer, TrainingDivergedError, train

TINY = ["data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=mlp",
        "model.width=16", "model.depth=1", "train.batch_size=64", "train.epochs=2", "train_attack.num_steps=2",
        "eval.attack.num_steps=3", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=64",
        "train.progress=false", "optim.lr=0.05"]


@pytest.mark.parametrize("override,field", [
    ("train_attack.eps=-0.1", "eps"), ("eval.attack.eps=-1", "eps"), ("objective.lam=-1", "objective.lam"),
    ("model.width=0", "model.width"), ("model.widht=4", "model.widht"), ("train.epochs='ten'", "train.epochs"),
    ("train.batch_size=1.5", "train.batch_size"), ("data.dataset=imagenet", "data.dataset"),
    ("objective.kind=madry", "objective.kind"), ("optim.milestones=[90, 75]", "optim.milestones"),
    ("data.flip=1", "data.flip"), ("objective.kind=pgd_at", "train_attack.loss"),
])
def test_invalid_config_fails_before_any_work_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(ExperimentConfig, None, [override])


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'model.width'"):
        load_config(ExperimentConfig, None, ["model.widht=4"])


def test_config_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ExperimentConfig, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nwidth = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(ExperimentConfig, bad)


def test_shipped_experiment_configs_and_study_specs_are_valid():
    from nt_robust.studies.imported import load_imported_study
    from nt_robust.studies.sweep import load_study

    experiments = Path(__file__).parents[2] / "experiments"
    for path in experiments.glob("*.toml"):
        if path.name.startswith(("study_", "regime_")):
            assert load_study(path).runs()  # validates every run's config
        elif path.name.startswith("zoo_"):     # a width study over imported checkpoints
            assert load_imported_study(path).models
        else:
            load_config(ExperimentConfig, path)


def test_nan_guard_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config(ExperimentConfig, None, TINY + ["objective.kind=natural", "optim.lr=1e6",
                                                         "optim.momentum=0.0", "train.checkpoint_every_steps=1"])
    with pytest.raises(TrainingDivergedError, match="became|stopped being finite") as error:
        train(config, tmp_path / "run")
    assert "last good checkpoint" in str(error.value)
    state, _ = Trainer(config, tmp_path / "run").restore("latest")
    for leaf in np.asarray(state.params["classifier"]["kernel"]), np.asarray(state.params["hidden1"]["kernel"]):
        assert np.all(np.isfinite(leaf))


def test_run_directory_with_another_config_is_never_overwritten(tmp_path):
    config = load_config(ExperimentConfig, None, TINY + ["train.epochs=1"])
    train(config, tmp_path / "run")
    before = (tmp_path / "run" / "summary.json").read_bytes()
    other = load_config(ExperimentConfig, None, TINY + ["train.epochs=1", "objective.lam=9"])
    with pytest.raises(RunConfigMismatchError, match="objective.lam"):
        train(other, tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


def test_run_made_before_a_field_existed_resumes_only_with_the_behaviour_it_had(tmp_path):
    from nt_robust.train.run_dir import RunDirectory
    storage.write_json(tmp_path / "config.json", {"model": {"arch": "cnn", "width": 1}, "objective": {"lam": 6.0}})
    legacy = {"model": {"arch": "cnn", "width": 1, "conv_impl": "xla"}, "objective": {"lam": 6.0}}
    assert RunDirectory(tmp_path).claim(legacy, {}, write=False) is True  # absent = XLA's conv, as it ran
    today = {**legacy, "model": {**legacy["model"], "conv_impl": "auto"}}
    with pytest.raises(RunConfigMismatchError, match=r"model.conv_impl: \(absent\) -> 'auto'.*"
                                                     r"--set model.conv_impl=xla"):
        RunDirectory(tmp_path).claim(today, {}, write=False)


def test_cli_train_then_eval_writes_a_complete_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "cli_run"
    args = ["train", "--run-dir", str(run_dir)] + [a for o in TINY for a in ("--set", o)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "best test-robust" in table and "MLP-1x16" in table
    config = storage.read_json(run_dir / "config.json")
    assert config["train_attack"]["eps"] == 0.031 and config["objective"]["lam"] == 6.0
    environment = storage.read_json(run_dir / "environment.json")
    assert environment["packages"]["jax"] and environment["device_count"] >= 1
    rows = storage.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lam", "train_natural_loss", "train_regularizer", "test_robust_accuracy",
                "val_perturbation_stability", "test_lipschitz_mean"):
        assert key in rows[-1]
    summary = storage.read_json(run_dir / "summary.json")
    best = summary["selected_by_test_robust_accuracy_paper_protocol"]
    assert best["test_robust_accuracy"] == max(r["test_robust_accuracy"] for r in rows)
    # Summaries are recomputable from the per-example arrays.
    final = storage.load_arrays(run_dir / "eval" / "final_test.npz")
    assert np.mean(final["adv_pred"] == final["labels"]) == pytest.approx(rows[-1]["test_robust_accuracy"])

    assert main(["eval", str(run_dir), "--attack", "cw20", "--examples", "32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["attack"]["loss"] == "cw" and result["num_examples"] == 32
    assert (run_dir / "eval" / "best_val_test_cw20_eps0.031_n32.npz").exists()
    # eps 0 cannot lower accuracy below natural: robust == natural
    assert main(["eval", str(run_dir), "--set", "eval.attack.eps=0.0", "--examples", "64"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert zero["robust_accuracy"] == zero["natural_accuracy"]


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--set", "model.width=0", "--run-dir", str(tmp_path / "x")]) == 2
    assert "model.width" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_batch_size_not_dividing_devices_is_a_clear_error(monkeypatch, tmp_path):
    import jax
    monkeypatch.setattr(jax, "device_count", lambda: 3)
    config = load_config(ExperimentConfig, None, TINY)
    with pytest.raises(ValueError, match="does not divide over 3 devices"):
        Trainer(config, tmp_path / "run")

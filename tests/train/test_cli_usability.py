"""CLI usability (issue 17, items 3, 4, 9-13): no prefix matching and suggestions for unknown
flags, what a misplaced file probably meant, examples in --help, model size and memory
estimated before anything is allocated, milestones past the last epoch, compare and plot,
and explicit, recorded run extensions."""

import shutil

import jax
import pytest

from nt_robust import cli, storage
from nt_robust.cli import main
from nt_robust.config import ConfigError, load_config
from nt_robust.models import ModelConfig, count_parameters, create_model, init_variables
from nt_robust.models.registry import estimate_model_size
from nt_robust.train import ExperimentConfig
from nt_robust.train import memory_budget
from nt_robust.train.config import config_warnings

QUICK = "experiments/quick_fmnist.toml"
def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def finished_run(tiny_run, tmp_path):
    """A copy of the shared tiny run, without the evaluations other tests left in it."""
    path = tmp_path / "tiny"
    shutil.copytree(tiny_run, path)
    for result in (path / "eval").glob("*.json"):
        result.unlink()
    return path


# item 9: no abbreviations; the closest flag or config field for unknown ones
@pytest.mark.parametrize("args,hint", [
    (["train", "--dry"], "did you mean --dry-run?"),
    (["train", "--run_dir", "x"], "did you mean --run-dir?"),
    (["train", "--epochs=3"], "did you mean --set train.epochs=3?"),
    (["train", "--lr", "0.1"], "did you mean --set optim.lr=0.1?"),
    (["eval", "runs/x", "--se", "eval.attack.eps=0.1"], "did you mean --set?"),
    (["eval", "runs/x", "--restarts", "3"], "did you mean --set eval.attack.restarts=3?"),
    (["study", "spec.toml", "--lis"], "did you mean --list?"),
])
def test_abbreviations_are_refused_with_the_closest_flag(capsys, args, hint):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and hint in err


# item 10: a file given where something else was expected
def test_a_config_file_given_to_train_or_study_says_what_was_meant(capsys, tmp_path):
    assert main(["train", QUICK]) == 2
    assert f"did you mean `nt-robust train --config {QUICK}`" in capsys.readouterr().err
    assert main(["train", "experiments/study_quick_fmnist.toml"]) == 2
    assert "did you mean `nt-robust study experiments/study_quick_fmnist.toml`" in capsys.readouterr().err
    assert main(["study", QUICK]) == 2
    err = capsys.readouterr().err
    assert f"is a training config, not a study spec: did you mean `nt-robust train --config {QUICK}`" in err
    assert "unknown study keys" not in err
    assert main(["train", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# item 11: examples in every --help, no reST markup
@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["study"], ["compare"], ["plot"], ["info"]])
def test_help_has_examples_and_no_rest_markup(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "``" not in out
    assert sum(line.lstrip().startswith("nt-robust ") for line in out.splitlines()) >= 2


# item 3: parameters and memory from shapes, before allocating
def _mlp_parameters(width, depth, inputs, classes):
    return inputs * width + width + (depth - 1) * (width * width + width) + width * classes + classes


def _cnn_parameters(m, height, width, channels, classes):  # SmallCNN: conv 32m-32m, pool, 64m-64m, pool, 200m-200m
    convs = [(channels, 32 * m), (32 * m, 32 * m), (32 * m, 64 * m), (64 * m, 64 * m)]
    flat = -(-height // 4) * -(-width // 4) * 64 * m
    dense = [(flat, 200 * m), (200 * m, 200 * m), (200 * m, classes)]
    return sum(9 * a * b + b for a, b in convs) + sum(a * b + b for a, b in dense)


def test_parameter_estimate_is_exact_without_building_the_model():
    estimate = lambda arch, width, depth, shape, classes=10: estimate_model_size(  # noqa: E731
        ModelConfig(arch=arch, width=width, depth=depth), classes, shape)["parameters"]
    assert estimate("mlp", 256, 2, (28, 28, 1)) == _mlp_parameters(256, 2, 784, 10) == 269_322
    assert estimate("cnn", 1, 1, (28, 28, 1)) == _cnn_parameters(1, 28, 28, 1, 10)
    assert estimate("cnn", 256, 1, (28, 28, 1)) == _cnn_parameters(256, 28, 28, 1, 10) == 47_954_214_922
    assert estimate("wrn", 10, 34, (32, 32, 3)) == 46_160_474  # WRN-34-10: the 46.2M of the TRADES paper
    config = ModelConfig(arch="mlp", width=8, depth=2)  # and the same as a model that is built
    variables = init_variables(create_model(config, 4), jax.random.key(0), (8, 8, 1))
    assert estimate_model_size(config, 4, (8, 8, 1))["parameters"] == count_parameters(variables["params"])


def test_a_cnn_with_an_mlps_width_is_refused_with_the_numbers_and_the_likely_mistake(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(memory_budget, "available_memory", lambda: (16 * 2**30, "this host's available memory", True))
    run_dir = tmp_path / "cnn"
    args = ["train", "--config", QUICK, "--set", "model.arch=cnn", "--run-dir", str(run_dir)]
    assert main(args) == 2 and not run_dir.exists()  # refused before the run directory or any array
    err = capsys.readouterr().err
    assert "CNNx256: 47,954,214,922 parameters" in err and "GiB" in err and "16.0 GiB" in err
    assert "multiplier of the SmallCNN's channels" in err and "try 1 to 16" in err and "--no-memory-check" in err
    assert main(args + ["--dry-run"]) == 0  # a dry run says so (the config may be meant for a larger machine)
    assert "warning: training would be refused here: CNNx256" in capsys.readouterr().err
    assert main(["train", "--config", QUICK, "--dry-run"]) == 0
    assert "MLP-2x256: 269,322 parameters" in capsys.readouterr().err


# item 4: learning-rate milestones past the last epoch
def test_milestones_past_the_last_epoch_are_warned_about(capsys):
    config = load_config(ExperimentConfig, QUICK, ["train.epochs=5"])
    (warning,) = config_warnings(config)
    assert "never decays" in warning and "optim.milestones = [3, 4, 5]" in warning
    assert "the decays at epochs [8] never happen" in config_warnings(load_config(ExperimentConfig, QUICK,
                                                                                  ["train.epochs=7"]))[0]
    assert config_warnings(load_config(ExperimentConfig, QUICK)) == []
    assert main(["train", "--config", QUICK, "--set", "train.epochs=5", "--dry-run"]) == 0
    assert "warning: optim.milestones [6, 8] are not all within train.epochs = 5" in capsys.readouterr().err


# item 12: compare and plot
def test_compare_prints_every_checkpoint_rule_of_each_run(finished_run, capsys, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    storage.write_json(other / "eval" / "best_val_test_cw20_eps0.1_n8.json",
                  {"protocol": "cw20", "eps": 0.1, "checkpoint": "best_val", "split": "test", "num_examples": 8,
                   "natural_accuracy": 0.5, "robust_accuracy": 0.25})
    assert main(["compare", str(finished_run), str(other)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.split("evaluations")[1].splitlines() if "| cw20 " in line]
    assert [c.strip() for c in row.split("|")[2:-1]] == ["cw20", "0.1", "best_val", "test", "8", "0.5000", "0.2500"]
    assert "best_test = highest test robust accuracy" in out  # the rules are explained
    out = out.split("evaluations")[0]
    assert "tiny" in out and str(other) in out  # same config name: the second is shown by its path
    for rule in ("| final ", "| best_val ", "| best_test (paper) "):
        assert out.count(rule) == 2
    assert "test robust" in out
    assert main(["compare", str(tmp_path / "none")]) == 2


def test_plot_writes_the_per_epoch_curves(finished_run, capsys, tmp_path):
    assert main(["plot", str(finished_run)]) == 0
    png = finished_run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = tmp_path / "two.png"
    assert main(["plot", str(finished_run), str(finished_run), "--out", str(out), "--split", "val"]) == 0
    assert out.stat().st_size > 5000
    assert main(["plot", str(finished_run), str(finished_run)]) == 2
    assert "--out" in capsys.readouterr().err


# item 13: explicit, recorded extension
def test_a_finished_run_is_extended_explicitly_and_on_the_record(finished_run, tiny_run_overrides, capsys, tmp_path):
    run_dir = tmp_path / "extended"
    shutil.copytree(finished_run, run_dir)
    summary_before = storage.read_json(run_dir / "summary.json")
    # More epochs through the config is a mismatch, whose message now says what to do.
    assert main(["train", "--run-dir", str(run_dir), *_sets(tiny_run_overrides + ["train.epochs=2"])]) == 2
    assert f"nt-robust train {run_dir} --extend-epochs N" in capsys.readouterr().err
    assert main(["train", str(run_dir), "--extend-epochs", "1"]) == 0
    assert [r["epoch"] for r in storage.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert storage.read_json(run_dir / "config.json")["train"]["epochs"] == 2
    (record,) = storage.read_json(run_dir / "extensions.json")
    assert record["from_epochs"] == 1 and record["to_epochs"] == 2 and record["milestones_now_in_effect"] == [2]
    summary = storage.read_json(run_dir / "summary.json")
    assert summary["epochs"] == 2 and summary["extensions"] == [record]
    assert storage.read_json(run_dir / "summary.epochs1.json") == summary_before
    assert main(["train", str(run_dir)]) == 0  # resuming a finished run from its directory: nothing to do
    assert [r["epoch"] for r in storage.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


def test_extensions_that_would_change_the_past_schedule_are_refused(finished_run, capsys, tmp_path):
    from nt_robust.train.extend import extend_run

    run_dir = tmp_path / "cosine"
    shutil.copytree(finished_run, run_dir)
    config = storage.read_json(run_dir / "config.json")
    storage.write_json(run_dir / "config.json", {**config, "optim": {**config["optim"], "schedule": "cosine"}})
    with pytest.raises(ConfigError, match="depends on train.epochs.*--set train.epochs=3"):
        extend_run(run_dir, 2)
    (run_dir / "summary.json").unlink()
    assert main(["train", str(run_dir), "--extend-epochs", "1"]) == 2
    assert "has not finished its 1 epochs" in capsys.readouterr().err
    assert not (run_dir / "extensions.json").exists()


def test_cli_logging_follows_sys_stderr_after_the_stream_it_started_with_is_closed(monkeypatch):
    # A test's captured stderr is closed after it; later in-process logs used to fail with
    # "--- Logging error --- ValueError: I/O operation on closed file" (seen in CI).
    import io as std_io
    import logging

    first = std_io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    cli.setup_logging()
    first.close()
    second = std_io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("nt_robust.train").info("resuming at step 4")
    assert second.getvalue().endswith(" resuming at step 4\n") and "Logging error" not in second.getvalue()

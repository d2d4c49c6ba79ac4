"""Exact ε (issue 13.3): "8/255" in TOML strings, --set and --eps is the fraction's
correctly rounded float, and the text is kept beside it (``eps_text``); bad fractions fail
before any work, naming the field. 8/255 and 0.031 stay different threat models."""

import dataclasses
import fractions
import json

import pytest

from nt_robust.attacks import PGD20, AttackConfig
from nt_robust.config import ConfigError, ExactFloat, build, load_config, parse_exact, to_dict
from nt_robust.train import ExperimentConfig
from nt_robust.train.run_dir import RunConfigMismatchError, RunDirectory


def test_fraction_is_the_correctly_rounded_float():
    value = parse_exact("8/255", "eps")
    assert float(value) == float(fractions.Fraction(8, 255)) == 8 / 255 and value.text == "8/255"
    assert float(parse_exact(" 2 / 255 ")) == 2 / 255 and parse_exact(" 2 / 255 ").text == "2/255"
    assert float(parse_exact("0.031")) == 0.031 != 8 / 255   # different threat models


@pytest.mark.parametrize("text, message", [("8/0", "divides by zero"), ("-8/255", "negative"),
                                           ("8/255/2", "exact fraction p/q"), ("eight/255", "exact fraction")])
def test_bad_fractions_fail_naming_the_field(text, message):
    with pytest.raises(ConfigError, match=rf"train_attack\.eps.*{message}|{message}.*train_attack\.eps"):
        load_config(ExperimentConfig, None, [f"train_attack.eps={text}"])
    with pytest.raises(ConfigError, match=r"eval\.attack\.step_size"):
        load_config(ExperimentConfig, None, [f"eval.attack.step_size={text}"])


def test_set_and_toml_keep_text_and_value(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train_attack]\neps = "8/255"\nstep_size = "2/255"\n')
    from_toml = load_config(ExperimentConfig, toml)
    from_set = load_config(ExperimentConfig, None, ["train_attack.eps=8/255", "train_attack.step_size=2/255"])
    for config in (from_toml, from_set):
        attack = config.train_attack
        assert attack.eps == 8 / 255 and type(attack.eps) is float and attack.eps_text == "8/255"
        assert attack.step_size == 2 / 255 and attack.step_size_text == "2/255" and attack.eps_label == "8/255"
    stored = json.loads(json.dumps(to_dict(from_set)))          # what config.json holds
    assert stored["train_attack"]["eps"] == 8 / 255 and stored["train_attack"]["eps_text"] == "8/255"
    assert build(ExperimentConfig, stored) == from_set           # round trip
    plain = load_config(ExperimentConfig, None, ["train_attack.eps=0.031"])
    assert plain.train_attack.eps_text is None and plain.train_attack.eps_label == "0.031"
    assert plain.train_attack != from_set.train_attack


def test_text_follows_the_number():
    attack = build(AttackConfig, {"eps": "8/255", "step_size": "2/255", "num_steps": 10}, "eval.attack")
    assert dataclasses.replace(attack, eps=0.05).eps_text is None          # stale text dropped
    assert dataclasses.replace(attack, eps=ExactFloat(4 / 255, "4/255")).eps_text == "4/255"
    assert dataclasses.replace(PGD20, eps=parse_exact("8/255")).eps_label == "8/255"
    assert hash(attack) == hash(dataclasses.replace(attack))   # still a static jit argument


def test_resume_check(tmp_path):
    config = load_config(ExperimentConfig, None, ["train_attack.eps=8/255", "eval.attack.eps=8/255"])
    run = RunDirectory(tmp_path / "run")
    assert run.claim(to_dict(config), {}) is False
    assert run.claim(to_dict(load_config(ExperimentConfig, None, ["train_attack.eps=8/255",
                                                                  "eval.attack.eps=8/255"])), {}) is True
    with pytest.raises(RunConfigMismatchError, match="eps"):
        run.claim(to_dict(load_config(ExperimentConfig, None, ["train_attack.eps=0.031",
                                                               "eval.attack.eps=8/255"])), {})
    # a config.json from before eps_text existed resumes with a plain-number config
    old = to_dict(load_config(ExperimentConfig, None, []))
    for section in (old["train_attack"], old["eval"]["attack"]):
        del section["eps_text"], section["step_size_text"]
    legacy = RunDirectory(tmp_path / "legacy")
    legacy.claim(old, {})
    assert legacy.claim(to_dict(load_config(ExperimentConfig, None, [])), {}) is True


def test_eval_eps_fraction_recorded(tiny_run, tmp_path):
    import shutil

    from nt_robust.cli_parser import build_parser
    from nt_robust.evaluate import evaluate_run

    assert build_parser().parse_args(["eval", "r", "--eps", "8/255"]).eps.text == "8/255"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "r", "--eps", "8/0"])
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = evaluate_run(run, attack="fgsm", eps=parse_exact("8/255"), examples=8)
    assert result["eps"] == 8 / 255 and result["eps_text"] == "8/255"
    assert result["attack"]["eps_text"] == "8/255" and result["attack"]["step_size_text"] == "8/255"

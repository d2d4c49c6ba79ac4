"""`nt-robust eval` of a WAR run restores its checkpoint (nt_robust.train.restore) and reads
nothing of the reference run whose ratio steered its λ during training: with the reference
deleted the evaluation gives the same numbers, while building the run's Trainer cannot."""

import shutil

import pytest

from nt_robust.config import load_config
from nt_robust.evaluate import evaluate_run
from nt_robust.train import ExperimentConfig, Trainer, train


def test_eval_of_a_war_run_reads_nothing_of_its_reference(tmp_path, tiny_run, tiny_run_overrides):
    trades = [o for o in tiny_run_overrides if not o.startswith("objective.kind")]
    trades += ["objective.kind=trades", "train_attack.num_steps=1", "train_attack.step_size=0.1"]
    reference, war = tmp_path / "reference", tmp_path / "war"
    shutil.copytree(tiny_run, reference)   # any finished run gives WAR a ratio to read
    config = load_config(ExperimentConfig, None, trades + ["name=war", "war.enabled=true",
                                                           f"war.reference_run={reference}"])
    train(config, war)
    before = evaluate_run(war, checkpoint="latest", examples=16)

    shutil.rmtree(reference)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):   # the training side needs it
        Trainer(config, war)
    after = evaluate_run(war, checkpoint="latest", examples=16)
    assert after["result_file"] == before["result_file"]
    for key in ("natural_accuracy", "robust_accuracy", "step", "epoch", "eps", "attack"):
        assert after[key] == before[key], key

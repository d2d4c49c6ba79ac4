"""A tiny finished run shared by the CLI and evaluation tests (issue 17): synthetic data,
an MLP-1x16, one epoch of natural training, evaluated at ε = 0.1 (not the presets' 0.031)."""

import pytest

from nt_robust.config import load_config
from nt_robust.train import ExperimentConfig, train

TINY_RUN_EPS = 0.1
TINY_RUN = ["name=tiny", "data.dataset=synthetic", "data.val_size=64", "data.crop_padding=1", "model.arch=mlp",
            "model.width=16", "model.depth=1", "train.batch_size=64", "train.epochs=1",
            "objective.kind=natural",  # the ε under test is eval.attack.eps; natural training compiles fastest
            f"train_attack.eps={TINY_RUN_EPS}", f"eval.attack.eps={TINY_RUN_EPS}", "eval.attack.step_size=0.02",
            "eval.attack.num_steps=3", "eval.val_examples=64", "eval.test_examples=64", "eval.batch_size=64",
            "eval.lipschitz=none", "train.progress=false", "optim.lr=0.05", "optim.milestones=[2]"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The run directory (tests that change it work on a copy)."""
    path = tmp_path_factory.mktemp("tiny_run") / "tiny"
    train(load_config(ExperimentConfig, None, TINY_RUN), path)
    return path


@pytest.fixture(scope="session")
def tiny_run_overrides():
    """The --set overrides ``tiny_run`` was trained with."""
    return list(TINY_RUN)

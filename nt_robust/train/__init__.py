"""Training engine: configs, sharded train step, loop, checkpoints and run directories.

    from nt_robust.config import load_config
    from nt_robust.train import ExperimentConfig, train
    config = load_config(ExperimentConfig, "experiments/quick_fmnist.toml")
    summary = train(config, "runs/quick")
"""

from nt_robust.train.checkpoints import CheckpointMismatchError, Checkpointer
from nt_robust.train.config import (DataConfig, EvalConfig, ExperimentConfig, LoopConfig, ObjectiveConfig,
                                    OptimConfig)
from nt_robust.train.loop import Trainer, TrainingDivergedError, train
from nt_robust.train.run_dir import RunConfigMismatchError, RunDirectory

__all__ = [
    "CheckpointMismatchError", "Checkpointer", "DataConfig", "EvalConfig", "ExperimentConfig", "LoopConfig",
    "ObjectiveConfig", "OptimConfig", "RunConfigMismatchError", "RunDirectory", "Trainer",
    "TrainingDivergedError", "train",
]

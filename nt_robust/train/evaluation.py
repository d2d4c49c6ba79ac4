"""Data-parallel evaluation of a model on one split, returning per-example arrays.

    evaluator = Evaluator(model, config.eval, mesh, seed=0)
    per_example = evaluator(variables, images, labels)        # dict of numpy arrays
    results = evaluator.splits(variables, splits)   # {"val": …, "test": …}: what an epoch evaluates
    summarize(per_example)                                     # accuracy, robustness, ...

Batch ``i`` of a split always uses the same key, so evaluations at different epochs
(and of different runs with the same seed) face the same random starts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm
from jax.sharding import Mesh

from nt_robust.data import check_images_and_labels, to_float
from nt_robust.metrics import LipschitzConfig, evaluate_batch
from nt_robust.models import make_logits_fn
from nt_robust.train.config import EvalConfig
from nt_robust.train.sharding import (batch_sharding, check_divisible, global_batch, process_rows,
                                      replicate, replicated_sharding, to_host)


def lipschitz_config(config: EvalConfig) -> LipschitzConfig | None:
    if config.lipschitz == "none":
        return None
    return LipschitzConfig(config.lipschitz, eps=config.lipschitz_eps, direction=config.lipschitz_direction)


class Evaluator:
    def __init__(self, model: nn.Module, config: EvalConfig, mesh: Mesh, seed: int, num_classes: int | None = None):
        check_divisible(config.batch_size, "eval.batch_size")
        self.config, self.mesh, self.num_classes = config, mesh, num_classes
        self.lipschitz = lipschitz_config(config)
        self.seed = seed

        def batch_fn(variables: Any, images: jax.Array, labels: jax.Array, index: jax.Array, seed: jax.Array):
            logits_fn = make_logits_fn(model, variables, config.bn_mode)
            key = jax.random.fold_in(jax.random.key(seed), index)
            return evaluate_batch(logits_fn, to_float(images), labels, key, config.attack, self.lipschitz)

        self._batch_fn = jax.jit(batch_fn, in_shardings=(replicated_sharding(mesh), batch_sharding(mesh),
                                                         batch_sharding(mesh), replicated_sharding(mesh),
                                                         replicated_sharding(mesh)),
                                 out_shardings=batch_sharding(mesh))

    def __call__(self, variables: Any, images: np.ndarray, labels: np.ndarray,
                 limit: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        check_images_and_labels(images, labels, self.num_classes)  # NaN, range, label classes
        batch_size = self.config.batch_size
        chunks = []
        starts = range(0, len(images), batch_size)
        for index, start in enumerate(tqdm(starts, desc="evaluate", unit="batch", leave=False,
                                           disable=not (progress and jax.process_index() == 0))):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            real = len(x)
            if real < batch_size:  # pad to the compiled shape; padding rows are dropped below
                x = np.concatenate([x, np.zeros((batch_size - real, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros(batch_size - real, y.dtype)])
            rows = process_rows(batch_size)
            out = self._batch_fn(variables, global_batch(x[rows], self.mesh),
                                 global_batch(y[rows], self.mesh), replicate(np.int32(index), self.mesh),
                                 replicate(np.int32(self.seed), self.mesh))
            chunks.append({k: v[:real] for k, v in to_host(out).items()})
        if not chunks:
            return {}
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def splits(self, variables: Any, splits: Any) -> dict[str, dict[str, np.ndarray]]:
        """The first ``eval.val_examples`` / ``eval.test_examples`` of a run's validation and
        test splits (:class:`nt_robust.train.splits.Splits`), as every epoch of training
        evaluates them; a split without examples (or with a limit of 0) is left out."""
        results = {}
        for split, limit in (("val", self.config.val_examples), ("test", self.config.test_examples)):
            images, labels = getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
            if len(images) and (limit is None or limit > 0):
                results[split] = self(variables, images, labels, limit)
        return results

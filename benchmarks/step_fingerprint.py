"""A SHA-256 of the parameters after one TRADES training step, per convolution and dense-layer
implementation: a check that a refactor changed no arithmetic (issue 35: one training step per
``model.conv_impl`` and ``model.dense_impl`` must give bit-identical parameters before and after).

Each row trains a tiny model (SmallCNN x1 and WRN-10-1 per ``conv_impl``, a one-layer MLP of 32
units per ``dense_impl``) for one step of the library's own training step (``make_train_step``:
augmentation, a 2-step TRADES attack, the loss, SGD) on fixed random images, and hashes the
updated parameters (their tree paths, dtypes, shapes and bytes)::

    .venv/bin/python benchmarks/step_fingerprint.py            # one JSON object on stdout
    .venv/bin/python benchmarks/step_fingerprint.py > after.json && diff before.json after.json

Run both sides on the same machine, under the same ``XLA_FLAGS`` and ``NT_ROBUST_*`` variables
(the JAX defaults: the script sets no XLA flag); "auto" is whatever this machine's cached
measurement chose (``NT_ROBUST_CONV_IMPL_AUTO`` / ``NT_ROBUST_DENSE_IMPL_AUTO`` pin it).
Nothing is timed, so the machine's load does not matter.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CONV_IMPLS = ("xla", "flipped_dx", "shifted_matmul", "native", "auto")
DENSE_IMPLS = ("xla", "native", "auto")
# (row name, model table, the implementation field, its values)
ROWS = [("cnn", dict(arch="cnn", width=1), "conv_impl", CONV_IMPLS),
        ("wrn10-1", dict(arch="wrn", width=1, depth=10), "conv_impl", CONV_IMPLS),
        ("mlp", dict(arch="mlp", width=32, depth=1), "dense_impl", DENSE_IMPLS)]
BATCH, IMAGE_SHAPE, CLASSES = 8, (16, 16, 3), 10


def parameters_digest(tree) -> str:
    """SHA-256 over every leaf's tree path, dtype, shape and bytes."""
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def one_step_digest(model_table: dict, field: str, impl: str) -> str:
    """The digest of the parameters after one training step of ``model_table`` with ``field = impl``."""
    import jax
    import numpy as np

    from nt_robust.config import build
    from nt_robust.models import create_model, init_variables
    from nt_robust.train import ExperimentConfig
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state, init_key
    from nt_robust.train.step import make_train_step

    config = build(ExperimentConfig, {"model": {**model_table, field: impl},
                                      "train_attack": {"num_steps": 2}, "train": {"batch_size": BATCH}})
    model = create_model(config.model, CLASSES)
    optimizer = make_optimizer(config.optim, epochs=1, steps_per_epoch=1)
    state = create_train_state(init_variables(model, init_key(0), IMAGE_SHAPE), optimizer,
                               config.objective.lam, use_ema=False, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    state, _ = jax.jit(make_train_step(model, config, optimizer))(state, images, labels)
    return parameters_digest(state.params)


def main() -> None:
    import jax

    result = {"backend": jax.default_backend(), "devices": jax.device_count()}
    for name, table, field, impls in ROWS:
        for impl in impls:
            result[f"{name} {field}={impl}"] = one_step_digest(table, field, impl)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

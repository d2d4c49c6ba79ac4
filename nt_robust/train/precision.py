"""Mixed precision, as run: what a run records::

    precision_record(config)                 # in environment.json and summary.json

``model.dtype`` is the compute dtype of training, ``eval.dtype`` that of evaluation and
attacks (float32 by default), ``model.matmul_precision`` the precision of every matmul and
convolution. See docs/design.md ("Mixed precision"). The check that low precision did not
weaken the attack (``attack_precision_weaker``) is an attack sanity flag:
:func:`nt_robust.attacks.sanity.attack_precision_flag`.
"""

from __future__ import annotations

from typing import Any

import jax

# What a float32 matmul or convolution runs as, per backend and model.matmul_precision, for
# the record (JAX's "Matmul precision" notes: float32 dots default to TF32 on recent NVIDIA
# GPUs and to one bfloat16 pass on TPUs; XLA:CPU always computes float32).
FLOAT32_MATMUL = {
    "cpu": {"default": "float32", "high": "float32", "highest": "float32"},
    "gpu": {"default": "tf32 (Ampere and newer; float32 before)", "high": "tf32 (Ampere and newer; float32 before)",
            "highest": "float32"},
    "tpu": {"default": "bfloat16 (1 pass)", "high": "bfloat16_3x", "highest": "float32 (bfloat16_6x)"},
}


def float32_matmul(backend: str, matmul_precision: str) -> str:
    """What ``matmul_precision`` makes of a float32 matmul on ``backend`` ("cpu", "gpu", "tpu")."""
    return FLOAT32_MATMUL.get(backend, {}).get(matmul_precision, "unknown")


def precision_record(config: Any) -> dict[str, Any]:
    """The effective compute precision of a run (an ``ExperimentConfig``) on this process's backend."""
    backend = jax.default_backend()
    ambient = jax.config.jax_default_matmul_precision
    # "default" passes no precision, so JAX's process-wide setting (JAX_DEFAULT_MATMUL_PRECISION) applies.
    effective = config.model.matmul_precision if config.model.matmul_precision != "default" or ambient is None \
        else f"default (jax_default_matmul_precision = {ambient!r})"
    return {
        "train_compute_dtype": config.model.dtype,
        "eval_compute_dtype": config.eval.dtype,
        "parameter_dtype": "float32",
        "matmul_precision": config.model.matmul_precision,
        "jax_default_matmul_precision": ambient,
        "effective_matmul_precision": effective,
        "float32_matmul_runs_as": float32_matmul(backend, config.model.matmul_precision),
        "backend": backend,
    }

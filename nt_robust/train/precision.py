"""Mixed precision, as run: what a run records, and the check that low precision did not
weaken the attack (gradient masking by rounding)::

    precision_record(config)                 # in environment.json and summary.json
    flag = attack_precision_flag(config.model, num_classes, variables, x, y, key, attack, "eval")
    flag = precision_gap_flag(correct_float32, correct_bfloat16)   # from paired per-example results

``model.dtype`` is the compute dtype of training, ``eval.dtype`` that of evaluation and
attacks (float32 by default), ``model.matmul_precision`` the precision of every matmul and
convolution. See docs/design.md ("Mixed precision").
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from nt_robust.attacks import AttackConfig, pgd
from nt_robust.attacks.sanity import Flag
from nt_robust.models import ModelConfig, create_model, make_logits_fn

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


def paired_gap(correct_reference: np.ndarray, correct_other: np.ndarray) -> tuple[int, int]:
    """(b, c): points the reference attack broke but the other left robust, and the reverse."""
    a, b = np.asarray(correct_reference, bool), np.asarray(correct_other, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results must have the same shape, got {a.shape} and {b.shape}")
    return int(np.sum(~a & b)), int(np.sum(a & ~b))


def binomial_tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, 1/2): the exact one-sided sign (McNemar) test."""
    if k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0 ** n


def precision_gap_flag(correct_float32: np.ndarray, correct_low: np.ndarray, alpha: float = 0.01,
                       low: str = "bfloat16") -> Flag:
    """``attack_precision_weaker``: the same attack (same points, same random starts) run in
    ``low`` precision left robust significantly more points than in float32.

    Paired: of the points the two disagree on, b were broken only in float32 and c only in
    ``low``. If the two attacks are equally strong, each disagreement goes either way with
    probability 1/2, so b ~ Binomial(b + c, 1/2); the flag is raised when b > c and the
    one-sided tail P(X ≥ b) < ``alpha``. Low precision that masks gradients shows up as b ≫ c."""
    b, c = paired_gap(correct_float32, correct_low)
    n = len(np.asarray(correct_float32))
    p = binomial_tail(b, b + c)
    raised = b > c and p < alpha
    acc32 = float(np.mean(correct_float32)) if n else float("nan")
    acc_low = float(np.mean(correct_low)) if n else float("nan")
    return Flag("attack_precision_weaker", bool(raised),
                f"robust accuracy under the attack in float32 {acc32:.3f}, in {low} {acc_low:.3f} on {n} points; "
                f"broken only in float32: {b}, only in {low}: {c} (one-sided sign test p = {p:.3g}, "
                f"flag below {alpha:g})")


def attack_correct(model_config: ModelConfig, num_classes: int, dtype: str, variables: Any, x: jax.Array,
                   y: jax.Array, key: jax.Array, attack: AttackConfig, bn_mode: str = "eval") -> np.ndarray:
    """Per point: is it still classified correctly after ``attack``, with the model (its
    attack and its final prediction) computed in ``dtype``?"""
    model = create_model(model_config, num_classes, dtype=dtype)

    @jax.jit
    def run(variables, x, y, key):
        logits_fn = make_logits_fn(model, variables, bn_mode)
        x_adv = pgd(logits_fn, x, y, key, attack)
        return logits_fn(x_adv).argmax(-1) == y

    return np.asarray(run(variables, x, y, key))


def attack_precision_flag(model_config: ModelConfig, num_classes: int, variables: Any, x: jax.Array, y: jax.Array,
                          key: jax.Array, attack: AttackConfig, bn_mode: str = "eval", alpha: float = 0.01) -> Flag:
    """:func:`precision_gap_flag` for ``attack`` run on (x, y) in float32 and in bfloat16,
    with the same random start (``key``)."""
    reference = attack_correct(model_config, num_classes, "float32", variables, x, y, key, attack, bn_mode)
    low = attack_correct(model_config, num_classes, "bfloat16", variables, x, y, key, attack, bn_mode)
    return precision_gap_flag(reference, low, alpha)

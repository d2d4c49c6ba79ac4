"""Accuracy, robust accuracy, perturbation stability and local Lipschitzness (docs/paper.md §3).

Everything is computed per example first; every summary number is a mean of those
arrays (:func:`summarize`), so a stored evaluation can always be re-summarized::

    from nt_robust.attacks import PGD20
    from nt_robust.metrics import LipschitzConfig, evaluate_model

    result = evaluate_model(model, variables, test_images, test_labels, jax.random.key(0),
                            attack=PGD20, lipschitz=LipschitzConfig("yang"))
    result.summary()   # {"natural_accuracy": ..., "robust_accuracy": ...,
                       #  "perturbation_stability": ..., "lipschitz_mean": ..., "attack": {...}}
    result.per_example["adv_pred"]                     # (N,) numpy arrays

Identity worth remembering: robust accuracy >= natural accuracy + stability - 1 (an
example that is both correct and stable is robust).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks import (AttackConfig, best_other_logit, pgd, pgd_restart, project_linf,
                               projected_ascent)
from nt_robust.models.apply import BNMode, LogitsFn, make_logits_fn

ArrayLike = np.ndarray | jax.Array
PerExample = dict[str, ArrayLike]
BatchFn = Callable[[jax.Array, jax.Array, jax.Array], PerExample]


# Per-example arrays -> numbers.

def _mean_of_equal(a: ArrayLike, b: ArrayLike, names: str) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"{names} must be non-empty 1-D arrays of one shape, got {a.shape} and {b.shape}")
    return float(np.mean(a == b))


def natural_accuracy(clean_pred: ArrayLike, labels: ArrayLike) -> float:
    """``mean[argmax f(x) == y]`` from predicted classes."""
    return _mean_of_equal(clean_pred, labels, "clean_pred and labels")


def robust_accuracy(adv_pred: ArrayLike, labels: ArrayLike) -> float:
    """``mean[argmax f(x_adv) == y]``."""
    return _mean_of_equal(adv_pred, labels, "adv_pred and labels")


def perturbation_stability(clean_pred: ArrayLike, adv_pred: ArrayLike) -> float:
    """``mean[argmax f(x_adv) == argmax f(x)]``, whatever the label."""
    return _mean_of_equal(clean_pred, adv_pred, "clean_pred and adv_pred")


def logit_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``z_y - max_{j != y} z_j`` per example: positive exactly when correctly classified."""
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return label_logit - best_other_logit(logits, labels)


# Local Lipschitzness.

LIPSCHITZ_METHODS: tuple[str, ...] = ("yang", "trades_grad")
LIPSCHITZ_DIRECTIONS: tuple[str, ...] = ("ascend", "published")  # for "yang" only
_LIPSCHITZ_DEFAULTS = {  # method -> (eps, step_size, num_steps)
    "yang": (0.01, 0.003, 10),          # Yang et al. 2020's settings
    "trades_grad": (0.031, 0.007, 10),  # the TRADES training attack
}


@dataclasses.dataclass(frozen=True)
class LipschitzConfig:
    """Which local Lipschitz estimate, and its search settings (None = the method's default).

    ``"yang"``: ``max_{x' ∈ B∞(x, ε)} ‖f(x) − f(x')‖₁ / ‖x − x'‖∞`` on logits, searched
    by sign steps on the ratio from ``x + init_std·N(0, I)``; the value at the final
    iterate is reported. Defaults ε=0.01, 10 steps of 0.003. ``direction``: "ascend"
    (default: sign *ascent*, what a supremum needs; a lower bound of the max) or
    "published" (the sign step of Yang et al.'s published loop, which *descends* on the
    ratio: use it only to compare with numbers from their code; see
    :func:`yang_local_lipschitz`).
    ``"trades_grad"`` (the paper authors' logging): along the TRADES inner maximization
    (KL loss, start ``x + init_std·N(0, I)``), the max over its steps of ``‖∇ₓ KL‖₁``.
    Defaults ε=0.031, 10 steps of 0.007; ``direction`` must stay "ascend".
    """

    method: str = "yang"
    eps: float | None = None
    step_size: float | None = None
    num_steps: int | None = None
    init_std: float = 0.001
    loop: str = "auto"
    direction: str = "ascend"

    def __post_init__(self) -> None:
        if self.method not in LIPSCHITZ_METHODS:
            raise ValueError(f"method must be one of {LIPSCHITZ_METHODS}, got {self.method!r}")
        if self.direction not in LIPSCHITZ_DIRECTIONS:
            raise ValueError(f"direction must be one of {LIPSCHITZ_DIRECTIONS}, got {self.direction!r}")
        if self.method != "yang" and self.direction != "ascend":
            raise ValueError(f"direction={self.direction!r} applies to method 'yang' only; "
                             f"{self.method!r} always ascends")
        defaults = dict(zip(("eps", "step_size", "num_steps"), _LIPSCHITZ_DEFAULTS[self.method]))
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, numbers.Real) or not (
                math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be a finite number >= 0, got {self.init_std!r}")
        # The attack config validates the rest (finite, non-negative, integer steps, loop) by name.
        search = self.search_config()
        for name in ("eps", "step_size", "num_steps"):
            object.__setattr__(self, name, getattr(search, name))
        object.__setattr__(self, "init_std", search.start_std)

    def search_config(self) -> AttackConfig:
        """The search as an attack config (for "trades_grad" it is exactly the TRADES attack)."""
        return AttackConfig(norm="linf", eps=self.eps, step_size=self.step_size, num_steps=self.num_steps,
                            loss="kl", start="gaussian", start_std=self.init_std, loop=self.loop)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _linf_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))


def yang_local_lipschitz(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, *, eps: float = 0.01,
                         step_size: float = 0.003, num_steps: int = 10, init_std: float = 0.001,
                         loop: str = "auto", direction: str = "ascend") -> jax.Array:
    """Yang et al. (2020)'s empirical local Lipschitz constant per example, (N,).

    ``num_steps`` sign steps on the ratio ``‖f(x) − f(x')‖₁ / ‖x − x'‖∞`` from
    ``x + init_std·N(0, I)`` (projected), each iterate projected onto ``B∞(x, ε) ∩ [0, 1]``;
    returns the ratio at the last iterate. The ratio is 0 where ``x' == x`` (possible only
    if the box clip undoes the whole start); otherwise it is divided exactly.

    ``direction="ascend"`` (default) steps *up* the ratio, ``x' ← P(x' + η·sign(∇ratio))``:
    what estimating the supremum needs, and what docs/paper.md defines.
    ``direction="published"`` takes the step of Yang et al.'s published loop
    (``lolip/utils.py``, ``estimate_local_lip_v2``): it sets ``loss = −local_lip`` and then
    *adds* ``η·sign(∇loss)``, i.e. ``x' ← P(x' − η·sign(∇ratio))``, descent on the ratio.
    That is not a search for the max, and the two are not comparable: on a randomly
    initialized WRN-10-1 and 32 uniform random 32×32×3 images, the mean is 5.44 (ascend)
    and 0.42 (published) from the same start.
    Use "published" only to compare with numbers computed with their code. Two smaller
    differences from their code remain whichever the direction: their start is not
    clipped to [0, 1] before the first step, and their ratio adds 1e-6 to every
    coordinate of ``x − x'`` before the norm.

    Know the ascent's limits: the ratio is scale-free and the ∞-norm's gradient pulls the
    largest coordinate of ``x' − x`` inwards each step, so in two or more dimensions the
    iterates typically cycle inside the ball instead of reaching a vertex. The estimate is a
    lower bound of the max; in a few dimensions it can sit far below it (tests/test_metrics.py,
    linear models), while on a random 32×32×3 conv net the mean plateaued after ~5 steps
    with an odd/even-step swing under 1%.
    """
    if direction not in LIPSCHITZ_DIRECTIONS:
        raise ValueError(f"direction must be one of {LIPSCHITZ_DIRECTIONS}, got {direction!r}")
    sign = 1.0 if direction == "ascend" else -1.0
    clean_logits = jax.lax.stop_gradient(logits_fn(x))

    def ratio(x_prime: jax.Array) -> jax.Array:
        output_change = jnp.sum(jnp.abs(logits_fn(x_prime) - clean_logits), axis=-1)
        input_change = _linf_distance(x_prime, x)
        nonzero = input_change > 0
        return jnp.where(nonzero, output_change / jnp.where(nonzero, input_change, 1), 0)

    x_start = project_linf(x + init_std * jax.random.normal(key, x.shape, x.dtype), x, eps)
    x_final = projected_ascent(lambda x_prime: sign * ratio(x_prime), x, x_start, norm="linf", eps=eps,
                               step_size=step_size, num_steps=num_steps, loop=loop).x_adv
    return ratio(x_final)


def trades_grad_local_lipschitz(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, *, eps: float = 0.031,
                                step_size: float = 0.007, num_steps: int = 10, init_std: float = 0.001,
                                loop: str = "auto") -> jax.Array:
    """Max over the TRADES inner steps of ``‖∇ₓ KL(p(x) ‖ p(x'))‖₁`` per example, (N,).

    The gradient is taken at each iterate x'_0 … x'_{T-1}, i.e. where each step's ascent
    direction is computed (the authors log it inside their attack loop).
    """
    search = LipschitzConfig("trades_grad", eps, step_size, num_steps, init_std, loop).search_config()
    labels_unused_by_kl = jnp.zeros(x.shape[:1], jnp.int32)
    return pgd_restart(logits_fn, x, labels_unused_by_kl, key, search).max_grad_l1


def local_lipschitz(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, config: LipschitzConfig) -> jax.Array:
    """Per-example local Lipschitz estimate with the method and settings of ``config``."""
    settings = dict(eps=config.eps, step_size=config.step_size, num_steps=config.num_steps,
                    init_std=config.init_std, loop=config.loop)
    if config.method == "yang":
        return yang_local_lipschitz(logits_fn, x, key, direction=config.direction, **settings)
    return trades_grad_local_lipschitz(logits_fn, x, key, **settings)


# One batch, then a whole dataset.

def evaluate_batch(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, attack: AttackConfig,
                   lipschitz: LipschitzConfig | None = None) -> dict[str, jax.Array]:
    """Per-example results on one batch: labels, clean_pred, adv_pred, clean_margin,
    adv_margin and, if requested, lipschitz. Traceable (jit it with the configs static)."""
    attack_key, lipschitz_key = jax.random.split(key)
    clean_logits = logits_fn(x)
    adv_logits = logits_fn(pgd(logits_fn, x, y, attack_key, attack))
    results = {
        "labels": y,
        "clean_pred": jnp.argmax(clean_logits, axis=-1),
        "adv_pred": jnp.argmax(adv_logits, axis=-1),
        "clean_margin": logit_margin(clean_logits, y),
        "adv_margin": logit_margin(adv_logits, y),
    }
    if lipschitz is not None:
        results["lipschitz"] = local_lipschitz(logits_fn, x, lipschitz_key, lipschitz)
    return results


def summarize(per_example: PerExample) -> dict[str, float | int]:
    """The summary numbers, recomputed from per-example arrays."""
    labels, clean_pred, adv_pred = (per_example[k] for k in ("labels", "clean_pred", "adv_pred"))
    summary: dict[str, float | int] = {
        "num_examples": int(np.asarray(labels).shape[0]),
        "natural_accuracy": natural_accuracy(clean_pred, labels),
        "robust_accuracy": robust_accuracy(adv_pred, labels),
        "perturbation_stability": perturbation_stability(clean_pred, adv_pred),
    }
    if "lipschitz" in per_example:
        summary["lipschitz_mean"] = float(np.mean(np.asarray(per_example["lipschitz"], np.float64)))
    return summary


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-example arrays of a whole evaluation, with the settings that produced them."""

    per_example: dict[str, np.ndarray]
    attack: AttackConfig
    lipschitz: LipschitzConfig | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # batch_size, bn_mode, ...

    def summary(self) -> dict[str, Any]:
        return {**summarize(self.per_example), "attack": self.attack.to_dict(),
                "lipschitz": None if self.lipschitz is None else self.lipschitz.to_dict(), **self.settings}


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255; float images must already lie in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def _run_batches(batch_fn: BatchFn, images: ArrayLike, labels: ArrayLike, key: jax.Array,
                 batch_size: int, progress: bool) -> dict[str, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    num_examples = len(images)
    if num_examples == 0 or len(labels) != num_examples:
        raise ValueError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 1):
        raise ValueError("float images must lie in [0, 1] (normalization belongs inside the model)")
    batch_size = min(batch_size, num_examples)  # one shape, compiled once
    starts = range(0, num_examples, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, total=math.ceil(num_examples / batch_size), desc="evaluate", unit="batch")

    chunks: list[dict[str, np.ndarray]] = []
    pending = None  # fetch batch i while batch i + 1 runs
    for index, start in enumerate(starts):
        x = _as_unit_float(images[start:start + batch_size])
        y = labels[start:start + batch_size].astype(np.int32)
        real = len(x)
        if real < batch_size:  # pad the last batch to the compiled shape; padding is dropped
            x = np.concatenate([x, np.zeros((batch_size - real,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - real, y.dtype)])
        out = batch_fn(jnp.asarray(x), jnp.asarray(y), jax.random.fold_in(key, index))
        if pending is not None:
            chunks.append({k: np.asarray(v)[:pending[1]] for k, v in pending[0].items()})
        pending = (out, real)
    chunks.append({k: np.asarray(v)[:pending[1]] for k, v in pending[0].items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


# Module-level jits with the model and configs static: jax caches the compiled batch, so
# evaluating every epoch (new variables, same shapes) compiles once.
_evaluate_batch_jit = jax.jit(evaluate_batch, static_argnums=(0, 4, 5))


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def _evaluate_model_batch(model: nn.Module, bn_mode: BNMode, variables: Any, x: jax.Array, y: jax.Array,
                          key: jax.Array, attack: AttackConfig, lipschitz: LipschitzConfig | None):
    return evaluate_batch(make_logits_fn(model, variables, bn_mode), x, y, key, attack, lipschitz)


def evaluate(logits_fn: LogitsFn, images: ArrayLike, labels: ArrayLike, key: jax.Array, attack: AttackConfig,
             lipschitz: LipschitzConfig | None = None, batch_size: int = 256,
             progress: bool = False) -> EvalResult:
    """Evaluate ``logits_fn`` on a dataset (uint8 or [0, 1] float images, NHWC).

    Batch ``i`` uses ``jax.random.fold_in(key, i)``: results are reproducible for a given
    key and batch size. Arrays closed over by ``logits_fn`` become compile-time constants,
    and a new ``logits_fn`` means a new compile; for models use :func:`evaluate_model`,
    which passes the variables as arguments.
    """
    per_example = _run_batches(lambda x, y, k: _evaluate_batch_jit(logits_fn, x, y, k, attack, lipschitz),
                               images, labels, key, batch_size, progress)
    return EvalResult(per_example, attack, lipschitz, {"batch_size": min(batch_size, len(per_example["labels"]))})


def evaluate_model(model: nn.Module, variables: Any, images: ArrayLike, labels: ArrayLike, key: jax.Array,
                   attack: AttackConfig, lipschitz: LipschitzConfig | None = None, bn_mode: BNMode = "eval",
                   batch_size: int = 256, progress: bool = False) -> EvalResult:
    """:func:`evaluate` for ``model.apply(variables, ...)`` with BatchNorm in ``bn_mode``.

    Compiled once per (model, bn_mode, configs, batch shape). With ``bn_mode="train"`` the
    batch statistics also see the zero padding of the last batch; use a batch size that
    divides the dataset in that case.
    """
    per_example = _run_batches(
        lambda x, y, k: _evaluate_model_batch(model, bn_mode, variables, x, y, k, attack, lipschitz),
        images, labels, key, batch_size, progress)
    settings = {"batch_size": min(batch_size, len(per_example["labels"])), "bn_mode": bn_mode}
    return EvalResult(per_example, attack, lipschitz, settings)

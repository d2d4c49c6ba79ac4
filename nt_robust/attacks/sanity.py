"""Runtime flags for evaluations that cannot be trusted (gradient masking and friends).

    from nt_robust.attacks.sanity import sanity_flags, format_flags

    flags = sanity_flags(apply_fn, variables, x, y, key, eps=0.031, bn_mode="eval",
                         result=protocol_result)          # result: optional, for the cascade checks
    print(format_flags(flags))    # one line per check: "ok" or "FLAG" with the numbers behind it

Checks (each cheap, on a subset ``x`` of a few dozen points):

``randomized_forward``      two forward passes of the same batch differ: attacks see noise,
                            gradients are unreliable (AutoAttack's check_randomized).
``batch_dependent_output``  an example's logits change with the rest of the batch: BatchNorm
                            in training mode (or another batch coupling).
``bn_train_mode``           the evaluation was configured with ``bn_mode="train"``.
``probability_outputs``     the model returns probabilities, not logits (the CE and DLR losses
                            then saturate; AutoAttack's check_range_output).
``zero_gradients``          some examples have an all-zero input gradient of the CE loss.
``nonfinite_gradients``     some input gradients are NaN or infinite.
``eps_not_monotone``        PGD robust accuracy at ε/2, ε, 2ε does not decrease as ε grows
                            (beyond one point of noise).
``black_box_beats_white_box``  in a cascade, a gradient-free stage broke more than 0.2% of the
                            points all white-box stages left (AutoAttack's check_square_sr).
``robust_above_sanity_pgd`` the reported robust accuracy on these points exceeds the sanity
                            PGD's (CE, 20 steps of ε/4, uniform start, same norm and ε) by
                            more than its noise: 1/n + 2·sqrt(p(1−p)/n), p the PGD's accuracy.
                            The reported attack is weaker than a plain PGD (given ``reported``).
``step_budget_below_eps``   a fixed-step attack's ``num_steps · step_size`` is below ε: it
                            cannot reach the ball's boundary (given ``attacks``).
``attack_precision_weaker`` the same attack run in bfloat16 left robust significantly more
                            points than in float32 (gradient masking by rounding), a paired
                            sign test; asked for separately when bfloat16 took part::

    flag = attack_precision_flag(config.model, num_classes, variables, x, y, key, attack, "eval")
    flag = precision_gap_flag(correct_float32, correct_bfloat16)   # from paired per-example results

Every check attacks in the evaluation's norm (``norm``: "linf" or "l2").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks.config import AttackConfig, step_budget_short
from nt_robust.attacks.losses import cross_entropy
from nt_robust.attacks.parts import PROJECTIONS, make_start
from nt_robust.attacks.pgd import pgd, projected_ascent
from nt_robust.models import ModelConfig, create_model, make_logits_fn

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    raised: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.partial(jax.jit, static_argnums=0)
def _logits(apply_fn: ApplyFn, variables: Any, x: jax.Array) -> jax.Array:
    return apply_fn(variables, x)


@functools.partial(jax.jit, static_argnums=0)
def _ce_gradients(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jax.grad(lambda z: jnp.sum(cross_entropy(apply_fn(variables, z), y)))(x)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _pgd_correct(apply_fn: ApplyFn, num_steps: int, norm: str, variables: Any, x: jax.Array, y: jax.Array,
                 key: jax.Array, eps: jax.Array) -> jax.Array:
    """PGD (CE, ``num_steps`` steps of ε/4, uniform start in ``norm``); ε traced: one compile for every ε."""
    logits_fn = functools.partial(apply_fn, variables)
    x_start = PROJECTIONS[norm](make_start("uniform", norm)(key, x, eps), x, eps)
    x_adv = projected_ascent(lambda z: cross_entropy(logits_fn(z), y), x, x_start, norm=norm, eps=eps,
                             step_size=eps / 4, num_steps=num_steps, loop="fori").x_adv
    return jnp.argmax(logits_fn(x_adv), axis=-1) == y


def forward_flags(apply_fn: ApplyFn, variables: Any, x: jax.Array, bn_mode: str = "eval") -> list[Flag]:
    """Randomness, batch coupling, BN mode and probability outputs."""
    first, second = np.asarray(_logits(apply_fn, variables, x)), np.asarray(_logits(apply_fn, variables, x))
    scale = 1.0 + float(np.max(np.abs(first)))
    diff = float(np.max(np.abs(first - second)))
    flags = [Flag("randomized_forward", diff > 1e-5 * scale, f"max |Δlogit| between two passes = {diff:.3g}")]
    k = min(4, len(x))
    alone = np.concatenate([np.asarray(_logits(apply_fn, variables, x[i:i + 1])) for i in range(k)])
    coupling = float(np.max(np.abs(alone - first[:k])))
    flags.append(Flag("batch_dependent_output", coupling > 1e-4 * scale,
                      f"max |Δlogit| alone vs in batch = {coupling:.3g}"))
    flags.append(Flag("bn_train_mode", bn_mode == "train", f"bn_mode = {bn_mode!r}"))
    probabilities = bool(first.min() >= -1e-5 and first.max() <= 1 + 1e-5
                         and np.all(np.abs(first.sum(-1) - 1) < 1e-5))
    flags.append(Flag("probability_outputs", probabilities,
                      "outputs lie in [0, 1] and sum to 1" if probabilities else "outputs look like logits"))
    return flags


def gradient_flags(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array) -> list[Flag]:
    """Zero and non-finite input gradients of the CE loss."""
    grad = np.asarray(_ce_gradients(apply_fn, variables, x, y)).reshape(len(x), -1)
    finite = np.isfinite(grad).all(axis=1)
    zero = np.all(grad == 0, axis=1)
    return [Flag("zero_gradients", bool(zero.any()), f"{int(zero.sum())}/{len(x)} examples with a zero gradient"),
            Flag("nonfinite_gradients", bool((~finite).any()),
                 f"{int((~finite).sum())}/{len(x)} examples with a non-finite gradient")]


def sanity_pgd_accuracies(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array, key: jax.Array,
                          eps: float, num_steps: int = 20, norm: str = "linf") -> list[float]:
    """Robust accuracy of PGD (CE, step ε/4, ``num_steps`` steps, uniform start) at ε/2, ε and 2ε."""
    accuracies = []
    for scale in (0.5, 1.0, 2.0):
        correct = _pgd_correct(apply_fn, num_steps, norm, variables, x, y, key,
                               jnp.asarray(eps * scale, jnp.float32))
        accuracies.append(float(np.mean(np.asarray(correct))))
    return accuracies


def eps_monotonicity_flag(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array, key: jax.Array,
                          eps: float, num_steps: int = 20, norm: str = "linf",
                          accuracies: list[float] | None = None) -> Flag:
    """PGD (CE, step ε/4, ``num_steps`` steps, uniform start) at ε/2, ε and 2ε."""
    if accuracies is None:
        accuracies = sanity_pgd_accuracies(apply_fn, variables, x, y, key, eps, num_steps, norm)
    slack = 1.0 / max(len(x), 1) + 1e-9
    raised = accuracies[1] > accuracies[0] + slack or accuracies[2] > accuracies[1] + slack
    return Flag("eps_not_monotone", raised, f"{norm} PGD robust accuracy at ε/2, ε, 2ε = "
                + ", ".join(f"{a:.3f}" for a in accuracies))


def pgd_noise(accuracy: float, n: int) -> float:
    """How far another attack's accuracy on the same ``n`` points may exceed the sanity
    PGD's ``accuracy`` by chance: one point plus two binomial standard errors."""
    n = max(n, 1)
    return 1.0 / n + 2.0 * float(np.sqrt(accuracy * (1.0 - accuracy) / n))


def reported_above_pgd_flag(reported: np.ndarray, pgd_accuracy: float) -> Flag:
    """``reported``: per-point robust (bool) of the evaluated attack on the sanity points."""
    reported = np.asarray(reported, bool)
    value, slack = float(np.mean(reported)) if reported.size else 0.0, pgd_noise(pgd_accuracy, reported.size)
    return Flag("robust_above_sanity_pgd", value > pgd_accuracy + slack,
                f"reported robust accuracy {value:.3f} vs sanity PGD {pgd_accuracy:.3f} on the same "
                f"{reported.size} points (noise {slack:.3f})")


def step_budget_flag(attacks: list[Any]) -> Flag:
    """Fixed-step attacks whose steps cannot cover ε."""
    short = [a for a in attacks if step_budget_short(a)]
    detail = "; ".join(f"{a.num_steps} steps × {a.step_size:.4g} = {a.num_steps * a.step_size:.4g} < eps "
                       f"{a.eps:.4g}" for a in short) or "every fixed-step attack's steps cover eps"
    return Flag("step_budget_below_eps", bool(short), detail)


def cascade_flags(result: Any, alpha: float = 0.002) -> list[Flag]:
    """Checks on a finished :class:`~nt_robust.attacks.protocols.ProtocolResult`."""
    broken_by = np.asarray(result.per_example["broken_by"])
    black_box = [i for i, s in enumerate(result.protocol.stages) if not s.white_box]
    if not black_box or not any(s.white_box for s in result.protocol.stages) or not len(broken_by):
        return []
    by_black_box = int(np.isin(broken_by, black_box).sum())
    return [Flag("black_box_beats_white_box", by_black_box > alpha * len(broken_by),
                 f"{by_black_box}/{len(broken_by)} points broken only by a gradient-free stage")]


def sanity_flags(apply_fn: ApplyFn, variables: Any, x: np.ndarray, y: np.ndarray, key: jax.Array, eps: float,
                 bn_mode: str = "eval", result: Any = None, norm: str = "linf",
                 reported: np.ndarray | None = None, attacks: list[Any] | tuple[Any, ...] = ()) -> list[Flag]:
    """Every check above on ``(x, y)`` (a small subset, float in [0, 1]) in ``norm``;
    ``result`` adds the cascade check, ``reported`` (per-point robust of the evaluated
    attack on these points) the comparison with the sanity PGD, ``attacks`` (the configs
    that ran) the step budget check."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    flags = forward_flags(apply_fn, variables, x, bn_mode)
    flags += gradient_flags(apply_fn, variables, x, y)
    accuracies = sanity_pgd_accuracies(apply_fn, variables, x, y, key, eps, norm=norm)
    flags.append(eps_monotonicity_flag(apply_fn, variables, x, y, key, eps, norm=norm, accuracies=accuracies))
    if reported is not None:
        flags.append(reported_above_pgd_flag(reported, accuracies[1]))
    if attacks:
        flags.append(step_budget_flag(list(attacks)))
    if result is not None:
        flags += cascade_flags(result)
    return flags


def format_flags(flags: list[Flag]) -> str:
    """One line per check, raised flags first."""
    ordered = sorted(flags, key=lambda f: not f.raised)
    return "\n".join(f"{'FLAG' if f.raised else 'ok  '} {f.name}: {f.detail}" for f in ordered)


# --------------------------------------------------------------------------- low precision

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

"""Typed, validated attack settings and the paper's named presets.

    PGD20          # paper evaluation: ℓ∞, ε=0.031, 20 steps of 0.007, CE, uniform start
    TRADES_TRAIN   # TRADES inner max: ℓ∞, ε=0.031, 10 steps of 0.007, KL, x + 0.001·N(0, I)
    PGD_AT_TRAIN   # PGD-AT inner max: same as TRADES_TRAIN with the CE loss
    CW20           # ℓ∞, ε=0.031, 20 steps of 0.007, CW margin, uniform start
    CW20_AUTHORS   # the same with the paper authors' clamped CW loss ("cw_authors")
    FGSM(8 / 255)  # one ℓ∞ sign step of size ε from the clean point

    AttackConfig(norm="l2", eps=0.5, step_size=0.1, num_steps=20)
    dataclasses.replace(PGD20, step_size=0.003)      # the paper's second PGD-20 variant

ε is stored exactly as given: 0.031 and 8/255 (= 0.0313...) are different threat models
and both appear in the paper. A fraction written as text (``eps = "8/255"`` in TOML,
``--set train_attack.eps=8/255``) becomes its correctly rounded float in ``eps`` and its
text in ``eps_text`` (same for ``step_size``); reports print the text::

    build(AttackConfig, {"eps": "8/255", "step_size": "2/255", "num_steps": 10})
    # eps=0.03137254901960784, eps_text="8/255", step_size=0.00784..., step_size_text="2/255"
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from nt_robust.attacks.loops import LOOPS
from nt_robust.config import ExactFloat, check_choice, check_int, check_real, parse_exact, require
from nt_robust.attacks.losses import LOSSES
from nt_robust.attacks.parts import NORMS, STARTS


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """One attack, fully specified. Hashable, so it can be a static argument of ``jax.jit``.

    Fields: ``norm`` ("linf" | "l2"), ``eps`` (radius), ``step_size``, ``num_steps``,
    ``loss`` ("ce" cross-entropy | "kl" KL to the clean prediction | "cw" margin |
    "cw_authors" the paper authors' clamped CW loss, :func:`~nt_robust.attacks.losses.cw_authors`),
    ``start`` ("uniform" in the ball | "gaussian" x + start_std·N(0, I) | "none"),
    ``start_std``, ``restarts`` (independent random starts; the per-example worst case is
    kept), ``loop`` ("auto" | "unroll" | "fori", see :mod:`nt_robust.attacks.loops`).
    ``eps_text`` / ``step_size_text``: how ε and the step were written when written as a
    fraction ("8/255"; None for a plain number). Set from an :class:`~nt_robust.config.ExactFloat`
    value; a text that no longer describes the number (``dataclasses.replace(c, eps=0.05)``)
    is dropped.
    """

    norm: str = "linf"
    eps: float
    step_size: float
    num_steps: int
    loss: str = "ce"
    start: str = "uniform"
    start_std: float = 0.001
    restarts: int = 1
    loop: str = "auto"
    eps_text: str | None = None
    step_size_text: str | None = None

    def __post_init__(self) -> None:
        for name in ("eps", "step_size"):
            value, text = getattr(self, name), getattr(self, f"{name}_text")
            if isinstance(value, ExactFloat):
                text = value.text
            elif text is not None and not (isinstance(value, numbers.Real)
                                           and float(parse_exact(text, f"{name}_text")) == float(value)):
                text = None   # describes another number (the field was replaced)
            object.__setattr__(self, f"{name}_text", None if text is None or text == repr(float(value)) else text)
        check_choice("norm", self.norm, NORMS)
        check_choice("loss", self.loss, tuple(LOSSES))
        check_choice("start", self.start, STARTS)
        check_choice("loop", self.loop, LOOPS)
        # Normalize numeric types (e.g. numpy scalars) so configs hash and serialize alike.
        object.__setattr__(self, "eps", check_real("eps", self.eps, minimum=0))
        object.__setattr__(self, "step_size", check_real("step_size", self.step_size, minimum=0))
        object.__setattr__(self, "start_std", check_real("start_std", self.start_std, minimum=0))
        object.__setattr__(self, "num_steps", check_int("num_steps", self.num_steps, minimum=0))
        object.__setattr__(self, "restarts", check_int("restarts", self.restarts, minimum=1))
        require(self.restarts == 1 or self.start != "none", "restarts",
                "> 1 needs a random start: with start='none' every restart is the same attack")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; ``AttackConfig(**config.to_dict())`` round-trips."""
        return dataclasses.asdict(self)

    @property
    def eps_label(self) -> str:
        """ε as written: "8/255", or the float's repr ("0.031")."""
        return self.eps_text or repr(self.eps)


def FGSM(eps: float) -> AttackConfig:  # noqa: N802 (a named preset, spelled like the others)
    """Fast gradient sign method: one ℓ∞ sign step of size ε from the clean point, CE loss."""
    return AttackConfig(norm="linf", eps=eps, step_size=eps, num_steps=1, loss="ce", start="none")


RELATIVE_STEP = 0.25
"""Step of the ε-relative presets (``pgd20``, ``cw20`` in ``nt-robust eval``; protocol
``pgd20``): ε/4, so 20 steps cover 5ε, enough to cross the ball from a random start in
ℓ∞ or ℓ2 at any ε. The paper's absolute step 0.007 at ε = 0.031 is ε/4.43."""


def at_threat_model(config: AttackConfig, eps: float, norm: str, step_fraction: float | None) -> AttackConfig:
    """``config`` at radius ``eps`` in ``norm``; its step ``step_fraction · ε`` unless None
    (then its own absolute step)::

        at_threat_model(PGD20, 0.5, "l2", RELATIVE_STEP)   # ℓ2 PGD-20, ε 0.5, step 0.125
    """
    changes: dict[str, Any] = {"eps": eps, "norm": norm}
    if step_fraction is not None:
        changes["step_size"] = step_fraction * float(eps)
    return dataclasses.replace(config, **changes)


def step_budget_short(config: Any) -> bool:
    """True when a fixed-step attack's ``num_steps · step_size`` is below its ε: it cannot
    reach the ball's boundary from the clean point (AttackConfig only; APGD sets its own step)."""
    return isinstance(config, AttackConfig) and config.num_steps * config.step_size < config.eps * (1 - 1e-9)


PGD20 = AttackConfig(norm="linf", eps=0.031, step_size=0.007, num_steps=20, loss="ce", start="uniform")
CW20 = AttackConfig(norm="linf", eps=0.031, step_size=0.007, num_steps=20, loss="cw", start="uniform")
# The authors' test_cifar10.py --attack-loss cw: ε 0.031, 20 steps of 0.007, uniform start in the
# ball; their start is not clipped to [0, 1] before the first gradient, ours is (as in CW20).
CW20_AUTHORS = dataclasses.replace(CW20, loss="cw_authors")
TRADES_TRAIN = AttackConfig(norm="linf", eps=0.031, step_size=0.007, num_steps=10, loss="kl",
                            start="gaussian", start_std=0.001)
PGD_AT_TRAIN = dataclasses.replace(TRADES_TRAIN, loss="ce")

PRESETS: dict[str, AttackConfig] = {
    "pgd20": PGD20, "cw20": CW20, "trades_train": TRADES_TRAIN, "pgd_at_train": PGD_AT_TRAIN,
}

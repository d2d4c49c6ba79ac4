"""Adversarial attacks built from small parts: loss, start, step rule, projection.

    from nt_robust.attacks import PGD20, TRADES_TRAIN, FGSM, AttackConfig, pgd

    x_adv = pgd(logits_fn, x, y, key, PGD20)           # logits_fn: x in [0, 1] -> logits
    x_adv = attack_model(model, variables, x, y, key, PGD20, bn_mode="eval")

See :mod:`nt_robust.attacks.pgd` for restarts, jit and use inside a train step.

AutoAttack's attacks and the evaluation protocols built from them::

    from nt_robust.attacks import APGDConfig, apgd, get_protocol, run_protocol, ModelFn
    result = apgd(logits_fn, x, y, key, APGDConfig(eps=8 / 255, loss="dlr"))
    evaluation = run_protocol(get_protocol("autoattack-standard", 8 / 255), ModelFn(model), variables,
                              images, labels)

(:mod:`.apgd`, :mod:`.fab`, :mod:`.square`, :mod:`.protocols`, :mod:`.sanity`; the
torchattacks cross-check goes through the PyTorch export: :mod:`nt_robust.export.torchattacks_check`.)
"""

from nt_robust.attacks.config import (CW20, FGSM, PGD20, PGD_AT_TRAIN, PRESETS, TRADES_TRAIN,
                                      AttackConfig)
from nt_robust.attacks.loops import LOOPS, resolve_loop, run_loop
from nt_robust.attacks.losses import (LOSSES, LossFn, best_other_logit, cross_entropy, cw_margin, dlr,
                                      kl_to_clean, ranked_class, targeted_dlr)
from nt_robust.attacks.parts import (NORMS, PROJECTIONS, STARTS, STEP_RULES, ProjectFn, StartFn, StepFn,
                                     gaussian_start, make_start, no_start, normalized_l2_step, project_l2,
                                     project_linf, sign_step, uniform_l2_start, uniform_linf_start)
from nt_robust.attacks.pgd import (AscentResult, Attack, Objective, attack_model, attack_objective,
                                   make_attack, pgd, pgd_restart, pgd_with_loss, projected_ascent,
                                   restart_key)

from nt_robust.attacks.apgd import APGDConfig, APGDResult, apgd  # noqa: E402 (after pgd: no cycles)
from nt_robust.attacks.fab import FABConfig, FABResult, fab  # noqa: E402
from nt_robust.attacks.square import SquareConfig, SquareResult, square  # noqa: E402
from nt_robust.attacks.protocols import (PROTOCOLS, BatchStore, ModelFn, Protocol, ProtocolResult,  # noqa: E402
                                         Stage, get_protocol, run_protocol)
from nt_robust.attacks.sanity import Flag, format_flags, sanity_flags  # noqa: E402

__all__ = [
    "APGDConfig", "APGDResult", "BatchStore", "FABConfig", "FABResult", "Flag", "ModelFn", "PROTOCOLS",
    "Protocol", "ProtocolResult", "SquareConfig", "SquareResult", "Stage", "apgd", "dlr", "fab",
    "format_flags", "get_protocol", "ranked_class", "run_protocol", "sanity_flags", "square", "targeted_dlr",
    "AscentResult", "Attack", "AttackConfig", "CW20", "FGSM", "LOOPS", "LOSSES", "LossFn", "NORMS",
    "Objective", "PGD20", "PGD_AT_TRAIN", "PRESETS", "PROJECTIONS", "ProjectFn", "STARTS", "STEP_RULES",
    "StartFn", "StepFn", "TRADES_TRAIN", "attack_model", "attack_objective", "best_other_logit",
    "cross_entropy", "cw_margin", "gaussian_start", "kl_to_clean", "make_attack", "make_start",
    "no_start", "normalized_l2_step", "pgd", "pgd_restart", "pgd_with_loss", "project_l2",
    "project_linf", "projected_ascent", "resolve_loop", "restart_key", "run_loop", "sign_step",
    "uniform_l2_start", "uniform_linf_start",
]

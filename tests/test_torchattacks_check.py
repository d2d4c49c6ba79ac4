"""torchattacks (an independent implementation) and our APGD-CE against the exact ℓ∞ worst
case of an affine binary classifier (skipped without torch and torchattacks; `make test`
installs both).

An MLP whose hidden ReLUs never switch off on [−ε, 1 + ε] (bias 50 ≫ |W·x|) is affine:
the logit margin is a·x + c, and its minimum over B∞(x, ε) ∩ [0, 1]^d is attained at
x_i = clip(x_i − ε·sign(a_i), 0, 1). Both attacks must break exactly the points whose
worst-case margin is negative (points within 1e-3 of the boundary are not scored: float32
rounding decides them)."""

import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchattacks")

from nt_robust.attacks import protocols as P  # noqa: E402
from nt_robust.export.torchattacks_check import torchattacks_correct  # noqa: E402
from nt_robust.export import to_torch  # noqa: E402
from nt_robust.models import MLP  # noqa: E402

torch.set_num_threads(1)
EPS = 0.05


def test_apgd_ce_both_frameworks_find_the_exact_worst_case():
    model = MLP(width=4, depth=1, num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, 4, 4, 1)).astype(np.float32)
    w = (0.3 * rng.normal(size=(16, 4))).astype(np.float32)
    v = rng.normal(size=(4, 2)).astype(np.float32)
    variables = {"params": {"hidden1": {"kernel": w, "bias": np.full(4, 50.0, np.float32)},
                            "classifier": {"kernel": v, "bias": np.zeros(2, np.float32)}}}
    centre = np.asarray(model.apply(variables, x)).mean(0)      # classifier bias: both classes occur
    variables["params"]["classifier"]["bias"] = -centre
    logits = np.asarray(model.apply(variables, x))
    labels = logits.argmax(1).astype(np.int32)
    # exact worst case, in float64
    flat = x.reshape(len(x), -1).astype(np.float64)
    direction = (w.astype(np.float64) @ (v[:, 1] - v[:, 0]).astype(np.float64))   # d(l1 - l0)/dx
    a = np.where(labels[:, None] == 1, direction, -direction)                        # d margin / dx
    worst = np.clip(flat - EPS * np.sign(a), 0, 1)
    hidden = worst @ w.astype(np.float64) + 50.0
    margin = hidden @ v.astype(np.float64) - centre.astype(np.float64)
    margin = np.where(labels == 1, margin[:, 1] - margin[:, 0], margin[:, 0] - margin[:, 1])
    robust, decided = margin > 0, np.abs(margin) > 1e-3
    assert 0.2 < robust.mean() < 0.8 and decided.mean() > 0.9   # a test that can fail either way

    stage = next(s for s in P.PROTOCOLS["autoattack-standard"].stages if s.name == "apgd-ce")
    stage = dataclasses.replace(stage, config=dataclasses.replace(stage.config, num_steps=10))
    ours = P.run_protocol(P.Protocol("check-apgd-ce", 0, (stage,)).at_eps(EPS), P.ModelFn(model, "eval"),
                          jax.tree_util.tree_map(np.asarray, variables), x, labels, seed=0, batch_size=96)
    ours_robust = ours.per_example["broken_by"] == P.ROBUST
    theirs_robust = torchattacks_correct(to_torch(model, variables), "apgd-ce", x, labels, EPS, steps=10,
                                         num_classes=2)
    np.testing.assert_array_equal(ours_robust[decided], robust[decided])
    np.testing.assert_array_equal(theirs_robust[decided], robust[decided])

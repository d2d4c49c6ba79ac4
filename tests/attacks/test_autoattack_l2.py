"""ℓ2 ``autoattack-standard`` end to end on a tiny network: the cascade runs (its stages with
fewer steps, targets and queries, to keep the test short), robust accuracy ≤ clean, every stage's points lie in B₂(x, ε) ∩ [0, 1], and the
norm is in the result and its fingerprint."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks.apgd import APGDConfig, apgd
from nt_robust.attacks.fab import FABConfig, fab
from nt_robust.attacks.protocols import ROBUST, get_protocol, run_protocol
from nt_robust.attacks.square import square
from test_apgd_l2 import assert_valid_l2

_RNG = np.random.default_rng(0)
_VARIABLES = {"w1": jnp.asarray(_RNG.normal(size=(10 * 10 * 3, 32)) * 0.1, jnp.float32),
              "b1": jnp.asarray(_RNG.normal(size=32) * 0.1, jnp.float32),
              "w2": jnp.asarray(_RNG.normal(size=(32, 10)), jnp.float32)}
EPS = 0.3


def apply(variables, x):
    """A one-hidden-layer ReLU net on 10 x 10 x 3 images (module level: hashable)."""
    hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ variables["w1"] + variables["b1"])
    return hidden @ variables["w2"]


def _data(n=24):
    x = _RNG.uniform(size=(n, 10, 10, 3)).astype(np.float32)
    y = np.array(jnp.argmax(apply(_VARIABLES, jnp.asarray(x)), 1))
    y[:3] = (y[:3] + 1) % 10      # three points wrong from the start
    return x, y


def _short(protocol):
    """The protocol with 20 steps, 3 targets and 300 queries per stage (same norm and ε)."""
    cut = {APGDConfig: dict(num_steps=20, num_targets=3), FABConfig: dict(num_steps=20, num_targets=3)}
    stages = tuple(dataclasses.replace(s, config=dataclasses.replace(s.config, **cut.get(type(s.config),
                                                                                          dict(num_queries=300))))
                   for s in protocol.stages)
    return dataclasses.replace(protocol, stages=stages)


def test_l2_autoattack_standard_runs_and_reports_its_norm():
    full = get_protocol("autoattack-standard", EPS, "l2")
    assert [s.name for s in full.stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert {(s.config.norm, s.config.eps) for s in full.stages} == {("l2", EPS)}
    protocol = _short(full)
    x, y = _data()
    result = run_protocol(protocol, apply, _VARIABLES, x, y, seed=0, batch_size=24)
    summary = result.summary()
    assert summary["norm"] == "l2" and summary["eps"] == EPS
    assert protocol.to_dict()["norm"] == "l2"
    assert summary["robust_accuracy"] <= summary["natural_accuracy"] == 21 / 24
    broken_by = result.per_example["broken_by"]
    assert np.sum(broken_by >= 0) > 0 and np.sum(broken_by == ROBUST) > 0   # ε breaks some points, not all
    after = list(summary["robust_accuracy_after_stage"].values())
    assert after == sorted(after, reverse=True)                            # the cascade never un-breaks


def test_every_l2_stage_keeps_its_points_in_the_l2_ball_before_projection():
    protocol = _short(get_protocol("autoattack-standard", EPS, "l2"))
    x, y = (jnp.asarray(a) for a in _data(16))
    logits_fn = lambda z: apply(_VARIABLES, z)   # noqa: E731
    for index, stage in enumerate(protocol.stages):
        config = stage.config
        attack = {APGDConfig: apgd, FABConfig: fab}.get(type(config), square)
        raw = jax.jit(attack, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(index), config)
        assert_valid_l2(raw.x_adv, x, EPS)
        fooled = np.asarray(raw.fooled)
        pred = np.asarray(jnp.argmax(logits_fn(raw.x_adv), 1))
        assert np.all(pred[fooled] != np.asarray(y)[fooled]), stage.name

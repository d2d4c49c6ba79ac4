"""Learning-rate schedules, PyTorch-style SGD with weight decay, and the weight EMA, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nt_robust.config import load_config
from nt_robust.data import make_synthetic_dataset
from nt_robust.models import create_model, init_variables
from nt_robust.train import ExperimentConfig, OptimConfig
from nt_robust.train.optim import make_optimizer, make_schedule
from nt_robust.train.state import create_train_state
from nt_robust.train.step import make_train_step


# The two "legacy" tests pin the rules of runs saved before issue 11 (they must resume with them);
# today's defaults are checked epoch for epoch against the reference code in test_schedules.py.
def test_legacy_piecewise_schedule_decays_after_milestone_epochs():
    schedule = make_schedule(OptimConfig(lr=0.1, milestones=(75, 90), decay=0.1, milestone_convention="legacy"),
                             epochs=100, steps_per_epoch=10)
    assert schedule(749) == pytest.approx(0.1)
    assert schedule(750) == pytest.approx(0.01)
    assert schedule(899) == pytest.approx(0.01)
    assert schedule(900) == pytest.approx(0.001)


def test_legacy_late_halving_halves_every_epoch_from_three_quarters_of_training():
    schedule = make_schedule(OptimConfig(lr=0.1, schedule="late_halving", late_halving_rule="legacy"),
                             epochs=8, steps_per_epoch=5)
    per_epoch = [float(schedule(epoch * 5)) for epoch in range(8)]
    np.testing.assert_allclose(per_epoch, [0.1] * 6 + [0.05, 0.025], rtol=1e-6)


def test_cosine_and_constant():
    cosine = make_schedule(OptimConfig(lr=0.2, schedule="cosine"), epochs=4, steps_per_epoch=5)
    assert cosine(0) == pytest.approx(0.2) and cosine(10) == pytest.approx(0.1) and cosine(20) == pytest.approx(0.0)
    assert make_schedule(OptimConfig(lr=0.3, schedule="constant"), 4, 5)(17) == pytest.approx(0.3)


def test_sgd_matches_pytorch_semantics_weight_decay_before_momentum():
    lr, m, wd = 0.1, 0.9, 0.01
    optimizer = make_optimizer(OptimConfig(lr=lr, momentum=m, weight_decay=wd, schedule="constant"), 1, 1)
    p0 = {"w": jnp.array([1.0, -2.0])}
    g1, g2 = jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])
    state = optimizer.init(p0)
    u1, state = optimizer.update({"w": g1}, state, p0)
    p1 = optax.apply_updates(p0, u1)
    u2, state = optimizer.update({"w": g2}, state, p1)
    p2 = optax.apply_updates(p1, u2)
    # torch.optim.SGD: d = g + wd·p; buf = m·buf + d (buf = d at the first step); p -= lr·buf
    d1 = np.array([0.5, 0.25]) + wd * np.array([1.0, -2.0])
    q1 = np.array([1.0, -2.0]) - lr * d1
    buf = m * d1 + (np.array([-1.0, 2.0]) + wd * q1)
    np.testing.assert_allclose(p1["w"], q1, rtol=1e-6)
    np.testing.assert_allclose(p2["w"], q1 - lr * buf, rtol=1e-6)


def test_weight_ema_after_one_step():
    ds = make_synthetic_dataset(num_train=32, num_test=8)
    config = load_config(ExperimentConfig, None, ["data.dataset=synthetic", "model.arch=mlp", "model.width=8",
                                                  "model.depth=1", "objective.kind=natural", "optim.ema_decay=0.9"])
    model = create_model(config.model, ds.num_classes)
    variables = init_variables(model, jax.random.key(0), ds.image_shape)
    optimizer = make_optimizer(config.optim, 1, 1)
    state = create_train_state(variables, optimizer, 6.0, use_ema=True)
    new_state, _ = jax.jit(make_train_step(model, config, optimizer))(state, ds.train_images[:32], ds.train_labels[:32])
    expected = jax.tree_util.tree_map(lambda old, new: 0.9 * old + 0.1 * new, state.params, new_state.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           new_state.ema_params, expected)

"""BatchNorm passes of the training step, named (issue 11, item 6): ``objective.bn_passes``.

TRADES' trades_loss forwards clean (CE), adversarial, clean again (KL target); the paper's
authors' code forwards clean, adversarial for TRADES and adversarial, clean for PGD-AT
(tabrisweapon/A-temp-project attacks/trades.py, attacks/pgd.py). The loss and gradients
cannot depend on the order, since a training-mode pass normalizes with its own batch's
statistics; the running statistics do, by the closed form of the exponential average.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.config import load_config
from nt_robust.data import make_synthetic_dataset
from nt_robust.models.wide_resnet import BN_EPSILON, BN_MOMENTUM
from nt_robust.objectives import objective_terms
from nt_robust.train import ExperimentConfig, ObjectiveConfig
from nt_robust.train.optim import make_optimizer
from nt_robust.train.state import create_train_state
from nt_robust.train import step as step_module
from nt_robust.train.step import forward_train, make_train_step, pass_order, training_passes

U = 2.0 ** -24   # float32 unit roundoff


def GRAD_ATOL(n: int) -> float:  # noqa: N802
    """Reordering bound 2(n − 1)·u·Σ|terms| with Σ|terms| ≤ n·16·max|g| (see the gradient test)."""
    return 2 * n * 16 * n * U
MU = BN_MOMENTUM  # Flax: running = μ·running + (1 − μ)·batch statistic (μ = 0.9 is PyTorch's momentum 0.1)


class InputBN(nn.Module):
    """BatchNorm straight on the flattened input, then a linear layer: the running mean
    after a pass on batch x is the EMA step towards x.mean(axis=0), computable by hand."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(len(x), -1)
        x = nn.BatchNorm(use_running_average=not train, momentum=MU, epsilon=BN_EPSILON)(x)
        return nn.Dense(3)(x)


class TinyBNNet(nn.Module):
    """Two BatchNorm layers, one behind a hidden layer (so gradients flow through BN)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=MU, epsilon=BN_EPSILON)  # noqa: E731
        x = bn()(x.reshape(len(x), -1))
        x = nn.relu(bn()(nn.Dense(8)(x)))
        return nn.Dense(4)(x)


def _init(model: nn.Module, image_shape: tuple[int, ...]):
    """Variables from one compiled init (eager init dispatches op by op: seconds on 2 cores)."""
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))


def _batches(shape: tuple[int, ...], step: float) -> tuple[np.ndarray, np.ndarray]:
    """A float32 batch in [0, 1] and an "adversarial" one: ±``step`` per pixel, clipped."""
    rng = np.random.default_rng(1)
    x = rng.uniform(size=shape).astype(np.float32)
    return x, np.clip(x + step * rng.choice([-1.0, 1.0], size=shape), 0, 1).astype(np.float32)


def test_pass_orders_of_each_code():
    assert pass_order("trades", "trades") == ("clean", "adversarial", "clean")
    assert pass_order("trades", "authors") == ("clean", "adversarial")
    assert pass_order("pgd_at", "authors") == ("adversarial", "clean")
    assert pass_order("pgd_at", "trades") == ("clean", "adversarial")
    assert pass_order("natural", "trades") == pass_order("natural", "authors") == ("clean",)
    assert ObjectiveConfig().bn_passes == "authors"
    with pytest.raises(ValueError, match="objective.bn_passes must be one of"):
        ObjectiveConfig(bn_passes="pytorch")


def _closed_form(r0: np.ndarray, batch_statistics: list[np.ndarray]) -> np.ndarray:
    """r_k = μ^k·r0 + (1 − μ)·Σ_i μ^(k−i)·s_i after passes with batch statistics s_1..s_k."""
    k = len(batch_statistics)
    return MU ** k * r0 + (1 - MU) * sum(MU ** (k - i) * s for i, s in enumerate(batch_statistics, 1))


@pytest.mark.parametrize("kind, bn_passes", [("trades", "trades"), ("trades", "authors"),
                                             ("pgd_at", "authors"), ("pgd_at", "trades")])
def test_running_statistics_after_one_step_are_the_closed_form(kind, bn_passes):
    n, d = 16, 12
    x, x_adv = _batches((n, 2, 2, 3), 0.3)
    x, x_adv = np.float64(x), np.float64(x_adv)
    model = InputBN()
    variables = _init(model, (2, 2, 3))
    stats0 = {"BatchNorm_0": {"mean": jnp.full((d,), 0.2), "var": jnp.full((d,), 1.5)}}   # not the init values
    order = pass_order(kind, bn_passes)
    passes = jax.jit(lambda p, s, a, b: training_passes(model, p, s, a, b, order))  # one compile, not op by op
    _, _, stats = passes(variables["params"], stats0, jnp.float32(x), jnp.float32(x_adv))
    batches = {"clean": x.reshape(n, d), "adversarial": x_adv.reshape(n, d)}
    means = [batches[name].mean(0) for name in order]
    variances = [batches[name].var(0) for name in order]   # biased, as Flax keeps it
    # Tolerance: each float32 batch mean sums n terms in [0, 1] (error ≤ (n − 1)·u·max|x| ≤ n·u), the
    # variance E[x²] − E[x]² two such sums (≤ 3·n·u for values in [0, 1]); the EMA adds ≤ 3 roundings
    # per pass on values ≤ 1.5. So the means agree within (n + 3k + 3)·u, the variances within (3n + 6k + 6)·u.
    k = len(order)
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], _closed_form(np.full(d, 0.2), means),
                               rtol=0, atol=(n + 3 * k + 3) * U)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], _closed_form(np.full(d, 1.5), variances),
                               rtol=0, atol=(3 * n + 6 * k + 6) * U)
    # The three orders really differ: e.g. TRADES' three passes vs the authors' two.
    if (kind, bn_passes) == ("trades", "trades"):
        two = _closed_form(np.full(d, 0.2), means[:2])
        assert np.max(np.abs(np.asarray(stats["BatchNorm_0"]["mean"]) - two)) > 100 * (n + 9) * U


def test_a_repeated_clean_pass_gives_the_first_pass_logits_bitwise():
    # Why the loss may use the first clean pass's logits as TRADES' KL target (its third pass):
    # a training-mode pass does not read the running statistics it is given.
    model = TinyBNNet()
    variables = _init(model, (4, 4, 1))
    x, x_adv = _batches((8, 4, 4, 1), 0.2)
    forward = jax.jit(lambda stats, batch: forward_train(model, variables["params"], stats, batch))
    first, stats = forward(variables["batch_stats"], x)
    _, stats = forward(stats, x_adv)
    third, _ = forward(stats, x)
    np.testing.assert_array_equal(first, third)


@pytest.mark.parametrize("kind", ["trades", "pgd_at"])
def test_loss_and_gradients_do_not_depend_on_the_pass_order(kind):
    model = TinyBNNet()
    variables = _init(model, (4, 4, 1))
    x, x_adv = _batches((8, 4, 4, 1), 0.1)
    labels = jnp.arange(8) % 4
    results = {}
    for bn_passes in ("authors", "trades"):
        order = pass_order(kind, bn_passes)

        def loss(params, order=order):
            clean, adv, stats = training_passes(model, params, variables["batch_stats"], x, x_adv, order)
            return objective_terms(kind, 6.0, clean, adv, labels).total, stats

        (total, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        results[bn_passes] = total, grads, stats
    (loss_a, grads_a, stats_a), (loss_t, grads_t, stats_t) = results["authors"], results["trades"]
    # Both programs do the same float32 operations on the same values (no logit depends on the
    # running statistics); only XLA's scheduling of two different programs may reorder a sum. A
    # reordered sum of n terms moves by ≤ 2(n − 1)·u·Σ|terms|. The longest sums: the loss's batch mean
    # (8 terms) and a weight-gradient entry (2 passes × 8 examples = 16 per-example terms). We take each
    # term to be at most 16× the largest entry of its leaf (an assumption: no heavy cancellation, which
    # these random inputs do not produce), so Σ|terms| ≤ 16·16·max|g| and atol = 2·16·16·u·max|g|.
    np.testing.assert_allclose(loss_a, loss_t, rtol=2 * 8 * U)
    for leaf_a, leaf_t in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_t)):
        np.testing.assert_allclose(leaf_a, leaf_t, rtol=0, atol=GRAD_ATOL(16) * float(jnp.max(jnp.abs(leaf_a))))
    if kind == "trades":   # ... but the statistics differ: one more EMA step towards the clean batch
        assert not np.allclose(stats_a["BatchNorm_0"]["mean"], stats_t["BatchNorm_0"]["mean"])


@pytest.mark.parametrize("kind, bn_passes", [("trades", "trades"), ("pgd_at", "authors"), ("natural", "trades")])
def test_the_train_step_makes_the_configured_passes(monkeypatch, kind, bn_passes):
    # The numbers are checked above on training_passes; here, that make_train_step hands it the
    # configured order (traced with eval_shape: nothing is compiled or run).
    seen = []

    def spy(model, params, batch_stats, x, x_adv, order):
        seen.append(order)
        return training_passes(model, params, batch_stats, x, x_adv, order)

    monkeypatch.setattr(step_module, "training_passes", spy)
    ds = make_synthetic_dataset(num_train=8, num_test=8)
    loss = {"trades": "kl", "pgd_at": "ce"}.get(kind, "kl")
    config = load_config(ExperimentConfig, None, [
        "data.dataset=synthetic", f"objective.kind={kind}", f"objective.bn_passes={bn_passes}",
        f"train_attack.loss={loss}", "train_attack.num_steps=1"])
    model = InputBN()
    optimizer = make_optimizer(config.optim, 1, 1)
    state = create_train_state(_init(model, ds.image_shape), optimizer, 6.0, False)
    jax.eval_shape(make_train_step(model, config, optimizer), state, ds.train_images[:8], ds.train_labels[:8])
    assert seen == [pass_order(kind, bn_passes)]

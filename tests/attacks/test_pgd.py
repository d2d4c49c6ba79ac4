"""PGD/FGSM against closed-form worst cases, constraints, restarts and use inside jit."""

import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks import (CW20, FGSM, PGD20, TRADES_TRAIN, AttackConfig, attack_model, cross_entropy,
                               make_attack, pgd, pgd_restart, pgd_with_loss)
from nt_robust.models.apply import make_logits_fn

# On CPU one whole-graph compile is much cheaper than eager op-by-op execution, and "rbg" keys
# compile far faster than threefry ones (about 1 s per random draw here); data comes from numpy.
jit_pgd = jax.jit(pgd, static_argnums=(0, 4))
jit_pgd_with_loss = jax.jit(pgd_with_loss, static_argnums=(0, 4))
jit_pgd_restart = jax.jit(pgd_restart, static_argnums=(0, 4))


def key(seed):
    return jax.random.key(seed, impl="rbg")


def _linear_model(seed, dim, num_classes, scale=1.0):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(dim, num_classes)).astype(np.float32) * scale
    bias = (rng.normal(size=num_classes) * 0.1).astype(np.float32)
    return (lambda x: x.reshape(x.shape[0], -1) @ weights + bias), weights, bias


def _data(seed, shape, num_classes, low=0.0, high=1.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, size=shape).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, num_classes, shape[0]), jnp.int32)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(5)(nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1))))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(5)(nn.relu(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1))


def _network(kind, seed=0):
    model = MLP() if kind == "mlp" else CNN()
    return model, model.init(key(seed), jnp.zeros((1, 6, 6, 3)))


def _worst_direction(w, y):
    """Per example, w_other - w_y for a two-class linear model."""
    return (w[:, 1] - w[:, 0])[None, :] * np.where(np.asarray(y) == 0, 1, -1)[:, None]


def test_linf_pgd_reaches_the_closed_form_worst_case_of_a_two_class_linear_model():
    # Two classes: CE = softplus((w_o - w_y)·x' + b_o - b_y) increases with a linear function, so
    # over B∞(x, ε) ∩ [0,1]^d it peaks at clip(x + ε·sign(w_o - w_y), 0, 1), coordinatewise.
    # Each step moves every coordinate 0.007 towards it; 20 steps cover 2ε from any start.
    logits_fn, w, b = _linear_model(0, dim=12, num_classes=2)
    x, y = _data(1, (64, 12), 2)  # many coordinates lie within ε of the box boundary
    x_adv, loss = jit_pgd_with_loss(logits_fn, x, y, key(2), dataclasses.replace(PGD20, loop="fori"))
    expected = np.clip(np.asarray(x) + PGD20.eps * np.sign(_worst_direction(w, y)), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-7)
    # The loss against float64 at the returned points: float32 logits (d = 12 products and a bias,
    # any summation order) are off by at most γ·S, γ = (d + 1)·u, u = 2⁻²⁴, S = max_j ‖w_j‖₁ + |b_j|
    # (x' ∈ [0, 1]), so the margin m by 2γS; CE = softplus(m) moves by sigmoid(m)·δm ≤ CE·δm (relative).
    # Evaluating log-softmax in float32 (z − max, exp, 1 + e^m, log; XLA's exp/log within 2 ulp) adds at
    # most 8u·(1 + |m|) absolute: that is what dominates for the well-classified points (CE ≈ 0.006).
    rows, label = np.arange(64), np.asarray(y)
    z = np.asarray(x_adv, np.float64) @ w + b
    m = z[rows, 1 - label] - z[rows, label]
    u = 2.0 ** -24
    S = float(np.max(np.abs(w).sum(0) + np.abs(b)))
    np.testing.assert_allclose(loss, np.logaddexp(0, m), rtol=2 * 13 * u * S, atol=8 * u * (1 + np.abs(m).max()))


def test_l2_pgd_reaches_the_closed_form_worst_case_of_a_two_class_linear_model():
    # Away from the box, a linear function's max over the ℓ2 ball is at x + ε·d/‖d‖₂; with no random
    # start every iterate lies on that ray, so PGD lands on it exactly.
    logits_fn, w, _ = _linear_model(3, dim=12, num_classes=2)
    x, y = _data(4, (32, 12), 2, low=0.3, high=0.7)
    config = AttackConfig(norm="l2", eps=0.2, step_size=0.05, num_steps=10, start="none", loop="fori")
    direction = _worst_direction(w, y)
    expected = np.asarray(x) + 0.2 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    np.testing.assert_allclose(jit_pgd(logits_fn, x, y, None, config), expected, atol=1e-6)


def test_cw_pgd_on_multiclass_linear_model_against_brute_force_over_vertices():
    # The margin max_{j≠y} z_j - z_y is a max of linear functions, so its max over the ℓ∞ ball (the
    # box is out of reach here) is at one of the 2^d vertices. Sign ascent follows the currently best
    # other class j*, so it stops at a vertex x + ε·sign(w_j* - w_y) where j* is still the best other
    # class: a local max. Every example must reach such a point; most reach the global max.
    dim, classes, n, eps = 4, 5, 64, CW20.eps
    logits_fn, w, b = _linear_model(0, dim, classes)
    x, y = _data(0, (n, dim), classes, low=0.2, high=0.8)
    x_adv, loss = jit_pgd_with_loss(logits_fn, x, y, key(0), dataclasses.replace(CW20, loop="fori"))
    label = np.asarray(y)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=dim)))
    z = (np.asarray(x)[:, None, :] + eps * signs[None]) @ w + b  # (n, 2^d, classes)
    label_logit = np.take_along_axis(z, label[:, None, None], axis=-1)[..., 0]
    brute_force = (np.where(np.arange(classes) == label[:, None, None], -np.inf, z).max(-1) - label_logit).max(-1)
    assert np.all(np.asarray(loss) <= brute_force + 1e-5)
    assert np.mean(np.isclose(loss, brute_force, rtol=1e-5, atol=1e-5)) >= 0.9
    z_adv = np.asarray(x_adv, np.float64) @ w + b
    best_other = np.where(np.arange(classes) == label[:, None], -np.inf, z_adv).argmax(-1)
    local_max = np.asarray(x) + eps * np.sign(w[:, best_other].T - w[:, label].T)
    np.testing.assert_allclose(x_adv, local_max, atol=1e-6)


def test_fgsm_is_one_sign_step_on_a_linear_model():
    logits_fn, w, b = _linear_model(5, dim=20, num_classes=4)
    x, y = _data(6, (16, 20), 4)
    z = np.asarray(x, np.float64) @ w + b
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    grad = (probs - np.eye(4)[np.asarray(y)]) @ w.T  # ∇ₓ CE = W(p - onehot(y))
    expected = np.clip(np.asarray(x) + 0.03 * np.sign(grad), 0, 1)
    np.testing.assert_allclose(jit_pgd(logits_fn, x, y, None, FGSM(0.03)), expected, atol=1e-7)


CASES = [("mlp", "linf", "ce", "uniform"), ("mlp", "l2", "kl", "gaussian"), ("cnn", "linf", "cw", "uniform"),
         ("cnn", "l2", "ce", "uniform"), ("mlp", "linf", "kl", "none")]


@pytest.mark.parametrize("kind, norm, loss, start", CASES)
def test_adversarial_points_stay_in_ball_and_box(kind, norm, loss, start):
    model, variables = _network(kind)
    x, y = _data(1, (8, 6, 6, 3), 5)
    eps = 0.05 if norm == "linf" else 0.5
    config = AttackConfig(norm=norm, eps=eps, step_size=eps / 2, num_steps=4, loss=loss, start=start,
                          start_std=0.1, loop="fori")
    x_adv = jit_pgd(make_logits_fn(model, variables), x, y, key(2), config)
    delta = np.asarray(x_adv - x, np.float64).reshape(8, -1)
    size = np.abs(delta).max(-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
    assert size.max() <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_restarts_never_lower_the_loss_of_any_single_restart():
    model, variables = _network("mlp", seed=3)
    logits_fn = make_logits_fn(model, variables)
    x, y = _data(4, (32, 6, 6, 3), 5)
    config = dataclasses.replace(PGD20, num_steps=3, step_size=0.01, restarts=4, loop="fori")
    x_adv, loss = jit_pgd_with_loss(logits_fn, x, y, key(5), config)
    singles = [jit_pgd_restart(logits_fn, x, y, key(5), config, jnp.int32(r)) for r in range(4)]
    single_losses = np.stack([s.loss for s in singles])
    assert np.all(np.asarray(loss)[None] >= single_losses)
    np.testing.assert_array_equal(loss, single_losses.max(0))
    winner = single_losses.argmax(0)  # the first restart among ties, as documented
    assert len(set(winner.tolist())) > 1  # the restarts really differ
    np.testing.assert_array_equal(x_adv, np.stack([s.x_adv for s in singles])[winner, np.arange(32)])
    np.testing.assert_allclose(cross_entropy(logits_fn(x_adv), y), loss, rtol=1e-6)
    # Restart r does not depend on how many restarts there are.
    one = jit_pgd(logits_fn, x, y, key(5), dataclasses.replace(config, restarts=1))
    np.testing.assert_array_equal(one, singles[0].x_adv)


def test_each_example_is_attacked_independently_of_the_batch():
    # The gradient is that of the summed loss, so an example's steps do not depend on the batch.
    model, variables = _network("cnn", seed=1)
    logits_fn = make_logits_fn(model, variables)
    x, y = _data(6, (6, 6, 6, 3), 5)
    config = AttackConfig(eps=0.05, step_size=0.01, num_steps=3, start="none", loop="fori")
    batched = jit_pgd(logits_fn, x, y, None, config)
    alone = jax.vmap(lambda xi, yi: jit_pgd(logits_fn, xi[None], yi[None], None, config)[0])(x, y)
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_loop_forms_jit_and_make_attack_agree():
    logits_fn, _, _ = _linear_model(7, dim=10, num_classes=3, scale=2.0)
    x, y = _data(8, (16, 10), 3)
    config = dataclasses.replace(TRADES_TRAIN, num_steps=3, loop="unroll")
    unrolled = jit_pgd(logits_fn, x, y, key(9), config)
    fori = jit_pgd(logits_fn, x, y, key(9), dataclasses.replace(config, loop="fori"))
    made = jax.jit(make_attack(logits_fn, config))(x, y, key(9))
    np.testing.assert_allclose(unrolled, fori, atol=1e-6)
    np.testing.assert_array_equal(unrolled, made)


def test_attack_inside_a_jitted_train_step_does_not_backpropagate_through_the_attack():
    model, variables = _network("mlp", seed=2)
    x, y = _data(10, (8, 6, 6, 3), 5)
    config = dataclasses.replace(TRADES_TRAIN, num_steps=2, loop="fori")

    def adversarial_loss(params, x_adv):
        return cross_entropy(model.apply({"params": params}, x_adv), y).mean()

    @jax.jit
    def train_step_grads(params, step_key):
        logits_fn = make_logits_fn(model, {"params": params})  # closed over traced params
        x_adv = pgd(logits_fn, x, y, step_key, config)
        return jax.grad(adversarial_loss)(params, x_adv), x_adv

    grads, x_adv = train_step_grads(variables["params"], key(11))
    expected = jax.jit(jax.grad(adversarial_loss))(variables["params"], x_adv)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_attack_model_uses_the_chosen_batchnorm_mode():
    model, variables = _network("cnn", seed=4)
    x, y = _data(12, (4, 6, 6, 3), 5)
    config = dataclasses.replace(PGD20, num_steps=2, loop="fori")
    via_model = jax.jit(attack_model, static_argnums=(0, 5, 6))(model, variables, x, y, key(13), config, "eval")
    direct = jit_pgd(make_logits_fn(model, variables, "eval"), x, y, key(13), config)
    np.testing.assert_allclose(via_model, direct, atol=1e-7)


def test_random_start_without_key_is_an_error():
    logits_fn, _, _ = _linear_model(0, 4, 2)
    x, y = _data(0, (2, 4), 2)
    with pytest.raises(ValueError, match="key"):
        pgd(logits_fn, x, y, None, PGD20)

"""Metrics against hand-computed values, closed forms and the identities of docs/paper.md §3."""

import dataclasses
import itertools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.attacks import FGSM, PGD20
from nt_robust.attacks.parts import project_linf
from nt_robust.metrics import (LipschitzConfig, evaluate, evaluate_batch, evaluate_model, logit_margin,
                               natural_accuracy, perturbation_stability, robust_accuracy, summarize,
                               trades_grad_local_lipschitz, yang_local_lipschitz)

# "rbg" keys and fori loops keep CPU compile times short (threefry draws cost ~1 s each to compile).
SMALL_PGD = dataclasses.replace(PGD20, num_steps=3, loop="fori")


def key(seed):
    return jax.random.key(seed, impl="rbg")


def _linear_model(seed, dim, num_classes, scale=1.0):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(dim, num_classes)).astype(np.float32) * scale
    bias = (rng.normal(size=num_classes) * 0.1).astype(np.float32)
    return (lambda x: x.reshape(x.shape[0], -1) @ weights + bias), weights, bias


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))


def _dataset(seed, n=37, shape=(4, 4, 3), num_classes=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, num_classes, n)


def test_accuracy_and_stability_from_per_example_arrays():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 0, 0])
    adv = np.array([0, 2, 0, 3])
    assert natural_accuracy(clean, labels) == 0.5
    assert robust_accuracy(adv, labels) == 0.5
    assert perturbation_stability(clean, adv) == 0.5
    with pytest.raises(ValueError):
        natural_accuracy(clean, labels[:3])
    with pytest.raises(ValueError):
        robust_accuracy(np.array([]), np.array([]))


def test_logit_margin_is_label_logit_minus_best_other():
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]], np.float32)
    np.testing.assert_allclose(logit_margin(jnp.asarray(logits), jnp.array([0, 2])), [1.0, -6.0])


def test_lipschitz_config_defaults_and_validation():
    yang, trades = LipschitzConfig("yang"), LipschitzConfig("trades_grad")
    assert (yang.eps, yang.step_size, yang.num_steps, yang.init_std) == (0.01, 0.003, 10, 0.001)
    assert (trades.eps, trades.step_size, trades.num_steps) == (0.031, 0.007, 10)
    assert LipschitzConfig(**yang.to_dict()) == yang
    with pytest.raises(ValueError, match="method"):
        LipschitzConfig("spectral")
    with pytest.raises(ValueError, match="eps"):
        LipschitzConfig("yang", eps=-1.0)
    with pytest.raises(ValueError, match="init_std"):
        LipschitzConfig("yang", init_std=float("nan"))


def test_yang_lipschitz_of_a_one_dimensional_linear_model_is_exact():
    # f(x) = x·w + b with scalar x: ‖f(x) − f(x')‖₁ / |x − x'| = ‖w‖₁ for every float32 x' ≠ x,
    # so the search must return it whatever it visits. What it visits is not predictable: the
    # ratio is constant, its gradient is rounding noise, and the sign steps follow that noise,
    # which differs between CPUs. So the tolerance is derived for the worst point it could
    # visit. With u = 2⁻²⁴: each logit fl(fl(v·w_j) + b_j) is within 2u(|v w_j| + |b_j|); the
    # difference, the 6-term sum, |x − x'| and the division add at most 8u relative. Dividing
    # by ‖w‖₁·|d| gives the bound below, largest at the smallest |d| = |x' − x| reachable:
    # from the start d0 = x_start − x, sign steps of ±0.003 (or 0) clamped to ±ε reach only
    # d0 + 0.003k or ±ε + 0.003k.
    logits_fn, w, b = _linear_model(0, dim=1, num_classes=6)
    x = jnp.asarray(np.random.default_rng(1).uniform(0.2, 0.8, (16, 1)), jnp.float32)
    estimate = np.asarray(jax.jit(lambda x, k: yang_local_lipschitz(logits_fn, x, k, loop="fori"))(x, key(2)))
    config, u = LipschitzConfig("yang"), 2.0 ** -24
    x64 = np.asarray(x, np.float64)[:, 0]
    start = np.asarray(project_linf(x + config.init_std * jax.random.normal(key(2), x.shape, x.dtype), x, config.eps),
                       np.float64)[:, 0]
    k = np.arange(-config.num_steps, config.num_steps + 1) * config.step_size
    reachable = np.concatenate([(start - x64)[:, None] + k, config.eps + k + 0 * x64[:, None],
                                -config.eps + k + 0 * x64[:, None]], axis=1)
    reachable = np.where(np.abs(reachable) <= config.eps * (1 + 1e-6), np.abs(reachable), np.inf)
    smallest = reachable.min(axis=1)
    l1 = np.abs(w).sum()
    rounding = (2 * u * (2 * np.abs(x64) + config.eps) * l1 + 4 * u * np.abs(b).sum()) / (l1 * smallest) + 8 * u
    # At most 0.3% here: a wrong norm or scale (‖w‖₂, 2‖w‖₁, a missing |·|) still fails.
    assert np.all(smallest > 0) and rounding.max() < 1e-2
    np.testing.assert_array_less(np.abs(estimate - l1), rounding * l1 * (1 + 1e-3))


def test_yang_lipschitz_of_a_linear_model_is_a_lower_bound_of_the_closed_form():
    # sup over B∞ of ‖W(x'−x)‖₁/‖x'−x‖∞ = max over sign vectors s of ‖Wᵀs‖₁ (a convex function's max
    # over the cube is at a vertex), by brute force in 3 dimensions. The sign ascent does not reach
    # it for d ≥ 2: the ∞-norm's gradient pulls the largest coordinate inwards each step, so the
    # iterates cycle inside the ball; the estimate is only guaranteed to be a lower bound.
    logits_fn, w, _ = _linear_model(3, dim=3, num_classes=5)
    x = jnp.asarray(np.random.default_rng(4).uniform(0.2, 0.8, (64, 3)), jnp.float32)
    estimate = np.asarray(jax.jit(lambda x, k: yang_local_lipschitz(logits_fn, x, k, loop="fori"))(x, key(5)))
    closed_form = max(np.abs(np.array(s) @ w).sum() for s in itertools.product([-1.0, 1.0], repeat=3))
    assert np.all(estimate <= closed_form * (1 + 1e-4))
    assert np.all(estimate > 0)


def test_trades_grad_lipschitz_matches_an_analytic_reference_on_a_linear_model():
    # For softmax(Wᵀx' + b), ∇ₓ' KL(p(x) ‖ p(x')) = W (p(x') − p(x)); the reference runs the TRADES
    # inner loop with that formula in float64. The start is the library's draw for restart 0.
    logits_fn, w, b = _linear_model(6, dim=8, num_classes=4, scale=3.0)
    x = jnp.asarray(np.random.default_rng(7).uniform(0.0, 1.0, (16, 8)), jnp.float32)
    config = LipschitzConfig("trades_grad", loop="fori")
    estimate = jax.jit(lambda x, k: trades_grad_local_lipschitz(logits_fn, x, k, loop="fori"))(x, key(8))

    def probs(v):
        z = v @ w + b
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    x64 = np.asarray(x, np.float64)
    noise = np.asarray(jax.random.normal(jax.random.fold_in(key(8), 0), x.shape), np.float64)
    x_adv = np.clip(np.clip(x64 + config.init_std * noise, x64 - config.eps, x64 + config.eps), 0, 1)
    largest = np.zeros(len(x64))
    for _ in range(config.num_steps):
        grad = (probs(x_adv) - probs(x64)) @ w.T
        largest = np.maximum(largest, np.abs(grad).sum(-1))
        x_adv = np.clip(np.clip(x_adv + config.step_size * np.sign(grad), x64 - config.eps, x64 + config.eps), 0, 1)
    # float32 model vs float64 reference: ~3e-5 relative here (p(x') − p(x) is a difference of close numbers).
    np.testing.assert_allclose(estimate, largest, rtol=2e-4)


def test_zero_eps_gives_robust_accuracy_equal_to_natural_accuracy():
    logits_fn, _, _ = _linear_model(9, dim=48, num_classes=3)
    images, labels = _dataset(10)
    zero = dataclasses.replace(SMALL_PGD, eps=0.0)
    result = evaluate(logits_fn, images, labels, key(11), zero, batch_size=16)
    np.testing.assert_array_equal(result.per_example["adv_pred"], result.per_example["clean_pred"])
    summary = result.summary()
    assert summary["robust_accuracy"] == summary["natural_accuracy"]
    assert summary["perturbation_stability"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_robust_accuracy_is_at_least_natural_plus_stability_minus_one(seed):
    model = MLP()
    variables = model.init(key(seed), jnp.zeros((1, 4, 4, 3)))
    images, labels = _dataset(seed)
    attack = dataclasses.replace(SMALL_PGD, eps=0.3, step_size=0.1)  # large enough to flip predictions
    summary = evaluate_model(model, variables, images, labels, key(seed), attack, batch_size=16).summary()
    assert 0 < summary["perturbation_stability"] < 1
    assert summary["robust_accuracy"] >= summary["natural_accuracy"] + summary["perturbation_stability"] - 1 - 1e-12


def test_summary_is_recomputed_from_the_per_example_arrays():
    model = MLP()
    variables = model.init(key(12), jnp.zeros((1, 4, 4, 3)))
    images, labels = _dataset(13)
    lipschitz = LipschitzConfig("yang", num_steps=2, loop="fori")
    result = evaluate_model(model, variables, images, labels, key(14), SMALL_PGD, lipschitz, batch_size=16)
    per_example = result.per_example
    assert set(per_example) == {"labels", "clean_pred", "adv_pred", "clean_margin", "adv_margin", "lipschitz"}
    assert all(v.shape == (37,) for v in per_example.values())
    np.testing.assert_array_equal(per_example["labels"], labels)
    np.testing.assert_array_equal(per_example["clean_margin"] > 0, per_example["clean_pred"] == labels)
    summary = result.summary()
    assert summary == json.loads(json.dumps(summary))  # plain JSON
    assert {k: summary[k] for k in summarize(per_example)} == summarize(per_example)
    assert summary["num_examples"] == 37
    assert summary["natural_accuracy"] == np.mean(per_example["clean_pred"] == labels)
    assert summary["robust_accuracy"] == np.mean(per_example["adv_pred"] == labels)
    assert summary["perturbation_stability"] == np.mean(per_example["adv_pred"] == per_example["clean_pred"])
    # The summary averages in float64; the reference is the exactly rounded sum (fsum), so the
    # two differ by at most n float64 roundings. (A float32 np.mean would differ by ~1e-7,
    # by an amount that depends on the CPU's summation order.)
    n = len(per_example["lipschitz"])
    exact = math.fsum(float(v) for v in per_example["lipschitz"]) / n
    assert summary["lipschitz_mean"] == pytest.approx(exact, rel=n * np.finfo(np.float64).eps)
    assert summary["attack"]["eps"] == 0.031 and summary["lipschitz"]["method"] == "yang"
    assert summary["bn_mode"] == "eval" and summary["batch_size"] == 16


def test_batching_padding_and_input_dtype_do_not_change_deterministic_results():
    logits_fn, _, _ = _linear_model(15, dim=48, num_classes=3)
    images, labels = _dataset(16)
    fgsm = FGSM(0.031)  # no random start: independent of the per-batch keys
    padded = evaluate(logits_fn, images, labels, key(17), fgsm, batch_size=16)  # 16 + 16 + 5 (padded)
    whole = evaluate(logits_fn, images.astype(np.float32) / 255, labels, key(17), fgsm, batch_size=64)
    for name in padded.per_example:
        np.testing.assert_allclose(padded.per_example[name], whole.per_example[name], rtol=1e-6, atol=1e-6)
    direct = evaluate_batch(logits_fn, jnp.asarray(images[:16] / 255, jnp.float32), jnp.asarray(labels[:16]),
                            key(0), fgsm)
    np.testing.assert_array_equal(direct["adv_pred"], padded.per_example["adv_pred"][:16])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(logits_fn, images.astype(np.float32), labels, key(0), fgsm)


# Yang et al.'s published loop (lolip/utils.py, estimate_local_lip_v2) sets loss = −local_lip
# and then adds step·sign(∇loss): descent on the ratio. direction="published" reproduces it;
# the default "ascend" steps up the ratio, as a supremum needs.

def test_lipschitz_direction_option_and_its_validation():
    assert LipschitzConfig("yang").direction == "ascend"
    published = LipschitzConfig("yang", direction="published")
    assert LipschitzConfig(**published.to_dict()) == published
    with pytest.raises(ValueError, match="direction"):
        LipschitzConfig("yang", direction="down")
    with pytest.raises(ValueError, match="yang"):
        LipschitzConfig("trades_grad", direction="published")
    with pytest.raises(ValueError, match="direction"):
        yang_local_lipschitz(lambda v: v, jnp.zeros((1, 1)), key(0), direction="descend")


def test_yang_ascent_finds_the_hand_computed_supremum_and_the_published_descent_the_infimum():
    # f(x') = (x' − c)² in one dimension with c = x − 0.05 (one centre per example):
    # |f(x') − f(x)| / |x' − x| = |x' + x − 2c|, so over [x − ε, x + ε] ⊂ [0, 1] the supremum is
    # 2(x − c) + ε at x' = x + ε and the infimum 2(x − c) − ε at x − ε. The ratio's gradient is +1
    # wherever x' ≠ x: ascent walks to x + ε, the published step to x − ε (10 steps of 0.003
    # cover the 0.02 from one end to the other).
    # Autodiff computes that +1 as a difference of near-equal numbers, (2(x' − c)|d| − f(x') + f(x))/d²
    # with d = x' − x, so within ~1e-9/d² of it; the key is chosen so that no iterate comes within
    # 2e-4 of x (checked below in exact arithmetic), where that error stays under 3%.
    x = jnp.asarray(np.random.default_rng(20).uniform(0.2, 0.8, (16, 1)), jnp.float32)
    c = x - 0.05
    logits_fn = lambda v: (v - c) ** 2  # noqa: E731
    eps, step, std, seed = 0.01, 0.003, 0.005, 57
    d0 = np.asarray(project_linf(x + std * jax.random.normal(key(seed), x.shape, x.dtype), x, eps) - x,
                    np.float64)[:, 0]
    k = np.arange(11)[:, None] * step
    for path in (np.minimum(d0 + k, eps), np.maximum(d0 - k, -eps)):
        assert np.abs(path).min() > 2e-4
    run = jax.jit(lambda x, k, d: yang_local_lipschitz(logits_fn, x, k, init_std=std, loop="fori", direction=d),
                  static_argnums=2)
    ascend, published = np.asarray(run(x, key(seed), "ascend")), np.asarray(run(x, key(seed), "published"))
    gap = np.asarray(x - c, np.float64)[:, 0]            # 0.05 up to float32 rounding
    np.testing.assert_allclose(ascend, 2 * gap + eps, rtol=1e-4)
    np.testing.assert_allclose(published, 2 * gap - eps, rtol=1e-4)
    assert np.all(ascend > published)
    # Through the config, as the evaluation uses it.
    from nt_robust.metrics import local_lipschitz
    config = LipschitzConfig("yang", init_std=std, loop="fori", direction="published")
    np.testing.assert_allclose(local_lipschitz(logits_fn, x, key(seed), config), published, rtol=1e-6)


def test_published_direction_matches_a_numpy_replica_of_their_update():
    # A 2-d ReLU net (piecewise linear). Their step, written out in float64 with the gradient by
    # hand: loss = −‖f(x') − f(x)‖₁ / ‖x' − x‖∞, x' ← clip(clip(x' + η·sign(∇loss), x ± ε), 0, 1),
    # from the library's own start (x + 0.001·N(0, I), projected). ε = 0.05 keeps the iterates off
    # the ball's faces, where the ∞-norm's gradient would tie between coordinates.
    rng = np.random.default_rng(22)
    w1, b1, w2 = rng.normal(size=(2, 6)), rng.normal(size=6) * 0.3, rng.normal(size=(6, 3))
    logits_fn = lambda v: jax.nn.relu(v @ jnp.asarray(w1, jnp.float32) + jnp.asarray(b1, jnp.float32)) \
        @ jnp.asarray(w2, jnp.float32)  # noqa: E731
    x = jnp.asarray(rng.uniform(0.3, 0.7, (48, 2)), jnp.float32)
    eps, step, steps, std = 0.05, 0.003, 4, 0.001
    ours = np.asarray(yang_local_lipschitz(logits_fn, x, key(23), eps=eps, step_size=step, num_steps=steps,
                                           init_std=std, loop="fori", direction="published"))

    def f(v):
        return np.maximum(v @ w1 + b1, 0) @ w2

    x64 = np.asarray(x, np.float64)
    noise = np.asarray(jax.random.normal(key(23), x.shape, x.dtype), np.float64)
    xp = np.clip(np.clip(x64 + std * noise, x64 - eps, x64 + eps), 0, 1)
    rows = np.arange(len(x64))

    def ratio_and_grad(xp):
        d = xp - x64
        top_sign = np.sign(f(xp) - f(x64))                              # ∂‖·‖₁
        mask = (xp @ w1 + b1 > 0).astype(float)
        grad_top = np.einsum("nk,hk,nh,ih->ni", top_sign, w2, mask, w1)  # Σ_k sign_k ∇f_k(x')
        k = np.argmax(np.abs(d), axis=1)
        bottom = np.abs(d[rows, k])
        grad_bottom = np.zeros_like(d)
        grad_bottom[rows, k] = np.sign(d[rows, k])
        top = np.abs(f(xp) - f(x64)).sum(1)
        return top / bottom, (grad_top * bottom[:, None] - top[:, None] * grad_bottom) / bottom[:, None] ** 2

    for _ in range(steps):
        _, grad_ratio = ratio_and_grad(xp)
        grad_loss = -grad_ratio                                          # loss = −local_lip (mean: same signs)
        xp = np.clip(np.clip(xp + step * np.sign(grad_loss), x64 - eps, x64 + eps), 0, 1)
        assert np.all(np.abs(xp - x64).max(1) < eps - 1e-4)              # no face ties
    replica, _ = ratio_and_grad(xp)
    np.testing.assert_allclose(ours, replica, rtol=1e-4)
    ascend = np.asarray(yang_local_lipschitz(logits_fn, x, key(23), eps=eps, step_size=step, num_steps=steps,
                                             init_std=std, loop="fori"))
    assert np.mean(ascend) > np.mean(ours)


def test_eval_config_carries_the_direction_and_old_configs_load_with_ascend():
    from nt_robust.config import build
    from nt_robust.train.config import EvalConfig, ExperimentConfig
    from nt_robust.train.evaluation import lipschitz_config
    from nt_robust.train.run_dir import ADDED_FIELDS
    old = build(ExperimentConfig, {"eval": {"lipschitz": "yang", "lipschitz_eps": None}})   # a config.json before
    assert old.eval.lipschitz_direction == "ascend"
    assert lipschitz_config(old.eval) == LipschitzConfig("yang")
    assert ADDED_FIELDS["eval.lipschitz_direction"] == "ascend"    # such a run resumes as it ran
    published = build(ExperimentConfig, {"eval": {"lipschitz_direction": "published"}})
    assert lipschitz_config(published.eval).direction == "published"
    with pytest.raises(ValueError, match="lipschitz_direction"):
        EvalConfig(lipschitz="trades_grad", lipschitz_direction="published")
    with pytest.raises(ValueError, match="lipschitz_direction"):
        EvalConfig(lipschitz_direction="up")

"""A TRADES step on a tiny linear model against a hand-written loss and gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks import pgd
from nt_robust.config import load_config
from nt_robust.data import make_synthetic_dataset
from nt_robust.models import make_logits_fn
from nt_robust.objectives import objective_terms
from nt_robust.train import ExperimentConfig
from nt_robust.train.optim import make_optimizer
from nt_robust.train.state import create_train_state
from nt_robust.train.step import make_train_step, step_key_root


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference_trades(W, b, x, x_adv, y, lam):
    """Loss and (dW, db) of mean CE(x) + lam * mean KL(p(x) || p(x_adv)) for z = x W + b, by hand."""
    n, k = len(y), W.shape[1]
    p, q = softmax(x @ W + b), softmax(x_adv @ W + b)
    onehot = np.eye(k)[y]
    a = np.log(p) - np.log(q)
    ce = -np.log(p[np.arange(n), y])
    kl = (p * a).sum(1)
    loss = ce.mean() + lam * kl.mean()
    # d KL / d z_clean = p * (a - <p, a>); d KL / d z_adv = q - p
    g_clean = (p - onehot) + lam * p * (a - (p * a).sum(1, keepdims=True))
    g_adv = lam * (q - p)
    dW = (x.T @ g_clean + x_adv.T @ g_adv) / n
    db = (g_clean + g_adv).sum(0) / n
    return loss, ce.mean(), kl.mean(), dW, db


def test_trades_step_matches_hand_written_loss_and_gradient():
    ds = make_synthetic_dataset(num_train=32, num_test=8, image_shape=(3, 3, 1), num_classes=3, seed=1)
    config = load_config(ExperimentConfig, None, [
        "data.dataset=synthetic", "data.crop_padding=0", "data.flip=false", "model.arch=mlp",
        "model.depth=1", "model.width=1", "objective.lam=4.5", "optim.momentum=0.0",
        "optim.weight_decay=0.0", "optim.lr=0.3", "optim.schedule=constant", "train.seed=7"])
    # A depth-0 MLP is a linear model: build one by hand from the Dense classifier.
    import flax.linen as nn

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3, name="classifier")(x.reshape(x.shape[0], -1))

    model = Linear()
    variables = model.init(jax.random.key(3), jnp.zeros((1, 3, 3, 1)))
    # Non-trivial weights so the KL term is far from zero.
    variables = jax.tree_util.tree_map(lambda v: v * 5.0, variables)
    optimizer = make_optimizer(config.optim, epochs=1, steps_per_epoch=1)
    state = create_train_state(variables, optimizer, config.objective.lam, use_ema=False, seed=7)
    images, labels = ds.train_images[:16], ds.train_labels[:16]

    new_state, metrics = jax.jit(make_train_step(model, config, optimizer))(state, images, labels)

    x = images.astype(np.float32) / 255.0
    attack_key = jax.random.split(jax.random.fold_in(step_key_root(7), 0))[1]
    x_adv = np.asarray(pgd(make_logits_fn(model, variables), jnp.asarray(x), jnp.asarray(labels),
                           attack_key, config.train_attack))
    assert np.abs(x_adv - x).max() > 0.01  # the attack really moved the points

    W = np.asarray(variables["params"]["classifier"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["classifier"]["bias"], np.float64)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    loss, ce, kl, dW, db = reference_trades(W, b, flat(x), flat(x_adv), labels, 4.5)

    assert kl > 1e-3
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["natural_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["regularizer"]), kl, rtol=1e-4)
    params = new_state.params["classifier"]
    np.testing.assert_allclose(np.asarray(params["kernel"]), W - 0.3 * dW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["bias"]), b - 0.3 * db, rtol=1e-5, atol=1e-6)


def test_eq1_objective_lam_one_is_adversarial_cross_entropy_and_clip_never_negative():
    rng = np.random.default_rng(0)
    clean, adv = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.normal(size=(6, 4)))
    y = jnp.asarray(rng.integers(0, 4, 6))
    ce = lambda z: -jax.nn.log_softmax(z)[jnp.arange(6), y]  # noqa: E731
    madry = objective_terms("pgd_at", 1.0, clean, adv, y)
    np.testing.assert_allclose(madry.total, ce(adv).mean(), rtol=1e-6)
    clipped = objective_terms("pgd_at", 2.0, clean, adv, y, clip=True)
    np.testing.assert_allclose(clipped.regularizer, jnp.maximum(ce(adv) - ce(clean), 0).mean(), rtol=1e-6)
    assert objective_terms("natural", 3.0, clean, None, y).regularizer == 0

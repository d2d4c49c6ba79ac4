"""Attack losses against direct numpy formulas and hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks import cross_entropy, cw_margin, kl_to_clean


def _random_logits(seed, n=6, k=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)).astype(np.float32) * 3, rng.integers(0, k, n)


def _log_softmax(z):
    z = z.astype(np.float64)
    return z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))


def test_cross_entropy_is_minus_log_probability_of_label():
    logits, labels = _random_logits(0)
    expected = -_log_softmax(logits)[np.arange(len(labels)), labels]
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)


def test_kl_to_clean_follows_the_trades_convention():
    adv, _ = _random_logits(1)
    clean, _ = _random_logits(2)
    p_clean = np.exp(_log_softmax(clean))
    expected = np.sum(p_clean * (_log_softmax(clean) - _log_softmax(adv)), -1)  # KL(p_clean || p_adv)
    np.testing.assert_allclose(kl_to_clean(jnp.asarray(adv), jnp.asarray(clean)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl_to_clean(jnp.asarray(clean), jnp.asarray(clean)), 0.0, atol=1e-6)


def test_kl_target_gradient_is_stopped():
    adv, _ = _random_logits(1)
    clean, _ = _random_logits(2)
    grad_wrt_clean = jax.grad(lambda c: kl_to_clean(jnp.asarray(adv), c).sum())(jnp.asarray(clean))
    assert np.all(np.asarray(grad_wrt_clean) == 0)


def test_cw_margin_is_best_other_minus_label_logit():
    logits, labels = _random_logits(3)
    expected = [max(np.delete(row, y)) - row[y] for row, y in zip(logits, labels)]
    margin = cw_margin(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(margin, expected, rtol=1e-6)
    capped = cw_margin(jnp.asarray(logits), jnp.asarray(labels), confidence=0.5)
    np.testing.assert_allclose(capped, np.minimum(expected, 0.5), rtol=1e-6)
    misclassified = logits.argmax(-1) != labels
    np.testing.assert_array_equal(np.asarray(margin) > 0, misclassified)


# The paper authors' CW loss (their cw_loss, per example): −relu(z_y − max_j((1 − 1_y)·z_j)).
# Hand-computed values and logit gradients, beside the standard margin max_{j≠y} z_j − z_y.
# (logits, label, cw_authors, its gradient, cw_margin, its gradient)
_CW_CASES = [
    # correctly classified, a positive competitor: the two losses agree, value and gradient
    ([3.0, 1.0, 2.0], 0, -1.0, [-1.0, 0.0, 1.0], -1.0, [-1.0, 0.0, 1.0]),
    ([0.5, 4.0, 2.5], 1, -1.5, [0.0, -1.0, 1.0], -1.5, [0.0, -1.0, 1.0]),
    # all logits negative, correctly classified: the masked label's 0 is the "best other",
    # z_y − 0 < 0 is clamped, so no loss and no gradient at all; the margin still pulls
    ([-1.0, -3.0, -2.0], 0, 0.0, [0.0, 0.0, 0.0], -1.0, [-1.0, 0.0, 1.0]),
    # z_y > 0 > every other logit: only z_y is pushed down, no competitor is pulled up
    ([2.0, -1.0, -3.0], 0, -2.0, [-1.0, 0.0, 0.0], -3.0, [-1.0, 1.0, 0.0]),
    ([-4.0, -0.5, 1.5], 2, -1.5, [0.0, 0.0, -1.0], -2.0, [0.0, 1.0, -1.0]),
    # misclassified: clamped at 0, zero gradient; the margin is positive
    ([1.0, 4.0, 2.0], 0, 0.0, [0.0, 0.0, 0.0], 3.0, [-1.0, 1.0, 0.0]),
]


def test_cw_authors_values_and_gradients_by_hand():
    from nt_robust.attacks.losses import LOSSES, cw_authors
    assert LOSSES["cw_authors"] is cw_authors
    for logits, label, value, grad, margin, margin_grad in _CW_CASES:
        z, y = jnp.asarray([logits], jnp.float32), jnp.asarray([label])
        np.testing.assert_allclose(cw_authors(z, y), [value], atol=1e-7)
        np.testing.assert_allclose(jax.grad(lambda v: cw_authors(v, y).sum())(z), [grad], atol=1e-7)
        np.testing.assert_allclose(cw_margin(z, y), [margin], atol=1e-7)
        np.testing.assert_allclose(jax.grad(lambda v: cw_margin(v, y).sum())(z), [margin_grad], atol=1e-7)
    # confidence κ shifts before the clamp, as in theirs: −relu(3 − 2 + 0.5)
    np.testing.assert_allclose(cw_authors(jnp.asarray([[3.0, 1.0, 2.0]]), jnp.asarray([0]), 0.5), [-1.5])


def test_cw_authors_matches_a_numpy_replica_of_their_formula():
    from nt_robust.attacks.losses import cw_authors
    logits, labels = _random_logits(4, n=64)
    logits[:16] = -np.abs(logits[:16]) - 0.1             # all-negative rows
    one_hot = np.eye(logits.shape[1])[labels]
    self_loss = logits[np.arange(len(labels)), labels]    # F.nll_loss(-logits, y)
    other_loss = np.max((1 - one_hot) * logits, axis=1)
    expected = -np.maximum(self_loss - other_loss, 0)
    np.testing.assert_allclose(cw_authors(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-6)


def test_pgd_on_the_authors_cw_loss_cannot_move_a_point_with_all_negative_logits():
    # A linear model whose logits are negative on the whole box: cw20 (standard margin) breaks
    # the breakable points, cw20-authors sees zero gradient everywhere and stays at its start.
    import dataclasses
    from nt_robust.attacks import CW20, pgd
    from nt_robust.attacks.config import CW20_AUTHORS
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    b = jnp.asarray([-40.0, -40.5, -41.0], jnp.float32)        # logits < 0 on [0, 1]^16: Σ_i |w_ij| < 14 here
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w + b  # noqa: E731
    x = jnp.asarray(rng.uniform(size=(64, 16)), jnp.float32)
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.3
    standard = jax.jit(pgd, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0),
                                                     dataclasses.replace(CW20, eps=eps, step_size=0.05, loop="fori"))
    authors_config = dataclasses.replace(CW20_AUTHORS, eps=eps, step_size=0.05, loop="fori")
    assert (authors_config.loss, authors_config.num_steps, authors_config.step_size) == ("cw_authors", 20, 0.05)
    authors = jax.jit(pgd, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0), authors_config)
    start = jax.jit(pgd, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0),
                                                  dataclasses.replace(authors_config, num_steps=0))
    np.testing.assert_array_equal(authors, start)              # never moved
    fooled_standard = np.asarray(jnp.argmax(logits_fn(standard), 1) != y)
    fooled_authors = np.asarray(jnp.argmax(logits_fn(authors), 1) != y)
    assert fooled_standard.sum() > fooled_authors.sum() + 10

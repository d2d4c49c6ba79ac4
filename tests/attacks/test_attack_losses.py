"""Attack losses against direct numpy formulas."""

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

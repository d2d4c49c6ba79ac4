"""Attack losses: per-example objectives that an attack *maximizes*.

Every loss has the signature ``LossFn(logits, target) -> (N,)``; ``target`` is the
integer labels for ``cross_entropy``, ``cw_margin`` and ``cw_authors`` and the clean
logits for ``kl_to_clean``::

    loss = cross_entropy(logits_fn(x_adv), y)               # (N,)
    loss = kl_to_clean(logits_fn(x_adv), logits_fn(x))      # TRADES inner maximization
    loss = cw_margin(logits_fn(x_adv), y)                   # > 0 iff misclassified
    loss = cw_authors(logits_fn(x_adv), y)                  # the paper authors' CW loss (<= 0)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[y]`` per example."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def kl_to_clean(logits: jax.Array, clean_logits: jax.Array) -> jax.Array:
    """``KL(p_clean || p_adv)`` per example, as in the TRADES code.

    ``sum_k p_clean_k (log p_clean_k - log p_adv_k)`` (``nn.KLDivLoss`` summed over
    classes). The clean distribution is a constant target: its gradient is stopped.
    """
    clean_logits = jax.lax.stop_gradient(clean_logits)
    clean_log_probs = jax.nn.log_softmax(clean_logits, axis=-1)
    adv_log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(clean_log_probs) * (clean_log_probs - adv_log_probs), axis=-1)


def best_other_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``max_{j != y} z_j`` per example."""
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    return jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)


def cw_margin(logits: jax.Array, labels: jax.Array, confidence: float | None = None) -> jax.Array:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` per example.

    Positive exactly when the example is misclassified. With ``confidence`` = κ the
    margin is capped at κ (CW's ``max(z_y - max_{j≠y} z_j, -κ)`` written as a loss to
    maximize): once an example is misclassified by κ, it stops pulling on the attack.
    """
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    margin = best_other_logit(logits, labels) - label_logit
    if confidence is not None:
        margin = jnp.minimum(margin, confidence)
    return margin


def cw_authors(logits: jax.Array, labels: jax.Array, confidence: float = 0.0) -> jax.Array:
    """The paper authors' CW loss, per example: ``−relu(z_y − max_j((1 − 1_y)·z_j) + κ)``.

    As their ``cw_loss`` (``test_cifar10.py``/``auto_cifar10.py``: ``self_loss − other_loss``
    clamped at 0, negated; κ = ``confidence`` = 0 there) but per example instead of the batch
    mean (the mean only scales every gradient by 1/N, which a sign step ignores). Two
    differences from :func:`cw_margin`:

    - the label's logit is masked with **0**, not −∞, so the "best other logit" is
      ``max(0, max_{j≠y} z_j)``;
    - the margin is **clamped at 0**: the loss is 0, with zero gradient, once
      ``z_y <= max(0, max_{j≠y} z_j)``.

    So a point whose logits are all negative has zero loss and zero gradient even when it is
    correctly classified (the attack does not move it), and a correctly classified point with
    ``z_y > 0 > max_{j≠y} z_j`` is pushed only to lower ``z_y``, not to raise a competitor.
    Where ``max_{j≠y} z_j > 0`` and the point is correctly classified, the two losses are
    equal (``max_{j≠y} z_j − z_y``) and have the same gradient.
    """
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    other = jnp.max((1 - one_hot) * logits, axis=-1)
    return -jax.nn.relu(label_logit - other + confidence)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "kl": kl_to_clean, "cw": cw_margin, "cw_authors": cw_authors}


# Losses of AutoAttack (Croce & Hein 2020). Not in LOSSES: they need the sorted logits or a
# target class, and are used by :mod:`nt_robust.attacks.apgd`.

_DLR_EPS = 1e-12  # keeps the ratio finite when the top logits tie (as in the published loss)


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Difference of Logits Ratio ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3)`` per example.

    ``π`` orders the logits decreasingly. Invariant to shifting and scaling the logits,
    so a model cannot hide behind saturated softmax outputs; needs at least 3 classes.
    """
    if logits.shape[-1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}")
    top = jax.lax.top_k(logits, 3)[0]
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -(label_logit - best_other_logit(logits, labels)) / (top[:, 0] - top[:, 2] + _DLR_EPS)


def targeted_dlr(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
    """Targeted DLR ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`` per example; needs 4 classes."""
    if logits.shape[-1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[-1]}")
    top = jax.lax.top_k(logits, 4)[0]
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    target_logit = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -(label_logit - target_logit) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)


def ranked_class(logits: jax.Array, rank: int) -> jax.Array:
    """The class with the ``rank``-th largest logit per example (rank 1 = the prediction).

    AutoAttack's targeted attacks aim at ranks 2, 3, ... of the clean logits.
    """
    return jax.lax.top_k(logits, rank)[1][:, rank - 1]

"""Training objectives of the paper (docs/paper.md §2), each a batch mean of per-example terms.

    natural:  CE(f(x), y)
    pgd_at:   CE(f(x), y) + lam · (CE(f(x̂), y) − CE(f(x), y))          Eq. 1; lam = 1 is PGD-AT
              clipped variant (authors' code): lam · (max(CE(x̂), CE(x)) − CE(x))
    trades:   CE(f(x), y) + lam · KL(p(x) ‖ p(x̂))                       lam = TRADES code's beta

Gradients flow through both the clean and the adversarial branch; x̂ itself is a
constant (the inner maximization's result)::

    terms = objective_terms("trades", lam, clean_logits, adv_logits, labels)
    terms.total, terms.natural, terms.regularizer
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nt_robust.attacks.losses import cross_entropy


class ObjectiveTerms(NamedTuple):
    """Batch means: ``total = natural + lam · regularizer``."""

    total: jax.Array
    natural: jax.Array
    regularizer: jax.Array


def trades_kl(clean_logits: jax.Array, adv_logits: jax.Array) -> jax.Array:
    """Per-example ``KL(p(x) ‖ p(x̂))`` with gradients into *both* arguments (TRADES' outer loss)."""
    clean_log_probs = jax.nn.log_softmax(clean_logits, axis=-1)
    adv_log_probs = jax.nn.log_softmax(adv_logits, axis=-1)
    return jnp.sum(jnp.exp(clean_log_probs) * (clean_log_probs - adv_log_probs), axis=-1)


def robust_regularizer(kind: str, clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array,
                       clip: bool = False) -> jax.Array:
    """Per-example robust regularizer of ``kind`` ("pgd_at" or "trades")."""
    if kind == "trades":
        return trades_kl(clean_logits, adv_logits)
    if kind == "pgd_at":
        clean_ce = cross_entropy(clean_logits, labels)
        adv_ce = cross_entropy(adv_logits, labels)
        return (jnp.maximum(adv_ce, clean_ce) if clip else adv_ce) - clean_ce
    raise ValueError(f"no robust regularizer for objective kind {kind!r}")


def objective_terms(kind: str, lam: jax.Array | float, clean_logits: jax.Array,
                    adv_logits: jax.Array | None, labels: jax.Array, clip: bool = False) -> ObjectiveTerms:
    """The objective of ``kind`` and its two terms, averaged over the batch."""
    natural = jnp.mean(cross_entropy(clean_logits, labels))
    if kind == "natural":
        zero = jnp.zeros_like(natural)
        return ObjectiveTerms(natural, natural, zero)
    if adv_logits is None:
        raise ValueError(f"objective {kind!r} needs adversarial logits")
    regularizer = jnp.mean(robust_regularizer(kind, clean_logits, adv_logits, labels, clip))
    return ObjectiveTerms(natural + lam * regularizer, natural, regularizer)

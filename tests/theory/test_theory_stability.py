"""The certified stability bound is valid: never above PGD-measured stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.theory import lazy_training as lt
from nt_robust.theory.gradients import input_grads
from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn
from nt_robust.theory.stability import certified_grad_l1_bound, stability_report


@pytest.fixture(scope="module")
def trained():
    d, n = 20, 64
    u = jax.random.uniform(jax.random.key(0), (n + 64, d))
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    y = jnp.sign(u @ jax.random.normal(jax.random.key(1), (d,)) - jnp.median(u @ jax.random.normal(jax.random.key(1), (d,))))
    spec = MLPSpec(depth=3, width=64)
    params0 = init_params(spec, jax.random.key(2), d)
    lr = lt.learning_rate(spec.kernel_spec(), u[:n])
    params, losses = lt.train_full_batch(spec, params0, u[:n], y[:n], "ce", lr, 200)
    assert losses[-1] < losses[0]
    return spec, params, u[n:]


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2])
def test_certified_never_exceeds_pgd(trained, eps):
    spec, params, u = trained
    report = stability_report(spec, params, u, eps, jax.random.key(3), num_steps=20)
    assert float(report["certified"]) <= float(report["pgd"])
    # Per example too: a certified point is never flipped by PGD.
    g = scalar_fn(spec, params)
    certified = report["margin"] > eps * report["certified_bound"]
    assert bool(jnp.all(report["margin"] > 0))
    assert float(report["pgd"]) >= float(jnp.mean(certified))
    if eps == 1e-4:
        assert float(report["certified"]) > 0.5  # the bound is not vacuous at small ε
    del g


def test_gradient_bound_holds_inside_the_box(trained):
    spec, params, u = trained
    eps = 0.02
    bound = certified_grad_l1_bound(spec, params, u, eps)
    g = scalar_fn(spec, params)
    for seed in range(5):
        v = jnp.clip(u + jax.random.uniform(jax.random.key(10 + seed), u.shape, minval=-eps, maxval=eps), 0, 1)
        seen = jnp.sum(jnp.abs(input_grads(g, v)), axis=1)
        assert bool(jnp.all(seen <= bound * (1 + 1e-5)))
    np.testing.assert_array_less(0, np.asarray(bound))

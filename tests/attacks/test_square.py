"""Square attack: schedule, validity of every point, and success on a linear model."""

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks.square import SquareConfig, square, square_fraction
from test_apgd import assert_fooled_matches_margin, assert_valid, images, linear_model, margin_slack, worst_margin


def test_square_fraction_schedule_halves_at_published_queries():
    config = SquareConfig(eps=0.1)
    p = [float(square_fraction(i, config)) for i in (0, 10, 11, 50, 51, 8000, 8001)]
    np.testing.assert_allclose(p, [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512], rtol=1e-6)
    rescaled = SquareConfig(eps=0.1, num_queries=1000, rescale_schedule=True)
    assert float(square_fraction(2, rescaled)) == np.float32(0.4)   # query 2 of 1000 acts as 20 of 10 000


def test_square_breaks_breakable_points_only_and_stays_valid():
    logits_fn, w, b = linear_model(10, shape=(6, 6, 2))
    x = images(64, shape=(6, 6, 2))
    y = jnp.argmax(logits_fn(x), axis=1)
    eps = 0.1
    config = SquareConfig(eps=eps, num_queries=1000)
    result = jax.jit(square, static_argnums=(0, 4))(logits_fn, x, y, jax.random.key(0), config)
    assert_valid(result.x_adv, x, eps)
    worst = np.asarray(worst_margin(x, y, w, b, eps))
    fooled = np.asarray(result.fooled)
    assert_fooled_matches_margin(fooled, result.x_adv, y, w, b)
    assert not np.any(fooled & (worst < -margin_slack(w, b)))  # never an unbreakable point
    assert fooled[worst > 0.2].mean() > 0.85
    queries = np.asarray(result.queries)
    assert queries.max() <= 1001 and np.all(queries[~fooled] == 1001)

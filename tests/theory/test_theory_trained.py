"""The kernel twin of the Flax MLP and the gradient measures of nt_robust.theory.trained,
against a closed form, a Monte-Carlo average over Flax inits and hand-built Jacobians."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.metrics import LipschitzConfig
from nt_robust.models.small import MLP
from nt_robust.theory.conv import analytic_grad_sq_diag, analytic_grad_sq_norm
from nt_robust.theory.trained import LINEAR_INIT_VARIANCE, lipschitz_measures, logit_grad_l1, mlp_arch, mlp_stax, predicted_grad_l1

D = 49  # 7x7 images


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 7, 7, 1)).astype(np.float32)


def test_one_hidden_layer_gradient_variance_is_the_closed_form():
    # f = v·relu(Wx): ∂f/∂x_j = Σ_i v_i 1[w_i·x > 0] W_ij, so E(∂f/∂x_j)² = n · (σ_v²/n) · E[W_ij² 1[w_i·x > 0]]
    # = σ_v² σ_w² / (2d) by the symmetry w → −w, at every x and j.
    twin = mlp_arch(depth=1)
    with jax.enable_x64(True):
        diag = np.asarray(analytic_grad_sq_diag(twin, jnp.asarray(images(), jnp.float64)))
        trace = np.asarray(analytic_grad_sq_norm(twin, jnp.asarray(images(), jnp.float64)))
    np.testing.assert_allclose(diag, LINEAR_INIT_VARIANCE**2 / (2 * D), rtol=1e-12)
    np.testing.assert_allclose(trace, diag.sum(axis=1), rtol=1e-12)


def test_flax_mlp_init_has_the_twins_expected_squared_gradient():
    # E‖∇ₓf_k‖² of a one-hidden-layer ReLU net is the closed form at any width, so a Monte-Carlo
    # mean over Flax inits must match it within its own standard error (4 SE: a 6e-5 chance of
    # failing if the law is right); a wrong init variance (e.g. fan-out, or PyTorch's bias) is off by far more.
    x = jnp.asarray(images(2))
    model = MLP(width=128, depth=1, num_classes=4)

    @jax.jit
    def sq_norms(key):
        variables = model.init(key, x[:1])
        jac = jax.vmap(jax.jacrev(lambda xi: model.apply(variables, xi[None])[0]))(x)   # (N, K, 7, 7, 1)
        return jnp.sum(jac.reshape(*jac.shape[:2], -1) ** 2, axis=-1).mean()

    per_init = np.array([float(sq_norms(jax.random.key(s))) for s in range(200)])
    expected = LINEAR_INIT_VARIANCE**2 / 2          # Σ_j of the closed form: d · σ⁴/(2d)
    se = per_init.std(ddof=1) / math.sqrt(per_init.size)
    assert abs(per_init.mean() - expected) < 4 * se, (per_init.mean(), expected, se)


def test_predicted_l1_is_the_gaussian_mean_absolute_value():
    diag = np.array([[4.0, 1.0, 0.0], [9.0, 9.0, 9.0]])
    np.testing.assert_allclose(predicted_grad_l1(diag), math.sqrt(2 / math.pi) * np.array([3.0, 9.0]))


def test_logit_grad_l1_is_the_l1_norm_of_each_row_of_a_linear_models_weights():
    # a depth-0 MLP would be linear; build one by hand through flax: logits = x·W
    import flax.linen as nn

    class Affine(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3, use_bias=True)(x.reshape(x.shape[0], -1))

    model = Affine()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 1)))
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])   # (49, 3)
    l1 = logit_grad_l1(model, variables, images())
    np.testing.assert_allclose(l1, np.tile(np.abs(kernel).sum(axis=0), (3, 1)), rtol=1e-6)
    m = lipschitz_measures(model, variables, images(), jax.random.key(1), LipschitzConfig("yang"),
                           LipschitzConfig("trades_grad"))
    # a linear map: the Yang ratio lies between the largest row's ‖·‖₁ and the sum of them
    assert np.all(m["yang"] <= m["sum_l1"] * (1 + 1e-5)) and np.all(m["yang"] >= 0)
    np.testing.assert_allclose(m["max_l1"], np.abs(kernel).sum(axis=0).max(), rtol=1e-6)
    assert m["trades_grad"].shape == (3,) and np.all(np.isfinite(m["trades_grad"]))


def test_mlp_stax_refuses_no_hidden_layer():
    with pytest.raises(ValueError, match="depth"):
        mlp_stax(depth=0)
    with pytest.raises(ValueError, match="depth"):
        mlp_arch(depth=0)


def _experiment(name: str):
    import importlib.util

    path = Path(__file__).parents[2] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_width_exponents_of_the_experiments_by_hand():
    from nt_robust.studies.uncertainty import t_quantile

    conv, trained = _experiment("theory_conv"), _experiment("theory_trained")
    # per seed s, value = c_s · k^(0.5 + e_s) at k = 1, 4: the log ratio / log 4 is 0.5 + e_s
    e = {0: -0.1, 1: 0.0, 2: 0.25}
    rows = [{"width": k, "seed": s, "g": 2.0 * (s + 1) * k ** (0.5 + e[s])} for k in (1, 4) for s in e]
    fit = conv.endpoint_exponent(rows, "g")
    per_seed = np.array([0.5 + e[s] for s in e])
    half = t_quantile(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    assert fit["estimate"] == pytest.approx(per_seed.mean())
    assert fit["ci95"] == pytest.approx([per_seed.mean() - half, per_seed.mean() + half])
    assert fit["verdict_grows"] == "supported" and fit["widths"] == [1, 4]
    # stability: per image 1/0, the change from k = 1 to 4 is the mean difference
    stab = [{"width": k, "seed": s, "stable_points": [1.0, 1.0, 0.0, 1.0] if k == 1 else [0.0, 1.0, 0.0, 0.0]}
            for k in (1, 4) for s in e]
    change = conv.stability_change(stab)
    assert change["estimate"] == pytest.approx(-0.5)
    # theory_trained's exponent over three widths is the least-squares slope of log2 value on log2 width
    rows3 = [{"width": k, "seed": s, "v": [3.0 * k ** (0.3 + e[s])] * 2} for k in (1, 2, 4) for s in e]
    fit3 = trained.width_exponent(rows3, "v")
    per_seed3 = np.array([0.3 + e[s] for s in e])   # 0.2, 0.3, 0.55: SE 0.10, t(2) = 4.30, so 0 is inside
    half3 = t_quantile(0.975, 2) * per_seed3.std(ddof=1) / math.sqrt(3)
    assert fit3["estimate"] == pytest.approx(per_seed3.mean())
    assert fit3["ci95"] == pytest.approx([per_seed3.mean() - half3, per_seed3.mean() + half3])
    assert fit3["verdict_grows"] == "inconclusive"
    flat = trained.width_exponent([{**r, "v": [1.0, 2.0]} for r in rows3], "v")
    assert flat["estimate"] == pytest.approx(0.0, abs=1e-12)


def test_prediction_only_needs_an_earlier_trained_json_and_its_study(tmp_path):
    from nt_robust.storage import write_json

    trained = _experiment("theory_trained")
    spec = str(Path(__file__).parents[2] / "experiments" / "regime_mlp_n1000.toml")
    with pytest.raises(SystemExit, match="does not exist: run without it first"):
        trained.main(["--prediction-only", spec, "--out", str(tmp_path)])
    write_json(tmp_path / "trained.json", {"studies": {"other_study": {}}})
    with pytest.raises(SystemExit, match=r"regime_mlp_n1000 is not in .*other_study"):
        trained.main(["--prediction-only", spec, "--out", str(tmp_path)])

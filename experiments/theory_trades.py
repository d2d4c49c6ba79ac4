"""The same ReLU MLPs trained with TRADES at a fixed λ (and λ = 0) across a few widths.

Full-batch GD with the lazy-regime learning rate, the TRADES inner attack (KL, ℓ∞,
10 steps) at the pixel threat ε = 0.031 mapped onto the unit sphere by the median pixel
norm; then natural/robust accuracy, stability (PGD / certified), ‖∇f‖ and Yang's
Lipschitz on held-out points, for ``trades_seeds`` inits per width (seed s: init key 10s,
attack keys 10s+1…10s+3; seed 0 is the single run of earlier versions). The ‖∇f‖ of the
same init is recorded too (``grad_l2_init``): width trends of the trained gradient are
fitted both raw and as the paired ratio trained/initial
(:func:`nt_robust.theory.scaling.fit_log_mean`), and accuracy/stability differences between
the widest and the narrowest width are paired over seeds. ``normalized_kernel_vs_ntk_param``
says how far the standard-parameterization kernel (as GD with η = n/λ_max sees it) is from
the NTK-parameterization one at each width: at m ≈ d = 784 they nearly coincide, so there
the two parameterizations' rows are not independent evidence::

    python experiments/theory_trades.py --preset cpu   # -> figures/theory/trades.{json,png,pdf}
"""

from __future__ import annotations

import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks import AttackConfig, pgd
from nt_robust.metrics import yang_local_lipschitz
from nt_robust.objectives import objective_terms
from nt_robust.theory import lazy_training as lt
from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.gradients import grad_norms
from nt_robust.theory.networks import MLPSpec, binary_logits, init_params, relative_change, scalar_fn
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_log_mean, paired_difference, save_figure
from nt_robust.theory.stability import stability_report

PIXEL_EPS, PIXEL_STEP, DEPTH = 0.031, 0.007, 3


def trades_attack(eps_scale: float) -> AttackConfig:
    return AttackConfig(norm="linf", eps=PIXEL_EPS / eps_scale, step_size=PIXEL_STEP / eps_scale, num_steps=10,
                        loss="kl", start="gaussian", start_std=0.001 / eps_scale, loop="fori")


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _train(spec: MLPSpec, attack: AttackConfig, steps: int, params, x, labels, lam, lr, key):
    def objective(p, x_adv):
        logits_fn = lambda v: binary_logits(scalar_fn(spec, p)(v))  # noqa: E731
        return objective_terms("trades", lam, logits_fn(x), logits_fn(x_adv), labels).total

    def step(p, k):
        logits_fn = lambda v: binary_logits(scalar_fn(spec, p)(v))  # noqa: E731
        x_adv = jax.lax.stop_gradient(pgd(logits_fn, x, labels, k, attack))
        value, grads = jax.value_and_grad(objective)(p, x_adv)
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grads), value

    return jax.lax.scan(step, params, jax.random.split(key, steps))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(spec: MLPSpec, attack: AttackConfig, params, xt, labels, key):
    logits_fn = lambda v: binary_logits(scalar_fn(spec, params)(v))  # noqa: E731
    pgd20 = AttackConfig(norm="linf", eps=attack.eps, step_size=attack.eps / 4, num_steps=20, loss="ce",
                         start="uniform", loop="fori")
    clean = jnp.argmax(logits_fn(xt), -1)
    adv = jnp.argmax(logits_fn(pgd(logits_fn, xt, labels, key, pgd20)), -1)
    yang = yang_local_lipschitz(logits_fn, xt, key, eps=attack.eps * 0.01 / PIXEL_EPS,
                                step_size=attack.eps * 0.003 / PIXEL_EPS, num_steps=10, loop="fori")
    return {"natural_accuracy": jnp.mean(clean == labels), "robust_accuracy": jnp.mean(adv == labels),
            "stability": jnp.mean(adv == clean), "yang_lipschitz": jnp.mean(yang)}


def measure(preset_name: str, out_dir: str = "") -> dict:
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0)
    x, xt = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    labels, labels_t = (jnp.asarray(v > 0, jnp.int32) for v in (data.y_train, data.y_test))
    attack = trades_attack(data.eps_scale)
    rows, kernel_diff = [], {}
    for param in ("ntk", "standard"):
        for width in preset.trades_widths:
            spec = MLPSpec(DEPTH, width, param)
            lr = lt.learning_rate(spec.kernel_spec(), x)
            if param == "standard":
                kernel_diff[str(width)] = lt.normalized_kernel_difference(spec.kernel_spec(), x)
            for seed, lam in itertools.product(range(preset.trades_seeds), (0.0, preset.trades_lam)):
                t0 = time.time()
                base = 10 * seed
                params0 = init_params(spec, jax.random.key(base), x.shape[1])
                params, losses = _train(spec, attack, preset.trades_steps, params0, x, labels, lam, lr,
                                        jax.random.key(base + 1))
                row = {k: float(v) for k, v in _evaluate(spec, attack, params, xt, labels_t, jax.random.key(base + 2)).items()}
                rep = stability_report(spec, params, xt, 1e-4, jax.random.key(base + 3))
                row.update(parameterization=param, width=width, lam=lam, lr=lr, seed=seed, final_loss=float(losses[-1]),
                           grad_l2=float(jnp.mean(grad_norms(scalar_fn(spec, params), xt)["l2"])),
                           grad_l2_init=float(jnp.mean(grad_norms(scalar_fn(spec, params0), xt)["l2"])),
                           relative_weight_change=float(relative_change(params, params0)),
                           **{"certified_stability_eps1e-4": float(rep["certified"]), "pgd_stability_eps1e-4": float(rep["pgd"])},
                           seconds=time.time() - t0)
                rows.append(row)
                print(f"trades {param:8s} m={width:5d} s={seed} λ={lam:g} nat={row['natural_accuracy']:.3f} "
                      f"rob={row['robust_accuracy']:.3f} stab={row['stability']:.3f} ‖∇f‖={row['grad_l2']:.1f} "
                      f"Δθ={row['relative_weight_change']:.4f} t={row['seconds']:.1f}s", flush=True)
    return {"preset": preset_name, "data": data.info, "depth": DEPTH, "steps": preset.trades_steps,
            "attack_train": attack.to_dict(), "eval": "PGD-20 CE, step eps/4, uniform start, same eps",
            "seeds": preset.trades_seeds, "normalized_kernel_vs_ntk_param": kernel_diff, "rows": rows}


def summarize(result: dict) -> dict:
    """Per (parameterization, λ): width exponents (log of the seed mean) and widest − narrowest."""
    fits = {}
    for param in ("ntk", "standard"):
        for lam in sorted({r["lam"] for r in result["rows"]}):
            rows = sorted((r for r in result["rows"] if r["parameterization"] == param and r["lam"] == lam),
                          key=lambda r: (r["width"], r["seed"]))
            widths = sorted({r["width"] for r in rows})
            x, seeds = [r["width"] for r in rows], [r["seed"] for r in rows]
            f = {"grad_l2": fit_log_mean(x, seeds, [r["grad_l2"] for r in rows]),
                 "grad_l2_ratio": fit_log_mean(x, seeds, [r["grad_l2"] / r["grad_l2_init"] for r in rows]),
                 "yang_lipschitz": fit_log_mean(x, seeds, [r["yang_lipschitz"] for r in rows])}
            by = lambda w, k: [r[k] for r in rows if r["width"] == w]  # noqa: E731  (seed order)
            for key in ("robust_accuracy", "stability", "natural_accuracy"):
                f[f"{key}_widest_minus_narrowest"] = paired_difference(by(widths[0], key), by(widths[-1], key))
            f["per_width"] = {str(w): {k: {"mean": float(np.mean(by(w, k))), "sd": float(np.std(by(w, k), ddof=1))
                                           if len(by(w, k)) > 1 else None}
                                       for k in ("natural_accuracy", "robust_accuracy", "stability", "grad_l2",
                                                 "grad_l2_init", "yang_lipschitz", "relative_weight_change")}
                              for w in widths}
            fits[f"{param}/lam{lam:g}"] = f
    return fits


def plot(result: dict, out_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("natural_accuracy", "robust_accuracy", "stability", "grad_l2", "grad_l2_ratio")
    fig, axes = plt.subplots(1, 5, figsize=(18.5, 3.6))
    for ax, key in zip(axes, keys):
        for k, (param, lam) in enumerate([(p, lam) for p in ("ntk", "standard") for lam in sorted({r["lam"] for r in result["rows"]})]):
            rows = [r for r in result["rows"] if r["parameterization"] == param and r["lam"] == lam]
            val = (lambda r: r["grad_l2"] / r["grad_l2_init"]) if key == "grad_l2_ratio" else (lambda r: r[key])
            widths = sorted({r["width"] for r in rows})
            per = [[val(r) for r in rows if r["width"] == w] for w in widths]
            ax.errorbar(np.asarray(widths) * (1.04 if param == "standard" else 1.0), [np.mean(v) for v in per],
                        yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in per], fmt="o-" if lam else "s--",
                        color=f"C{k}", capsize=2, label=f"{param}, λ={lam:g}")
        ax.set(xscale="log", xlabel="width m",
               title="‖∇f_T‖₂ / ‖∇f₀‖₂ (same init)" if key == "grad_l2_ratio" else key.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"depth {result['depth']}, {result['steps']} steps; mean ± sd over {result.get('seeds', 1)} inits",
                 fontsize=9)
    save_figure(fig, f"{out_dir}/trades")
    plt.close(fig)


def resummarize(result: dict) -> dict:
    """recompute fits (and the kernel comparison, if missing) from the rows in trades.json"""
    if "normalized_kernel_vs_ntk_param" not in result:
        preset = get_preset(result["preset"])
        x = jnp.asarray(sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0).x_train)
        result["normalized_kernel_vs_ntk_param"] = {
            str(w): lt.normalized_kernel_difference(MLPSpec(DEPTH, w, "standard").kernel_spec(), x)
            for w in sorted({r["width"] for r in result["rows"]})}
    if all("seed" in r and "grad_l2_init" in r for r in result["rows"]):
        result["fits"] = summarize(result)
    return result


EXPERIMENT = TheoryExperiment("trades", __doc__, measure, summarize, plot, resummarize=resummarize, replot=False)


if __name__ == "__main__":
    EXPERIMENT.main()

"""The same ReLU MLPs trained with TRADES at a fixed λ (and λ = 0) across a few widths.

Full-batch GD with the lazy-regime learning rate, the TRADES inner attack (KL, ℓ∞,
10 steps) at the pixel threat ε = 0.031 mapped onto the unit sphere by the median pixel
norm; then natural/robust accuracy, stability (PGD / certified), ‖∇f‖ and Yang's
Lipschitz on held-out points::

    python experiments/theory_trades.py --preset cpu   # -> figures/theory/trades.{json,png,pdf}
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks import AttackConfig, pgd
from nt_robust.io import write_json
from nt_robust.metrics import yang_local_lipschitz
from nt_robust.objectives import objective_terms
from nt_robust.theory import lazy_training as lt
from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.gradients import grad_norms
from nt_robust.theory.networks import MLPSpec, binary_logits, init_params, relative_change, scalar_fn
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import save_figure
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


def measure(preset_name: str) -> dict:
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0)
    x, xt = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    labels, labels_t = (jnp.asarray(v > 0, jnp.int32) for v in (data.y_train, data.y_test))
    attack = trades_attack(data.eps_scale)
    rows = []
    for param in ("ntk", "standard"):
        for width in preset.trades_widths:
            spec = MLPSpec(DEPTH, width, param)
            lr = lt.learning_rate(spec.kernel_spec(), x)
            for lam in (0.0, preset.trades_lam):
                t0 = time.time()
                params0 = init_params(spec, jax.random.key(0), x.shape[1])
                params, losses = _train(spec, attack, preset.trades_steps, params0, x, labels, lam, lr, jax.random.key(1))
                row = {k: float(v) for k, v in _evaluate(spec, attack, params, xt, labels_t, jax.random.key(2)).items()}
                rep = stability_report(spec, params, xt, 1e-4, jax.random.key(3))
                row.update(parameterization=param, width=width, lam=lam, lr=lr, final_loss=float(losses[-1]),
                           grad_l2=float(jnp.mean(grad_norms(scalar_fn(spec, params), xt)["l2"])),
                           relative_weight_change=float(relative_change(params, params0)),
                           **{"certified_stability_eps1e-4": float(rep["certified"]), "pgd_stability_eps1e-4": float(rep["pgd"])},
                           seconds=time.time() - t0)
                rows.append(row)
                print(f"trades {param:8s} m={width:5d} λ={lam:g} nat={row['natural_accuracy']:.3f} "
                      f"rob={row['robust_accuracy']:.3f} stab={row['stability']:.3f} ‖∇f‖={row['grad_l2']:.1f} "
                      f"Δθ={row['relative_weight_change']:.4f} t={row['seconds']:.1f}s", flush=True)
    return {"preset": preset_name, "data": data.info, "depth": DEPTH, "steps": preset.trades_steps,
            "attack_train": attack.to_dict(), "eval": "PGD-20 CE, step eps/4, uniform start, same eps",
            "rows": rows}


def plot(result: dict, out_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("natural_accuracy", "robust_accuracy", "stability", "grad_l2")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, key in zip(axes, keys):
        for k, (param, lam) in enumerate([(p, lam) for p in ("ntk", "standard") for lam in sorted({r["lam"] for r in result["rows"]})]):
            rows = [r for r in result["rows"] if r["parameterization"] == param and r["lam"] == lam]
            ax.plot([r["width"] for r in rows], [r[key] for r in rows], "o-" if lam else "s--", color=f"C{k}",
                    label=f"{param}, λ={lam:g}")
        ax.set(xscale="log", xlabel="width m", title=key.replace("_", " "))
    axes[0].legend(fontsize=7)
    save_figure(fig, f"{out_dir}/trades")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="figures/theory")
    args = parser.parse_args(argv)
    start = time.time()
    result = measure(args.preset)
    result["seconds"] = time.time() - start
    write_json(f"{args.out}/trades.json", result)
    plot(result, args.out)
    return result


if __name__ == "__main__":
    main()

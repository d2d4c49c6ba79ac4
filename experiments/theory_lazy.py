"""Lazy-regime training across width: input gradients, Lipschitzness, stability, kernel prediction.

For each parameterization (ntk, standard), loss (mse, ce), depth and width: full-batch GD
with η = n/λ_max(Θ) on a two-class Fashion-MNIST subset on the unit sphere, then on
held-out points: ‖∇f‖₂, ‖∇f‖₁, Yang's local Lipschitz, ‖θ_T − θ₀‖/‖θ₀‖, the analytic-NTK
prediction of the same network (same f₀) and its gradient, the infinite-width mean
predictor's gradient, and stability (PGD / certified / estimated) over an ε grid. The
same init's ‖∇f‖ and Yang's Lipschitz are recorded too (``*_init``): after lazy training
the gradient is mostly the random initial function's, so width trends are fitted both to
the trained value and to the paired ratio trained/initial (the trend net of the initial
draw). Exponents: :func:`nt_robust.theory.scaling.fit_log_mean` (log of the seed mean;
interval over seeds)::

    python experiments/theory_lazy.py --preset cpu   # -> figures/theory/lazy.{json} + figures
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.storage import write_json
from nt_robust.metrics import yang_local_lipschitz
from nt_robust.theory import lazy_training as lt
from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.gradients import KernelModel, grad_norms
from nt_robust.theory.kernels import relu_kernels
from nt_robust.theory.networks import MLPSpec, binary_logits, init_params, relative_change, scalar_fn, sphere_scale
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_log_mean, save_figure
from nt_robust.theory.stability import stability_report

PARAMETERIZATIONS = ("ntk", "standard")
LOSSES = ("mse", "ce")
YANG_PIXEL_EPS, YANG_PIXEL_STEP = 0.01, 0.003  # Yang et al.'s defaults, mapped by the median pixel norm


def kernel_mats(kspec, x, xt):
    s = sphere_scale(x.shape[1])
    return relu_kernels(kspec, s * x)[1], relu_kernels(kspec, s * xt, s * x)[1]


def mean_predictor_grad(kspec, x, y, xt, yt, loss, lr, steps):
    """The infinite-width mean predictor (f₀ ≡ 0) after `steps` steps and its ‖∇f‖₂ on xt."""
    theta, theta_tx = kernel_mats(kspec, x, xt)
    pred = lt.kernel_gd(theta, theta_tx, jnp.zeros_like(y), jnp.zeros(xt.shape[0]), y, loss, lr, steps)
    out = {"grad_l2": float(jnp.mean(grad_norms(KernelModel(kspec, x, pred.coef), xt)["l2"]))}
    if loss == "mse":  # cross-check against neural-tangents' continuous-time solution
        _, f_nt = lt.nt_mse_prediction(theta, theta_tx, jnp.zeros_like(y), jnp.zeros(xt.shape[0]), y, lr, steps)
        out["nt_vs_discrete_rms"] = float(jnp.sqrt(jnp.mean((f_nt - pred.f_test) ** 2)))
    out["test_accuracy"] = float(jnp.mean(jnp.sign(pred.f_test) == yt))
    return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _yang(spec, eps, step_size, params, xt, key):
    f = scalar_fn(spec, params)
    return yang_local_lipschitz(lambda v: binary_logits(f(v)), xt, key, eps=eps, step_size=step_size,
                                num_steps=10, loop="fori")


def run_one(spec, loss_kind, x, y, xt, yt, steps, seed, eps_grid, eps_scale):
    kspec = spec.kernel_spec()
    lr = lt.learning_rate(kspec, x)
    params0 = init_params(spec, jax.random.key(seed), x.shape[1])
    params, losses = lt.train_full_batch(spec, params0, x, y, loss_kind, lr, steps)
    f, f0 = scalar_fn(spec, params), scalar_fn(spec, params0)
    ft = f(xt)
    norms, norms0 = grad_norms(f, xt), grad_norms(f0, xt)
    theta, theta_tx = kernel_mats(kspec, x, xt)
    pred = lt.kernel_gd(theta, theta_tx, f0(x), f0(xt), y, loss_kind, lr, steps)
    kernel_model = KernelModel(kspec, x, pred.coef, f0=f0)
    yang = _yang(spec, YANG_PIXEL_EPS / eps_scale, YANG_PIXEL_STEP / eps_scale, params, xt, jax.random.key(seed + 7))
    yang0 = _yang(spec, YANG_PIXEL_EPS / eps_scale, YANG_PIXEL_STEP / eps_scale, params0, xt, jax.random.key(seed + 7))
    row = {
        "lr": lr, "train_loss": float(losses[-1]), "train_loss_0": float(losses[0]),
        "test_accuracy": float(jnp.mean(jnp.sign(ft) == yt)),
        "relative_weight_change": float(relative_change(params, params0)),
        "grad_l2": float(jnp.mean(norms["l2"])), "grad_l1": float(jnp.mean(norms["l1"])),
        "grad_l2_init": float(jnp.mean(norms0["l2"])), "grad_l1_init": float(jnp.mean(norms0["l1"])),
        "yang_lipschitz": float(jnp.mean(yang)), "yang_lipschitz_init": float(jnp.mean(yang0)),
        "kernel_gap_rms": float(jnp.sqrt(jnp.mean((ft - pred.f_test) ** 2))),
        "kernel_grad_l2": float(jnp.mean(grad_norms(kernel_model, xt)["l2"])),
        "grad_gap_rel": float(jnp.mean(jnp.linalg.norm(
            jax.grad(lambda v: jnp.sum(f(v)))(xt) - kernel_model.grads(xt), axis=1) / norms["l2"])),
        "stability": {},
    }
    row["grad_l2_ratio"] = row["grad_l2"] / row["grad_l2_init"]
    for i, eps in enumerate(eps_grid):
        rep = stability_report(spec, params, xt, eps, jax.random.key(seed * 100 + i))
        row["stability"][f"{eps:g}"] = {k: float(rep[k]) for k in ("certified", "pgd", "estimated")}
    return row



def measure(preset_name: str, out_dir: str | None = None) -> dict:
    partial_path = EXPERIMENT.partial_path(out_dir) if out_dir else None
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0)
    x, y, xt, yt = map(jnp.asarray, (data.x_train, data.y_train, data.x_test, data.y_test))
    rows, mean_predictor = [], []
    order = sorted(preset.train_widths, key=lambda depth: (depth != 3, depth))  # depth 3 first: all regimes early
    for depth in order:
        widths = preset.train_widths[depth]
        for param in PARAMETERIZATIONS:
            for loss in LOSSES:
                for width in widths:
                    spec = MLPSpec(depth, width, param)
                    if param == "standard" or width == widths[0]:  # the NTK-param. limit is width-free
                        kspec = spec.kernel_spec()
                        mp = mean_predictor_grad(kspec, x, y, xt, yt, loss, lt.learning_rate(kspec, x), preset.steps)
                        if param == "standard":
                            mp["normalized_kernel_vs_ntk_param"] = lt.normalized_kernel_difference(kspec, x)
                        mean_predictor.append({"parameterization": param, "loss": loss, "depth": depth,
                                               "width": width if param == "standard" else None, **mp})
                    for seed in range(preset.train_seeds):
                        t0 = time.time()
                        row = run_one(spec, loss, x, y, xt, yt, preset.steps, seed, preset.eps_grid, data.eps_scale)
                        row.update(parameterization=param, loss=loss, depth=depth, width=width, seed=seed,
                                   seconds=time.time() - t0)
                        rows.append(row)
                        print(f"lazy {param:8s} {loss} L={depth} m={width:5d} s={seed} acc={row['test_accuracy']:.3f} "
                              f"Δθ={row['relative_weight_change']:.4f} ‖∇f‖={row['grad_l2']:.1f} "
                              f"K‖∇f‖={row['kernel_grad_l2']:.1f} gap={row['kernel_gap_rms']:.3f} "
                              f"yang={row['yang_lipschitz']:.1f} t={row['seconds']:.1f}s", flush=True)
                    if partial_path:  # a long run leaves usable results behind as it goes
                        write_json(partial_path, {"preset": preset_name, "partial": True, "rows": rows,
                                                  "mean_predictor": mean_predictor})
    return {"preset": preset_name, "data": data.info, "steps": preset.steps, "eps_grid": list(preset.eps_grid),
            "eps_pixel_equivalent": [e * data.eps_scale for e in preset.eps_grid],
            "yang": {"eps": YANG_PIXEL_EPS / data.eps_scale, "step_size": YANG_PIXEL_STEP / data.eps_scale,
                     "num_steps": 10},
            "rows": rows, "mean_predictor": mean_predictor}


FIT_KEYS = ("grad_l2", "grad_l1", "yang_lipschitz", "kernel_grad_l2", "relative_weight_change", "kernel_gap_rms")
# Paired ratios trained/initial (same seed, same network): the width trend net of the initial draw.
RATIO_KEYS = {"grad_l2_ratio": ("grad_l2", "grad_l2_init"), "grad_l1_ratio": ("grad_l1", "grad_l1_init"),
              "yang_ratio": ("yang_lipschitz", "yang_lipschitz_init")}


def parameter_count(depth: int, width: int, in_dim: int) -> int:
    dims = [in_dim] + [width] * (depth - 1) + [1]
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def summarize(result: dict) -> dict:
    fits = {}
    d = result["data"]["dim"]
    for param in PARAMETERIZATIONS:
        for loss in LOSSES:
            for depth in sorted({r["depth"] for r in result["rows"]}):
                rows = [r for r in result["rows"] if (r["parameterization"], r["loss"], r["depth"]) == (param, loss, depth)]
                widths = sorted({r["width"] for r in rows})
                if len(widths) < 2:
                    continue
                x, seeds = [r["width"] for r in rows], [r["seed"] for r in rows]
                f = {key: fit_log_mean(x, seeds, [r[key] for r in rows]) for key in FIT_KEYS}
                for key, (num, den) in RATIO_KEYS.items():
                    if all(den in r for r in rows):
                        f[key] = fit_log_mean(x, seeds, [r[num] / r[den] for r in rows])
                lrs = {r["width"]: r["lr"] for r in rows}
                f["lr_slope"] = float(np.polyfit(np.log(widths), np.log([lrs[w] for w in widths]), 1)[0])
                # ‖θ_T − θ₀‖ = O(1) while ‖θ₀‖ ∝ √P: the exponent of P^(−1/2) over these widths.
                f["relative_weight_change_predicted_slope"] = float(np.polyfit(
                    np.log(widths), -0.5 * np.log([parameter_count(depth, w, d) for w in widths]), 1)[0])
                fits[f"{param}/{loss}/depth{depth}"] = f
    return fits


def _series(rows, key):
    widths = sorted({r["width"] for r in rows})
    vals = [[r[key] for r in rows if r["width"] == w] for w in widths]
    return widths, np.array([np.mean(v) for v in vals]), np.array([np.std(v) for v in vals])


def plot(result: dict, out_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in result["rows"]})
    colors = dict(zip(depths, ("C0", "C1", "C2", "C3")))

    def grid(keys_styles, ylabel, stem, logy=True, extra=None):
        fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
        for i, param in enumerate(PARAMETERIZATIONS):
            for j, loss in enumerate(LOSSES):
                ax = axes[i, j]
                for depth in depths:
                    rows = [r for r in result["rows"] if (r["parameterization"], r["loss"], r["depth"]) == (param, loss, depth)]
                    if not rows:
                        continue
                    for key, style, label in keys_styles:
                        w, m, s = _series(rows, key)
                        ax.errorbar(w, m, yerr=s, fmt=style, color=colors[depth], capsize=2,
                                    label=f"L={depth} {label}" if label else f"L={depth}")
                    if extra:
                        extra(ax, param, loss, depth, colors[depth])
                ax.set(xscale="log", yscale="log" if logy else "linear", title=f"{param} param., {loss}")
                if i == 1:
                    ax.set_xlabel("width m")
                if j == 0:
                    ax.set_ylabel(ylabel)
        axes[0, 0].legend(fontsize=7)
        save_figure(fig, f"{out_dir}/{stem}")
        plt.close(fig)

    def mean_pred(ax, param, loss, depth, color):
        mp = [r for r in result["mean_predictor"] if (r["parameterization"], r["loss"], r["depth"]) == (param, loss, depth)]
        if not mp:
            return
        if param == "ntk":
            ax.axhline(mp[0]["grad_l2"], color=color, ls=":", lw=1)
        else:
            ax.plot([r["width"] for r in mp], [r["grad_l2"] for r in mp], ":", color=color)

    grid([("grad_l2", "o-", "network"), ("kernel_grad_l2", "s--", "NTK, same f₀")], "mean ‖∇ₓf‖₂ on test points",
         "lazy_gradients", extra=mean_pred)
    grid([("grad_l2_ratio", "o-", "")], "‖∇ₓf_T‖₂ / ‖∇ₓf₀‖₂ (same init, mean over test points)",
         "lazy_gradient_ratio", logy=False)
    grid([("yang_lipschitz", "o-", "")], "Yang local Lipschitz (logits, ℓ∞)", "lazy_lipschitz")
    grid([("relative_weight_change", "o-", "")], "‖θ_T − θ₀‖ / ‖θ₀‖", "lazy_weight_change")
    grid([("kernel_gap_rms", "o-", "")], "RMS(f_T − NTK prediction) on test", "lazy_kernel_gap")

    # Stability vs width at each ε (PGD solid, certified dashed, estimated dotted), depth 3 or the middle one.
    depth = depths[len(depths) // 2]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True, sharey=True)
    for i, param in enumerate(PARAMETERIZATIONS):
        for j, loss in enumerate(LOSSES):
            ax = axes[i, j]
            rows = [r for r in result["rows"] if (r["parameterization"], r["loss"], r["depth"]) == (param, loss, depth)]
            widths = sorted({r["width"] for r in rows})
            for k, eps in enumerate(result["eps_grid"]):
                for kind, style in (("pgd", "o-"), ("certified", "s--"), ("estimated", "^:")):
                    vals = [np.mean([r["stability"][f"{eps:g}"][kind] for r in rows if r["width"] == w]) for w in widths]
                    ax.plot(widths, vals, style, color=f"C{k}", label=f"ε={eps:g} {kind}" if (i, j) == (0, 0) else None)
            ax.set(xscale="log", title=f"{param} param., {loss}, depth {depth}", ylim=(-0.02, 1.02))
            if i == 1:
                ax.set_xlabel("width m")
            if j == 0:
                ax.set_ylabel("perturbation stability")
    fig.legend(loc="center right", fontsize=7)
    save_figure(fig, f"{out_dir}/lazy_stability")
    plt.close(fig)


def finalize_partial(preset_name: str, out_dir: str) -> dict:
    """summarize and plot what an interrupted run left in lazy.partial.json

    Its rows become lazy.json (marked partial) with fits and figures."""
    from nt_robust.storage import read_json

    preset = get_preset(preset_name)
    partial = read_json(f"{out_dir}/lazy.partial.json")
    data = sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0)
    result = {"preset": preset_name, "partial": True, "data": data.info, "steps": preset.steps,
              "eps_grid": list(preset.eps_grid), "eps_pixel_equivalent": [e * data.eps_scale for e in preset.eps_grid],
              "yang": {"eps": YANG_PIXEL_EPS / data.eps_scale, "step_size": YANG_PIXEL_STEP / data.eps_scale,
                       "num_steps": 10},
              "rows": partial["rows"], "mean_predictor": partial["mean_predictor"],
              "seconds": float(sum(r["seconds"] for r in partial["rows"]))}
    result["fits"] = summarize(result)
    write_json(f"{out_dir}/lazy.json", result)
    plot(result, out_dir)
    return result


def resummarize(result: dict) -> dict:
    """recompute the fits and figures from the rows already in lazy.json"""
    for row in result["rows"]:
        row.setdefault("grad_l2_ratio", row["grad_l2"] / row["grad_l2_init"])
    preset = get_preset(result["preset"])
    data = sphere_binary_subset(n_train=preset.n_train, n_test=preset.n_test, seed=0)
    for mp in result["mean_predictor"]:
        if mp["parameterization"] == "standard" and "normalized_kernel_vs_ntk_param" not in mp:
            kspec = MLPSpec(mp["depth"], mp["width"], "standard").kernel_spec()
            mp["normalized_kernel_vs_ntk_param"] = lt.normalized_kernel_difference(kspec, jnp.asarray(data.x_train))
    result["fits"] = summarize(result)
    return result


EXPERIMENT = TheoryExperiment("lazy", __doc__, measure, summarize, plot, resummarize=resummarize,
                              modes={"--finalize-partial": finalize_partial}, partial=True)


if __name__ == "__main__":
    EXPERIMENT.main()

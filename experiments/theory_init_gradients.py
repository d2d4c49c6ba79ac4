"""E‖∇ₓf(x)‖² at initialization across width and depth, against the NNGP-kernel value.

The exponent of E‖∇f‖² in m is fitted to the log of the mean over inits (the claim is
about the mean: :func:`nt_robust.theory.scaling.fit_log_mean`, interval over inits); the
per-init log-log OLS is kept for comparison. The spread of ‖∇f(x)‖² over inits at a fixed
x does not vanish with width: at infinite width ∇f(x) is a Gaussian vector in d
dimensions, so its relative sd tends to about √(2/d) (0.050 for d = 784); we fit
sd² = floor + c/m and compare the floor with 2/d::

    python experiments/theory_init_gradients.py --preset cpu   # -> figures/theory/init_gradients.{json,png,pdf}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.gradients import closed_form_grad_sq_norm, input_grads, kernel_grad_sq_norm
from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_log_mean, fit_loglog, save_figure


def measure(preset_name: str, out_dir: str) -> dict:
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=8, n_test=preset.init_points, seed=0)
    u = jnp.asarray(data.x_test)
    d = u.shape[1]
    rows, kernel_values = [], {}
    for depth in preset.depths:
        kspec = MLPSpec(depth).kernel_spec()
        kernel_values[depth] = {
            "autodiff_of_kernel": [float(v) for v in kernel_grad_sq_norm(kspec, u[:4])],
            "closed_form": closed_form_grad_sq_norm(kspec, d)}
        for width in preset.init_widths:
            spec = MLPSpec(depth, width)
            grad_sq = jax.jit(lambda p, spec=spec: jnp.sum(input_grads(scalar_fn(spec, p), u) ** 2, axis=1))
            for seed in range(preset.init_seeds):
                params = init_params(spec, jax.random.key(1000 * depth + seed), d)
                sq = np.asarray(grad_sq(params))
                rows.append({"depth": depth, "width": width, "seed": seed, "mean_sq": float(sq.mean()),
                             "per_point_sq": sq.tolist()})
                del params
            print(f"init depth={depth} width={width} mean‖∇f‖²={np.mean([r['mean_sq'] for r in rows[-preset.init_seeds:]]):.1f}"
                  f" kernel={kernel_values[depth]['closed_form']:.1f}", flush=True)
    return {"preset": preset_name, "data": data.info, "kernel": kernel_values, "rows": rows}


def summarize(result: dict) -> dict:
    """Exponent of the mean (expect 0, exactly); the spread per point: a floor ≈ 2/d plus c/m."""
    fits = {}
    for depth in sorted({r["depth"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["depth"] == depth]
        widths = sorted({r["width"] for r in rows})
        expected = result["kernel"][depth]["closed_form"]
        spread_w, spread, var_by_width = [], [], []
        for w in widths:
            per_point = np.array([r["per_point_sq"] for r in rows if r["width"] == w])  # (seeds, points)
            rel_sd = np.std(per_point, axis=0, ddof=1) / expected  # per point, across inits
            spread_w += [w] * rel_sd.size
            spread += rel_sd.tolist()
            var_by_width.append(float(np.mean(rel_sd**2)))
        # Relative variance over inits = floor + c/m: least squares in 1/m on *relative* residuals
        # (weights 1/value: each width's variance estimate has about the same relative error).
        var_by_width = np.asarray(var_by_width)
        c, floor = np.polyfit(1 / np.asarray(widths, np.float64), var_by_width, 1, w=1 / var_by_width)
        d = result["data"]["dim"]
        fits[str(depth)] = {
            "mean_sq_vs_width": fit_log_mean([r["width"] for r in rows], [r["seed"] for r in rows],
                                             [r["mean_sq"] for r in rows]),
            "mean_sq_vs_width_per_seed_ols": fit_loglog([r["width"] for r in rows], [r["mean_sq"] for r in rows]),
            "relative_sd_vs_width": fit_loglog(spread_w, spread),
            "relative_variance_floor": float(floor), "relative_variance_per_inverse_width": float(c),
            "relative_sd_floor": float(np.sqrt(max(floor, 0.0))), "sqrt_2_over_d": float(np.sqrt(2 / d)),
            "relative_sd_at_widest": float(np.sqrt(var_by_width[-1])),
            "kernel_value": expected,
            "ratio_at_widest": float(np.mean([r["mean_sq"] for r in rows if r["width"] == widths[-1]]) / expected),
        }
    return fits


def plot(result: dict, out_dir: str) -> None:
    fits = result["fits"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for depth, color in zip(sorted(fits, key=int), ("C0", "C1", "C2", "C3")):
        rows = [r for r in result["rows"] if r["depth"] == int(depth)]
        widths = sorted({r["width"] for r in rows})
        expected = fits[depth]["kernel_value"]
        ratio = [[r["mean_sq"] / expected for r in rows if r["width"] == w] for w in widths]
        axes[0].errorbar(widths, [np.mean(v) for v in ratio], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in ratio],
                         color=color, marker="o", capsize=3, label=f"depth {depth}")
        spread = [np.mean(np.std([r["per_point_sq"] for r in rows if r["width"] == w], axis=0, ddof=1)) / expected
                  for w in widths]
        s = fits[depth]["relative_sd_vs_width"]
        axes[1].loglog(widths, spread, "o-", color=color, label=f"depth {depth}: slope {s['slope']:.2f}, "
                       f"floor {fits[depth]['relative_sd_floor']:.3f}")
    axes[0].axhline(1.0, color="k", ls="--", label="kernel: tr ∂²K/∂x∂x'")
    d = result["data"]["dim"]
    axes[1].axhline(np.sqrt(2 / d), color="k", ls="--", label=f"√(2/d) = {np.sqrt(2 / d):.3f}")
    axes[0].set(xscale="log", xlabel="width m", ylabel="E‖∇ₓf‖² / kernel value", title="At initialization (mean ± sd over inits)")
    axes[1].set(xlabel="width m", ylabel="sd over inits of ‖∇ₓf(x)‖² / kernel value", title="Fluctuation around the kernel value")
    for ax in axes:
        ax.legend(fontsize=8)
    save_figure(fig, f"{out_dir}/init_gradients")
    plt.close(fig)


def resummarize(result: dict) -> dict:
    """recompute the fits and the figure from the measurements already in init_gradients.json"""
    result["kernel"] = {int(k): v for k, v in result["kernel"].items()}
    result["fits"] = summarize(result)
    return result


EXPERIMENT = TheoryExperiment("init_gradients", __doc__, measure, summarize, plot, resummarize=resummarize)


if __name__ == "__main__":
    EXPERIMENT.main()

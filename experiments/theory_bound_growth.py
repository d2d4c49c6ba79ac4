"""How two worst-case bounds on the input gradient and the actual gradient scale with width (at init).

* G(u) ≥ sup over B∞(u, ε) of ‖∇g‖₁, the entrywise |W|-product bound by interval arithmetic
  (nt_robust.theory.stability.certified_grad_l1_bound), at ε ∈ {0, 1e-4, 1e-3};
* √d·∏‖Wₗ‖₂ ≥ ‖∇g‖₂ everywhere, the product of spectral norms
  (nt_robust.theory.stability.spectral_grad_l2_bound), on the first ``spectral_seeds`` inits
  and widths up to ``spectral_max_width`` (its cost is an eigendecomposition per layer);

against the actual ‖∇g(u)‖₁ and ‖∇g(u)‖₂, mean over the test points, at initialization, NTK
parameterization (the function law, hence every quantity here, is the same in standard
parameterization), the preset's depths and widths up to the second-widest init width.
Exponents: :func:`nt_robust.theory.scaling.fit_log_mean` over ``bound_seeds`` inits::

    python experiments/theory_bound_growth.py --preset cpu   # -> figures/theory/bound_growth.{json,png,pdf}

Bound vs actual measures how loose each bound is; it says nothing about the (unknown)
bound in the paper's theorem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.gradients import grad_norms
from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_log_mean, fit_loglog, save_figure
from nt_robust.theory.stability import certified_grad_l1_bound, spectral_grad_l2_bound

EPS_GRID = (0.0, 1e-4, 1e-3)
BOUND_KEYS = tuple(f"bound_eps{e:g}" for e in EPS_GRID)


def _fit(rows, key):
    return fit_log_mean([r["width"] for r in rows], [r["seed"] for r in rows], [r[key] for r in rows])


def summarize(result: dict) -> dict:
    fits = {}
    d = result["data"]["dim"]
    for depth in sorted({r["depth"] for r in result["rows"]}):
        rs = [r for r in result["rows"] if r["depth"] == depth]
        sp = [r for r in rs if "spectral_bound_l2" in r]
        widths, sp_widths = sorted({r["width"] for r in rs}), sorted({r["width"] for r in sp})
        f = {key: _fit(rs, key) for key in ("grad_l1", "grad_l2") + BOUND_KEYS}
        f["grad_l1_per_seed_ols"] = fit_loglog([r["width"] for r in rs], [r["grad_l1"] for r in rs])
        mean = lambda rows, key, w: float(np.mean([r[key] for r in rows if r["width"] == w]))  # noqa: E731
        f["abs_bound_over_l1"] = {str(w): mean(rs, "bound_eps0", w) / mean(rs, "grad_l1", w) for w in widths}
        if len(sp_widths) >= 2:
            f["spectral_bound_l2"] = _fit(sp, "spectral_bound_l2")
            f["grad_l2_spectral_subset"] = _fit(sp, "grad_l2")
            # Gaussian-layer prediction √d·W^L·2^(L−2)·(1 + √(m/d)): its exponent over these widths.
            f["spectral_predicted_slope"] = float(np.polyfit(np.log(sp_widths),
                                                             np.log(1 + np.sqrt(np.asarray(sp_widths) / d)), 1)[0])
            f["spectral_bound_over_l2"] = {str(w): mean(sp, "spectral_bound_l2", w) / mean(sp, "grad_l2", w)
                                           for w in sp_widths}
        fits[f"depth{depth}"] = f
    return fits


def measure(preset_name: str, out_dir: str = "") -> dict:
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=8, n_test=preset.init_points, seed=0)
    u = jnp.asarray(data.x_test)
    rows = []
    widths = preset.init_widths[: len(preset.init_widths) - 1] if len(preset.init_widths) > 3 else preset.init_widths
    for depth in preset.depths:
        for width in widths:
            spec = MLPSpec(depth, width)
            for seed in range(preset.bound_seeds):
                params = init_params(spec, jax.random.key(seed), u.shape[1])
                norms = grad_norms(scalar_fn(spec, params), u)
                row = {"depth": depth, "width": width, "seed": seed,
                       "grad_l1": float(jnp.mean(norms["l1"])), "grad_l2": float(jnp.mean(norms["l2"]))}
                for eps, key in zip(EPS_GRID, BOUND_KEYS):
                    row[key] = float(jnp.mean(certified_grad_l1_bound(spec, params, u, eps)))
                if seed < preset.spectral_seeds and width <= preset.spectral_max_width:
                    row["spectral_bound_l2"] = float(spectral_grad_l2_bound(spec, params))
                rows.append(row)
                del params
            print(f"bound L={depth} m={width} ‖∇g‖₁={row['grad_l1']:.0f} ‖∇g‖₂={row['grad_l2']:.1f} "
                  + " ".join(f"G(ε={e:g})={row[k]:.0f}" for e, k in zip(EPS_GRID, BOUND_KEYS))
                  + (f" spectral(seed 0)={rows[-preset.bound_seeds]['spectral_bound_l2']:.0f}"
                     if "spectral_bound_l2" in rows[-preset.bound_seeds] else ""),
                  flush=True)
    return {"preset": preset_name, "data": data.info, "rows": rows, "seeds": preset.bound_seeds,
            "spectral_seeds": preset.spectral_seeds, "spectral_max_width": preset.spectral_max_width}


def plot(result: dict, out_dir: str) -> None:
    preset = get_preset(result["preset"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, fits = result["rows"], result["fits"]
    fig, axes = plt.subplots(1, len(preset.depths), figsize=(4.8 * len(preset.depths), 4.0), sharey=True)
    series = [("grad_l1", "o-", "‖∇g(u)‖₁ (actual)"), ("grad_l2", "o:", "‖∇g(u)‖₂ (actual)")]
    series += [(k, "s--", f"|W|-product G(u), ε={k[9:]}") for k in BOUND_KEYS]
    series += [("spectral_bound_l2", "^-", "√d·∏‖W‖₂ (bounds ‖∇g‖₂)")]
    for ax, depth in zip(np.atleast_1d(axes), preset.depths):
        rs = [r for r in rows if r["depth"] == depth]
        for k, (key, style, label) in enumerate(series):
            sub = [r for r in rs if key in r]
            ws = sorted({r["width"] for r in sub})
            if key not in fits[f"depth{depth}"] or not ws:
                continue
            ax.plot(ws, [np.mean([r[key] for r in sub if r["width"] == w]) for w in ws], style, color=f"C{k}",
                    label=f"{label}: slope {fits[f'depth{depth}'][key]['slope']:+.2f}")
        ax.set(xscale="log", yscale="log", xlabel="width m", title=f"depth {depth}, at initialization")
        ax.legend(fontsize=6.5)
    np.atleast_1d(axes)[0].set_ylabel(f"mean over test points and inits ({result['seeds']} inits)")
    save_figure(fig, f"{out_dir}/bound_growth")
    plt.close(fig)


EXPERIMENT = TheoryExperiment("bound_growth", __doc__, measure, summarize, plot)


if __name__ == "__main__":
    EXPERIMENT.main()

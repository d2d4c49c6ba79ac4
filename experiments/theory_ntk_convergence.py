"""Empirical NTK of finite ReLU MLPs (neural-tangents) vs our closed form, across width.

Also records how far nt's analytic kernels are from ours. Fashion-MNIST points on the
unit sphere (fed as √d·u, see nt_robust.theory.networks)::

    python experiments/theory_ntk_convergence.py --preset cpu   # -> figures/theory/ntk_convergence.*
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.kernels import nt_stax_mlp, relu_kernels
from nt_robust.theory.networks import MLPSpec, apply, init_params, sphere_scale
from nt_robust.theory.nt_compat import NTK_IMPL, nt
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_loglog, save_figure

PARAMETERIZATIONS = ("ntk", "standard")


def measure(preset_name: str, out_dir: str = "") -> dict:
    preset = get_preset(preset_name)
    data = sphere_binary_subset(n_train=preset.ntk_points, n_test=8, seed=1)
    z = sphere_scale(data.x_train.shape[1]) * jnp.asarray(data.x_train)
    rows, analytic = [], []
    for param in PARAMETERIZATIONS:
        for depth in preset.depths:
            for width in preset.ntk_widths:
                spec = MLPSpec(depth, width, param)
                nngp, exact = relu_kernels(spec.kernel_spec(), z)
                if width == preset.ntk_widths[0] or param == "standard":
                    k = nt_stax_mlp(spec.kernel_spec(), width)[2](z, None, ("nngp", "ntk"))
                    analytic.append({"parameterization": param, "depth": depth, "width": width,
                                     "nngp_max_rel_diff": float(jnp.max(jnp.abs(k.nngp - nngp)) / jnp.max(jnp.abs(nngp))),
                                     "ntk_max_rel_diff": float(jnp.max(jnp.abs(k.ntk - exact)) / jnp.max(jnp.abs(exact)))})
                kernel_fn = jax.jit(nt.empirical_ntk_fn(lambda p, v, spec=spec: apply(spec, p, v)[:, None],
                                                        trace_axes=(), implementation=NTK_IMPL))
                for seed in range(preset.ntk_seeds):
                    params = init_params(spec, jax.random.key(seed), z.shape[1])
                    emp = kernel_fn(z, None, params)[..., 0, 0]
                    err = float(jnp.linalg.norm(emp - exact) / jnp.linalg.norm(exact))
                    rows.append({"parameterization": param, "depth": depth, "width": width, "seed": seed,
                                 "relative_error": err})
                print(f"ntk {param:8s} L={depth} m={width:5d} err={np.mean([r['relative_error'] for r in rows[-preset.ntk_seeds:]]):.4f}",
                      flush=True)
    return {"preset": preset_name, "data": data.info, "implementation": "JACOBIAN_CONTRACTION",
            "rows": rows, "analytic": analytic}


def summarize(result: dict) -> dict:
    fits = {}
    for param in PARAMETERIZATIONS:
        for depth in sorted({r["depth"] for r in result["rows"]}):
            rows = [r for r in result["rows"] if (r["parameterization"], r["depth"]) == (param, depth)]
            fits[f"{param}/depth{depth}"] = fit_loglog([r["width"] for r in rows], [r["relative_error"] for r in rows])
    fits["max_analytic_rel_diff"] = max(max(a["nngp_max_rel_diff"], a["ntk_max_rel_diff"]) for a in result["analytic"])
    return fits


def plot(result: dict, out_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, param in zip(axes, PARAMETERIZATIONS):
        for k, depth in enumerate(sorted({r["depth"] for r in result["rows"]})):
            rows = [r for r in result["rows"] if (r["parameterization"], r["depth"]) == (param, depth)]
            widths = sorted({r["width"] for r in rows})
            errs = [[r["relative_error"] for r in rows if r["width"] == w] for w in widths]
            fit = result["fits"][f"{param}/depth{depth}"]
            ax.errorbar(widths, [np.mean(e) for e in errs], yerr=[np.std(e) for e in errs], fmt="o-", color=f"C{k}",
                        capsize=2, label=f"depth {depth}: slope {fit['slope']:.2f} [{fit['ci95'][0]:.2f}, {fit['ci95'][1]:.2f}]")
        w = np.array(widths, float)
        ax.plot(w, np.mean(errs[0]) * (w / w[0]) ** -0.5, "k--", lw=1, label="∝ m^(−1/2)")
        ax.set(xscale="log", yscale="log", xlabel="width m", title=f"{param} parameterization")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("‖Θ_empirical − Θ‖_F / ‖Θ‖_F")
    save_figure(fig, f"{out_dir}/ntk_convergence")
    plt.close(fig)


EXPERIMENT = TheoryExperiment("ntk_convergence", __doc__, measure, summarize, plot)


if __name__ == "__main__":
    EXPERIMENT.main()

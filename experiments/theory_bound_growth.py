"""How the certified local gradient bound G(u) and the actual ‖∇g(u)‖₁ scale with width (at init).

G(u) ≥ sup over B∞(u, ε) of ‖∇g‖₁ by interval arithmetic (nt_robust.theory.stability): a
worst-case bound of the kind NTK-style analyses produce. Compared with the gradient
actually there, at initialization, depth 3, both parameterizations (same function law)::

    python experiments/theory_bound_growth.py --preset cpu   # -> figures/theory/bound_growth.{json,png,pdf}
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.io import write_json
from nt_robust.theory.data import sphere_binary_subset
from nt_robust.theory.gradients import grad_norms
from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_loglog, save_figure
from nt_robust.theory.stability import certified_grad_l1_bound

EPS_GRID = (0.0, 1e-4, 1e-3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="figures/theory")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    start = time.time()
    data = sphere_binary_subset(n_train=8, n_test=preset.init_points, seed=0)
    u = jnp.asarray(data.x_test)
    rows = []
    widths = preset.init_widths[: len(preset.init_widths) - 1] if len(preset.init_widths) > 3 else preset.init_widths
    for depth in preset.depths:
        for width in widths:
            spec = MLPSpec(depth, width)
            for seed in range(2):
                params = init_params(spec, jax.random.key(seed), u.shape[1])
                row = {"depth": depth, "width": width, "seed": seed,
                       "grad_l1": float(jnp.mean(grad_norms(scalar_fn(spec, params), u)["l1"]))}
                for eps in EPS_GRID:
                    row[f"bound_eps{eps:g}"] = float(jnp.mean(certified_grad_l1_bound(spec, params, u, eps)))
                rows.append(row)
            print(f"bound L={depth} m={width} ‖∇g‖₁={row['grad_l1']:.0f} "
                  + " ".join(f"G(ε={e:g})={row[f'bound_eps{e:g}']:.0f}" for e in EPS_GRID), flush=True)
    fits = {}
    for depth in preset.depths:
        rs = [r for r in rows if r["depth"] == depth]
        fits[f"depth{depth}"] = {key: fit_loglog([r["width"] for r in rs], [r[key] for r in rs])
                                 for key in ["grad_l1"] + [f"bound_eps{e:g}" for e in EPS_GRID]}
    result = {"preset": args.preset, "data": data.info, "rows": rows, "fits": fits, "seconds": time.time() - start}
    write_json(f"{args.out}/bound_growth.json", result)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(preset.depths), figsize=(4.5 * len(preset.depths), 3.8), sharey=True)
    for ax, depth in zip(np.atleast_1d(axes), preset.depths):
        rs = [r for r in rows if r["depth"] == depth]
        for k, key in enumerate(["grad_l1"] + [f"bound_eps{e:g}" for e in EPS_GRID]):
            ws = sorted({r["width"] for r in rs})
            ax.plot(ws, [np.mean([r[key] for r in rs if r["width"] == w]) for w in ws], "o-", color=f"C{k}",
                    label=f"{'‖∇g(u)‖₁' if key == 'grad_l1' else 'G(u), ε=' + key[9:]}: slope {fits[f'depth{depth}'][key]['slope']:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="width m", title=f"depth {depth}, at initialization")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("mean over test points")
    save_figure(fig, f"{args.out}/bound_growth")
    plt.close(fig)
    return result


if __name__ == "__main__":
    main()

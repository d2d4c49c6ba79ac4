"""Tables of the measured exponents and values, from the JSON files in figures/theory/.

    python experiments/theory_report.py            # -> figures/theory/summary.md (and prints it)

Every number in docs/theory.md's results section is copied from this output.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from nt_robust.io import read_json, write_text


def _ci(fit: dict) -> str:
    return f"{fit['slope']:+.3f} [{fit['ci95'][0]:+.3f}, {fit['ci95'][1]:+.3f}]"


def init_section(r: dict) -> list[str]:
    lines = ["## Gradient at initialization (init_gradients.json)", "",
             "| depth | kernel value d·W²(W²/2)^(L−1) | autodiff of K | mean/kernel at widest | exponent of E‖∇f‖² in m (95% CI) |",
             "|---|---|---|---|---|"]
    for depth, fit in r["fits"].items():
        k = r["kernel"][depth]
        lines.append(f"| {depth} | {k['closed_form']:.1f} | {np.mean(k['autodiff_of_kernel']):.1f} | "
                     f"{fit['ratio_at_widest']:.3f} | {_ci(fit['mean_sq_vs_width'])} |")
    return lines + [f"", f"widths {sorted({x['width'] for x in r['rows']})}, "
                    f"{len({x['seed'] for x in r['rows']})} inits each, {r['data']['n_test']} test points.", ""]


def ntk_section(r: dict) -> list[str]:
    lines = ["## Empirical NTK vs closed form (ntk_convergence.json)", "",
             f"Largest relative difference between nt's analytic kernels and ours: {r['fits']['max_analytic_rel_diff']:.2e}", "",
             "| parameterization/depth | exponent of ‖Θ_emp − Θ‖/‖Θ‖ in m (95% CI) |", "|---|---|"]
    lines += [f"| {k} | {_ci(v)} |" for k, v in r["fits"].items() if isinstance(v, dict)]
    return lines + [""]


def lazy_section(r: dict) -> list[str]:
    keys = ("grad_l2", "yang_lipschitz", "kernel_grad_l2", "relative_weight_change", "kernel_gap_rms")
    lines = ["## Lazy training (lazy.json)" + (" — PARTIAL: interrupted run, only the rows listed" if r.get("partial") else ""), "",
             f"{r['steps']} full-batch GD steps, n_train={r['data']['n_train']}, n_test={r['data']['n_test']}; "
             f"exponents in m with 95% CI.", "",
             "| regime | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for regime, fits in r["fits"].items():
        lines.append(f"| {regime} | " + " | ".join(_ci(fits[k]) for k in keys) + " |")
    lines += ["", "Mean values per width (averaged over seeds):", "",
              "| regime | width | test acc | ‖∇f‖₂ | NTK-pred ‖∇f‖₂ | Yang Lip. | Δθ/θ₀ | " +
              " | ".join(f"stab ε={e:g} pgd/cert/est" for e in r["eps_grid"]) + " |",
              "|---" * (7 + len(r["eps_grid"])) + "|"]
    groups = sorted({(x["parameterization"], x["loss"], x["depth"]) for x in r["rows"]})
    for g in groups:
        rows = [x for x in r["rows"] if (x["parameterization"], x["loss"], x["depth"]) == g]
        for w in sorted({x["width"] for x in rows}):
            rw = [x for x in rows if x["width"] == w]
            m = lambda k: np.mean([x[k] for x in rw])  # noqa: E731
            stab = " | ".join("/".join(f"{np.mean([x['stability'][f'{e:g}'][kind] for x in rw]):.2f}"
                                       for kind in ("pgd", "certified", "estimated")) for e in r["eps_grid"])
            lines.append(f"| {g[0]}/{g[1]}/L{g[2]} | {w} | {m('test_accuracy'):.3f} | {m('grad_l2'):.1f} | "
                         f"{m('kernel_grad_l2'):.1f} | {m('yang_lipschitz'):.0f} | {m('relative_weight_change'):.4f} | {stab} |")
    lines += ["", "Infinite-width mean predictor (f₀ ≡ 0): ‖∇f‖₂ on test points", "",
              "| regime | width | ‖∇f‖₂ | test acc |", "|---|---|---|---|"]
    for x in r["mean_predictor"]:
        lines.append(f"| {x['parameterization']}/{x['loss']}/L{x['depth']} | {x['width'] or '∞ (width-free)'} | "
                     f"{x['grad_l2']:.1f} | {x['test_accuracy']:.3f} |")
    return lines + [""]


def trades_section(r: dict) -> list[str]:
    lines = ["## TRADES (trades.json)", "", f"depth {r['depth']}, {r['steps']} full-batch steps, "
             f"train attack {r['attack_train']['eps']:.5f} (ℓ∞ on the sphere)", "",
             "| param. | width | λ | natural acc | robust acc | stability | ‖∇f‖₂ | Yang Lip. | Δθ/θ₀ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['parameterization']} | {x['width']} | {x['lam']:g} | {x['natural_accuracy']:.3f} | "
                     f"{x['robust_accuracy']:.3f} | {x['stability']:.3f} | {x['grad_l2']:.1f} | "
                     f"{x['yang_lipschitz']:.0f} | {x['relative_weight_change']:.4f} |")
    return lines + [""]


def memory_section(r: dict) -> list[str]:
    lines = ["## Memory (memory.json)", "", "| kernel | n | width | seconds | peak RSS (GB) | result (GB) |",
             "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if "error" in x:
            lines.append(f"| {x['kind']} | {x['n']} | {x.get('width') or ''} | {x['error']} | | |")
        else:
            lines.append(f"| {x['kind']} | {x['n']} | {x.get('width') or ''} | {x['seconds']:.1f} | "
                         f"{x['peak_rss_gb']:.2f} | {x['result_gb']:.3f} |")
    return lines + [""]


def bound_section(r: dict) -> list[str]:
    lines = ["## Certified gradient bound vs actual gradient at init (bound_growth.json)", "",
             "| depth | quantity | exponent in m (95% CI) |", "|---|---|---|"]
    for depth, fits in r["fits"].items():
        lines += [f"| {depth} | {key} | {_ci(fit)} |" for key, fit in fits.items()]
    return lines + [""]


SECTIONS = {"init_gradients.json": init_section, "ntk_convergence.json": ntk_section, "bound_growth.json": bound_section, "lazy.json": lazy_section,
            "trades.json": trades_section, "memory.json": memory_section}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="figures/theory")
    args = parser.parse_args(argv)
    lines = ["# Theory measurements (generated by experiments/theory_report.py)", ""]
    for name, section in SECTIONS.items():
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            result = read_json(path)
            lines += section(result) + [f"(preset {result.get('preset')}, {result.get('seconds', 0):.0f} s)", ""]
    timing = os.path.join(args.out, "timing.json")
    if os.path.exists(timing):
        t = read_json(timing)
        lines += ["## Runtime (timing.json)", "", f"total wall {t['total_wall_s']:.0f} s, CPU {t['total_cpu_s']:.0f} s "
                  f"on {t['cpu_count']} cores; per stage: " +
                  ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in t["stages"].items()), ""]
    text = "\n".join(lines)
    write_text(os.path.join(args.out, "summary.md"), text)
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Tables of the measured exponents and values, from the JSON files in figures/theory/.

    python experiments/theory_report.py            # -> figures/theory/summary.md (and prints it)

Every number in docs/theory.md's results section is copied from this output.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from nt_robust.storage import read_json, write_text


FIT_NOTE = ("Exponents: OLS slope of log(mean over seeds) on log(width); 95% interval: the wider of a "
            "seed-bootstrap percentile interval (4000 resamples, the same seeds at every width) and a "
            "jackknife-over-seeds t-interval (S − 1 dof); nt_robust.theory.scaling.fit_log_mean.")


def _ci(fit: dict) -> str:
    if fit.get("ci95") is None:
        return f"{fit['slope']:+.3f} [no interval: 1 seed]"
    return f"{fit['slope']:+.3f} [{fit['ci95'][0]:+.3f}, {fit['ci95'][1]:+.3f}]"


def _pm(d: dict, fmt: str = ".3f") -> str:
    return f"{d['mean']:{fmt}}" + (f" ± {d['sd']:{fmt}}" if d.get("sd") is not None else "")


def _diff(d: dict) -> str:
    if d.get("ci95") is None:
        return f"{d['mean']:+.3f}"
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def init_section(r: dict) -> list[str]:
    lines = ["## Gradient at initialization (init_gradients.json)", "", FIT_NOTE, "",
             "| depth | kernel value d·W²(W²/2)^(L−1) | autodiff of K | mean/kernel at widest | "
             "exponent of E‖∇f‖² in m (95% CI) | per-seed log-log OLS (E log, t-interval) | "
             "spread floor √(fitted) vs √(2/d) |",
             "|---|---|---|---|---|---|---|"]
    for depth, fit in r["fits"].items():
        k = r["kernel"][depth]
        ols = fit.get("mean_sq_vs_width_per_seed_ols")
        floor = (f"{fit['relative_sd_floor']:.3f} vs {fit['sqrt_2_over_d']:.3f}" if "relative_sd_floor" in fit else "")
        lines.append(f"| {depth} | {k['closed_form']:.1f} | {np.mean(k['autodiff_of_kernel']):.1f} | "
                     f"{fit['ratio_at_widest']:.3f} | {_ci(fit['mean_sq_vs_width'])} | "
                     f"{_ci(ols) if ols else ''} | {floor} |")
    return lines + ["", f"widths {sorted({x['width'] for x in r['rows']})}, "
                    f"{len({x['seed'] for x in r['rows']})} inits each, {r['data']['n_test']} test points.", ""]


def ntk_section(r: dict) -> list[str]:
    lines = ["## Empirical NTK vs closed form (ntk_convergence.json)", "",
             f"Largest relative difference between nt's analytic kernels and ours: {r['fits']['max_analytic_rel_diff']:.2e}", "",
             "| parameterization/depth | exponent of ‖Θ_emp − Θ‖/‖Θ‖ in m (95% CI) |", "|---|---|"]
    lines += [f"| {k} | {_ci(v)} |" for k, v in r["fits"].items() if isinstance(v, dict)]
    return lines + [""]


def lazy_section(r: dict) -> list[str]:
    keys = ("grad_l2", "grad_l2_ratio", "yang_lipschitz", "yang_ratio", "kernel_grad_l2")
    seeds = len({x["seed"] for x in r["rows"]})
    lines = ["## Lazy training (lazy.json)" + (" — PARTIAL: interrupted run, only the rows listed" if r.get("partial") else ""), "",
             f"{r['steps']} full-batch GD steps, n_train={r['data']['n_train']}, n_test={r['data']['n_test']}, "
             f"{seeds} seeds per width (the same seeds at every width); exponents in m with 95% CI. "
             "`*_ratio` = trained / initial value of the same network (paired by seed): the trend net of "
             "the initial draw.", "", FIT_NOTE, "",
             "| regime | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for regime, fits in r["fits"].items():
        lines.append(f"| {regime} | " + " | ".join(_ci(fits[k]) if k in fits else "" for k in keys) + " |")
    lines += ["", "| regime | Δθ/θ₀ exponent | predicted (‖θ₀‖ ∝ √P) | RMS(f_T − NTK pred.) exponent | learning-rate exponent |",
              "|---|---|---|---|---|"]
    for regime, fits in r["fits"].items():
        lines.append(f"| {regime} | {_ci(fits['relative_weight_change'])} | "
                     f"{fits.get('relative_weight_change_predicted_slope', float('nan')):+.2f} | "
                     f"{_ci(fits['kernel_gap_rms'])} | {fits.get('lr_slope', float('nan')):+.2f} |")
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
    lines += ["", "Infinite-width mean predictor (f₀ ≡ 0): ‖∇f‖₂ on test points; for standard "
              "parameterization also max|Θ/λ_max − Θ_ntk/λ_max| / max|Θ_ntk/λ_max| on the training points", "",
              "| regime | width | ‖∇f‖₂ | test acc | kernel vs NTK param. |", "|---|---|---|---|---|"]
    for x in r["mean_predictor"]:
        kd = x.get("normalized_kernel_vs_ntk_param")
        lines.append(f"| {x['parameterization']}/{x['loss']}/L{x['depth']} | {x['width'] or '∞ (width-free)'} | "
                     f"{x['grad_l2']:.1f} | {x['test_accuracy']:.3f} | {'' if kd is None else f'{kd:.4f}'} |")
    return lines + [""]


def trades_section(r: dict) -> list[str]:
    seeds = r.get("seeds", 1)
    lines = ["## TRADES (trades.json)", "", f"depth {r['depth']}, {r['steps']} full-batch steps, "
             f"train attack {r['attack_train']['eps']:.5f} (ℓ∞ on the sphere), {seeds} seed(s) per width"
             + ("; mean ± sd over seeds." if "fits" in r else "."), ""]
    if "fits" not in r:  # written before seeds were added: one row per (param., width, λ)
        lines += ["| param. | width | λ | natural acc | robust acc | stability | ‖∇f‖₂ | Yang Lip. | Δθ/θ₀ |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            lines.append(f"| {x['parameterization']} | {x['width']} | {x['lam']:g} | {x['natural_accuracy']:.3f} | "
                         f"{x['robust_accuracy']:.3f} | {x['stability']:.3f} | {x['grad_l2']:.1f} | "
                         f"{x['yang_lipschitz']:.0f} | {x['relative_weight_change']:.4f} |")
        return lines + _kernel_diff_lines(r) + [""]
    lines += ["| param. | width | λ | natural acc | robust acc | stability | ‖∇f‖₂ | ‖∇f₀‖₂ (init) | Yang Lip. | Δθ/θ₀ |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for regime, f in r["fits"].items():
        param, lam = regime.split("/lam")
        for w, v in sorted(f["per_width"].items(), key=lambda item: int(item[0])):
            lines.append(f"| {param} | {w} | {lam} | {_pm(v['natural_accuracy'])} | {_pm(v['robust_accuracy'])} | "
                         f"{_pm(v['stability'])} | {_pm(v['grad_l2'], '.1f')} | {_pm(v['grad_l2_init'], '.1f')} | "
                         f"{_pm(v['yang_lipschitz'], '.0f')} | {_pm(v['relative_weight_change'], '.4f')} |")
    lines += ["", FIT_NOTE + " Widest − narrowest: mean over seeds with a paired t-interval.", "",
              "| regime | ‖∇f‖₂ exponent | ‖∇f_T‖/‖∇f₀‖ exponent | Yang exponent | robust acc widest − narrowest | "
              "stability widest − narrowest |", "|---|---|---|---|---|---|"]
    for regime, f in r["fits"].items():
        lines.append(f"| {regime} | {_ci(f['grad_l2'])} | {_ci(f['grad_l2_ratio'])} | {_ci(f['yang_lipschitz'])} | "
                     f"{_diff(f['robust_accuracy_widest_minus_narrowest'])} | {_diff(f['stability_widest_minus_narrowest'])} |")
    return lines + _kernel_diff_lines(r) + [""]


def _kernel_diff_lines(r: dict) -> list[str]:
    kd = r.get("normalized_kernel_vs_ntk_param", {})
    if not kd:
        return []
    return ["", "Standard vs NTK parameterization, kernel as GD with η = n/λ_max sees it "
            "(max|Θ/λ_max − Θ_ntk/λ_max| / max|Θ_ntk/λ_max|, training points): " +
            ", ".join(f"m = {w}: {v:.4f}" for w, v in sorted(kd.items(), key=lambda item: int(item[0])))]


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
    lines = ["## Gradient bounds vs actual gradients at init (bound_growth.json)", "",
             f"{r.get('seeds', 2)} inits per width; the spectral bound √d·∏‖W‖₂ on the first "
             f"{r.get('spectral_seeds', '?')} inits and widths ≤ {r.get('spectral_max_width', '?')}. "
             "bound_eps* = entrywise |W|-product bound G(u) on ‖∇g‖₁ (interval arithmetic at that ε); "
             "grad_l2_spectral_subset = ‖∇g‖₂ on the spectral bound's inits and widths.", "", FIT_NOTE, "",
             "| depth | quantity | exponent in m (95% CI) |", "|---|---|---|"]
    for depth, fits in r["fits"].items():
        for key, fit in fits.items():
            if isinstance(fit, dict) and "slope" in fit:
                lines.append(f"| {depth} | {key}{' (E log: per-seed OLS, t-interval)' if 'ols' in key else ''} | {_ci(fit)} |")
            elif key == "spectral_predicted_slope":
                lines.append(f"| {depth} | spectral bound, Gaussian prediction (1 + √(m/d)) | {fit:+.3f} |")
    lines += ["", "Looseness (bound / actual, means over inits) at the narrowest and widest widths:", "",
              "| depth | G(u) at ε=0 / ‖∇g‖₁ | spectral / ‖∇g‖₂ |", "|---|---|---|"]
    for depth, fits in r["fits"].items():
        a = fits.get("abs_bound_over_l1", {})
        b = fits.get("spectral_bound_over_l2", {})
        fmt = lambda d: " → ".join(f"{d[k]:.3g} (m={k})" for k in sorted(d, key=int)[::max(len(d) - 1, 1)]) if d else ""  # noqa: E731
        lines.append(f"| {depth} | {fmt(a)} | {fmt(b)} |")
    return lines + [""]


def _verdict(v: dict | None, key: str) -> str:
    if not v:
        return ""
    ci = "no interval" if v["ci95"] is None else f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
    return f"{v['estimate']:+.3f} {ci} → {v[key]}"


def conv_section(r: dict) -> list[str]:
    names = {"wrn": f"WRN-{r['depth']}-k (BN, Flax)", "cnn": "SmallCNN ×k", "analogue": f"BN-free WRN-{r['depth']}-k (stax)"}
    fits = r["fits"]
    lines = ["## Conv nets across width k (conv.json)", "",
             f"Fashion-MNIST at {'x'.join(map(str, r['data']['image_shape'][:2]))}, logit 0 in pixel units; "
             f"k→∞ prediction E‖∇f‖² = {fits['predicted_grad_sq_mean']:.4f} (mean over {r['predicted_points']} images). "
             f"Stability: PGD-{r['attack']['num_steps']} on the KL, ε = {r['attack']['eps']:g}, "
             f"{r['stability_points']} test images; training: {r['train_steps']} SGD steps.", "", FIT_NOTE, "",
             "| network | NTK change k→2k | NTK spread over inits | NTK vs analytic | E‖∇f‖² at init | "
             "‖∇f‖₁ init | bound init | ‖∇f‖₁ trained | bound trained |", "|---|---|---|---|---|---|---|---|---|"]
    keys = ("ntk_change_to_double", "ntk_spread", "ntk_to_analytic", "init_grad_sq", "init_grad_l1", "init_bound_l1",
            "trained_grad_l1", "trained_bound_l1")
    for arch, name in names.items():
        lines.append(f"| {name} | " + " | ".join(_ci(fits[arch][k]) if fits[arch].get(k) else "" for k in keys) + " |")
    ratio = fits["analogue"]["measured_over_predicted"]
    lines += ["", "BN-free analogue, measured / predicted E‖∇f‖² on the predicted images: " +
              ", ".join(f"k={k}: {v:.3f}" for k, v in ratio.items()), "",
              "Verdicts (narrowest vs widest k: exponent log(ratio)/log(k ratio), or the stability difference, "
              "with the seed × image interval of nt_robust.studies.uncertainty):", "",
              "| network | when | the bound grows | the actual ‖∇f‖₁ grows | stability falls (difference) | "
              "stability by k |", "|---|---|---|---|---|---|"]
    for arch, name in names.items():
        v = fits[arch]["verdicts"]
        for when in ("init", "trained"):
            stab = (v.get("stability_falls") or {}).get(when)
            by_k = ", ".join(f"{k}: {x:.3f}" for k, x in fits[arch].get(f"{when}_stability", {}).items())
            lines.append(f"| {name} | {when} | {_verdict(v['bound_grows'][when], 'verdict_grows')} | "
                         f"{_verdict(v['gradient_grows'][when], 'verdict_grows')} | {_verdict(stab, 'verdict_falls')} | {by_k} |")
    return lines + [""]


SECTIONS = {"init_gradients.json": init_section, "ntk_convergence.json": ntk_section, "bound_growth.json": bound_section, "lazy.json": lazy_section,
            "trades.json": trades_section, "memory.json": memory_section, "conv.json": conv_section}


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

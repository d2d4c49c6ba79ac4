"""Predicted vs measured on the study engine's trained models (docs/theory.md §13).

For every finished grid run of the given studies at one λ (default 6), on the first
``--images`` test images of the run's own data (downsampled as it was trained):

* measured, at the run's initialization (re-created from its seed) and at its best held-out
  checkpoint: the Yang et al. local Lipschitz estimate (the study's eval.lipschitz settings),
  the "trades_grad" estimate (max ‖∇ₓKL‖₁ along the TRADES attack, at the run's training
  attack settings), Σ_k ‖∇ₓf_k‖₁ and max_k ‖∇ₓf_k‖₁, and perturbation stability under the
  run's evaluation attack;
* predicted, from the infinite-width kernel of the architecture's twin
  (nt_robust.theory.trained): E‖∇ₓf_k‖₁ at init, width-independent, which the lazy (NTK)
  regime predicts the trained network keeps. The Yang estimate of a locally linear map lies in
  [max_k, Σ_k] ‖∇ₓf_k‖₁, so its predicted band is [1, K] × E‖∇ₓf_k‖₁.

Each measure's exponent in width is the least-squares slope of log2(value) against log2(width)
per seed and image, with the seed × image interval of nt_robust.studies.uncertainty (seeds
are the runs' seeds); stability gets its slope per doubling. Writes
``figures/regime_map/trained.json`` and ``trained_<study>.{png,pdf}`` (one figure per study,
i.e. per architecture here; the study's report links to it)::

    nt-robust study experiments/regime_mlp_n1000.toml     # the trained runs first
    nt-robust study experiments/regime_wrn_n1000.toml
    python experiments/theory_trained.py experiments/regime_mlp_n1000.toml experiments/regime_wrn_n1000.toml

``--prediction-only`` recomputes just the kernel prediction (and the summary and figures that
use it) on the same images, keeping the measurements of the existing trained.json: for a
change of the prediction when the trained runs are not on this machine.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.data import to_float
from nt_robust.environment import describe_cpu
from nt_robust.export.run import restore_variables
from nt_robust.storage import read_json, write_json
from nt_robust.metrics import LipschitzConfig, evaluate_model
from nt_robust.models.registry import init_variables
from nt_robust.studies.contrasts import slope_weights
from nt_robust.studies.sweep import load_study
from nt_robust.studies.uncertainty import contrast_interval, verdict
from nt_robust.theory.conv import analytic_grad_sq_diag, wrn_arch
from nt_robust.theory.scaling import save_figure
from nt_robust.theory.trained import lipschitz_measures, mlp_arch, predicted_grad_l1
from nt_robust.train.splits import prepare_splits
from nt_robust.train.state import init_key

MEASURES = ("yang", "trades_grad", "sum_l1", "max_l1")


def _lipschitz_configs(config) -> tuple[LipschitzConfig, LipschitzConfig]:
    yang = LipschitzConfig("yang", eps=config.eval.lipschitz_eps, direction=config.eval.lipschitz_direction)
    attack = config.train_attack
    trades = LipschitzConfig("trades_grad", eps=attack.eps, step_size=attack.step_size, num_steps=attack.num_steps)
    return yang, trades


def _prediction(config, x: np.ndarray, train_images: np.ndarray, points: int) -> dict:
    """The twin's E‖∇ₓf_k‖₁ at init on the first ``points`` images (width → ∞)."""
    start = time.time()
    with jax.enable_x64(True):
        if config.model.arch == "mlp":
            arch = mlp_arch(config.model.depth)
            mean, std, twin = 0.0, 1.0, f"stax MLP-{config.model.depth} (the Flax MLP's law, width → ∞)"
        elif config.model.arch == "wrn":
            arch = wrn_arch(config.model.depth)
            pixels = to_float(train_images).astype(np.float64)
            mean, std = float(pixels.mean()), float(pixels.std())
            twin = f"BN-free WRN-{config.model.depth} analogue (docs/theory.md §12), standardized input"
        else:
            return {"twin": None, "note": f"no infinite-width twin for arch {config.model.arch!r}"}
        diag = analytic_grad_sq_diag(arch, jnp.asarray(x[:points], jnp.float64), mean, std)
    one = predicted_grad_l1(diag)
    return {"twin": twin, "points": int(points), "one_logit_l1": one.tolist(), "one_logit_l1_mean": float(one.mean()),
            "seconds": time.time() - start}


def measure_study(spec: str, lam: float, images: int, predict_points: int, runs_root: str | None = None) -> dict:
    study = load_study(spec, runs_parent=runs_root)
    runs = [r for r in study.grid_runs() if r.lam == lam]
    finished = [r for r in runs if study.is_finished(r)]
    if len(finished) < len(runs):
        print(f"{study.name}: {len(runs) - len(finished)} of {len(runs)} runs at λ={lam:g} not finished; "
              f"using the {len(finished)} that are (`nt-robust study {spec}` runs the rest)", flush=True)
    if not finished:
        raise SystemExit(f"{study.name} has no finished run at λ={lam:g}: run `nt-robust study {spec}` first")
    rows, splits, prediction = [], None, None
    for run in finished:
        start = time.time()
        restored = restore_variables(study.run_dir(run), "best_val")
        config, model = restored["config"], restored["model"]
        if splits is None:
            splits = prepare_splits(config.data, sample_seed=config.train.seed)
        x, y = to_float(splits.test_images[:images]), splits.test_labels[:images]
        if prediction is None:
            prediction = _prediction(config, x, splits.train_images[:10000], predict_points)
        yang, trades = _lipschitz_configs(config)
        initial = init_variables(model, init_key(config.train.seed), restored["image_shape"])
        for when, variables in (("init", initial), ("trained", restored["variables"])):
            key = jax.random.key(config.train.seed)
            measures = lipschitz_measures(model, variables, x, key, yang, trades)
            result = evaluate_model(model, variables, x, y, key, config.eval.attack, batch_size=len(x))
            stable = (result.per_example["clean_pred"] == result.per_example["adv_pred"]).astype(np.float64)
            rows.append({"width": run.width, "seed": run.seed, "when": when, "run": run.name,
                         **{m: v.tolist() for m, v in measures.items()}, "stable": stable.tolist(),
                         "natural_accuracy": result.summary()["natural_accuracy"]})
        print(f"{study.name} {run.name}: {time.time() - start:.0f} s", flush=True)
    return {"study": study.name, "spec": spec, "arch": config.model.arch, "model_depth": config.model.depth,
            "lam": lam, "images": images, "image_shape": list(restored["image_shape"]),
            "num_classes": splits.num_classes, "yang": yang.to_dict(), "trades_grad": trades.to_dict(),
            "eval_attack": config.eval.attack.to_dict(), "prediction": prediction, "rows": rows}


def _table(rows: list[dict], key: str, transform=np.asarray) -> tuple[list[int], np.ndarray]:
    """(widths, d[s, w, i]) for the seeds every width has."""
    widths = sorted({r["width"] for r in rows})
    seeds = sorted(set.intersection(*({r["seed"] for r in rows if r["width"] == w} for w in widths)))
    value = {(r["width"], r["seed"]): np.asarray(r[key], np.float64) for r in rows}
    return widths, np.stack([np.stack([transform(value[w, s]) for w in widths]) for s in seeds])


def width_exponent(rows: list[dict], key: str, log: bool = True) -> dict | None:
    """Least-squares slope in log2(width) of log2(value) (``log``) or of the value, per seed and
    image, with its seed × image interval."""
    if len({r["width"] for r in rows}) < 2:
        return None
    widths, table = _table(rows, key)
    if log and np.any(table <= 0):
        table = np.log2(np.maximum(table.mean(axis=2, keepdims=True), np.finfo(float).tiny))   # per-seed means
    elif log:
        table = np.log2(table)
    d = np.einsum("w,swi->si", slope_weights(widths), table)
    iv = contrast_interval(d)
    return {"estimate": iv.estimate, "ci95": None if math.isnan(iv.se) else [iv.low, iv.high], "df": iv.df,
            "seeds": iv.seeds, "points": iv.examples, "widths": widths,
            "verdict_grows": verdict(iv, expect_increase=True)}


def summarize(result: dict) -> dict:
    summary = {}
    for when in ("init", "trained"):
        rows = [r for r in result["rows"] if r["when"] == when]
        summary[when] = {m: width_exponent(rows, m) for m in MEASURES}
        summary[when]["stability_slope"] = width_exponent(rows, "stable", log=False)
        summary[when]["means"] = {str(w): {m: float(np.mean([np.mean(r[m]) for r in rows if r["width"] == w]))
                                           for m in (*MEASURES, "stable", "natural_accuracy")}
                                  for w in sorted({r["width"] for r in rows})}
    prediction = result["prediction"]
    if prediction.get("twin"):
        k = result["num_classes"]
        points = prediction["points"]
        summary["init_sum_over_prediction"] = {
            str(w): float(np.mean([np.mean(r["sum_l1"][:points]) for r in result["rows"]
                                   if r["when"] == "init" and r["width"] == w]) / (k * prediction["one_logit_l1_mean"]))
            for w in sorted({r["width"] for r in result["rows"]})}
    return summary


def plot(result: dict, summary: dict, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in result["rows"]})

    def series(when: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        per_seed = {w: [np.mean(r[key]) for r in result["rows"] if r["when"] == when and r["width"] == w]
                    for w in widths}
        return (np.array([np.mean(per_seed[w]) for w in widths]),
                np.array([np.std(per_seed[w], ddof=1) if len(per_seed[w]) > 1 else 0.0 for w in widths]))

    def label(name: str, when: str, key: str) -> str:
        fit = summary[when][key] if key != "stable" else summary[when]["stability_slope"]
        if not fit or not fit["ci95"]:
            return name
        return f"{name}: {fit['estimate']:+.2f} [{fit['ci95'][0]:+.2f}, {fit['ci95'][1]:+.2f}]"

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8))
    ax = axes[0]
    prediction = result["prediction"]
    if prediction.get("twin"):
        one, k = prediction["one_logit_l1_mean"], result["num_classes"]
        ax.fill_between(widths, [one] * len(widths), [k * one] * len(widths), color="tab:blue", alpha=0.12,
                        label="predicted band for Yang at init, [1, K]·E‖∇f_k‖₁ (width → ∞)")
        ax.plot(widths, [k * one] * len(widths), "--", color="tab:blue", lw=1.2, label="predicted Σ_k E‖∇f_k‖₁")
    styles = (("init", "sum_l1", "Σ_k‖∇f_k‖₁ at init", "grey", "o"), ("init", "yang", "Yang at init", "grey", "s"),
              ("trained", "sum_l1", "Σ_k‖∇f_k‖₁ trained", "black", "o"), ("trained", "yang", "Yang trained", "tab:red", "s"))
    for when, key, name, color, marker in styles:
        mean, std = series(when, key)
        ax.errorbar(widths, mean, yerr=std, color=color, marker=marker, capsize=2, label=label(name, when, key),
                    ls="-" if when == "trained" else ":")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="per image (pixel units)",
           title="local Lipschitzness of the logits")
    def init_and_trained(ax, key: str, name: str, marker: str) -> None:
        for when, color in (("init", "grey"), ("trained", "tab:red")):
            mean, std = series(when, key)
            ax.errorbar(widths, mean, yerr=std, color=color, marker=marker, capsize=2,
                        label=label(f"{name} {when}", when, key))

    init_and_trained(axes[1], "trades_grad", "trades_grad", "^")
    axes[1].set(xscale="log", yscale="log", xlabel="width", ylabel="max over TRADES steps of ‖∇ₓKL‖₁",
                title="trades_grad estimator (no kernel prediction)")
    init_and_trained(axes[2], "stable", "stability", "o")
    axes[2].set(xscale="log", xlabel="width", ylabel="fraction stable under the eval attack", ylim=(-0.02, 1.02),
                title="perturbation stability (slope per doubling)")
    for a in axes:
        a.grid(alpha=0.3)
        a.set_xticks(widths, [str(w) for w in widths])
        a.minorticks_off()
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(f"{result['study']} (λ={result['lam']:g}): kernel prediction vs measured, "
                 f"{result['images']} test images; exponents in width with seed × image 95% intervals", fontsize=9)
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def recompute_prediction(spec: str, previous: dict, lam: float, runs_root: str | None = None) -> dict:
    """``previous`` (one study of an earlier trained.json) with its kernel prediction computed
    afresh on the same images (the study's own data, as its runs prepared it) and its summary
    redone; the measurements are kept as they were (no trained runs are read)."""
    from nt_robust.config import load_config
    from nt_robust.studies.sweep import resolve_overrides
    from nt_robust.train.config import ExperimentConfig

    study = load_study(spec, runs_parent=runs_root)
    run = next(r for r in study.grid_runs() if r.lam == lam)
    config = load_config(ExperimentConfig, study.base_config, resolve_overrides(study, run))
    splits = prepare_splits(config.data)
    x = to_float(splits.test_images[:previous["images"]])
    result = {**previous, "prediction": _prediction(config, x, splits.train_images[:10000],
                                                    previous["prediction"]["points"])}
    result["prediction"]["recomputed"] = {"date": time.strftime("%Y-%m-%d"), "cpu": describe_cpu(),
                                          "measurements_from": "the earlier trained.json (unchanged)"}
    return result


def main(argv: list[str] | None = None) -> dict:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)   # orbax's read-only notes, once per checkpoint
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+", help="study specs with finished runs (experiments/regime_*.toml)")
    parser.add_argument("--lam", type=float, default=6.0, help="the λ of the runs to read (default 6)")
    parser.add_argument("--images", type=int, default=64, help="test images per run (default 64)")
    parser.add_argument("--predict-points", type=int, default=8,
                        help="images the kernel prediction is computed on (the first of --images; default 8)")
    parser.add_argument("--out", default="figures/regime_map", help="output folder (default figures/regime_map)")
    parser.add_argument("--runs-root", help="read each study's runs from DIR/<study name> (default: its own runs_root)")
    parser.add_argument("--prediction-only", action="store_true",
                        help="recompute only the kernel prediction of each study in the existing OUT/trained.json "
                             "(and the summary and figures that use it), keeping its measurements: no trained runs needed")
    args = parser.parse_args(argv)
    start = time.time()
    results = {}
    previous = None
    if args.prediction_only:
        path = Path(args.out) / "trained.json"
        if not path.exists():
            raise SystemExit(f"--prediction-only updates {path}, which does not exist: run without it first")
        previous = read_json(path)
    for spec in args.specs:
        if previous is not None:
            name = load_study(spec).name
            if name not in previous["studies"]:
                raise SystemExit(f"--prediction-only: {name} is not in {args.out}/trained.json "
                                 f"(it has {sorted(previous['studies'])}); run without --prediction-only")
            result = recompute_prediction(spec, previous["studies"][name], previous["studies"][name]["lam"],
                                          args.runs_root)
        else:
            result = measure_study(spec, args.lam, args.images, min(args.predict_points, args.images), args.runs_root)
        result["summary"] = summarize(result)
        result["figure"] = plot(result, result["summary"], f"{args.out}/trained_{result['study']}")
        results[result["study"]] = result
    if previous is not None:   # the measurements' own machine, time and command stay
        out = {**previous, "studies": results,
               "prediction_command": "python experiments/theory_trained.py --prediction-only " + " ".join(args.specs),
               "prediction_seconds": time.time() - start}
    else:
        out = {"studies": results, "seconds": time.time() - start, "devices": [str(d) for d in jax.devices()],
               "cpu": describe_cpu(), "command": "python experiments/theory_trained.py " + " ".join(args.specs)}
    write_json(Path(args.out) / "trained.json", out)
    for name, result in results.items():
        s = result["summary"]
        print(f"{name}: trained Yang exponent {s['trained']['yang']}, stability slope {s['trained']['stability_slope']}")
    print(f"wrote {args.out}/trained.json in {time.time() - start:.0f} s")
    return out


if __name__ == "__main__":
    main()

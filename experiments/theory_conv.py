"""Conv nets across width k: empirical NTKs, the infinite-width gradient prediction, the
|W|-product bound against the actual gradient, at initialization and after short training.

Three networks, all on downsampled Fashion-MNIST (14x14 in the cpu preset), logit 0 as a
function of the pixel image (nt_robust.theory.conv):

* ``wrn``: our Flax WRN-10-k (BatchNorm in eval mode, PyTorch's fan-out init, 16-channel stem);
* ``cnn``: our Flax SmallCNN x k (max pooling, dense 200k-200k);
* ``analogue``: the BN-free WRN-10-k in neural-tangents' stax (every layer widened, NTK
  parameterization), whose analytic kernel is the k → ∞ limit.

Measured, per width and init (seeds are the independent units of every interval):

1. the empirical NTK: its scale (mean diagonal), its change of shape from k to 2k, its spread
   over inits at fixed k, and (analogue) its distance to the analytic NTK;
2. E‖∇ₓf‖² at init, against the analogue's limit tr ∂²K/∂x∂x′ (propagated layer by layer,
   nt_robust.theory.grad_cov);
3. the certified |W|-product bound on ‖∇ₓf‖₁ next to the actual ‖∇ₓf‖₁, at init and after
   ``conv_train_steps`` SGD steps of natural training (wrn, cnn);
4. perturbation stability (the fraction of test images whose predicted class survives a
   PGD-10 attack on the KL to the clean prediction, L∞ radius ``conv_eps``), at init and
   after the same training (wrn, cnn).

Verdicts for the paper's chain ("the bound grows", "the actual gradient grows", "stability
falls" with k) compare the narrowest and widest width: the per-seed (and, for gradients and
stability, per-image) log ratio or difference, with the two-way seed × image interval of
nt_robust.studies.uncertainty::

    python experiments/theory_conv.py --preset cpu   # -> figures/theory/conv.json, conv_{ntk,gradients,bound,stability}.{png,pdf}
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust.attacks.config import AttackConfig
from nt_robust.metrics import evaluate_model
from nt_robust.models.registry import ModelConfig, create_model, init_variables
from nt_robust.studies.uncertainty import contrast_interval, paired_difference, verdict
from nt_robust.theory.conv import (abs_product_bound, analytic_grad_sq_norm, flax_empirical_ntk, kernel_distance,
                                   mean_diagonal, model_input_grads, short_natural_training,
                                   smallcnn_abs_product_bound, stax_abs_product_bound, stax_empirical_ntk,
                                   stax_init, stax_input_grads, wrn_arch, wrn_stax)
from nt_robust.theory.data import image_subset
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.presets import get_preset
from nt_robust.theory.scaling import fit_log_mean, save_figure

ARCHS = ("wrn", "cnn", "analogue")


def _flax(arch: str, width: int, depth: int, mean: float, std: float, normalized: bool = True):
    config = ModelConfig(arch=arch, width=width, depth=depth,
                         input_mean=(mean,) if normalized else None, input_std=(std,) if normalized else None)
    return config, create_model(config, num_classes=10)


class Net:
    """One network at one width: init by seed, logits of pixel images, kernel, bound."""

    def __init__(self, arch: str, width: int, preset, data):
        self.arch, self.width, self.data, self.depth = arch, width, data, preset.conv_depth
        self.shape = tuple(data.x.shape[1:])
        if arch == "analogue":
            self.init_fn, self.apply_fn, _ = wrn_stax(preset.conv_depth, width)
        else:
            _, self.model = _flax(arch, width, preset.conv_depth, data.mean, data.std)
            _, self.raw_model = _flax(arch, width, preset.conv_depth, data.mean, data.std, normalized=False)

    def init(self, seed: int):
        seed = 10_000 * ARCHS.index(self.arch) + seed
        if self.arch == "analogue":
            return stax_init(self.init_fn, seed, (1, *self.shape))
        return init_variables(self.model, jax.random.key(seed), self.shape)

    def input_grads(self, variables, x):
        """∇ₓ logit₀ at each pixel image (compiled once per network, whatever the init)."""
        if self.arch == "analogue":
            return stax_input_grads(self.apply_fn, variables, x, self.data.mean, self.data.std)
        return model_input_grads(self.model, variables, x)

    def ntk(self, variables, x):
        if self.arch == "analogue":
            return stax_empirical_ntk(self.apply_fn, variables, (x - self.data.mean) / self.data.std)
        return flax_empirical_ntk(self.model, variables, x)

    def bound(self, variables) -> float:
        if self.arch == "analogue":
            return stax_abs_product_bound(self.apply_fn, variables, self.shape, self.data.std)
        if self.arch == "cnn":
            return smallcnn_abs_product_bound(variables["params"], self.shape, self.data.std)
        return abs_product_bound(self.raw_model, variables, self.shape, self.data.std)


def _grad_stats(net: Net, variables, x) -> dict:
    g = np.asarray(net.input_grads(variables, x)).reshape(len(x), -1)
    l1, sq = np.sum(np.abs(g), axis=1), np.sum(g**2, axis=1)
    return {"grad_sq": float(np.mean(sq)), "grad_l1": float(np.mean(l1)),
            "grad_sq_points": sq.tolist(), "grad_l1_points": l1.tolist()}


def _stability(net: Net, variables, x, labels, attack: AttackConfig, seed: int) -> dict:
    """Per-image stability (1 if the predicted class survives the attack) and accuracy."""
    result = evaluate_model(net.model, variables, x, labels, jax.random.key(seed), attack, batch_size=len(x))
    stable = (result.per_example["clean_pred"] == result.per_example["adv_pred"]).astype(np.float64)
    return {"stability": float(stable.mean()), "stable_points": stable.tolist(),
            "natural_accuracy": result.summary()["natural_accuracy"]}


def measure(preset_name: str, out_dir: str = "") -> dict:
    preset = get_preset(preset_name)
    n_img = max(preset.conv_ntk_points, preset.conv_grad_points, preset.conv_stability_points)
    data = image_subset(n=n_img, downsample=preset.conv_downsample, n_train=2048 if preset.conv_train_steps else 0)
    x_ntk, x_grad = jnp.asarray(data.x[:preset.conv_ntk_points]), jnp.asarray(data.x[:preset.conv_grad_points])
    x_stab, y_stab = data.x[:preset.conv_stability_points], data.labels[:preset.conv_stability_points]
    attack = AttackConfig(eps=preset.conv_eps, step_size=preset.conv_eps / 4, num_steps=10, loss="kl")
    n_pred = min(4, preset.conv_grad_points)
    with jax.enable_x64(True):
        _, _, kernel_fn = wrn_stax(preset.conv_depth, 1)
        start = time.time()
        predicted = np.asarray(analytic_grad_sq_norm(wrn_arch(preset.conv_depth),
                                                     jnp.asarray(data.x[:n_pred], jnp.float64), data.mean, data.std))
        analytic_ntk = np.asarray(kernel_fn(jnp.asarray((data.x[:preset.conv_ntk_points] - data.mean) / data.std,
                                                        jnp.float64), None, "ntk"))
        print(f"analytic prediction E‖∇f‖² = {predicted.round(4).tolist()} ({time.time() - start:.0f} s)", flush=True)
    ntk_rows, grad_rows, train_rows, stability_rows = [], [], [], []
    for arch in ARCHS:
        kernels = {}
        for width in preset.conv_widths:
            net, start = Net(arch, width, preset, data), time.time()
            for seed in range(max(preset.conv_seeds, preset.conv_grad_seeds)):
                variables = net.init(seed)
                row = {"arch": arch, "width": width, "seed": seed, **_grad_stats(net, variables, x_grad),
                       "grad_sq_first_points": None, "bound_l1": net.bound(variables)}
                if arch == "analogue":
                    row["grad_sq_first_points"] = float(np.mean(row["grad_sq_points"][:n_pred]))
                grad_rows.append(row)
                if seed < preset.conv_seeds:
                    theta = np.asarray(net.ntk(variables, x_ntk), np.float64)
                    kernels[width, seed] = theta
                    ntk_rows.append({"arch": arch, "width": width, "seed": seed, "scale": mean_diagonal(theta),
                                     "to_analytic": (float(np.linalg.norm(theta - analytic_ntk) / np.linalg.norm(analytic_ntk))
                                                     if arch == "analogue" else None)})
                if arch != "analogue" and width in preset.conv_train_widths and seed < preset.conv_train_seeds:
                    trained = short_natural_training(net.model, variables, data.x_train, data.y_train,
                                                     preset.conv_train_steps, seed=seed)
                    train_rows.append({"arch": arch, "width": width, "seed": seed,
                                       **_grad_stats(net, trained, x_grad), "bound_l1": net.bound(trained)})
                    for when, v in (("init", variables), ("trained", trained)):
                        stability_rows.append({"arch": arch, "width": width, "seed": seed, "when": when,
                                               **_stability(net, v, x_stab, y_stab, attack, seed)})
            for row in ntk_rows:  # shape change k -> 2k and the spread over inits, once all seeds are in
                if row["arch"] == arch and row["width"] == width:
                    others = [kernels[width, s] for s in range(preset.conv_seeds) if s != row["seed"]]
                    row["spread"] = kernel_distance(kernels[width, row["seed"]], np.mean(others, axis=0))
                    if width // 2 in preset.conv_widths:
                        previous = next(r for r in ntk_rows if r["arch"] == arch and r["width"] == width // 2
                                        and r["seed"] == row["seed"])
                        previous["change_to_double"] = kernel_distance(kernels[width // 2, row["seed"]],
                                                                       kernels[width, row["seed"]])
            print(f"{arch} k={width}: {time.time() - start:.0f} s", flush=True)
    return {"preset": preset_name, "data": {**data.info, "mean": data.mean, "std": data.std},
            "depth": preset.conv_depth, "train_steps": preset.conv_train_steps,
            "predicted_grad_sq": predicted.tolist(), "predicted_points": n_pred,
            "attack": attack.to_dict(), "stability_points": len(x_stab),
            "ntk_rows": ntk_rows, "grad_rows": grad_rows, "train_rows": train_rows,
            "stability_rows": stability_rows}


def _fit(rows: list[dict], key: str) -> dict | None:
    rows = [r for r in rows if r.get(key) is not None]
    if len({r["width"] for r in rows}) < 2:
        return None
    return fit_log_mean([r["width"] for r in rows], [r["seed"] for r in rows], [r[key] for r in rows])


def _paired_ends(rows: list[dict], key: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The narrowest and widest width of ``rows`` and ``key`` there, (seeds,) or (seeds, images),
    rows paired by seed."""
    widths = sorted({r["width"] for r in rows})
    seeds = sorted({r["seed"] for r in rows if r["width"] == widths[0]} & {r["seed"] for r in rows if r["width"] == widths[-1]})
    pick = lambda w: np.array([next(r[key] for r in rows if r["width"] == w and r["seed"] == s) for s in seeds])  # noqa: E731
    return widths[0], widths[-1], pick(widths[0]), pick(widths[-1])


def _interval_dict(iv, scale: float = 1.0) -> dict:
    return {"estimate": iv.estimate / scale, "ci95": None if np.isnan(iv.se) else [iv.low / scale, iv.high / scale],
            "df": None if np.isnan(iv.df) else iv.df, "seeds": iv.seeds, "points": iv.examples}


def endpoint_exponent(rows: list[dict], key: str) -> dict | None:
    """log(value at the widest k / value at the narrowest) / log(k ratio), per seed (and image),
    with its seed × image interval and the verdict for "grows with k"."""
    if len({r["width"] for r in rows}) < 2:
        return None
    lo, hi, a, b = _paired_ends(rows, key)
    scale = np.log(hi / lo)
    iv = contrast_interval(np.log(b) - np.log(a))
    return {**_interval_dict(iv, scale), "widths": [lo, hi], "verdict_grows": verdict(iv, expect_increase=True)}


def stability_change(rows: list[dict]) -> dict | None:
    """Stability at the widest minus the narrowest k (seed × image interval) and the verdict
    for the paper's "stability falls with k"."""
    if len({r["width"] for r in rows}) < 2:
        return None
    lo, hi, a, b = _paired_ends(rows, "stable_points")
    iv = paired_difference(a, b)
    return {**_interval_dict(iv), "widths": [lo, hi], "verdict_falls": verdict(iv, expect_increase=False)}


def summarize(result: dict) -> dict:
    """Exponents in k (seed-level intervals) per network and quantity, and the analogue's
    measured E‖∇f‖² over the kernel's prediction at each width."""
    fits = {}
    for arch in ARCHS:
        ntk = [r for r in result["ntk_rows"] if r["arch"] == arch]
        grads = [r for r in result["grad_rows"] if r["arch"] == arch]
        trained = [r for r in result["train_rows"] if r["arch"] == arch]
        fits[arch] = {"ntk_scale": _fit(ntk, "scale"), "ntk_change_to_double": _fit(ntk, "change_to_double"),
                      "ntk_spread": _fit(ntk, "spread"), "ntk_to_analytic": _fit(ntk, "to_analytic"),
                      "init_grad_sq": _fit(grads, "grad_sq"), "init_grad_l1": _fit(grads, "grad_l1"),
                      "init_bound_l1": _fit(grads, "bound_l1"),
                      "trained_grad_l1": _fit(trained, "grad_l1"), "trained_bound_l1": _fit(trained, "bound_l1")}
        for key in ("init", "trained"):
            rows = grads if key == "init" else trained
            if rows:
                for w in sorted({r["width"] for r in rows}):
                    fits[arch].setdefault(f"{key}_bound_over_actual", {})[str(w)] = float(np.mean(
                        [r["bound_l1"] / r["grad_l1"] for r in rows if r["width"] == w]))
        stability = [r for r in result.get("stability_rows", []) if r["arch"] == arch]
        fits[arch]["verdicts"] = {
            "bound_grows": {"init": endpoint_exponent(grads, "bound_l1"),
                            "trained": endpoint_exponent(trained, "bound_l1")},
            "gradient_grows": {"init": endpoint_exponent(grads, "grad_l1_points"),
                               "trained": endpoint_exponent(trained, "grad_l1_points")},
            "stability_falls": {when: stability_change([r for r in stability if r["when"] == when])
                                for when in ("init", "trained")} if stability else None}
        for when in ("init", "trained"):
            rows = [r for r in stability if r["when"] == when]
            fits[arch][f"{when}_stability"] = {str(w): float(np.mean([r["stability"] for r in rows if r["width"] == w]))
                                               for w in sorted({r["width"] for r in rows})}
    predicted = float(np.mean(result["predicted_grad_sq"]))
    fits["analogue"]["measured_over_predicted"] = {
        str(w): float(np.mean([r["grad_sq_first_points"] for r in result["grad_rows"]
                               if r["arch"] == "analogue" and r["width"] == w]) / predicted)
        for w in sorted({r["width"] for r in result["grad_rows"]})}
    fits["predicted_grad_sq_mean"] = predicted
    return fits


def plot(result: dict, out_dir: str) -> None:
    fits = result["fits"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    widths = sorted({r["width"] for r in result["grad_rows"]})

    def save(fig, name):
        for ax in fig.axes:  # widths as plain integers on the log axis
            if ax.get_xscale() == "log":
                ax.xaxis.set_major_locator(FixedLocator(widths))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([str(w) for w in widths])
        save_figure(fig, f"{out_dir}/{name}")
        plt.close(fig)

    labels = {"wrn": f"WRN-{result['depth']}-k (BN, Flax)", "cnn": "SmallCNN ×k (Flax)",
              "analogue": f"BN-free WRN-{result['depth']}-k (stax)"}

    def series(rows, arch, key):
        widths = sorted({r["width"] for r in rows if r["arch"] == arch and r.get(key) is not None})
        values = [[r[key] for r in rows if r["arch"] == arch and r["width"] == w] for w in widths]
        return widths, [np.mean(v) for v in values], [np.std(v, ddof=1) if len(v) > 1 else 0 for v in values]

    def label(arch, name):
        fit = fits[arch].get(name)
        if not fit:
            return labels[arch]
        ci = f" [{fit['ci95'][0]:+.2f}, {fit['ci95'][1]:+.2f}]" if fit.get("ci95") else ""
        return f"{labels[arch]}: k^{fit['slope']:+.2f}{ci}"

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arch, color in zip(ARCHS, ("C0", "C1", "C2")):
        for ax, key in zip(axes, ("change_to_double", "spread", "scale")):
            w, m, s = series(result["ntk_rows"], arch, key)
            if w:
                ax.errorbar(w, m, yerr=s, color=color, marker="o", capsize=3, label=label(arch, f"ntk_{key}"))
    w, m, s = series(result["ntk_rows"], "analogue", "to_analytic")
    axes[1].errorbar(w, m, yerr=s, color="C2", ls="--", marker="s", capsize=3,
                     label=label("analogue", "ntk_to_analytic").replace(labels["analogue"], "analogue vs analytic NTK"))
    axes[0].set(title="Shape change of the empirical NTK, k → 2k", ylabel="‖Θ̂ₖ − Θ̂₂ₖ‖/‖Θ̂₂ₖ‖ (same init seed)")
    axes[1].set(title="Spread over inits at fixed k", ylabel="‖Θ̂ₛ − mean of other inits‖/‖mean‖")
    axes[2].set(title="Scale of the empirical NTK", ylabel="mean diagonal Θ(x, x)")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="width k")
        ax.legend(fontsize=7)
    save(fig, "conv_ntk")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch, color in zip(ARCHS, ("C0", "C1", "C2")):
        w, m, s = series(result["grad_rows"], arch, "grad_sq")
        axes[0].errorbar(w, m, yerr=s, color=color, marker="o", capsize=3, label=label(arch, "init_grad_sq"))
    w, m, s = series(result["grad_rows"], "analogue", "grad_sq_first_points")
    axes[0].errorbar(w, m, yerr=s, color="C2", ls=":", marker="x", capsize=3,
                     label=f"analogue on the {result['predicted_points']} predicted images")
    axes[0].axhline(fits["predicted_grad_sq_mean"], color="k", ls="--",
                    label=f"k → ∞ prediction tr ∂²K/∂x∂x′, propagated ({result['predicted_points']} images)")
    axes[0].set(xscale="log", yscale="log", xlabel="width k", ylabel="E‖∇ₓ logit₀‖² at init",
                title="Input gradient at init vs the infinite-width kernel")
    ratio = fits["analogue"]["measured_over_predicted"]
    axes[1].plot([int(k) for k in ratio], list(ratio.values()), "o-", color="C2", label="BN-free analogue")
    axes[1].axhline(1.0, color="k", ls="--")
    axes[1].set(xscale="log", xlabel="width k", ylabel="measured / predicted E‖∇f‖²",
                title="Finite analogue against its limit (same images)")
    for ax in axes:
        ax.legend(fontsize=7)
    save(fig, "conv_gradients")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (rows, when) in zip(axes, ((result["grad_rows"], "init"),
                                       (result["train_rows"], f"after {result['train_steps']} SGD steps"))):
        for arch, color in zip(ARCHS, ("C0", "C1", "C2")):
            prefix = "init" if when == "init" else "trained"
            w, m, s = series(rows, arch, "bound_l1")
            if not w:
                continue
            ax.errorbar(w, m, yerr=s, color=color, ls="--", marker="s", capsize=3,
                        label="bound: " + label(arch, f"{prefix}_bound_l1"))
            w, m, s = series(rows, arch, "grad_l1")
            ax.errorbar(w, m, yerr=s, color=color, marker="o", capsize=3,
                        label="actual: " + label(arch, f"{prefix}_grad_l1"))
        ax.set(xscale="log", yscale="log", xlabel="width k", title=f"|W|-product bound vs actual ‖∇ₓf‖₁, {when}")
        ax.legend(fontsize=6)
    axes[0].set(ylabel="‖∇ₓ logit₀‖₁ (mean over images)")
    save(fig, "conv_bound")

    rows = result.get("stability_rows", [])
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, when in zip(axes, ("init", "trained")):
            for arch, color in zip(ARCHS[:2], ("C0", "C1")):
                subset = [r for r in rows if r["when"] == when]
                w, m, s = series(subset, arch, "stability")
                change = (fits[arch]["verdicts"]["stability_falls"] or {}).get(when)
                note = (f": Δ {change['estimate']:+.3f} [{change['ci95'][0]:+.3f}, {change['ci95'][1]:+.3f}] → "
                        f"{change['verdict_falls']}" if change and change["ci95"] else "")
                ax.errorbar(w, m, yerr=s, color=color, marker="o", capsize=3, label=f"stability, {labels[arch]}{note}")
                w, m, s = series(subset, arch, "natural_accuracy")
                ax.errorbar(w, m, yerr=s, color=color, ls=":", marker="x", capsize=3, label=f"accuracy, {labels[arch]}")
            ax.set(xscale="log", xlabel="width k", ylim=(0, 1.02),
                   title=f"PGD-{result['attack']['num_steps']} stability, ε = {result['attack']['eps']:g}, "
                         + ("at init" if when == "init" else f"after {result['train_steps']} SGD steps"))
            ax.legend(fontsize=6)
        axes[0].set(ylabel=f"fraction of {result['stability_points']} test images")
        save(fig, "conv_stability")


EXPERIMENT = TheoryExperiment("conv", __doc__, measure, summarize, plot)


if __name__ == "__main__":
    EXPERIMENT.main()

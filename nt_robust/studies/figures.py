"""The study's figures, one function each, all in one style, saved as PNG and PDF::

    paths = make_all_figures(rows, curves, Path("figures/quick_fmnist"))
    plot_runs(["runs/a", "runs/b"], Path("a_vs_b.png"))    # what `nt-robust plot` draws

``rows`` is the tidy table of :mod:`nt_robust.studies.aggregate` (checkpoint chosen by
held-out robust accuracy), ``curves`` its per-epoch companion. Every point is a mean over
seeds; error bars are one standard deviation.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nt_robust import storage  # noqa: E402
from nt_robust.studies.claims import WAR_READINGS  # noqa: E402
from nt_robust.studies.contrasts import best_lam_by_width, grid_rows, group_stats, select, stats_of  # noqa: E402
from nt_robust.studies.tables import read_run, run_label  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "legend.fontsize": 8, "legend.frameon": False, "lines.linewidth": 1.6, "lines.markersize": 4,
}
METRIC_LABELS = {
    "natural_accuracy": "natural accuracy", "robust_accuracy": "robust accuracy",
    "perturbation_stability": "perturbation stability", "lipschitz_mean": "local Lipschitz (mean)",
}


def _save(fig, stem: Path) -> list[Path]:
    paths = []
    for suffix in (".png", ".pdf"):
        buffer = _io.BytesIO()
        # No creation date in PDFs: the same numbers give the same bytes, so reruns do not churn git.
        metadata = {"CreationDate": None} if suffix == ".pdf" else None
        fig.savefig(buffer, format=suffix[1:], bbox_inches="tight", metadata=metadata)
        storage.write_bytes(stem.with_suffix(suffix), buffer.getvalue())
        paths.append(stem.with_suffix(suffix))
    plt.close(fig)
    return paths


def _colors(n: int):
    return plt.get_cmap("viridis")(np.linspace(0.05, 0.85, max(n, 1)))


def _fixed_lam(rows: list[dict[str, Any]], lam: float | None) -> float:
    lams = sorted({r["lam"] for r in rows})
    return lam if lam in lams else lams[len(lams) // 2]


def _mean_band(ax: Any, stats: dict[tuple, Any], color: Any, label: str,
               alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch ``group_stats`` (over seeds) as a line of means with a band of ± one standard
    deviation; returns the epochs and the means."""
    epochs = np.array([k[0] for k in stats])
    mean = np.array([s.mean for s in stats.values()])
    std = np.array([s.std for s in stats.values()])
    ax.plot(epochs, mean, color=color, label=label)
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=alpha, linewidth=0)
    return epochs, mean


def plot_epoch_curves(curves: list[dict[str, Any]], stem: Path, lam: float | None = None) -> list[Path]:
    """Natural / robust accuracy and stability on the test set vs epoch, one line per width."""
    curves = [c for c in curves if not c["war"] and "test_robust_accuracy" in c]
    lam = _fixed_lam(curves, lam)
    curves = select(curves, lam=lam)
    widths = sorted({c["width"] for c in curves})
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), layout="constrained")
        for metric, ax in zip(("natural_accuracy", "robust_accuracy", "perturbation_stability"), axes):
            for color, width in zip(_colors(len(widths)), widths):
                stats = group_stats(select(curves, width=width), ("epoch",), f"test_{metric}")
                _mean_band(ax, stats, color, f"width {width}", alpha=0.15)
            ax.set(xlabel="epoch", ylabel=METRIC_LABELS[metric])
        axes[0].legend()
        fig.suptitle(f"Per-epoch test metrics at fixed λ = {lam:g}")
        return _save(fig, stem)


def plot_robust_vs_epoch_widest(curves: list[dict[str, Any]], stem: Path) -> list[Path]:
    """Robust overfitting, seen: test robust accuracy vs epoch at the widest width, one line per
    λ (mean over seeds, ± one standard deviation), each line's highest point marked (a circle)
    beside its final epoch (a square); docs/paper.md §9.1 measures the gap at the best held-out
    checkpoint instead of this test-set maximum."""
    curves = [c for c in curves if not c["war"] and c.get("test_robust_accuracy") is not None]
    width = max(c["width"] for c in curves)
    curves = select(curves, width=width)
    lams = sorted({c["lam"] for c in curves})
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
        for color, lam in zip(_colors(len(lams)), lams):
            stats = group_stats(select(curves, lam=lam), ("epoch",), "test_robust_accuracy")
            seeds = max(s.n for s in stats.values())
            epochs, mean = _mean_band(ax, stats, color, f"λ = {lam:g} ({seeds} seeds)", alpha=0.12)
            top = int(np.argmax(mean))
            ax.plot(epochs[top], mean[top], "o", color=color, ms=5)
            ax.plot(epochs[-1], mean[-1], "s", color=color, ms=5, mfc="white")
        ax.set(xlabel="epoch", ylabel=f"test {METRIC_LABELS['robust_accuracy']}",
               title=f"Width {width}: test robust accuracy vs epoch (● highest, □ final)")
        ax.legend(fontsize="small")
        return _save(fig, stem)


def plot_metrics_vs_width(rows: list[dict[str, Any]], stem: Path, lam: float | None = None) -> list[Path]:
    """Best-epoch natural, robust accuracy, stability and local Lipschitz vs width at fixed λ."""
    rows = grid_rows(rows)
    lam = _fixed_lam(rows, lam)
    rows = select(rows, lam=lam)
    metrics = ("natural_accuracy", "robust_accuracy", "perturbation_stability", "lipschitz_mean")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.1), layout="constrained")
        for metric, ax in zip(metrics, axes):
            stats = group_stats(rows, ("width",), f"test_{metric}")
            widths = [k[0] for k in stats]
            ax.errorbar(widths, [s.mean for s in stats.values()], yerr=[s.std for s in stats.values()],
                        marker="o", capsize=3)
            ax.set(xscale="log", xlabel="width", ylabel=METRIC_LABELS[metric])
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
        fig.suptitle(f"Test metrics at the best held-out epoch vs width, λ = {lam:g}")
        return _save(fig, stem)


def plot_metrics_vs_lambda(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """Robust accuracy, natural accuracy and stability vs λ (one line per width), and a
    width × λ heatmap of robust accuracy."""
    rows = grid_rows(rows)
    widths = sorted({r["width"] for r in rows})
    lams = sorted({r["lam"] for r in rows})
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), layout="constrained")
        for metric, ax in zip(("robust_accuracy", "natural_accuracy", "perturbation_stability"), axes):
            for color, width in zip(_colors(len(widths)), widths):
                stats = group_stats(select(rows, width=width), ("lam",), f"test_{metric}")
                ax.errorbar([k[0] for k in stats], [s.mean for s in stats.values()],
                            yerr=[s.std for s in stats.values()], color=color, marker="o", capsize=2,
                            label=f"width {width}")
            ax.set(xscale="log", xlabel="λ", ylabel=METRIC_LABELS[metric])
            ax.set_xticks(lams, [f"{x:g}" for x in lams])
            ax.minorticks_off()
        axes[0].legend()
        grid = np.full((len(widths), len(lams)), np.nan)
        stats = group_stats(rows, ("width", "lam"), "test_robust_accuracy")
        for (width, lam), s in stats.items():
            grid[widths.index(width), lams.index(lam)] = s.mean
        image = axes[3].imshow(grid, origin="lower", aspect="auto", cmap="magma")
        axes[3].set_xticks(range(len(lams)), [f"{x:g}" for x in lams])
        axes[3].set_yticks(range(len(widths)), [str(w) for w in widths])
        axes[3].set(xlabel="λ", ylabel="width", title="robust accuracy")
        axes[3].grid(False)
        best = best_lam_by_width(rows)
        middle = np.nanmean(grid)
        for i, width in enumerate(widths):
            for j, lam in enumerate(lams):
                if not np.isnan(grid[i, j]):
                    star = "★" if lam == best[width] else ""
                    axes[3].text(j, i, f"{grid[i, j]:.3f}{star}", ha="center", va="center", fontsize=7,
                                 color="black" if grid[i, j] > middle else "white")
        fig.colorbar(image, ax=axes[3], fraction=0.05)
        fig.suptitle("Test metrics vs λ per width (★: best λ by held-out robust accuracy)")
        return _save(fig, stem)


def plot_lipschitz_vs_width(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """Local Lipschitz (mean over test points) vs width, one line per λ."""
    rows = grid_rows(rows)
    lams = sorted({r["lam"] for r in rows})
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
        for color, lam in zip(_colors(len(lams)), lams):
            stats = group_stats(select(rows, lam=lam), ("width",), "test_lipschitz_mean")
            ax.errorbar([k[0] for k in stats], [s.mean for s in stats.values()],
                        yerr=[s.std for s in stats.values()], color=color, marker="o", capsize=2, label=f"λ={lam:g}")
        ax.set(xscale="log", xlabel="width", ylabel=METRIC_LABELS["lipschitz_mean"],
               title="Local Lipschitzness vs width")
        ax.legend()
        return _save(fig, stem)


def plot_war(rows: list[dict[str, Any]], stem: Path) -> list[Path] | None:
    """Left: test robust accuracy per wide width for fixed λ_s (the small model's best), the
    grid-tuned λ, and each WAR mode. Right: the λ each one ends at (WAR: final λ)."""
    war_rows = [r for r in rows if r["selection"] == "best_val" and r["war"]]
    grid = grid_rows(rows)
    if not war_rows or not grid:
        return None
    best = best_lam_by_width(grid)
    lam_s = best[min(best)]
    widths = sorted({r["width"] for r in war_rows})
    modes = [m for m in WAR_READINGS if any((r.get("war_mode") or "weighted_ratio") == m for r in war_rows)]
    bars, lams = [], []
    for width in widths:
        by_lam = group_stats(select(grid, width=width), ("lam",), "test_robust_accuracy")
        at_width = select(war_rows, width=width)
        per_mode = [[r for r in at_width if (r.get("war_mode") or "weighted_ratio") == m] for m in modes]
        bars.append((by_lam.get((lam_s,)), by_lam.get((best.get(width),)),
                     *(stats_of([r["test_robust_accuracy"] for r in rs]) if rs else None for rs in per_mode)))
        lams.append((stats_of([lam_s]), stats_of([best.get(width)]),
                     *(stats_of([r["lam_final"] for r in rs]) if rs else None for rs in per_mode)))
    labels = (f"fixed λ_s = {lam_s:g}", "grid-tuned λ", *(f"WAR {m} ({WAR_READINGS[m].split(',')[0]})" for m in modes))
    n = len(labels)
    with plt.rc_context(STYLE):
        fig, (ax, ax_lam) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
        x = np.arange(len(widths))
        width_bar = 0.8 / n
        for k, (label, color) in enumerate(zip(labels, _colors(n))):
            offset = (k - (n - 1) / 2) * width_bar
            values = [b[k] for b in bars]
            ax.bar(x + offset, [v.mean if v else np.nan for v in values], width_bar * 0.92,
                   yerr=[v.std if v and v.n > 1 else 0 for v in values], color=color, capsize=2, label=label)
            lam_values = [lv[k] for lv in lams]
            ax_lam.bar(x + offset, [v.mean if v else np.nan for v in lam_values], width_bar * 0.92,
                       yerr=[v.std if v and v.n > 1 else 0 for v in lam_values], color=color, capsize=2)
        for axis in (ax, ax_lam):
            axis.set_xticks(x, [str(w) for w in widths])
        ax.set(xlabel="width", ylabel="test robust accuracy", title="WAR vs fixed and tuned λ")
        ax_lam.set(xlabel="width", ylabel="λ (WAR: final λ)", yscale="log", title="The λ each one uses")
        lows = [b[k].mean for b in bars for k in range(n) if b[k]]
        ax.set_ylim(min(lows) - 0.05, max(lows) + 0.03)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(n, 4))
        return _save(fig, stem)


def plot_attack_check(attack_rows: list[dict[str, Any]], stem: Path) -> list[Path] | None:
    """Robust accuracy vs width under each protocol of the attack check, one panel per λ."""
    if not attack_rows:
        return None
    protocols = list(dict.fromkeys(r["protocol"] for r in attack_rows))
    lams = sorted({r["lam"] for r in attack_rows})
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(lams), figsize=(3.2 * len(lams), 2.9), layout="constrained",
                                 squeeze=False, sharey=True)
        for ax, lam in zip(axes[0], lams):
            for protocol, color in zip(protocols, _colors(len(protocols))):
                stats = group_stats(select(attack_rows, lam=lam, protocol=protocol), ("width",), "robust_accuracy")
                widths = [k[0] for k in stats]
                ax.errorbar(widths, [stats[k].mean for k in stats], yerr=[stats[k].std for k in stats],
                            marker="o", color=color, capsize=2, label=protocol)
            ax.set_xscale("log", base=2)
            ax.set(xlabel="width", title=f"λ = {lam:g}")
        axes[0][0].set_ylabel(f"robust accuracy (first {attack_rows[0]['num_examples']} test images)")
        axes[0][-1].legend(loc="best")
        return _save(fig, stem)


def make_all_figures(rows: list[dict[str, Any]], curves: list[dict[str, Any]], directory: Path,
                     lam: float | None = None, attack_rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """Every study figure that the data allow; returns the files written."""
    directory = Path(directory)
    paths = []
    paths += plot_attack_check(attack_rows or [], directory / "attack_check") or []
    if curves:
        paths += plot_epoch_curves(curves, directory / "epoch_curves", lam)
        paths += plot_robust_vs_epoch_widest(curves, directory / "robust_vs_epoch_widest")
    if grid_rows(rows):
        paths += plot_metrics_vs_width(rows, directory / "metrics_vs_width", lam)
        paths += plot_metrics_vs_lambda(rows, directory / "metrics_vs_lambda")
        paths += plot_lipschitz_vs_width(rows, directory / "lipschitz_vs_width")
    paths += plot_war(rows, directory / "war") or []
    return paths


def plot_run_curves(curves: dict[str, list[dict[str, Any]]], out: Path, split: str = "test") -> Path:
    """One line per run of per-epoch natural and robust accuracy, perturbation stability
    (on ``split``) and training loss; written atomically to ``out`` (format from its suffix)."""
    from matplotlib.ticker import MaxNLocator

    panels = [(f"{split}_natural_accuracy", f"{split} {METRIC_LABELS['natural_accuracy']}"),
              (f"{split}_robust_accuracy", f"{split} {METRIC_LABELS['robust_accuracy']}"),
              (f"{split}_perturbation_stability", f"{split} {METRIC_LABELS['perturbation_stability']}"),
              ("train_loss", "training loss")]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), layout="constrained")
        for label, rows in curves.items():
            for (key, title), ax in zip(panels, axes):
                points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
                ax.set(xlabel="epoch", ylabel=title)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(3, len(curves)))
        buffer = _io.BytesIO()
        fig.savefig(buffer, format=out.suffix.lstrip(".") or "png", bbox_inches="tight")
        plt.close(fig)
    storage.write_bytes(out, buffer.getvalue())
    return out


def plot_runs(runs: Sequence[str | Path], out: Path, split: str = "test") -> Path:
    """:func:`plot_run_curves` of run directories, each labelled with its name, model, λ and ε;
    FileNotFoundError for a directory that is no run or has no finished epoch."""
    curves, labels = {}, []
    for path in runs:
        run_dir, config = read_run(path)
        label = run_label(run_dir, config, labels)
        labels.append(label)
        metrics = storage.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        if not metrics:
            raise FileNotFoundError(f"{run_dir} has no finished epoch yet (no metrics.jsonl rows)")
        eps = config["eval"]["attack"].get("eps_text") or format(config["eval"]["attack"]["eps"], "g")
        curves[f"{label} ({config['model']['arch']} w{config['model']['width']}, "
               f"λ={config['objective']['lam']:g}, ε={eps})"] = metrics
    return plot_run_curves(curves, out, split)

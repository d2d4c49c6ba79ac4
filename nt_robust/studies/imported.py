"""A width study over imported (published) checkpoints instead of training runs::

    study = load_imported_study("experiments/zoo_widths.toml")
    report = run_imported_study(study, Path("runs/imported_studies/zoo_widths"))
    # or:  nt-robust study-imported experiments/zoo_widths.toml

The spec (TOML) lists the models, each an ``nt-robust import`` directory or a state_dict
that the study imports itself (paths relative to the spec)::

    [study]
    name = "zoo_widths"
    dataset = "cifar10"
    eps = "8/255"            # the threat model every model is evaluated at
    norm = "linf"
    attack = "pgd20"         # an eval preset (nt-robust eval --attack); stability compares its points
    examples = 1000          # the first N test images, the same for every model
    set = []                 # more eval settings, e.g. ["eval.batch_size=100"]
    sanity = true            # nt-robust eval's sanity flags on the first 64 images (results.json)

    [[model]]
    name = "wrn-28-10"
    state_dict = "zoo/Gowal2020Uncovering_28_10_extra.pt"
    depth = 28               # optional checks against the file
    width = 10

    [[model]]
    name = "wrn-70-16"
    dir = "runs/imported/gowal_70_16"

Every model is evaluated on the same test images with the same attack and keys, as a trained
run's evaluation (:func:`nt_robust.metrics.evaluate_model`: natural and robust accuracy,
perturbation stability, local Lipschitzness per image), and the paper's width claims (1–4 of
docs/paper.md §7) are judged by their primary tests (the slope against log2 width; for
claim 3 the Holm family of the robust − ½·natural slope and the neighbouring-width steps),
with the verdict rule of :func:`nt_robust.studies.verdicts.decide`. The intervals are the
trained studies' test-image part: z intervals over the test images, paired by image. With
one checkpoint per width there is no seed spread to count, so they are conditional on these
checkpoints (the report says so). Claims 5–8 need λ grids, WAR runs or an attack check and
are reported as not evaluated. Models of several depths are allowed; the report names them.

Outputs in the study directory: ``models/<name>/`` (imported state_dicts), ``results.json``
(one row per model), ``claims.json`` and ``report.md``. A model whose evaluation with the same
file (sha256), attack, ε, norm, image count and settings is stored is not evaluated again.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nt_robust import storage
from nt_robust.config import ConfigError
from nt_robust.studies.contrasts import slope_weights
from nt_robust.studies.verdicts import Claim, HypothesisTest, decide
from nt_robust.studies.uncertainty import (LEVEL, NOT_EVALUATED, Interval, holm,
                                           normal_quantile)

METRICS = ("natural_accuracy", "robust_accuracy", "perturbation_stability", "lipschitz_mean")
_STUDY_KEYS = {"name", "dataset", "eps", "norm", "attack", "examples", "set", "sanity"}
_MODEL_KEYS = {"name", "dir", "state_dict", "layout", "depth", "width"}


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    name: str
    dir: Path | None = None
    state_dict: Path | None = None
    layout: str | None = None
    depth: int | None = None
    width: int | None = None


@dataclasses.dataclass(frozen=True)
class ImportedStudy:
    name: str
    spec_path: Path
    models: tuple[ImportedModel, ...]
    dataset: str = "cifar10"
    eps: str = "8/255"
    norm: str = "linf"
    attack: str = "pgd20"
    examples: int = 1000
    overrides: tuple[str, ...] = ()
    sanity: bool = True


def load_imported_study(path: str | Path) -> ImportedStudy:
    """Read and check a spec (module docstring); :class:`ConfigError` naming the field otherwise."""
    from nt_robust.evaluate import ATTACKS

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the imported-model study spec ({error})") from None
    study, models = spec.get("study", {}), spec.get("model", [])
    unknown = set(spec) - {"study", "model"} | set(study) - _STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; [study] takes {sorted(_STUDY_KEYS)} and "
                          f"[[model]] {sorted(_MODEL_KEYS)}")
    if not isinstance(models, list) or len(models) < 2:
        raise ConfigError(f"{path}: list at least two models as [[model]] tables (a width study compares widths)")
    parsed, root = [], path.parent
    for index, entry in enumerate(models):
        where = f"{path}: model {index + 1}"
        if set(entry) - _MODEL_KEYS:
            raise ConfigError(f"{where}: unknown keys {sorted(set(entry) - _MODEL_KEYS)}; a model takes "
                              f"{sorted(_MODEL_KEYS)}")
        if ("dir" in entry) == ("state_dict" in entry):
            raise ConfigError(f"{where}: give exactly one of dir (an `nt-robust import` directory) or state_dict "
                              "(a .pt file to import)")
        source = Path(entry.get("dir") or entry["state_dict"])
        source = source if source.is_absolute() else root / source
        name = str(entry.get("name") or source.stem)
        parsed.append(ImportedModel(name, source if "dir" in entry else None,
                                    source if "state_dict" in entry else None, entry.get("layout"),
                                    entry.get("depth"), entry.get("width")))
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: model names must differ, got {names}")
    attack = study.get("attack", "pgd20")
    if attack not in ATTACKS:
        raise ConfigError(f"{path}: [study] attack {attack!r} is not an eval preset; choose one of {sorted(ATTACKS)}")
    examples = study.get("examples", 1000)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 2:
        raise ConfigError(f"{path}: [study] examples must be an integer >= 2 (intervals over test images), "
                          f"got {examples!r}")
    return ImportedStudy(str(study.get("name") or path.stem), path, tuple(parsed),
                         str(study.get("dataset", "cifar10")), str(study.get("eps", "8/255")),
                         str(study.get("norm", "linf")), attack, examples, tuple(study.get("set", ())),
                         bool(study.get("sanity", True)))


def _model_dir(study: ImportedStudy, model: ImportedModel, out: Path, progress: bool) -> tuple[Path, dict]:
    """The model's evaluation-ready directory (importing its state_dict the first time) and its record."""
    from nt_robust.export.importer import ImportError_, import_state_dict, sha256

    if model.dir is not None:
        if not (model.dir / "config.json").exists():
            raise ConfigError(f"model {model.name!r}: {model.dir} is not an `nt-robust import` directory "
                              "(no config.json)")
        record = storage.read_json(model.dir / "imported.json") if (model.dir / "imported.json").exists() else {}
        config = storage.read_json(model.dir / "config.json")["model"]
        record = {"depth": config["depth"], "width": config["width"], **record}
        for key in ("depth", "width"):
            asked = getattr(model, key)
            if asked is not None and asked != record[key]:
                raise ConfigError(f"model {model.name!r}: {model.dir} holds {key} {record[key]}, the spec says {asked}")
        return model.dir, record
    if not model.state_dict.is_file():
        raise FileNotFoundError(f"model {model.name!r}: {model.state_dict}: no such file")
    target = out / "models" / model.name
    if (target / "imported.json").exists():
        record = storage.read_json(target / "imported.json")
        if record["sha256"] == sha256(model.state_dict):
            return target, record
        raise ImportError_(f"model {model.name!r}: {target} holds another file (sha256 {record['sha256'][:12]}...) "
                           f"than {model.state_dict}: remove it or rename the model")
    record = import_state_dict(model.state_dict, target, dataset=study.dataset, eps=study.eps, norm=study.norm,
                               layout=model.layout, depth=model.depth, width=model.width, progress=progress)
    return target, record


def _attack(study: ImportedStudy, config: Any) -> Any:
    """The study's preset at the study's ε and norm, with any ``eval.attack.*`` setting of ``set``."""
    from nt_robust.config import ExactFloat
    from nt_robust.evaluate import preset_at_eps

    run = config.eval.attack
    attack = preset_at_eps(study.attack, ExactFloat(run.eps, run.eps_text) if run.eps_text else run.eps, run.norm)
    fields = {o.split("=", 1)[0].strip()[len("eval.attack."):] for o in study.overrides
              if o.strip().startswith("eval.attack.")} - {"eps", "norm"}
    return dataclasses.replace(attack, **{f: getattr(config.eval.attack, f) for f in fields})


def _measure(study: ImportedStudy, run_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], dict]:
    """Per-example results of the study's attack and Lipschitz estimate on the first
    ``examples`` test images (as a trained run's evaluation: ``nt_robust.metrics.evaluate_model``),
    and, with ``sanity``, the sanity flags of ``nt-robust eval`` on the first 64."""
    import jax

    from nt_robust.attacks.sanity import sanity_flags
    from nt_robust.attacks.protocols import ModelFn
    from nt_robust.export.run import restore_variables
    from nt_robust.metrics import evaluate_model
    from nt_robust.train.splits import prepare_splits
    from nt_robust.train.restore import load_run_config
    from nt_robust.train.evaluation import lipschitz_config

    config = load_run_config(run_dir, overrides)
    restored = restore_variables(run_dir, "best_val")
    model, variables = restored["model"], restored["variables"]
    splits = prepare_splits(config.data, config.train.seed)
    if study.examples > len(splits.test_labels):
        raise ConfigError(f"[study] examples = {study.examples}, but {config.data.dataset}'s test split has "
                          f"{len(splits.test_labels)}")
    images, labels = splits.test_images[:study.examples], splits.test_labels[:study.examples]
    attack = _attack(study, config)
    result = evaluate_model(model, variables, images, labels, jax.random.key(config.train.seed), attack,
                            lipschitz_config(config.eval), bn_mode=config.eval.bn_mode,
                            batch_size=config.eval.batch_size)
    arrays = {k: np.asarray(v) for k, v in result.per_example.items()}
    info = {"norm": attack.norm, "eps": attack.eps, "eps_text": attack.eps_label, "attack": attack.to_dict(),
            "lipschitz": None if result.lipschitz is None else dataclasses.asdict(result.lipschitz)}
    if study.sanity:
        x = images[:64].astype(np.float32) / 255.0 if images.dtype == np.uint8 else images[:64].astype(np.float32)
        flags = sanity_flags(ModelFn(model, config.eval.bn_mode), variables, x, labels[:64],
                             jax.random.key(config.train.seed), attack.eps, bn_mode=config.eval.bn_mode,
                             norm=attack.norm, reported=arrays["adv_pred"][:64] == arrays["labels"][:64],
                             attacks=(attack,))
        info["sanity_flags"] = [f.to_dict() for f in flags]
    return info, arrays


def _evaluate(study: ImportedStudy, model: ImportedModel, run_dir: Path, record: dict, out: Path,
              progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model's row and per-example metrics, stored under ``out/evaluations/`` and reused."""
    import sys

    from nt_robust.studies.aggregate import per_example_metrics

    overrides = [f"eval.attack.eps={study.eps}", f"eval.attack.norm={study.norm}", *study.overrides]
    fingerprint = {"sha256": record.get("sha256"), "run_dir": str(run_dir.resolve()), "attack": study.attack,
                   "eps": study.eps, "norm": study.norm, "examples": study.examples, "overrides": overrides,
                   "sanity": study.sanity}
    stem = out / "evaluations" / model.name
    if stem.with_suffix(".json").exists() and storage.read_json(stem.with_suffix(".json"))["fingerprint"] == fingerprint:
        info = storage.read_json(stem.with_suffix(".json"))["result"]
    else:
        if progress:
            print(f"evaluating {model.name} ({study.attack} at {study.norm} eps={study.eps}, {study.examples} test "
                  "images)", file=sys.stderr, flush=True)
        info, arrays = _measure(study, run_dir, overrides)
        storage.save_arrays(stem.with_suffix(".npz"), arrays)
        storage.write_json(stem.with_suffix(".json"), {"fingerprint": fingerprint, "result": info})
    per_example = per_example_metrics(storage.load_arrays(stem.with_suffix(".npz")))
    row = {"run": model.name, "source": str(model.state_dict or model.dir), "sha256": record.get("sha256"),
           "layout": record.get("layout"), "depth": record["depth"], "width": record["width"],
           "attack": study.attack, "norm": info["norm"], "eps": info["eps"], "eps_text": info["eps_text"],
           "examples": int(len(per_example["labels"])),
           "sanity_flags_raised": [f["name"] for f in info.get("sanity_flags", []) if f.get("raised")]}
    for metric in METRICS:
        if metric in per_example:
            row[f"test_{metric}"] = float(np.mean(per_example[metric]))
    return row, per_example


def test_image_interval(d: np.ndarray, level: float = LEVEL, note: str = "") -> Interval:
    """z interval for the mean of per-image values ``d`` (N,): the test-image part of the trained
    studies' intervals, with no seed part (one checkpoint per width)."""
    d = np.asarray(d, np.float64)
    n, estimate = d.size, float(d.mean())
    v_test = float(np.var(d, ddof=1)) / n if n > 1 else math.nan
    if not n > 1:
        return Interval(estimate, math.nan, math.nan, math.nan, math.nan, 1, n, note="one test image")
    half = normal_quantile(0.5 + level / 2) * math.sqrt(v_test)
    return Interval(estimate, math.sqrt(v_test), math.inf, estimate - half, estimate + half, 1, n, 0.0,
                    math.sqrt(v_test), level, note or "over test images, conditional on these checkpoints", math.inf)


def _by_width(rows: Sequence[dict], examples: dict[str, dict[str, np.ndarray]], terms: dict[str, float]
              ) -> dict[int, np.ndarray]:
    """Per width, Σ coef · metric per test image (models of one width averaged)."""
    out: dict[int, list[np.ndarray]] = {}
    for row in rows:
        out.setdefault(row["width"], []).append(sum(c * examples[row["run"]][m] for m, c in terms.items()))
    return {w: np.mean(v, axis=0) for w, v in sorted(out.items())}


def width_slope_images(rows: Sequence[dict], examples: dict[str, dict[str, np.ndarray]],
                       terms: str | dict[str, float]) -> Interval:
    """The least-squares slope of the metric against log2 width (per doubling), per test image
    (:func:`nt_robust.studies.contrasts.slope_weights`), with :func:`test_image_interval`."""
    terms = {terms: 1.0} if isinstance(terms, str) else terms
    values = _by_width(rows, examples, terms)
    weights = slope_weights(list(values))
    return test_image_interval(sum(c * v for c, v in zip(weights, values.values())))


def _claim(number: int, text: str, tests: list[HypothesisTest], lines: list[str]) -> Claim:
    adjusted = list(holm([t.p for t in tests]))
    evidence = [f"primary: {t.label}: {t.interval.describe()}; p {t.p:.2g}" + (f", Holm {p:.2g}" if len(tests) > 1
                                                                                 else "") for t, p in zip(tests, adjusted)]
    note = ("intervals over the test images only, conditional on these checkpoints (one per width: no seed "
            "spread is counted)")
    return Claim(number, text, decide(number, tests, adjusted), evidence + lines + [f"note: {note}"], tests, [], [note])


def imported_claims(rows: Sequence[dict], examples: dict[str, dict[str, np.ndarray]]) -> list[Claim]:
    """Claims 1–4 judged on the imported models' per-image results; 5–8 not evaluated."""
    claims = []
    widths = sorted({r["width"] for r in rows})
    for number, text, metric, up in (
            (1, "At fixed λ, natural accuracy rises with width.", "natural_accuracy", True),
            (2, "At fixed λ, perturbation stability falls with width.", "perturbation_stability", False),
            (4, "Local Lipschitzness rises with width at fixed λ.", "lipschitz_mean", True)):
        if not all(metric in examples[r["run"]] for r in rows):
            claims.append(Claim(number, text, NOT_EVALUATED, [f"note: no per-image {metric} (eval.lipschitz = none?)"]))
            continue
        means = _by_width(rows, examples, {metric: 1.0})
        line = ", ".join(f"width {w}: {v.mean():.4f}" for w, v in means.items())
        claims.append(_claim(number, text, [HypothesisTest(f"{metric} slope per doubling of width",
                                                           width_slope_images(rows, examples, metric), up)], [line]))
    g = {"robust_accuracy": 1.0, "natural_accuracy": -0.5}
    tests = [HypothesisTest("slope of robust − ½·natural per doubling", width_slope_images(rows, examples, g), False)]
    robust = _by_width(rows, examples, {"robust_accuracy": 1.0})
    for w0, w1 in zip(widths, widths[1:]):
        tests.append(HypothesisTest(f"robust accuracy width {w0}→{w1} (a drop supports claim 3)",
                                    test_image_interval(robust[w1] - robust[w0]), True, kind="step"))
    claims.append(_claim(3, "At fixed λ, robust accuracy does not rise monotonically with width "
                            "(or rises far less than natural accuracy).", tests,
                         [", ".join(f"width {w}: robust {v.mean():.4f}" for w, v in robust.items())]))
    for number, text in ((5, "For a wide model, stability rises with λ."),
                         (6, "The best λ grows with width; the small model's best λ is suboptimal for the wide one."),
                         (7, "WAR started from the small model's λ reaches the wide model's tuned robust accuracy."),
                         (8, "Rankings agree across PGD-20, CW-20 and AutoAttack; AutoAttack ≤ PGD accuracy.")):
        claims.append(Claim(number, text, NOT_EVALUATED,
                            ["note: needs λ grids, WAR runs or an attack check; published checkpoints give one model "
                             "per width"]))
    return sorted(claims, key=lambda c: c.number)


def render(study: ImportedStudy, rows: Sequence[dict], examples: dict, claims: Sequence[Claim], command: str) -> str:
    """The markdown report."""
    first = rows[0]
    lines = [f"# Imported-model width study: {study.name}", "",
             f"`{command}`: {len(rows)} models, {first['examples']} {study.dataset} test images, attack "
             f"{study.attack} at {first['norm']} ε = {first['eps_text']}. Intervals: {LEVEL:.0%}, over the test "
             "images (paired by image), conditional on these checkpoints.", "",
             "| model | depth | width | sha256 | natural | robust | stability | Lipschitz |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(rows, key=lambda r: (r["width"], r["depth"])):
        cells = []
        for metric in METRICS:
            values = examples[row["run"]].get(metric)
            cells.append("n/a" if values is None else test_image_interval(values).short().lstrip("+"))
        lines.append(f"| {row['run']} | {row['depth']} | {row['width']} | {str(row['sha256'])[:12]} | "
                     + " | ".join(cells) + " |")
    raised = [f"{r['run']}: {', '.join(r['sanity_flags_raised'])}" for r in rows if r["sanity_flags_raised"]]
    if raised:
        lines += ["", "Sanity flags raised (nt-robust eval's checks on the first 64 images): " + "; ".join(raised)]
    depths = sorted({r["depth"] for r in rows})
    if len(depths) > 1:
        lines += ["", f"Note: the models differ in depth too ({', '.join(map(str, depths))}): the width trends "
                      "below are not at fixed depth."]
    lines += ["", "## Claims", ""]
    for claim in claims:
        lines.append(f"**Claim {claim.number}** — {claim.verdict}: {claim.text}")
        lines += [f"- {e}" for e in claim.evidence] + [""]
    return "\n".join(lines)


def run_imported_study(study: ImportedStudy, out: Path, progress: bool = False) -> Path:
    """Import, evaluate, judge and report (module docstring); returns the report's path."""
    out = Path(out)
    rows, examples = [], {}
    for model in study.models:
        run_dir, record = _model_dir(study, model, out, progress)
        row, per_example = _evaluate(study, model, run_dir, record, out, progress)
        rows.append(row)
        examples[model.name] = per_example
    labels = [examples[r["run"]]["labels"] for r in rows]
    if any(not np.array_equal(labels[0], other) for other in labels[1:]):
        raise ConfigError("the models were evaluated on different test images (another dataset or --set data.*): "
                          "per-image pairing needs the same images in the same order")
    if len({r["width"] for r in rows}) < 2:
        raise ConfigError(f"{study.spec_path}: every model has width {rows[0]['width']}: a width study needs two widths")
    claims = imported_claims(rows, examples)
    storage.write_json(out / "results.json", rows)
    storage.write_json(out / "claims.json", [c.to_dict() for c in claims])
    report = out / "report.md"
    storage.write_text(report, render(study, rows, examples, claims, f"nt-robust study-imported {study.spec_path}"))
    return report


def imported_study_command(args: argparse.Namespace) -> int:
    """The CLI handler: run the study and print the report's path and the verdicts."""
    study = load_imported_study(args.spec)
    out = Path(args.out or Path("runs") / "imported_studies" / study.name)
    report = run_imported_study(study, out, progress=True)
    for claim in storage.read_json(out / "claims.json"):
        print(f"claim {claim['number']}: {claim['verdict']:<14} {claim['text']}")
    print(f"report: {report}")
    return 0

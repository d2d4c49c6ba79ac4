"""A study from nothing to report: estimate, run (all, one stage, or one index), aggregate,
figures, claims, markdown::

    study = load_study("experiments/study_quick_fmnist.toml")
    print(format_estimate(estimate_cost(study)))
    run_study(study)                                  # skips finished runs, resumes the rest
    report_path = build_report(study)                 # results.csv/json, figures, report.md
    print(study_summary(study))                       # the results table and the verdicts
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax

from nt_robust import io
from nt_robust.config import ConfigError, load_config
from nt_robust.environment import describe_cpu, environment_info
from nt_robust.studies.aggregate import collect_curves, collect_examples, collect_runs, write_table
from nt_robust.studies.analysis import evaluate_claims
from nt_robust.studies.attack_check import collect_attack_check, collect_attack_examples, run_attack_check
from nt_robust.studies.figures import make_all_figures
from nt_robust.studies.report import render_report, summary_table
from nt_robust.studies.sweep import ATTACK_STAGE, GRID_STAGE, WAR_STAGE, Study, run_index
from nt_robust.studies.tables import format_table
from nt_robust.train.config import ExperimentConfig

log = logging.getLogger("nt_robust.studies")


def run_study(study: Study, stage: str | None = None) -> None:
    """Run every unfinished run (grid stage first, then WAR, then the attack check if the
    spec asks for one), or only ``stage``."""
    if stage == ATTACK_STAGE and study.attack_check is None:
        raise ConfigError(f"{study.spec_path} has no [attack_check] section: nothing to run in stage "
                          f"'{ATTACK_STAGE}' (see nt_robust/studies/attack_check.py)")
    stages = [stage] if stage else [GRID_STAGE, WAR_STAGE, ATTACK_STAGE]
    runs = [r for r in study.runs() if r.stage in stages]
    todo = [r for r in runs if not study.is_finished(r)]
    log.info("%s: %d runs in stage(s) %s, %d finished, %d to run", study.name, len(runs), "+".join(stages),
             len(runs) - len(todo), len(todo))
    for run in todo:
        run_index(study, run.index)
    if ATTACK_STAGE in stages and study.attack_check is not None:
        run_attack_check(study)


def estimate_cost(study: Study, timed_steps: int = 2, device: str | None = None, mfu: float = 0.4,
                  step_seconds_limit: float = 5.0) -> list[dict[str, Any]]:
    """Device-hours of every distinct width of ``study`` (training steps plus per-epoch
    evaluation) and whether its training step fits in memory at ``train.batch_size``::

        print(format_estimate(estimate_cost(study)))                  # this machine, measured
        print(format_estimate(estimate_cost(study, device="h100")))   # from FLOPs and the peak table

    Per width, the training step is compiled once (``nt_robust.flops``: FLOPs from XLA's cost
    analysis, memory from XLA's buffer plan). On this machine it is then timed for
    ``timed_steps`` steps — on a CPU at the smallest batch the devices allow, and only while
    a step is predicted to take at most ``step_seconds_limit``: wider models get the
    narrowest measured model's FLOP/s, scaled by their FLOPs (a WRN-34-20 TRADES step at batch
    128 is ~ 175 TFLOP: an hour on two CPU cores). A CPU compiles and times steps over 2e11
    FLOPs at the smallest batch (``jax.device_count()``) and scales the time linearly. Memory compiled at a smaller batch than
    ``train.batch_size`` is scaled: the state as compiled plus the temporaries × batch ratio.
    With ``device`` (a :data:`nt_robust.flops.PEAKS` name such as "h100", "a100", "tpu-v5e")
    nothing is timed: seconds per step = FLOPs / (``mfu`` × the chip's dense peak at the
    configured precision), memory fits against its memory (XLA's plan of this machine's
    compile: an approximation of the accelerator's)."""
    import numpy as np

    from nt_robust import flops

    target = None
    if device is not None:
        target = flops.find_device(device)
        if target is None:
            raise ConfigError(f"--device {device!r} is not in the peak table; choose one of "
                              f"{[p.name for p in flops.PEAKS]} (nt_robust/flops.py)")
    local = jax.devices()[0]
    capacity = int(target.memory_gib * 2**30) if target else flops.device_memory_bytes(local)
    by_width: dict[int, list] = {}
    for run in study.runs():
        by_width.setdefault(run.width, []).append(run)
    estimates, splits, rate = [], None, None
    for width, runs in sorted(by_width.items()):
        overrides = [o for o in runs[0].overrides if not o.startswith("name=")] if runs[0].stage == GRID_STAGE \
            else list(runs[0].overrides)
        config = load_config(ExperimentConfig, study.base_config, overrides)
        splits = splits or _estimate_splits(config)
        batch = config.train.batch_size
        steps_per_epoch = splits.train // batch
        flops_per_step = flops.train_step_flops(config, splits.image_shape, splits.num_classes)["flops_per_step"]
        # A CPU (or a named device: nothing runs) compiles and times a step over ~2e11 FLOPs
        # (seconds on two cores) at the smallest batch the devices allow; an accelerator at the real one.
        small = target is not None or (local.platform == "cpu" and (flops_per_step or 0) > 2e11)
        run_batch = jax.device_count() if small else batch
        step, abstract, images, labels = flops.abstract_step(config, splits.image_shape, splits.num_classes, run_batch)
        start = time.time()
        compiled = step.lower(abstract, images, labels).compile()
        compile_seconds = time.time() - start
        memory = flops.memory_bytes(compiled)
        peak = None
        if memory is not None:
            peak = memory["peak_bytes"] + memory["temp"] * (batch / run_batch - 1)
        dtype, matmul = flops.config_precision(config)
        if target is not None:
            klass = flops.precision_class(dtype, matmul, "tpu" if target.name.startswith("tpu") else "gpu")
            peak_rate = flops.peak_flops(target.name, klass)
            if peak_rate is None or flops_per_step is None:
                raise ConfigError(f"{target.name} has no published {klass} peak for model.dtype = {dtype!r}: "
                                  "estimate on the machine itself, or pick another --device")
            step_seconds, how = flops_per_step / (mfu * peak_rate), f"FLOPs / ({mfu:.0%} of {klass} peak)"
        else:
            predicted = None if rate is None or flops_per_step is None else \
                flops_per_step * run_batch / batch / rate
            if predicted is None or predicted <= step_seconds_limit:
                state = _real_state(config, splits, run_batch)
                x = jax.device_put(np.zeros((run_batch, *splits.image_shape), np.uint8))
                y = jax.device_put(np.arange(run_batch, dtype=np.int32) % splits.num_classes)
                state, metrics = compiled(state, x, y)
                jax.block_until_ready(metrics)
                start = time.time()
                for _ in range(timed_steps):
                    state, metrics = compiled(state, x, y)
                jax.block_until_ready(metrics)
                measured = (time.time() - start) / timed_steps
                if flops_per_step:
                    rate = flops_per_step * run_batch / batch / measured
                step_seconds = measured * batch / run_batch
                how = "measured" if run_batch == batch else f"measured at batch {run_batch}, x {batch // run_batch}"
            else:
                step_seconds = flops_per_step / rate
                how = f"FLOPs / {rate / 1e9:.0f} GFLOP/s measured on a narrower width"
        eval_points = sum(size if n is None else min(n, size) for size, n in (
            (splits.val, config.eval.val_examples), (splits.test, config.eval.test_examples)))
        # An evaluation point costs about (attack steps + Lipschitz steps + 2) forward-backward
        # passes; a training example (train attack steps + 2).
        eval_factor = (config.eval.attack.num_steps + 12) / (config.train_attack.num_steps + 2)
        per_run = config.train.epochs * step_seconds * (steps_per_epoch + eval_points * eval_factor / batch)
        estimates.append({"width": width, "model": config.model.label, "runs": len(runs),
                          "epochs": config.train.epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch,
                          "flops_per_step": flops_per_step, "seconds_per_step": step_seconds, "how": how,
                          "compile_seconds": compile_seconds, "peak_bytes": peak, "memory_bytes": capacity,
                          "fits": None if peak is None or capacity is None else peak <= capacity,
                          "device": target.name if target else f"{jax.device_count()} x {local.device_kind}",
                          "hours_per_run": per_run / 3600, "hours": len(runs) * per_run / 3600})
    return estimates


# Published training and test sizes of the datasets the estimate knows without their files,
# for a cluster spec estimated where the data are not (shapes and classes: DATASET_SHAPES).
PUBLISHED_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "mnist": (60_000, 10_000),
                   "fashion_mnist": (60_000, 10_000)}


def _estimate_splits(config: ExperimentConfig) -> SimpleNamespace:
    """image_shape, num_classes and the train / val / test sizes of ``config.data``: from the
    dataset itself when it is on this machine, else from :data:`PUBLISHED_SIZES` and
    :data:`nt_robust.train.config.DATASET_SHAPES`."""
    from nt_robust.data.specs import canonical_name
    from nt_robust.data.errors import DataError
    from nt_robust.train.config import input_shape
    from nt_robust.train.data import prepare_splits

    data = config.data
    try:
        splits = prepare_splits(data)
    except DataError:
        name = canonical_name(data.dataset)
        if name not in PUBLISHED_SIZES:
            raise
        (shape, classes), (train, test) = input_shape(data), PUBLISHED_SIZES[name]
        log.warning("%s is not on this machine: the estimate uses its published sizes", data.dataset)
        train -= data.val_size
        train = train if data.train_subset is None else min(train, data.train_subset)
        return SimpleNamespace(image_shape=shape, num_classes=classes, train=train, val=data.val_size, test=test)
    return SimpleNamespace(image_shape=splits.image_shape, num_classes=splits.num_classes,
                           train=len(splits.train_images), val=len(splits.val_images), test=len(splits.test_images))


def _real_state(config: ExperimentConfig, splits, batch: int):
    from nt_robust.models import create_model, init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.step import init_key

    model = create_model(config.model, splits.num_classes)
    optimizer = make_optimizer(config.optim, config.train.epochs, max(1, splits.train // batch))

    def init():
        variables = init_variables(model, init_key(config.train.seed), splits.image_shape)
        return create_train_state(variables, optimizer, config.objective.lam,
                                  use_ema=config.optim.ema_decay is not None, seed=config.train.seed)

    return jax.jit(init)()


def format_estimate(estimates: list[dict[str, Any]]) -> str:
    """The estimate as text: device-hours in total and per run, FLOPs, memory and fit per width."""
    if not estimates:
        return "Estimated cost: no runs"
    gib = lambda b: "-" if b is None else f"{b / 2**30:.1f}"  # noqa: E731
    rows = [[e["model"], e["runs"], e["epochs"], e["steps_per_epoch"],
             "-" if e["flops_per_step"] is None else f"{e['flops_per_step'] / 1e9:.4g}",
             f"{e['seconds_per_step']:.3f}", f"{e['hours_per_run']:.2f}", f"{e['hours']:.2f}", gib(e["peak_bytes"]),
             {True: "yes", False: "NO", None: "?"}[e["fits"]], e["how"]] for e in estimates]
    total = sum(e["hours"] for e in estimates)
    first = estimates[0]
    fit = [e["model"] for e in estimates if e["fits"]]
    unfit = [e["model"] for e in estimates if e["fits"] is False]
    return (f"Estimated cost on {first['device']}: {total:.2f} device-hours in total\n"
            + format_table(["model", "runs", "epochs", "steps/epoch", "GFLOP/step", "s/step", "h/run", "h total",
                            "peak GiB", "fits", "s/step from"], rows)
            + f"\nAt train.batch_size = {first['batch_size']} on {first['device']} ({gib(first['memory_bytes'])} GiB): "
              + (f"every width fits ({', '.join(fit)})" if fit and not unfit else
                 f"fit {', '.join(fit) or 'none'}; do not fit {', '.join(unfit) or 'none'}")
              + " (XLA's buffer plan of the compiled step)\n")


def hardware_description() -> str:
    info = environment_info()
    return (f"{info['device_count']} {info['backend']} device(s) [{', '.join(info['device_kinds'])}], "
            f"CPU {describe_cpu(info['cpu'])}, jax {info['packages']['jax']}")


THEORY_DIR = Path("figures") / "regime_map"   # experiments/theory_trained.py writes there


def theory_figures(name: str, archs: set[str]) -> list[Path]:
    """experiments/theory_trained.py's predicted-vs-measured figures for a study: its own
    (``trained_<name>.png``) if there is one, else those of other studies of the same
    architectures (from ``trained.json``)."""
    own = THEORY_DIR / f"trained_{name}.png"
    if own.exists():
        return [own]
    record = THEORY_DIR / "trained.json"
    if not record.exists():
        return []
    try:
        studies = io.read_json(record).get("studies", {})
    except (OSError, ValueError):
        return []
    return [path for other, result in sorted(studies.items()) if result.get("arch") in archs
            and (path := THEORY_DIR / f"trained_{other}.png").exists()]


def build_report(study: Study, figures_dir: Path | None = None) -> Path:
    """Aggregate the finished runs, draw the figures and write the report; returns its path.

    One aggregation at a time per study (an flock on ``results/.lock``): job-array tasks
    that finish together and each aggregate would otherwise race, and the one that read
    the run directories first could write its table last, without the other's row."""
    with io.file_lock(study.runs_root / "results" / ".lock"):
        return _build_report(study, figures_dir)


def _build_report(study: Study, figures_dir: Path | None = None) -> Path:
    run_dirs = [study.run_dir(r) for r in study.runs()]
    rows = collect_runs(run_dirs)
    if not rows:
        raise FileNotFoundError(f"no finished runs under {study.runs_root}: run the study first")
    results_dir = study.runs_root / "results"
    write_table(rows, results_dir / "results")
    curves = collect_curves(run_dirs)
    write_table(curves, results_dir / "curves")
    figures_dir = Path(figures_dir or Path("figures") / study.name)
    base_lam = study.base().objective.lam
    attack_rows = collect_attack_check(study) if study.attack_check is not None else []
    if attack_rows:
        write_table(attack_rows, results_dir / "attack_check")
    figures = make_all_figures(rows, curves, figures_dir, lam=base_lam, attack_rows=attack_rows)
    attack_examples = collect_attack_examples(study) if attack_rows else None
    readings = {}
    for reading in ("best_val", "final"):
        examples = collect_examples(run_dirs, reading)
        claims = evaluate_claims(rows, attack_rows, study.attack_check.protocols[0] if study.attack_check else None,
                                 examples, attack_examples, war_modes=study.war.modes if study.war else None,
                                 selection=reading)
        readings[reading] = {"claims": claims, **reading_extras(rows, examples, reading)}
    context = {"command": f"nt-robust study {study.spec_path}", "hardware": hardware_description(),
               "time_utc": environment_info()["time_utc"],
               "theory_figures": theory_figures(study.name, {r["arch"] for r in rows}),
               "declaration_note": declaration_check(results_dir / "primary_tests.json")}
    report_dir = figures_dir
    text = render_report(study.name, rows, readings, figures, report_dir, context)
    report_path = report_dir / "report.md"
    io.write_text(report_path, text)
    io.write_json(results_dir / "claims.json", [c.to_dict() for c in readings["best_val"]["claims"]])
    io.write_json(results_dir / "claims_final.json", [c.to_dict() for c in readings["final"]["claims"]])
    log.info("report: %s (%d runs, %d figures)", report_path, len({r['run'] for r in rows}), len(figures))
    return report_path



def reading_extras(rows: list[dict], examples: dict, reading: str) -> dict:
    """Stability split, margins vs Lipschitz and tuned-λ robust accuracy of one reading
    (:mod:`nt_robust.studies.readings`), and where its numbers come from."""
    from nt_robust.studies.analysis import grid_rows
    from nt_robust.studies.readings import margin_slopes, stability_split_table, tuned_robust

    grid = grid_rows(rows, reading)
    runs = {r["run"] for r in rows if r["selection"] == reading}
    with_arrays = {run for run in runs if "test" in examples.get(run, {})}
    complete = with_arrays == runs
    use = examples if complete else None
    source = (f"per-example arrays (eval/{reading}_test.npz) of all {len(runs)} runs" if complete else
              f"summary.json's test metrics of that epoch for {len(runs - with_arrays)} of {len(runs)} runs without "
              f"eval/{reading}_test.npz: seed spread only")
    return {"source": source, "split": stability_split_table(grid, use), "margins": margin_slopes(grid, use),
            "tuned_robust": tuned_robust(grid, use)}


def declaration_check(path: Path) -> str | None:
    """Store the declared primary tests' hash with the results the first time; afterwards a
    note when the declaration differs from the stored one (docs/paper.md §9)."""
    from nt_robust.studies.analysis import PRIMARY_TESTS, primary_tests_hash

    now = primary_tests_hash()
    if not path.exists():
        io.write_json(path, {"hash": now, "declared": {str(k): v for k, v in PRIMARY_TESTS.items()},
                             "stored_utc": environment_info()["time_utc"]})
        return None
    stored = io.read_json(path)
    if stored.get("hash") == now:
        return None
    return (f"The primary tests changed after these results were first stored: {path} holds declaration "
            f"{stored.get('hash')} (stored {stored.get('stored_utc', '?')}), the verdicts below use {now} "
            "(docs/paper.md §9).")


def study_summary(study: Study) -> str:
    """The terminal version of the report: the results table (best held-out checkpoint)
    and one line per claim, from the files :func:`build_report` wrote."""
    results_dir = study.runs_root / "results"
    rows = io.read_json(results_dir / "results.json")
    claims = io.read_json(results_dir / "claims.json")
    verdicts = [f"claim {c['number']}: {c['verdict']:<14} {c['text']}" for c in sorted(claims, key=lambda c: c["number"])]
    return "\n".join([summary_table(rows), "", *verdicts])

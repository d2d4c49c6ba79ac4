"""A study from nothing to report: estimate, run (all, one stage, or one index), aggregate,
figures, claims, markdown::

    study = load_study("experiments/study_quick_fmnist.toml")
    print(format_estimate(estimate_cost(study)))      # nt_robust.studies.cost
    run_study(study)                                  # skips finished runs, resumes the rest
    report_path = build_report(study)                 # results.csv/json, figures, report.md
    print(study_summary(study))                       # the results table and the verdicts
"""

from __future__ import annotations

import logging
from pathlib import Path

from nt_robust import storage
from nt_robust.config import ConfigError, load_config
from nt_robust.environment import describe_cpu, environment_info
from nt_robust.studies.aggregate import collect_curves, collect_examples, collect_runs, write_table
from nt_robust.studies.claims import evaluate_claims
from nt_robust.studies.attack_check import collect_attack_check, collect_attack_examples, run_attack_check
from nt_robust.studies.figures import make_all_figures
from nt_robust.studies.overfitting import overfitting_json, robust_overfitting
from nt_robust.studies.report import render_report, summary_table
from nt_robust.studies.sweep import ATTACK_STAGE, GRID_STAGE, WAR_STAGE, Study, run_index
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
    for run in runs:  # a finished run counts only if the spec still gives it the config it ran with
        if study.is_finished(run) and run.stage == GRID_STAGE:
            study.check_reusable(run, load_config(ExperimentConfig, study.base_config, list(run.overrides)))
    log.info("%s: %d runs in stage(s) %s, %d finished, %d to run", study.name, len(runs), "+".join(stages),
             len(runs) - len(todo), len(todo))
    for run in todo:
        run_index(study, run.index)
    if ATTACK_STAGE in stages and study.attack_check is not None:
        run_attack_check(study)


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
        studies = storage.read_json(record).get("studies", {})
    except (OSError, ValueError):
        return []
    return [path for other, result in sorted(studies.items()) if result.get("arch") in archs
            and (path := THEORY_DIR / f"trained_{other}.png").exists()]


def build_report(study: Study, figures_dir: Path | None = None) -> Path:
    """Aggregate the finished runs, draw the figures and write the report; returns its path.

    One aggregation at a time per study (an flock on ``results/.lock``): job-array tasks
    that finish together and each aggregate would otherwise race, and the one that read
    the run directories first could write its table last, without the other's row."""
    with storage.file_lock(study.runs_root / "results" / ".lock"):
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
    readings, reading_examples = {}, {}
    for reading in ("best_val", "final"):
        examples = reading_examples[reading] = collect_examples(run_dirs, reading)
        claims = evaluate_claims(rows, attack_rows, study.attack_check.protocols[0] if study.attack_check else None,
                                 examples, attack_examples, war_modes=study.war.modes if study.war else None,
                                 selection=reading)
        readings[reading] = {"claims": claims, **reading_extras(rows, examples, reading)}
    context = {"command": f"nt-robust study {study.spec_path}", "hardware": hardware_description(),
               "time_utc": environment_info()["time_utc"],
               "theory_figures": theory_figures(study.name, {r["arch"] for r in rows}),
               "declaration_note": declaration_check(results_dir / "primary_tests.json"),
               "overfitting": robust_overfitting(rows, reading_examples["best_val"], reading_examples["final"])}
    report_dir = figures_dir
    text = render_report(study.name, rows, readings, figures, report_dir, context)
    report_path = report_dir / "report.md"
    storage.write_text(report_path, text)
    storage.write_json(results_dir / "claims.json", [c.to_dict() for c in readings["best_val"]["claims"]])
    storage.write_json(results_dir / "claims_final.json", [c.to_dict() for c in readings["final"]["claims"]])
    storage.write_json(results_dir / "overfitting.json", overfitting_json(context["overfitting"]))
    log.info("report: %s (%d runs, %d figures)", report_path, len({r['run'] for r in rows}), len(figures))
    return report_path



def reading_extras(rows: list[dict], examples: dict, reading: str) -> dict:
    """Stability split, margins vs Lipschitz and tuned-λ robust accuracy of one reading
    (:mod:`nt_robust.studies.mechanism`), and where its numbers come from."""
    from nt_robust.studies.contrasts import grid_rows
    from nt_robust.studies.mechanism import margin_slopes, stability_split_table, tuned_robust

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
    from nt_robust.studies.verdicts import PRIMARY_TESTS, primary_tests_hash

    now = primary_tests_hash()
    if not path.exists():
        storage.write_json(path, {"hash": now, "declared": {str(k): v for k, v in PRIMARY_TESTS.items()},
                             "stored_utc": environment_info()["time_utc"]})
        return None
    stored = storage.read_json(path)
    if stored.get("hash") == now:
        return None
    return (f"The primary tests changed after these results were first stored: {path} holds declaration "
            f"{stored.get('hash')} (stored {stored.get('stored_utc', '?')}), the verdicts below use {now} "
            "(docs/paper.md §9).")


def study_summary(study: Study) -> str:
    """The terminal version of the report: the results table (best held-out checkpoint)
    and one line per claim, from the files :func:`build_report` wrote."""
    results_dir = study.runs_root / "results"
    rows = storage.read_json(results_dir / "results.json")
    claims = storage.read_json(results_dir / "claims.json")
    verdicts = [f"claim {c['number']}: {c['verdict']:<14} {c['text']}" for c in sorted(claims, key=lambda c: c["number"])]
    return "\n".join([summary_table(rows), "", *verdicts])

"""Width × λ sweeps that expand to independent runs addressable by index.

A study spec (TOML) names a base experiment config, a grid of overrides, seeds and,
optionally, WAR runs::

    name = "quick_fmnist"
    base_config = "experiments/quick_fmnist.toml"
    seeds = [0, 1]
    set = ["train.epochs=8"]                 # applied to every run
    [grid]
    "model.width" = [32, 128, 512]
    "objective.lam" = [1.0, 6.0, 24.0]
    [war]
    reference_width = 32                     # λ_s = this width's best λ (held-out robust accuracy)
    widths = [128, 512]
    modes = ["unweighted_ratio", "weighted_ratio"]   # WAR readings; the first is primary
    [attack_check]                           # optional: claim 8 (studies/attack_check.py)
    protocols = ["pgd20-0.007", "cw20", "autoattack-standard"]
    examples = 200

    study = load_study("experiments/study_quick_fmnist.toml")
    for run in study.runs():                 # index, name, stage, overrides
        ...
    run_index(study, 3)                      # what a cluster job array's task 3 does

Grid runs come first (indices 0 … G−1), WAR runs after them. A WAR run's config is
resolved when it starts, from the finished grid runs of the reference width, so job
arrays must run the grid stage before the WAR stage (``--stage grid`` / ``--stage war``).
Finished runs (``summary.json`` present) are skipped once their config is checked
(:meth:`Study.check_reusable`: the summary's config hash, else config.json, must match the
spec's; a run of an edited spec is refused, naming the changed fields); interrupted ones
resume. The attack check (``--stage attacks``) evaluates finished grid runs after both
stages. A spec is checked before any work: a study name and run names that are one plain
path component, distinct grid values and seeds, at least one seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from nt_robust import storage
from nt_robust.config import ConfigError, load_config
from nt_robust.studies.attack_check import AttackCheckPlan
from nt_robust.train.config import WAR_MODES, ExperimentConfig

log = logging.getLogger("nt_robust.studies")

GRID_STAGE, WAR_STAGE, ATTACK_STAGE = "grid", "war", "attacks"


STUDY_KEYS = ("name", "base_config", "runs_root", "seeds", "set", "grid", "war", "attack_check")  # a spec's top level


@dataclasses.dataclass(frozen=True)
class WarPlan:
    """WAR runs: for each mode in ``modes`` (``war.mode``: the readings of WAR, see
    :class:`~nt_robust.train.config.WarConfig`), each width in ``widths`` and each seed,
    start from the reference width's best λ (λ_s, by mean held-out robust accuracy over
    seeds) and steer by the ratio measured on that λ_s run of the same seed. ``extra``
    overrides apply to WAR runs only (e.g. "war.momentum=0.7"). The first mode is the
    study's primary one: claim 7's verdict is about it."""

    reference_width: int
    widths: tuple[int, ...]
    extra: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("weighted_ratio",)

    @staticmethod
    def run_name(mode: str, width: int, seed: int) -> str:
        # Reading A keeps the name it had before modes existed, so finished studies stay finished.
        prefix = "war" if mode == "weighted_ratio" else f"war_{mode.split('_')[0]}"
        return f"{prefix}_width{width}_seed{seed}"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    index: int
    stage: str
    name: str
    overrides: tuple[str, ...]
    width: int
    seed: int
    lam: float | None           # None for WAR runs until resolved


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    base_config: Path
    runs_root: Path
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]]
    war: WarPlan | None
    spec_path: Path
    attack_check: AttackCheckPlan | None = None

    def grid_runs(self) -> list[RunSpec]:
        keys = list(self.grid)
        runs = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            for seed in self.seeds:
                setting = dict(zip(keys, values))
                overrides = (*self.common, *(f"{k}={_toml(v)}" for k, v in setting.items()), f"train.seed={seed}")
                name = "_".join(f"{_short(k)}{_name_value(v)}" for k, v in setting.items()) + f"_seed{seed}"
                runs.append(RunSpec(len(runs), GRID_STAGE, name, overrides + (f"name={_toml(name)}",),
                                    int(setting.get("model.width", self.base().model.width)), seed,
                                    float(setting.get("objective.lam", self.base().objective.lam))))
        return runs

    def war_runs(self) -> list[RunSpec]:
        if self.war is None:
            return []
        start = len(self.grid_runs())
        runs = []
        for mode in self.war.modes:
            for width in self.war.widths:
                for seed in self.seeds:
                    name = self.war.run_name(mode, width, seed)
                    overrides = (*self.common, *self.war.extra, f"model.width={width}", f"train.seed={seed}",
                                 f"war.mode={_toml(mode)}", f"name={_toml(name)}")
                    runs.append(RunSpec(start + len(runs), WAR_STAGE, name, overrides, width, seed, None))
        return runs

    def runs(self) -> list[RunSpec]:
        return self.grid_runs() + self.war_runs()

    def base(self) -> ExperimentConfig:
        return load_config(ExperimentConfig, self.base_config)

    def run_dir(self, run: RunSpec) -> Path:
        return self.runs_root / run.name

    def is_finished(self, run: RunSpec) -> bool:
        return (self.run_dir(run) / "summary.json").exists()

    def check_reusable(self, run: RunSpec, config: ExperimentConfig) -> dict[str, Any]:
        """The finished run's summary, if it was made with ``config``; else ConfigError naming
        the fields that differ (a spec edited after the run finished). A summary written
        before summaries held a config hash is checked against the run's config.json."""
        from nt_robust.config import to_dict
        from nt_robust.train.run_dir import config_differences, config_hash

        run_dir = self.run_dir(run)
        summary = storage.read_json(run_dir / "summary.json")
        wanted = to_dict(config)
        stored_hash = summary.get("config_hash") if isinstance(summary, dict) else None
        if stored_hash == config_hash(wanted):
            return summary
        if stored_hash is None:
            log.info("%s: its summary predates config hashes; compared with its config.json", run_dir)
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"{run_dir} finished under a config that cannot be compared with the spec's "
                              f"({run_dir / 'config.json'} is gone and its summary has "
                              f"{'another config hash' if stored_hash else 'no config hash'}). Move that run "
                              "directory away to train it again, or give the study another runs_root")
        # war.reference_run is the path of a run of this study: it changes when the runs root moves
        differences = config_differences(storage.read_json(run_dir / "config.json"), wanted, allowed=("war.reference_run",))
        if differences:
            raise ConfigError(
                f"{run_dir} finished with another config than {self.spec_path} now gives it "
                f"({'; '.join(differences[:5])}: run -> spec). The spec was "
                f"edited after the run finished: restore the spec, or move {self.runs_root} away (or set another "
                "runs_root or --runs-root) to run the edited study")
        return summary


def load_study(path: str | os.PathLike, runs_root: str | os.PathLike | None = None,
               runs_parent: str | os.PathLike | None = None) -> Study:
    """The study of spec ``path``. Its runs go to ``runs_root`` if given, else to
    ``runs_parent/<study name>`` if that is given (several studies under one folder: the
    regime map, a make-figures build), else to the spec's ``runs_root``, else to
    ``runs/studies/<name>``."""
    if runs_root is not None and runs_parent is not None:
        raise ValueError("give runs_root or runs_parent, not both")
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            spec = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"study spec {path} does not exist (the ready-made ones are experiments/study_*.toml)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"study spec {path} is not valid TOML ({error})") from None
    unknown = set(spec) - set(STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {sorted(unknown)} (known: {sorted(STUDY_KEYS)})")
    for key in ("name", "base_config", "grid"):
        if key not in spec:
            raise ConfigError(f"{path}: missing '{key}'")
    _check_name(spec["name"], f"{path}: name")
    if not isinstance(spec["base_config"], str):
        raise ConfigError(f"{path}: base_config must be a path (a string), got {spec['base_config']!r}")
    base = Path(spec["base_config"])
    if not base.is_absolute() and not base.exists():
        base = path.parent.parent / base  # relative to the repository root
    if not isinstance(spec["grid"], dict):
        raise ConfigError(f"{path}: grid must be a table of axes, e.g. [grid] \"model.width\" = [32, 128]; "
                          f"got {spec['grid']!r}")
    grid = {k: tuple(v if isinstance(v, list) else [v]) for k, v in spec["grid"].items()}
    if any(len(v) == 0 for v in grid.values()):
        raise ConfigError(f"{path}: every grid axis needs at least one value")
    for key, values in grid.items():
        _check_distinct(values, f"{path}: grid '{key}'")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool)
                                                            for x in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, e.g. seeds = [0, 1]; got {seeds!r}")
    _check_distinct(seeds, f"{path}: seeds")
    if not isinstance(spec.get("set", []), list):
        raise ConfigError(f"{path}: set must be a list of \"key=value\" strings, got {spec['set']!r}")
    war = None
    if "war" in spec:
        w = spec["war"]
        if not isinstance(w, dict):
            raise ConfigError(f"{path}: war must be a table ([war] with reference_width and widths)")
        unknown = set(w) - {"reference_width", "widths", "set", "modes"}
        if unknown:
            raise ConfigError(f"{path}: unknown [war] keys {sorted(unknown)}")
        for key in ("reference_width", "widths"):
            if key not in w:
                raise ConfigError(f"{path}: [war] needs '{key}' (e.g. reference_width = 32, widths = [128, 512])")
        modes = tuple(w.get("modes", ["weighted_ratio"]))
        bad = [m for m in modes if m not in WAR_MODES]
        if bad or not modes or len(set(modes)) != len(modes):
            raise ConfigError(f"{path}: [war] modes must be distinct values of {list(WAR_MODES)}, got {list(modes)}")
        if not isinstance(w["widths"], list) or not w["widths"]:
            raise ConfigError(f"{path}: [war] widths must be a non-empty list of widths, got {w['widths']!r}")
        _check_distinct(w["widths"], f"{path}: [war] widths")
        try:
            war = WarPlan(int(w["reference_width"]), tuple(int(x) for x in w["widths"]), tuple(w.get("set", ())),
                          modes)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: [war] reference_width and widths must be integers ({error})") from None
        if war.reference_width not in grid.get("model.width", ()):
            raise ConfigError(f"{path}: war.reference_width {war.reference_width} must be one of grid "
                              f"'model.width' values {list(grid.get('model.width', ()))}")
        if "objective.lam" not in grid:
            raise ConfigError(f"{path}: WAR needs a λ grid ('objective.lam') to tune the reference width")
    if runs_parent is not None:
        runs_root = Path(runs_parent) / spec["name"]
    root = Path(runs_root or spec.get("runs_root") or Path("runs") / "studies" / spec["name"])
    attack_check = AttackCheckPlan.from_spec(spec["attack_check"]) if "attack_check" in spec else None
    study = Study(spec["name"], base, root, tuple(seeds), tuple(spec.get("set", ())), grid, war, path, attack_check)
    names = [run.name for run in study.runs()]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(f"{path}: two runs would share the directory {clashes[0]} (grid values that differ only in "
                          "spelling, e.g. 1 and 1.0): give each value once")
    for run in study.grid_runs():  # validate every run's config before any work
        _check_name(run.name, f"{path}: run name")
        load_config(ExperimentConfig, study.base_config, list(run.overrides))
    return study


def _check_name(name: Any, what: str) -> None:
    """A study or run name becomes a directory under the runs root: one plain path component."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or name.startswith("."):
        raise ConfigError(f"{what} must be a plain name (letters, digits, _ and -; no '/', '..' or leading '.'), "
                          f"as it becomes a directory; got {name!r}")


def _check_distinct(values: Any, what: str) -> None:
    """Duplicate grid values or seeds would run one configuration twice and count it as two."""
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ConfigError(f"{what} lists {value!r} twice: one run would be counted as two (n=2 with no spread). "
                              "Give each value once")
        seen.append(value)


def best_reference_lam(study: Study) -> float:
    """λ_s: the reference width's λ with the best held-out robust accuracy (mean over seeds)."""
    assert study.war is not None
    by_lam: dict[float, list[float]] = {}
    missing = []
    for run in study.grid_runs():
        if run.width != study.war.reference_width:
            continue
        if not study.is_finished(run):
            missing.append(run.name)
            continue
        summary = storage.read_json(study.run_dir(run) / "summary.json")
        best = summary["selected_by_val_robust_accuracy"] or summary["final"]
        by_lam.setdefault(run.lam, []).append(best.get("val_robust_accuracy", best.get("test_robust_accuracy")))
    if missing:
        raise RuntimeError(f"WAR runs need the λ grid of width {study.war.reference_width} to finish first; "
                           f"missing: {', '.join(missing)} (run `nt-robust study {study.spec_path} --stage grid`)")
    return max(by_lam, key=lambda lam: (sum(by_lam[lam]) / len(by_lam[lam]), -lam))


def resolve_overrides(study: Study, run: RunSpec) -> list[str]:
    """The run's full override list; for WAR runs this reads the finished reference runs."""
    if run.stage != WAR_STAGE:
        return list(run.overrides)
    lam_s = best_reference_lam(study)
    reference = next(r for r in study.grid_runs()
                     if r.width == study.war.reference_width and r.lam == lam_s and r.seed == run.seed)
    return [*run.overrides, f"objective.lam={lam_s}", "war.enabled=true",
            f"war.reference_run={_toml(str(study.run_dir(reference).resolve()))}"]


def run_index(study: Study, index: int) -> dict[str, Any] | None:
    """Train run ``index`` (skipping it if finished); returns its summary."""
    from nt_robust.train import train

    runs = study.runs()
    if not 0 <= index < len(runs):
        raise ConfigError(f"index {index} is out of range: {study.name} has {len(runs)} runs (0 … {len(runs) - 1})")
    run = runs[index]
    run_dir = study.run_dir(run)
    config = load_config(ExperimentConfig, study.base_config, resolve_overrides(study, run))
    if study.is_finished(run):
        summary = study.check_reusable(run, config)
        log.info("[%d/%d] %s: finished, skipped", index + 1, len(runs), run.name)
        return summary
    log.info("[%d/%d] %s", index + 1, len(runs), run.name)
    return train(config, run_dir)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _name_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace("/", "-").replace(" ", "")

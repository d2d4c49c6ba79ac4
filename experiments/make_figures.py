"""Regenerate every committed figure from scratch: the quick studies (trained anew) and the theory;
the regime map (hours) only when asked for (``--only regime_map``).

    make figures                                          # what the README means by it
    .venv/bin/python experiments/make_figures.py          # the same
    .venv/bin/python experiments/make_figures.py --list   # the stages, what they write, nothing run
    .venv/bin/python experiments/make_figures.py --resume runs/make_figures/20261202T041500Z
    .venv/bin/python experiments/make_figures.py --only theory

The studies train into a new directory ``runs/make_figures/<UTC time>/<study>``, so nothing
already trained is reused and no run anywhere is deleted or overwritten (``runs/studies/``,
where ``nt-robust study`` trains by default, is never touched). An interrupted build
resumes with ``--resume`` on its directory: finished runs are skipped there. Every stage
writes into ``figures/``. The wall and CPU time of each stage, the machine and the versions
are recorded in the build directory (``timing.json``); once every stage of a build has
finished, that record goes to ``figures/make_figures.json`` with the total (the sum of the
stages' times; a stage run again with ``--resume`` replaces its own entry) and is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nt_robust.environment import describe_cpu, environment_info  # noqa: E402
from nt_robust.storage import file_lock, read_json, write_json  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Stage:
    """One producer of a committed figure directory."""

    name: str
    figures: str            # the directory under the repository root it (re)writes
    study_spec: str | None  # a study spec, or None for the scripts
    default: bool = True    # run by a plain `make figures` (else only with --only NAME)
    script: str = "experiments/theory_all.py"
    map_of: str | None = None  # a study spec: `nt-robust map` of the runs its own stage trained in this build

    def command(self, build_dir: Path) -> list[str]:
        """Run from the repository root (relative paths, as the reports quote them)."""
        if self.map_of:   # the study's stage trains into build_dir/<study name>, where map --runs-root looks
            return [sys.executable, "-m", "nt_robust.cli", "map", self.map_of,
                    "--runs-root", str(build_dir), "--out", self.figures]
        if self.study_spec is None and self.name == "regime_map":
            return [sys.executable, self.script, "--runs-root", str(build_dir / self.name), "--out", self.figures]
        if self.study_spec is None:
            return [sys.executable, self.script, "--preset", "cpu", "--out", self.figures]
        return [sys.executable, "-m", "nt_robust.cli", "study", self.study_spec,
                "--runs-root", str(build_dir / self.name), "--figures-dir", self.figures]


RECORD = REPO / "figures" / "make_figures.json"
STAGES = (
    Stage("quick_fmnist", "figures/quick_fmnist", "experiments/study_quick_fmnist.toml"),
    Stage("quick_fmnist_seeds345", "figures/quick_fmnist_seeds345", "experiments/study_quick_fmnist_seeds345.toml"),
    Stage("theory", "figures/theory", None),
    # Hours on 2 cores (docs/results.md, "The regime map"): only with --only regime_map.
    Stage("regime_map", "figures/regime_map", None, default=False, script="experiments/build_regime_map.py"),
    # The issue-33 reading of the quick study (best held-out and final epoch): after quick_fmnist, same build.
    Stage("quick_fmnist_issue33", "figures/quick_fmnist_issue33", None, default=False,
          map_of="experiments/study_quick_fmnist.toml"),
    # The long-training axis (issue 33): 100 runs of 100 epochs, about 4.5 h on 2 cores; its map after it.
    Stage("regime_mlp_n2000_overfit", "figures/regime_mlp_n2000_overfit", "experiments/regime_mlp_n2000_overfit.toml",
          default=False),
    Stage("regime_mlp_n2000_overfit_map", "figures/regime_mlp_n2000_overfit/map", None, default=False,
          map_of="experiments/regime_mlp_n2000_overfit.toml"),
)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the stages and the commands, run nothing")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STAGES], metavar="STAGE",
                        help=f"run only these stages ({', '.join(s.name for s in STAGES)})")
    parser.add_argument("--resume", type=Path, metavar="BUILD_DIR",
                        help="continue an interrupted build in this runs/make_figures/<time> directory")
    args = parser.parse_args(argv)

    if args.resume is not None and not args.resume.is_dir():
        parser.error(f"--resume {args.resume}: no such build directory (builds are under runs/make_figures/)")
    build_dir = (args.resume or REPO / "runs" / "make_figures" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    stages = [s for s in STAGES if (s.name in args.only if args.only else s.default)]
    if args.list:
        for stage in stages:
            print(f"{stage.name}: writes {stage.figures}/\n    {' '.join(stage.command(build_dir))}")
        return 0

    print(f"make figures: {len(stages)} stage(s); study runs train into {build_dir}\n"
          f"(interrupted? rerun with --resume {build_dir}; machine: CPU {describe_cpu()})", flush=True)
    timing_path = build_dir / "timing.json"
    record = read_json(timing_path) if timing_path.exists() else {"build_dir": str(build_dir), "stages": {}}
    for stage in stages:
        print(f"== {stage.name} -> {stage.figures}/", flush=True)
        wall, cpu = time.time(), _children_cpu_seconds()
        result = subprocess.run(stage.command(build_dir), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        seconds = time.time() - wall
        entry = {"figures": stage.figures, "wall_s": round(seconds, 1), "cpu_s": round(_children_cpu_seconds() - cpu, 1),
                 "returncode": result.returncode, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "command": " ".join(stage.command(build_dir)[1:]), "environment": environment_info()}
        with file_lock(build_dir / ".timing.lock"):   # another sitting of this build may have recorded a stage
            record = read_json(timing_path) if timing_path.exists() else record
            record["stages"][stage.name] = entry
            write_json(timing_path, record)
        if result.returncode != 0:
            print(f"make figures: stage {stage.name} failed (exit {result.returncode}) after {_minutes(seconds)}; "
                  f"the figures of earlier stages are written. Fix it, then: "
                  f"python experiments/make_figures.py --resume {build_dir}", file=sys.stderr)
            return result.returncode
        print(f"== {stage.name}: {_minutes(seconds)}", flush=True)
    done = {name: s for name, s in record["stages"].items() if s["returncode"] == 0}
    if not {s.name for s in STAGES if s.default} <= set(done):
        missing = sorted({s.name for s in STAGES if s.default} - set(done))
        print(f"make figures: stages {', '.join(stages_run.name for stages_run in stages)} done; still to run in "
              f"this build: {', '.join(missing)} (--resume {build_dir} --only {' '.join(missing)})", flush=True)
        return 0
    record["total_wall_s"] = round(sum(s["wall_s"] for s in done.values()), 1)
    write_json(RECORD, record)
    per_stage = ", ".join(f"{name} {_minutes(s['wall_s'])}" for name, s in record["stages"].items())
    print(f"make figures: done in {_minutes(record['total_wall_s'])} on CPU {describe_cpu()} ({per_stage})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the regime presets, then draw the regime map and the predicted-vs-measured figures.

    python experiments/build_regime_map.py --list       # the regimes, their runs, what is finished
    python experiments/build_regime_map.py              # train what is missing, then draw
                                                        # (the *_overfit presets only with --only)
    python experiments/build_regime_map.py --only regime_mlp_n1000 regime_wrn_n1000  # some regimes (a sitting)
    python experiments/build_regime_map.py --draw-only  # no training: the map of what has finished
    python experiments/make_figures.py --only regime_map  # the same, from scratch, as a make-figures stage

Each regime is an ordinary study (``experiments/regime_*.toml``); by default the runs go where
``nt-robust study`` puts them (``runs/studies/<name>``), so the two share finished runs, and
``--runs-root DIR`` puts them under ``DIR/<name>`` instead (a make-figures build); each
regime's own study report goes to ``<its runs>/report/``. Finished
runs are skipped: the map can be built over several sittings, in any order. Then
``nt-robust map`` over every preset (``figures/regime_map/map.{md,json}``, ``slopes``,
``claims``) and ``experiments/theory_trained.py`` on the MLP and WRN centre regimes
(``trained_<study>``, ``trained.json``), whose runs it reads; study reports link to them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nt_robust.studies.sweep import load_study  # noqa: E402

SPECS = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("regime_*.toml"))
# The long-training presets (issue 33) take hours to days on a CPU: trained only when named
# with --only (their finished runs are drawn either way).
LONG_TRAINING_SUFFIX = "_overfit"
# The regimes whose trained runs get the kernel prediction (one figure per architecture).
THEORY_SPECS = ("experiments/regime_mlp_n1000.toml", "experiments/regime_wrn_n1000.toml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the regimes and their progress, run nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="train only these regimes (study names)")
    parser.add_argument("--draw-only", action="store_true", help="train nothing; draw from what has finished")
    parser.add_argument("--runs-root", type=Path, help="runs under DIR/<name> (default: runs/studies/<name>)")
    parser.add_argument("--out", default="figures/regime_map", help="output folder (default figures/regime_map)")
    args = parser.parse_args(argv)

    studies = {spec: load_study(REPO / spec, runs_parent=args.runs_root) for spec in SPECS}
    unknown = set(args.only or ()) - {s.name for s in studies.values()}
    if unknown:
        parser.error(f"unknown regimes {sorted(unknown)}; known: {sorted(s.name for s in studies.values())}")
    if args.list:
        for spec, study in studies.items():
            done = sum(study.is_finished(r) for r in study.runs())
            print(f"{study.name}: {done}/{len(study.runs())} runs finished ({spec}; runs in {study.runs_root})")
        return 0
    if not args.draw_only:
        for spec, study in studies.items():
            if args.only and study.name not in args.only:
                continue
            if not args.only and study.name.endswith(LONG_TRAINING_SUFFIX):
                print(f"== {study.name}: not trained by default (a long-training preset, hours on a CPU): "
                      f"--only {study.name}, or nt-robust study {spec} --pieces K --piece i in sittings", flush=True)
                continue
            start = time.time()
            print(f"== {study.name} ({spec})", flush=True)
            # Each regime's own report goes beside its runs, not into figures/: the map is what is committed.
            result = subprocess.run([sys.executable, "-m", "nt_robust.cli", "study", spec, "--no-estimate",
                                     "--runs-root", str(study.runs_root),
                                     "--figures-dir", str(study.runs_root / "report")], cwd=REPO)
            if result.returncode != 0:
                return result.returncode
            print(f"== {study.name}: {time.time() - start:.0f} s", flush=True)
    root = [] if args.runs_root is None else ["--runs-root", str(args.runs_root)]
    commands = [[sys.executable, "-m", "nt_robust.cli", "map", *SPECS, "--out", args.out, *root]]
    theory = [s for s in THEORY_SPECS if any(studies[s].is_finished(r) for r in studies[s].grid_runs())]
    if theory:
        commands.append([sys.executable, "experiments/theory_trained.py", *theory, "--out", args.out, *root])
    for command in commands:
        result = subprocess.run(command, cwd=REPO)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())

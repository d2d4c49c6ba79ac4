"""Cluster emitters (issue 13.4): the Slurm script is valid bash, submits the grid array,
then the WAR array afterok the grid, the attack check and the report last, and every array
task runs exactly the run that `nt-robust study SPEC --index i` names; the Kubernetes
Indexed Jobs map pod indices to the same runs."""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from nt_robust import cli
from nt_robust.cli_parser import build_parser
from nt_robust.studies.cluster import Resources, k8s_manifest, slurm_script, stage_ranges
from nt_robust.studies.sweep import load_study

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "study_quick_fmnist.toml"
FAKE_SBATCH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["SBATCH_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print(f"{1000 + len(calls)};cluster")
"""


def _option(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return values[0] if values else None


@pytest.fixture(scope="module")
def study():
    return load_study(SPEC)


def test_slurm_script_submits_arrays_with_dependencies(study, tmp_path):
    script = tmp_path / "submit.sh"
    script.write_text(slurm_script(study, Resources(partition="gpu", gpus_per_task=1, time="04:00:00", mem="32G")))
    subprocess.run(["bash", "-n", str(script)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "log")}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    calls = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [_option(c, "job-name") for c in calls] == [f"quick_fmnist-{s}" for s in ("grid", "war", "attacks", "report")]
    assert [_option(c, "dependency") for c in calls] == [None, "afterok:1000", "afterok:1001", "afterok:1002"]
    assert all("--parsable" in c for c in calls) and "report: job 1003" in done.stdout
    for call in calls[:3]:
        assert {"--partition=gpu", "--gpus-per-task=1", "--time=04:00:00", "--mem=32G"} <= set(call)
    ranges = stage_ranges(study)
    assert ranges == {"grid": (0, 35), "war": (36, 53)}   # 2 WAR readings × 3 widths × 3 seeds
    runs = study.runs()
    covered = []
    for call, stage in zip(calls[:2], ("grid", "war")):
        first, last = (int(x) for x in _option(call, "array").split("-"))
        assert (first, last) == ranges[stage]
        for task in range(first, last + 1):
            # what the task runs: the --wrap command with Slurm's task id
            command = subprocess.run(["bash", "-c", f"echo {_option(call, 'wrap')}"], capture_output=True, text=True,
                                     env={"SLURM_ARRAY_TASK_ID": str(task), "NT_ROBUST": "nt-robust"}).stdout
            argv = shlex.split(command)
            assert argv[0] == "nt-robust"
            args = build_parser().parse_args(argv[1:])
            assert args.index == task and runs[task].stage == stage and Path(args.spec) == SPEC
            covered.append(task)
    assert sorted(covered) == [r.index for r in runs]       # every run exactly once
    assert "--stage attacks" in _option(calls[2], "wrap") and "--report" in _option(calls[3], "wrap")


def test_k8s_indexed_jobs_map_to_the_study_indices(study):
    manifest = k8s_manifest(study, Resources(gpus_per_task=1, mem="32G", time="01:00:00", volume_claim="work"))
    documents = manifest.split("\n---\n")
    assert len(documents) == 4
    runs = study.runs()
    covered = []
    for document, stage in zip(documents[:2], ("grid", "war")):
        completions = int(re.search(r"completions: (\d+)", document).group(1))
        assert "completionMode: Indexed" in document and 'nvidia.com/gpu: "1"' in document
        offset = int(re.search(r"JOB_COMPLETION_INDEX \+ (\d+)", document).group(1))
        for pod in range(completions):
            index = pod + offset
            assert runs[index].stage == stage
            covered.append(index)
    assert covered == [r.index for r in runs]
    assert "--stage attacks" in documents[2] and "--report" in documents[3]
    assert "claimName: work" in documents[0] and "activeDeadlineSeconds: 3600" in documents[0]


def test_cli_emit_and_bad_time(capsys):
    assert cli.main(["study", str(SPEC), "--emit", "slurm", "--time", "4h"]) == 2
    assert "HH:MM:SS" in capsys.readouterr().err
    assert cli.main(["study", str(SPEC), "--emit", "k8s"]) == 0
    assert "kind: Job" in capsys.readouterr().out

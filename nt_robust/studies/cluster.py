"""A study as cluster jobs: a Slurm submission script, Kubernetes Indexed Jobs, or a Cloud TPU VM script::

    nt-robust study experiments/study_quick_fmnist.toml --emit slurm --partition gpu --gpus-per-task 1 \\
        --time 04:00:00 --mem 32G > submit.sh && bash submit.sh
    nt-robust study experiments/study_quick_fmnist.toml --emit k8s --image REGISTRY/nt-robust:TAG \\
        --gpus-per-task 1 --volume-claim work > study.yaml
    nt-robust study SPEC --emit tpu-vm --tpu-name my-v5e --zone us-west4-a --accelerator-type v5litepod-16
    nt-robust study SPEC --emit k8s --tpu tpu-v5-lite-podslice/4x4 --image ...      # GKE TPU slices

Slurm: the script ``cd``s to the repository (absolute path), writes one task script
(``RUNS_ROOT/slurm/task.sh``) and submits the grid stage as one job array (task i runs
``nt-robust study SPEC --index i``, i = the grid runs' indices 0 … G−1), the WAR stage as a
second array over G … G+W−1 after the whole grid succeeded (``--dependency=afterok``; a WAR
run's λ comes from the finished grid), the attack check (``--stage attacks``) after both,
and the report last. Array task ids *are* the study's run indices (``--list``).

Preemption and time limits: every job has ``--requeue`` and ``--signal=B:TERM@S`` (S =
``--signal-margin``, default 120 s): Slurm sends SIGTERM to the task script S seconds before
``--time`` (up to 60 s earlier: Slurm checks limits on a timer); the script passes it to the
run, which stops and exits 143 with its progress in its checkpoint; the script then calls
``scontrol requeue`` on its own job and exits 0. A requeued job goes back to the queue under
the same id (Slurm 22.05 holds it about 2 minutes before its next attempt), so ``afterok`` waits for the attempt that finishes instead of failing (a task that *reaches*
``--time`` is TIMEOUT, which ``afterok`` counts as failure: S must cover the time a step and a
checkpoint take). Logs: ``STAGE_%A_%a.out`` with ``--open-mode=append``: one file per task of
a submission, every attempt appended below a ``== … attempt N`` line; a resubmission (a new
``%A``) never overwrites an earlier one. ``--kill-on-invalid-dep=yes``: when a stage fails,
the later ones are cancelled instead of pending forever.

Multi-node (``--nodes N``, N > 1): each grid and WAR task takes N nodes with one task per
node and starts the run under ``srun`` with ``--distributed`` (JAX finds its peers from
Slurm's environment); the attack check and the report run on one node.

Kubernetes (:mod:`nt_robust.studies.cluster_k8s`); TPU VMs (:mod:`nt_robust.studies.cluster_tpu`).
The executable (``--executable``, default ``.venv/bin/nt-robust``: the repository's own
virtual environment, relative to the repository root that the Slurm script ``cd``s to and
the pod's ``workingDir``) is the same for every emitter; ``--executable nt-robust`` takes
it from PATH.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from nt_robust.config import ConfigError
from nt_robust.studies import cluster_k8s, cluster_tpu
from nt_robust.studies.cluster_base import (DEFAULT_EXECUTABLE, DEFAULT_SIGNAL_MARGIN, GRID_STAGE, WAR_STAGE,
                                            Resources, stage_ranges)

if TYPE_CHECKING:  # the CLI's parser imports this module: nothing here may import JAX at module level
    from nt_robust.studies.sweep import Study

__all__ = ["EMITTERS", "Resources", "add_emit_arguments", "emit", "emit_from_args", "slurm_script", "stage_ranges"]

EMITTERS = ("slurm", "k8s", "tpu-vm")


TASK_SCRIPT = r'''#!/usr/bin/env bash
# One Slurm task of an nt-robust study (written by the study's submission script; see
# nt_robust/studies/cluster.py). Usage: task.sh [--srun] EXECUTABLE ARGS...; an array task
# adds --index $SLURM_ARRAY_TASK_ID. SIGTERM (--signal=B:TERM@S before the time limit,
# preemption) goes to the run, which stops with exit code 143 and its progress saved; the
# task then requeues its own job, whose next attempt resumes the run, so afterok waits.
set -uo pipefail
launch=()
if [ "${1:-}" = --srun ]; then shift; launch=(srun --ntasks-per-node=1 --kill-on-bad-exit=1); fi
echo "== $(date -u +%FT%TZ) job ${SLURM_JOB_ID:-none} (${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-})" \
     "attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $(hostname)"
${launch[@]+"${launch[@]}"} "$@" ${SLURM_ARRAY_TASK_ID:+--index "$SLURM_ARRAY_TASK_ID"} &  # the + form: an empty array under set -u, bash < 4.4
child=$!
trap 'echo "== SIGTERM: passing it to the run"; kill -TERM "$child" 2>/dev/null' TERM
while :; do  # wait returns early when the trap runs: wait again until the run has exited
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break
done
if [ "$code" -eq 143 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "== the run stopped on SIGTERM (exit 143) with its progress saved: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "== scontrol requeue $SLURM_JOB_ID failed (cancelled, or already requeued by Slurm)"
fi
exit "$code"
'''


def _sbatch_options(resources: Resources, gpus: bool = True, nodes: int = 1) -> list[str]:
    options = ["--requeue", f"--signal=B:TERM@{resources.signal_margin}", "--open-mode=append",
               "--kill-on-invalid-dep=yes", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if resources.partition:
        options.append(f"--partition={resources.partition}")
    if gpus and resources.gpus_per_task is not None:
        options.append(f"--gpus-per-task={resources.gpus_per_task}")
    if resources.cpus_per_task is not None:
        options.append(f"--cpus-per-task={resources.cpus_per_task}")
    if resources.time:
        options.append(f"--time={resources.time}")
    if resources.mem:
        options.append(f"--mem={resources.mem}")
    return options


def slurm_script(study: Study, resources: Resources = Resources()) -> str:
    """A bash script that submits the study with ``sbatch`` (see the module docstring)."""
    repo = Path(resources.repo or Path.cwd()).resolve()
    spec = shlex.quote(str((repo / study.spec_path).resolve()))
    runs_root = (repo / study.runs_root).resolve()
    command = f"{shlex.quote(resources.executable)} study {spec} --runs-root {shlex.quote(str(runs_root))}"
    lines = [
        "#!/usr/bin/env bash",
        f"# Submits study {study.name!r} ({len(study.runs())} runs) to Slurm; generated by",
        f"#   nt-robust study {study.spec_path} --emit slurm",
        "# Array task ids are the study's run indices (nt-robust study SPEC --list). Tasks stopped by",
        "# SIGTERM (time limit warning, preemption) requeue themselves and resume; see task.sh.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(repo))}",
        f"LOGS={shlex.quote(str(runs_root / 'slurm'))}",
        'mkdir -p "$LOGS"',
        "cat > \"$LOGS/task.sh\" <<'TASK'",
        TASK_SCRIPT.rstrip("\n"),
        "TASK",
        'chmod +x "$LOGS/task.sh"',
        "submit() { local id; id=$(sbatch --parsable \"$@\"); echo \"${id%%;*}\"; }",
    ]
    common = f"--chdir={shlex.quote(str(repo))}"
    ranges = stage_ranges(study)
    previous = None
    for stage in (GRID_STAGE, WAR_STAGE):
        if stage not in ranges:
            continue
        first, last = ranges[stage]
        options = " ".join(_sbatch_options(resources, nodes=resources.nodes))
        dependency = f" --dependency=afterok:${previous}" if previous else ""
        srun, distributed = ("--srun ", " --distributed") if resources.nodes > 1 else ("", "")
        lines.append(f"{stage}=$(submit --job-name={shlex.quote(f'{study.name}-{stage}')} {common} {options}"
                     f"{dependency} --array={first}-{last} --output=\"$LOGS/{stage}_%A_%a.out\" "
                     f"\"$LOGS/task.sh\" {srun}{command}{distributed})")
        lines.append(f'echo "{stage}: job $' + f'{stage} (array {first}-{last})"')
        previous = stage
    tail = ([("attacks", "--stage attacks", True)] if study.attack_check is not None else []) \
        + [("report", "--report", False)]
    for stage, flag, gpus in tail:
        options = " ".join(_sbatch_options(resources, gpus=gpus))
        dependency = f" --dependency=afterok:${previous}" if previous else ""
        lines.append(f"{stage}=$(submit --job-name={shlex.quote(f'{study.name}-{stage}')} {common} {options}"
                     f"{dependency} --output=\"$LOGS/{stage}_%j.out\" \"$LOGS/task.sh\" {command} {flag})")
        lines.append(f'echo "{stage}: job ${stage}"')
        previous = stage
    return "\n".join(lines) + "\n"


def emit(study: Study, kind: str, resources: Resources, tpu_vm: object | None = None) -> str:
    """The text ``--emit KIND`` prints (``tpu_vm``: a :class:`cluster_tpu.TpuVm` for ``tpu-vm``)."""
    if kind == "slurm":
        return slurm_script(study, resources)
    if kind == "k8s" and resources.tpu:
        cluster_k8s.check_image(resources)
        return cluster_tpu.gke_tpu_manifest(study, resources)
    if kind == "k8s":
        return cluster_k8s.k8s_manifest(study, resources)
    if kind == "tpu-vm":
        return cluster_tpu.tpu_vm_script(study, tpu_vm, resources.executable)
    raise ConfigError(f"--emit must be one of {', '.join(EMITTERS)}, got {kind!r}")


def add_emit_arguments(study_parser: argparse.ArgumentParser) -> None:
    """The ``study`` command's cluster options (``--emit`` and what it uses; ``--distributed``)."""
    cluster = study_parser.add_argument_group("cluster jobs (--emit; see nt_robust/studies/cluster.py)")
    cluster.add_argument("--emit", choices=EMITTERS,
                         help="print a Slurm submission script (job arrays: grid, then WAR afterok, then report), "
                              "Kubernetes Indexed Jobs, or a Cloud TPU VM script, and stop")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-task", type=int, metavar="N", help="GPUs per run (per node with --nodes)")
    cluster.add_argument("--cpus-per-task", type=int, metavar="N", help="CPU cores per run (per node with --nodes)")
    cluster.add_argument("--time", metavar="HH:MM:SS", help="time limit per run (k8s: per pod)")
    cluster.add_argument("--mem", metavar="M", help="memory per run, Slurm's units: 32G = 32 GiB (k8s: 32Gi)")
    cluster.add_argument("--nodes", type=int, default=1, metavar="N",
                         help="Slurm: nodes per run; N > 1 runs each grid and WAR run under srun, one task per "
                              "node, with --distributed")
    cluster.add_argument("--signal-margin", type=int, default=DEFAULT_SIGNAL_MARGIN, metavar="S",
                         help="Slurm: SIGTERM S seconds before --time, so the run stops, requeues and resumes "
                              f"(default {DEFAULT_SIGNAL_MARGIN})")
    cluster.add_argument("--executable", default=DEFAULT_EXECUTABLE, metavar="PATH",
                         help="the nt-robust every job runs, relative to the repository root or absolute "
                              f"(default {DEFAULT_EXECUTABLE}; 'nt-robust': from PATH)")
    cluster.add_argument("--image", help="k8s (required): container image with the repository's environment")
    cluster.add_argument("--volume-claim", metavar="PVC",
                         help="k8s: PersistentVolumeClaim holding the repository, data and runs")
    cluster.add_argument("--workdir", metavar="DIR",
                         help="k8s: where the repository is in the pod (default /work); tpu-vm: on the TPU VM "
                              "(default ~/nt_robust)")
    cluster.add_argument("--tpu", metavar="ACCELERATOR/TOPOLOGY",
                         help="k8s on GKE: one Indexed Job per run over the hosts of a TPU slice, e.g. "
                              "tpu-v5-lite-podslice/4x4")
    cluster_tpu.add_tpu_vm_arguments(cluster)
    study_parser.add_argument("--distributed", action="store_true",
                              help="join a multi-host job (jax.distributed: Slurm, TPU pod slices, GKE) before "
                                   "running (what --emit's multi-host jobs pass)")


def emit_from_args(study: Study, args: argparse.Namespace) -> str:
    """What ``nt-robust study SPEC --emit KIND ...`` prints (the CLI's one call)."""
    resources = Resources(partition=args.partition, gpus_per_task=args.gpus_per_task,
                          cpus_per_task=args.cpus_per_task, time=args.time, mem=args.mem, nodes=args.nodes,
                          signal_margin=args.signal_margin, executable=args.executable, image=args.image,
                          volume_claim=args.volume_claim, workdir=args.workdir or "/work", tpu=args.tpu)
    tpu_vm = None
    if args.emit == "tpu-vm":
        tpu_vm = cluster_tpu.tpu_vm_from_args(study, args)
    return emit(study, args.emit, resources, tpu_vm)

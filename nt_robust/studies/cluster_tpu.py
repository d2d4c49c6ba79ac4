"""A study on Cloud TPU: a TPU VM script (``--emit tpu-vm``) and GKE TPU slices (``--emit k8s --tpu``)::

    nt-robust study SPEC --emit tpu-vm --tpu-name my-tpu --zone us-west4-a \\
        --accelerator-type v5litepod-16 > study_tpu.sh && bash study_tpu.sh
    nt-robust study SPEC --emit k8s --tpu tpu-v5-lite-podslice/4x4 --image IMAGE --volume-claim work

TPU VM: every run uses the whole slice: one ``gcloud compute tpus tpu-vm ssh NAME --zone Z
--worker=all --command "..."`` call per ``--runs-per-slice`` runs (default 1) starts the same
command on every worker at once, from the repository folder (``--workdir``, default
``nt_robust`` in the home directory), with ``--distributed`` (JAX finds the slice's other
hosts itself). Each worker writes its own log, ``RUNS_ROOT/tpu_logs/run_I.$(hostname).log``.
The script installs nothing (the session in the README sets the workers up once); rerun it
after a failure or a preemption: finished runs are skipped, interrupted ones resume from their
checkpoints. The attack check and the report run on worker 0 alone, on its CPU
(``JAX_PLATFORMS=cpu``: one process cannot hold a multi-host slice's TPU). RUNS_ROOT must be
storage every worker sees (Filestore NFS, a gcsfuse bucket): process 0 writes the run
directory and every worker writes its part of each checkpoint.

GKE: one Indexed Job per run with one pod per host of the slice (``completions`` = hosts),
a headless Service per run (``subdomain``) so pods reach each other by name, the node
selectors ``cloud.google.com/gke-tpu-accelerator`` and ``cloud.google.com/gke-tpu-topology``,
``google.com/tpu`` chips per pod, and ``TPU_WORKER_ID`` / ``TPU_WORKER_HOSTNAMES`` (what
GKE's TPU webhook also sets, and what JAX's GKE TPU cluster detection reads). The runs'
Jobs may be applied together; the attack check and report Jobs after all of them.

Checked before anything is written (:func:`check_slice`): the accelerator is known, the
global batch divides by the slice's chips (each host feeds ``batch / hosts`` rows), and every
width's estimated peak memory per chip (``nt_robust.studies.cost``, at ``batch / chips`` rows
per chip) fits the chip's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from typing import TYPE_CHECKING

from nt_robust.config import ConfigError
from nt_robust.studies.cluster_base import GRID_STAGE, WAR_STAGE, Resources
from nt_robust.studies.cluster_k8s import K8S_VERSION, command_args, job, k8s_name, pod_spec, to_yaml

if TYPE_CHECKING:
    from nt_robust.studies.sweep import Study

CHIPS_PER_HOST = 4          # every multi-host TPU VM of v4, v5e and v5p has 4 chips
JAX_TPU_PORT = 8476         # the coordinator port JAX uses on TPU slices


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: its names in TPU VM accelerator types and on GKE, and its PEAKS entry."""

    vm_prefix: str          # "v5litepod" in "v5litepod-16"
    gke: str                # cloud.google.com/gke-tpu-accelerator
    peak: str               # nt_robust.accelerators.PEAKS name (memory per chip)
    cores_per_chip: int     # what the number in a TPU VM accelerator type counts per chip
    single_host_chips: tuple[int, ...]  # slices of this many chips have one host


GENERATIONS = (
    Generation("v4", "tpu-v4-podslice", "tpu-v4", 2, (1, 2, 4)),
    Generation("v5litepod", "tpu-v5-lite-podslice", "tpu-v5e", 1, (1, 4, 8)),
    Generation("v5p", "tpu-v5p-slice", "tpu-v5p", 2, (1, 2, 4)),
)


@dataclasses.dataclass(frozen=True)
class Slice:
    generation: Generation
    chips: int

    @property
    def hosts(self) -> int:
        return 1 if self.chips in self.generation.single_host_chips else self.chips // CHIPS_PER_HOST

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts


def vm_slice(accelerator_type: str) -> Slice:
    """``"v5litepod-16"`` -> 16 v5e chips on 4 hosts; ``"v4-32"`` -> 16 chips (32 TensorCores)."""
    prefix, _, number = accelerator_type.rpartition("-")
    for generation in GENERATIONS:
        if prefix == generation.vm_prefix and number.isdigit() and int(number) % generation.cores_per_chip == 0:
            chips = int(number) // generation.cores_per_chip
            if chips in generation.single_host_chips or chips % CHIPS_PER_HOST == 0:
                return Slice(generation, chips)
    known = ", ".join(f"{g.vm_prefix}-N" for g in GENERATIONS)
    raise ConfigError(f"unknown TPU accelerator type {accelerator_type!r}: give one of {known} (e.g. v5litepod-16, "
                      "v4-32, v5p-32; `gcloud compute tpus accelerator-types list --zone ZONE` lists a zone's)")


def gke_slice(tpu: str) -> tuple[Slice, str]:
    """``"tpu-v5-lite-podslice/4x4"`` -> (16 chips on 4 hosts, ``"4x4"``)."""
    accelerator, _, topology = tpu.partition("/")
    generation = next((g for g in GENERATIONS if g.gke == accelerator), None)
    if generation is None:
        raise ConfigError(f"unknown GKE TPU accelerator {accelerator!r} in --tpu {tpu}: give one of "
                          f"{', '.join(g.gke for g in GENERATIONS)} followed by /TOPOLOGY, e.g. "
                          "tpu-v5-lite-podslice/4x4 or tpu-v4-podslice/2x2x4")
    dims = topology.split("x")
    if not (topology and all(d.isdigit() and int(d) > 0 for d in dims) and len(dims) in (2, 3)):
        raise ConfigError(f"--tpu {tpu}: the topology must be like 4x4 or 2x2x4, got {topology!r}")
    chips = math.prod(int(d) for d in dims)
    if not (chips in generation.single_host_chips or chips % CHIPS_PER_HOST == 0):
        raise ConfigError(f"--tpu {tpu}: {chips} chips is no slice of {accelerator} (a multiple of "
                          f"{CHIPS_PER_HOST}, or one of {generation.single_host_chips})")
    return Slice(generation, chips), topology


def check_slice(study: Study, tpu_slice: Slice, what: str, memory: bool = True) -> None:
    """Refuse (ConfigError) a study whose global batch does not divide over the slice or whose
    runs do not fit its chips' memory by the estimate of ``nt_robust.studies.cost``."""
    from nt_robust.config import load_config
    from nt_robust.train.config import ExperimentConfig

    base = load_config(ExperimentConfig, study.base_config, list(study.runs()[0].overrides))
    batch = base.train.batch_size
    if batch % tpu_slice.chips:
        raise ConfigError(
            f"train.batch_size = {batch} does not divide over {what}'s {tpu_slice.chips} chips on {tpu_slice.hosts} "
            f"hosts (each host feeds batch / hosts rows, each chip batch / chips): use a batch that is a multiple of "
            f"{tpu_slice.chips} (--set in the spec's `set`), or a smaller slice")
    if not memory:
        return
    from nt_robust.studies.cost import estimate_cost

    for row in estimate_cost(study, device=tpu_slice.generation.peak):
        if row["peak_bytes"] is None:
            continue
        state = row.get("state_bytes", 0)
        per_chip = state + (row["peak_bytes"] - state) / tpu_slice.chips  # the batch's memory splits over chips
        if per_chip > row["memory_bytes"]:
            raise ConfigError(
                f"width {row['width']} ({row['model']}) needs about {per_chip / 2**30:.1f} GiB per chip on {what} "
                f"(estimate at {batch // tpu_slice.chips} rows per chip), more than a {tpu_slice.generation.peak} "
                f"chip's {row['memory_bytes'] / 2**30:.0f} GiB: use a larger slice, a smaller train.batch_size, or "
                "model.dtype = \"bfloat16\"")


@dataclasses.dataclass(frozen=True)
class TpuVm:
    name: str
    zone: str
    accelerator_type: str
    runs_per_slice: int = 1
    workdir: str = "nt_robust"   # on every worker, relative to the home directory (or absolute)
    project: str | None = None

    def __post_init__(self) -> None:
        if self.runs_per_slice < 1:
            raise ConfigError(f"--runs-per-slice must be >= 1, got {self.runs_per_slice}")


def add_tpu_vm_arguments(group: argparse._ArgumentGroup) -> None:
    """``--emit tpu-vm``'s options (in the study command's cluster group)."""
    group.add_argument("--tpu-name", metavar="NAME", help="tpu-vm: the TPU VM (gcloud compute tpus tpu-vm create NAME)")
    group.add_argument("--zone", help="tpu-vm: its zone, e.g. us-west4-a")
    group.add_argument("--project", help="tpu-vm: the Google Cloud project (default: gcloud's)")
    group.add_argument("--accelerator-type", metavar="TYPE",
                       help="tpu-vm: the slice, e.g. v5litepod-16, v4-32 (checked against the batch and memory)")
    group.add_argument("--runs-per-slice", type=int, default=1, metavar="K",
                       help="tpu-vm: runs each gcloud call trains one after the other on the slice (default 1)")


def tpu_vm_from_args(study: Study, args: argparse.Namespace) -> TpuVm:
    missing = [f"--{n}" for n in ("tpu-name", "zone", "accelerator-type") if not getattr(args, n.replace("-", "_"))]
    if missing:
        raise ConfigError(f"--emit tpu-vm needs {', '.join(missing)} (e.g. --tpu-name my-tpu --zone us-west4-a "
                          "--accelerator-type v5litepod-16)")
    return TpuVm(args.tpu_name, args.zone, args.accelerator_type, args.runs_per_slice,
                 args.workdir or "nt_robust", args.project)


def tpu_vm_script(study: Study, vm: TpuVm, executable: str, memory_check: bool = True) -> str:
    """The bash script of ``gcloud ... tpu-vm ssh`` calls (module docstring)."""
    tpu_slice = vm_slice(vm.accelerator_type)
    check_slice(study, tpu_slice, vm.accelerator_type, memory=memory_check)
    q = shlex.quote
    study_cmd = f"{q(executable)} study {q(str(study.spec_path))} --runs-root {q(str(study.runs_root))}"
    logs = f"{q(str(study.runs_root))}/tpu_logs"
    project = f" --project {q(vm.project)}" if vm.project else ""
    lines = ["#!/usr/bin/env bash",
             f"# Study {study.name!r} ({len(study.runs())} runs) on TPU VM {vm.name} ({vm.accelerator_type}: "
             f"{tpu_slice.chips} chips, {tpu_slice.hosts} hosts) in {vm.zone};",
             f"# generated by nt-robust study {study.spec_path} --emit tpu-vm. Every run uses the whole slice.",
             "# Rerun it to resume: finished runs are skipped, interrupted ones resume from their checkpoints.",
             "set -euo pipefail",
             f"on() {{ gcloud compute tpus tpu-vm ssh {q(vm.name)} --zone {q(vm.zone)}{project} "
             "--worker=\"$1\" --command \"$2\"; }"]
    prologue = f"set -euo pipefail; cd {vm.workdir} && mkdir -p {logs}"
    indices = [r.index for r in study.runs() if r.stage in (GRID_STAGE, WAR_STAGE)]
    stage_of = {r.index: r.stage for r in study.runs()}
    for start in range(0, len(indices), vm.runs_per_slice):
        chunk = indices[start:start + vm.runs_per_slice]
        steps = "; ".join(f"{study_cmd} --index {i} --distributed > {logs}/run_{i}.$(hostname).log 2>&1"
                          for i in chunk)
        stages = sorted({stage_of[i] for i in chunk})
        lines.append(f"echo 'runs {chunk[0]}-{chunk[-1]} ({', '.join(stages)})'" if len(chunk) > 1
                     else f"echo 'run {chunk[0]} ({stages[0]})'")
        lines.append(f"on all {q(f'{prologue}; {steps}')}")
    tail = (["--stage attacks"] if study.attack_check is not None else []) + ["--report"]
    for flag in tail:
        name = flag.split()[-1].lstrip("-")
        lines.append(f"echo '{name} (worker 0)'")
        lines.append(f"on 0 {q(f'{prologue}; JAX_PLATFORMS=cpu {study_cmd} {flag} > {logs}/{name}.log 2>&1')}")
    return "\n".join(lines) + "\n"


def gke_tpu_manifest(study: Study, resources: Resources, memory_check: bool = True) -> str:
    """One Indexed Job (pods = the slice's hosts) and headless Service per run, then the attack
    check and the report on CPU (module docstring)."""
    tpu_slice, topology = gke_slice(resources.tpu)
    check_slice(study, tpu_slice, resources.tpu, memory=memory_check)
    hosts = tpu_slice.hosts
    documents, order = [], []
    selector = {"cloud.google.com/gke-tpu-accelerator": tpu_slice.generation.gke,
                "cloud.google.com/gke-tpu-topology": topology}
    tpu_resources = dataclasses.replace(resources, gpus_per_task=None)
    for run in study.runs():
        name = k8s_name(f"{study.name}-{run.index}")
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                   "spec": {"clusterIP": "None", "selector": {"job-name": name}}}
        spec = pod_spec(tpu_resources, command_args(resources, study, f"--index {run.index} --distributed"))
        container = spec["containers"][0]
        container.setdefault("resources", {}).setdefault("limits", {})["google.com/tpu"] = \
            str(tpu_slice.chips_per_host)
        container["ports"] = [{"containerPort": 8471}, {"containerPort": JAX_TPU_PORT}]
        container["env"] = [
            {"name": "TPU_WORKER_ID", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "TPU_WORKER_HOSTNAMES", "value": ",".join(f"{name}-{h}.{name}" for h in range(hosts))}]
        spec.update(subdomain=name, nodeSelector=selector)
        tpu_job = job(name, spec, hosts, indexed=True)
        tpu_job["spec"].pop("backoffLimitPerIndex")  # the hosts of a slice fail together: the Job retries whole
        tpu_job["spec"]["backoffLimit"] = 2 * hosts
        documents += [(f"run {run.index} ({run.stage}, {run.name}): headless Service for its {hosts} hosts", service),
                      (f"run {run.index}: one pod per host of {resources.tpu} ({tpu_slice.chips} chips)", tpu_job)]
        order.append(f"{name} (Service and Job; {run.stage})")
    tail = (["--stage attacks"] if study.attack_check is not None else []) + ["--report"]
    cpu_resources = dataclasses.replace(resources, gpus_per_task=None)
    for flag in tail:
        stage = flag.split()[-1].lstrip("-")
        name = k8s_name(f"{study.name}-{stage}")
        command = command_args(cpu_resources, study, flag)
        command[2] = command[2].replace("exec ", "JAX_PLATFORMS=cpu exec ", 1)
        documents.append((f"{stage}, on CPU", job(name, pod_spec(cpu_resources, command, gpus=False))))
        order.append(name)
    lines = [f"Study {study.name!r} ({len(study.runs())} runs) as Kubernetes Jobs on GKE TPU {resources.tpu} "
             f"(Kubernetes >= {K8S_VERSION});", f"generated by nt-robust study {study.spec_path} --emit k8s --tpu",
             "Apply the grid runs' Services and Jobs (together, if the slices are there), then, after every grid",
             "Job completed (kubectl wait --for=condition=complete --timeout=-1s job/NAME), the WAR runs',",
             "then the rest, in this order:", *[f"  {i + 1}. {n}" for i, n in enumerate(order)]]
    return to_yaml(documents, lines)

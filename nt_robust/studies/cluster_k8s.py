"""A study as Kubernetes Jobs (``nt-robust study SPEC --emit k8s --image IMAGE``)::

    nt-robust study experiments/study_quick_fmnist.toml --emit k8s --image REGISTRY/nt-robust:TAG \\
        --gpus-per-task 1 --mem 32G --time 04:00:00 --volume-claim work > study.yaml

One Indexed Job per stage (``completionMode: Indexed``); a pod runs ``--index
$((JOB_COMPLETION_INDEX + OFFSET))`` with OFFSET = 0 for the grid and G for WAR. Jobs have no
dependencies in Kubernetes: apply them in order, waiting for each (``kubectl wait
--for=condition=complete job/NAME``), as the manifest's comments say. Every pod needs the
repository, the data and the runs directory at the same path (a shared volume:
``--volume-claim``, mounted at ``--workdir``), and an image (``--image``, required) whose
environment can run the executable: the default ``.venv/bin/nt-robust`` is the repository's
virtual environment on the volume, which runs only in an image with the same Python at the
same path as where it was built; an image with nt-robust installed takes ``--executable nt-robust``.

Target: Kubernetes >= :data:`K8S_VERSION` (``backoffLimitPerIndex`` is beta and on by default
from 1.29; 1.28 has it only behind the JobBackoffLimitPerIndex feature gate). The manifests
are checked against that version's API schema (tests/studies/test_cluster.py, with PyPI's
kubernetes-validate). ``--time`` is each pod's ``activeDeadlineSeconds`` (not the Job's,
which would count queueing and retries); a pod stopped by SIGTERM (the deadline, eviction,
preemption) exits 143 after its checkpoint, which the Job's ``podFailurePolicy`` ignores:
the index gets a new pod that resumes the run, without using up ``backoffLimitPerIndex``.
``--mem`` takes Slurm's units (32G = 32 GiB) and becomes ``32Gi``.

GKE TPU slices (``--tpu ACCELERATOR/TOPOLOGY``): :func:`nt_robust.studies.cluster_tpu.gke_tpu_manifest`,
built from this module's pieces.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from nt_robust.config import ConfigError
from nt_robust.studies.cluster_base import SLURM_MEMORY, Resources, stage_ranges, time_seconds

if TYPE_CHECKING:
    from nt_robust.studies.sweep import Study

K8S_VERSION = "1.29"
TERMINATED = 143  # 128 + SIGTERM: the run stopped and saved (nt_robust.cli)


def k8s_memory(mem: str) -> str:
    """Slurm's ``--mem`` (binary units; no unit = MiB) in Kubernetes units: ``"32G"`` -> ``"32Gi"``."""
    match = SLURM_MEMORY.match(mem)
    if not match:
        raise ConfigError(f"--mem must be a whole number with an optional K, M, G or T, got {mem!r}")
    number, unit = match.groups()
    return f"{number}{unit or 'M'}i"


def command_args(resources: Resources, study: Study, rest: str) -> list[str]:
    """The container's command: bash that stops at the first error and runs nt-robust."""
    spec = shlex.quote(str(study.spec_path))
    runs = shlex.quote(str(study.runs_root))
    return ["bash", "-c", f"set -euo pipefail; exec {shlex.quote(resources.executable)} study {spec} "
                          f"--runs-root {runs} {rest}"]


def pod_spec(resources: Resources, command: list[str], gpus: bool = True) -> dict:
    """The pod template's spec: one container, the per-pod deadline, the shared volume."""
    limits = {}
    if gpus and resources.gpus_per_task:
        limits["nvidia.com/gpu"] = str(resources.gpus_per_task)
    if resources.mem:
        limits["memory"] = k8s_memory(resources.mem)
    if resources.cpus_per_task:
        limits["cpu"] = str(resources.cpus_per_task)
    container = {"name": "nt-robust", "image": resources.image, "workingDir": resources.workdir,
                 "command": command[:2], "args": command[2:]}
    if limits:
        container["resources"] = {"limits": limits}
    spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": resources.signal_margin,
            "containers": [container]}
    if resources.time:
        spec["activeDeadlineSeconds"] = time_seconds(resources.time)
    if resources.volume_claim:
        container["volumeMounts"] = [{"name": "work", "mountPath": resources.workdir}]
        spec["volumes"] = [{"name": "work", "persistentVolumeClaim": {"claimName": resources.volume_claim}}]
    return spec


def job(name: str, spec: dict, completions: int = 1, indexed: bool = False, labels: dict | None = None) -> dict:
    """A batch/v1 Job; SIGTERM'd pods (exit 143, disruptions) are retried without counting."""
    body = {"completions": completions, "parallelism": completions,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onExitCodes": {"containerName": "nt-robust", "operator": "In",
                                                     "values": [TERMINATED]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {"spec": spec}}
    if labels:
        body["template"]["metadata"] = {"labels": labels}
    if indexed:
        body.update(completionMode="Indexed", backoffLimitPerIndex=2)
    else:
        body["backoffLimit"] = 2
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": body}


def k8s_name(text: str) -> str:
    """A DNS-1123 label from ``text`` (lower case, '-' for anything else, at most 50 characters)."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:50].strip("-")


def to_yaml(documents: list[tuple[str, dict]], header: list[str]) -> str:
    """Multi-document YAML (JSON flow style, which is YAML) with a comment above each document."""
    body = "\n---\n".join(f"# {comment}\n{json.dumps(document, indent=2)}" for comment, document in documents)
    return "\n".join(f"# {line}" for line in header) + "\n" + body + "\n"


def check_image(resources: Resources) -> None:
    if not resources.image:
        raise ConfigError("--emit k8s needs --image IMAGE: a container image that can run "
                          f"{resources.executable} (the repository's .venv runs only in an image with the Python it "
                          "was built with, at the same path; an image with nt-robust installed takes --executable "
                          "nt-robust)")


def k8s_manifest(study: Study, resources: Resources) -> str:
    """One Indexed Job per stage, then the attack check and the report (module docstring)."""
    check_image(resources)
    documents, order = [], []
    for stage, (first, last) in stage_ranges(study).items():
        name = k8s_name(f"{study.name}-{stage}")
        command = command_args(resources, study, f"--index $((JOB_COMPLETION_INDEX + {first}))")
        documents.append((f"stage {stage}: study indices {first}-{last} (pod index + {first})",
                          job(name, pod_spec(resources, command), last - first + 1, indexed=True)))
        order.append(name)
    tail = ([("attacks", "--stage attacks", True)] if study.attack_check is not None else []) \
        + [("report", "--report", False)]
    for stage, flag, gpus in tail:
        name = k8s_name(f"{study.name}-{stage}")
        documents.append((stage, job(name, pod_spec(resources, command_args(resources, study, flag), gpus))))
        order.append(name)
    return to_yaml(documents, header(study, order))


def header(study: Study, order: list[str]) -> list[str]:
    return [f"Study {study.name!r} ({len(study.runs())} runs) as Kubernetes Jobs (Kubernetes >= {K8S_VERSION});",
            f"generated by nt-robust study {study.spec_path} --emit k8s",
            "Jobs have no dependencies: apply the documents one at a time, in this order, each after",
            "the previous one completed (kubectl wait --for=condition=complete --timeout=-1s job/NAME):",
            *[f"  {i + 1}. {n}" for i, n in enumerate(order)]]

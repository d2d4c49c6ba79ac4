"""Cluster emitters (issues 13.4, 38 items 1 and 3, 39 items 1 and 2): the Slurm script is valid
bash, submits the grid array, then the WAR array afterok the grid, the attack check and the
report last, with the options a real Slurm needs, and every array task runs exactly the run that
``nt-robust study SPEC --index i`` names; its task script passes SIGTERM to the run and requeues
on exit 143 (real signals, a stub scontrol); the Kubernetes manifests map pod indices to the same
runs and pass the Kubernetes API schema of the version they state (kubernetes-validate, offline);
the TPU VM script issues the expected gcloud commands (a stub gcloud); bad TPU input is refused
before anything is written. tests/studies/test_slurm_real.py runs the Slurm script on a real Slurm."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nt_robust import cli
from nt_robust.cli_parser import build_parser
from nt_robust.config import ConfigError
from nt_robust.studies import cluster_base, sweep
from nt_robust.studies.cluster import TASK_SCRIPT, Resources, slurm_script, stage_ranges
from nt_robust.studies.cluster_k8s import K8S_VERSION, k8s_manifest, k8s_memory
from nt_robust.studies.cluster_tpu import TpuVm, check_slice, gke_slice, gke_tpu_manifest, tpu_vm_script, vm_slice
from nt_robust.studies.sweep import load_study

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "study_quick_fmnist.toml"
RECORDER = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["STUB_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
print(f"{1000 + len(calls)};cluster")
"""


def _option(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return values[0] if values else None


def _stubs(tmp_path, *names):
    """Executables NAME on a PATH of their own that record their argv (JSON lines in the returned log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}, log


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def study():
    return load_study(SPEC)


def test_stage_names_match_the_sweep():
    assert (cluster_base.GRID_STAGE, cluster_base.WAR_STAGE) == (sweep.GRID_STAGE, sweep.WAR_STAGE)


def test_slurm_script_submits_arrays_with_dependencies(study, tmp_path):
    resources = Resources(partition="gpu", gpus_per_task=1, cpus_per_task=8, time="04:00:00", mem="32G",
                          repo=str(ROOT))
    script = tmp_path / "submit.sh"
    script.write_text(slurm_script(study, resources))
    subprocess.run(["bash", "-n", str(script)], check=True)
    env, log = _stubs(tmp_path, "sbatch")
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    calls = [c[1:] for c in _calls(log)]
    assert [_option(c, "job-name") for c in calls] == [f"quick_fmnist-{s}" for s in ("grid", "war", "attacks", "report")]
    assert [_option(c, "dependency") for c in calls] == [None, "afterok:1000", "afterok:1001", "afterok:1002"]
    assert all("--parsable" in c for c in calls) and "report: job 1003" in done.stdout
    logs = (ROOT / study.runs_root / "slurm").resolve()
    for call in calls:
        assert {"--requeue", "--signal=B:TERM@120", "--open-mode=append", "--ntasks-per-node=1", "--nodes=1",
                "--cpus-per-task=8", "--time=04:00:00", "--mem=32G", "--kill-on-invalid-dep=yes",
                f"--chdir={ROOT}"} <= set(call)
        assert ("--gpus-per-task=1" in call) == (_option(call, "job-name") != "quick_fmnist-report")
    assert [_option(c, "output") for c in calls] == [f"{logs}/grid_%A_%a.out", f"{logs}/war_%A_%a.out",
                                                       f"{logs}/attacks_%j.out", f"{logs}/report_%j.out"]
    ranges = stage_ranges(study)
    assert ranges == {"grid": (0, 35), "war": (36, 53)}   # 2 WAR readings × 3 widths × 3 seeds
    assert (logs / "task.sh").read_text() == TASK_SCRIPT
    runs = study.runs()
    covered = []
    for call, stage in zip(calls[:2], ("grid", "war")):
        first, last = (int(x) for x in _option(call, "array").split("-"))
        assert (first, last) == ranges[stage]
        task_argv = call[call.index(f"{logs}/task.sh") + 1:]
        assert task_argv[0] == ".venv/bin/nt-robust"
        for task in range(first, last + 1):  # what the task script runs, given Slurm's task id
            argv = _run_task(tmp_path, task_argv[1:], {"SLURM_ARRAY_TASK_ID": str(task)})
            args = build_parser().parse_args(argv)
            assert args.index == task and runs[task].stage == stage and Path(args.spec) == SPEC
            assert Path(args.runs_root) == (ROOT / study.runs_root).resolve()
            covered.append(task)
    assert sorted(covered) == [r.index for r in runs]       # every run exactly once
    assert calls[2][-2:] == ["--stage", "attacks"] and calls[3][-1] == "--report"
    (logs / "task.sh").unlink()


def _run_task(tmp_path, args, env_extra, executable=None):
    """Run the real task script with a recording executable; the argv it was given."""
    recorder = tmp_path / "record_argv"
    recorder.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'argv'}\n")
    recorder.chmod(0o755)
    task = tmp_path / "task.sh"
    task.write_text(TASK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    subprocess.run(["bash", str(task), executable or str(recorder), *args], env={**env, **env_extra}, check=True,
                   capture_output=True)
    return (tmp_path / "argv").read_text().splitlines()


def test_slurm_multi_node_runs_under_srun_with_distributed(study, tmp_path):
    text = slurm_script(study, Resources(nodes=4, gpus_per_task=4, repo=str(ROOT)))
    grid, war, attacks, report = [line for line in text.splitlines() if "$(submit " in line]
    for line in (grid, war):
        assert "--nodes=4 --ntasks-per-node=1" in line and '/task.sh" --srun ' in line
        assert line.endswith("--distributed)")
    for line in (attacks, report):
        assert "--nodes=1" in line and "--srun" not in line and "--distributed" not in line
    env, log = _stubs(tmp_path, "srun")
    task = tmp_path / "task.sh"
    task.write_text(TASK_SCRIPT)
    subprocess.run(["bash", str(task), "--srun", "nt-robust", "study", "S", "--distributed"], check=True,
                   env={**env, "SLURM_ARRAY_TASK_ID": "7"}, capture_output=True)
    assert _calls(log) == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "nt-robust", "study", "S",
                            "--distributed", "--index", "7"]]


FAKE_RUN = """#!/usr/bin/env python3
import signal, sys, time
def stop(*_):
    print("run: SIGTERM, saving", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").write("started")
if sys.argv[2] == "sleep":
    time.sleep(30)
sys.exit(int(sys.argv[2]) if sys.argv[2] != "sleep" else 0)
"""


@pytest.mark.parametrize("how, code, requeued", [("sleep", 0, True), ("0", 0, False), ("3", 3, False),
                                                 ("143", 0, True)])
def test_task_script_passes_sigterm_and_requeues_on_143(tmp_path, how, code, requeued):
    env, log = _stubs(tmp_path, "scontrol")
    run = tmp_path / "run.py"
    run.write_text(FAKE_RUN)
    task = tmp_path / "task.sh"
    task.write_text(TASK_SCRIPT)
    started = tmp_path / "started"
    env = {**{k: v for k, v in env.items() if not k.startswith("SLURM_")}, "SLURM_JOB_ID": "42"}
    process = subprocess.Popen(["bash", str(task), sys.executable, str(run), str(started), how], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if how == "sleep":  # Slurm's --signal=B:TERM reaches the task script only, which passes it on
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == code, out
    assert _calls(log) == ([["scontrol", "requeue", "42"]] if requeued else [])
    assert ("run: SIGTERM, saving" in out) == (how == "sleep")
    assert "attempt 1 on" in out


def _documents(manifest):
    yaml = pytest.importorskip("yaml", reason="pip install -e '.[test]' (kubernetes-validate brings PyYAML)")
    return [d for d in yaml.safe_load_all(manifest) if d is not None]


def _validate(documents):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")
    for document in documents:
        kubernetes_validate.validate(document, f"{K8S_VERSION}.0", strict=True)


def test_k8s_indexed_jobs_map_to_the_study_indices_and_pass_the_schema(study):
    manifest = k8s_manifest(study, Resources(gpus_per_task=1, mem="32G", cpus_per_task=8, time="01:00:00",
                                             volume_claim="work", image="registry.example/nt-robust:1"))
    assert f"Kubernetes >= {K8S_VERSION}" in manifest.splitlines()[0]
    documents = _documents(manifest)
    _validate(documents)
    assert [d["metadata"]["name"] for d in documents] == [f"quick-fmnist-{s}" for s in ("grid", "war", "attacks",
                                                                                         "report")]
    runs = study.runs()
    covered = []
    for document, stage in zip(documents[:2], ("grid", "war")):
        spec = document["spec"]
        assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] == 2
        offset = int(re.search(r"JOB_COMPLETION_INDEX \+ (\d+)", json.dumps(spec)).group(1))
        for pod in range(spec["completions"]):
            assert runs[pod + offset].stage == stage
            covered.append(pod + offset)
    assert covered == [r.index for r in runs]
    for document in documents:
        spec = document["spec"]
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        assert "activeDeadlineSeconds" not in spec and pod["activeDeadlineSeconds"] == 3600  # per pod
        assert container["command"] == ["bash", "-c"] and container["args"][0].startswith("set -euo pipefail; exec ")
        assert container["resources"]["limits"]["memory"] == "32Gi"
        is_report = document["metadata"]["name"] == "quick-fmnist-report"
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (not is_report)
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "work"
        assert {"action": "Ignore", "onExitCodes": {"containerName": "nt-robust", "operator": "In",
                                                    "values": [143]}} in spec["podFailurePolicy"]["rules"]
    assert "--stage attacks" in documents[2]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert documents[3]["spec"]["template"]["spec"]["containers"][0]["args"][0].endswith("--report")


@pytest.mark.parametrize("slurm, k8s", [("32G", "32Gi"), ("512M", "512Mi"), ("2048", "2048Mi"), ("1T", "1Ti")])
def test_memory_in_kubernetes_units(slurm, k8s):
    assert k8s_memory(slurm) == k8s


def test_cli_emit_and_bad_input(capsys):
    assert cli.main(["study", str(SPEC), "--emit", "slurm", "--time", "4h"]) == 2
    assert "HH:MM:SS" in capsys.readouterr().err
    assert cli.main(["study", str(SPEC), "--emit", "slurm", "--mem", "32GB"]) == 2
    assert "--mem" in capsys.readouterr().err
    assert cli.main(["study", str(SPEC), "--emit", "slurm", "--time", "00:01:00"]) == 2
    assert "--signal-margin 120 s" in capsys.readouterr().err
    assert cli.main(["study", str(SPEC), "--emit", "k8s"]) == 2
    assert "--emit k8s needs --image" in capsys.readouterr().err
    assert cli.main(["study", str(SPEC), "--emit", "k8s", "--image", "img:1"]) == 0
    assert '"kind": "Job"' in capsys.readouterr().out
    assert cli.main(["study", str(SPEC), "--emit", "tpu-vm", "--zone", "z"]) == 2
    assert "--tpu-name, --accelerator-type" in capsys.readouterr().err


def test_train_distributed_outside_a_cluster_says_so():
    # a fresh process: jax.distributed.initialize refuses to run once another test in this
    # worker has started the backend, which would hide the message under test
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_", "MEGASCALE_"))}
    code = ("from nt_robust.train.sharding import DistributedSetupError, initialize_distributed\n"
            "try:\n    initialize_distributed()\nexcept DistributedSetupError as error:\n    print(error)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--distributed found no cluster to join" in out.stdout


# --- TPU -------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, chips, hosts", [("v5litepod-16", 16, 4), ("v5litepod-8", 8, 1),
                                                        ("v4-32", 16, 4), ("v4-8", 4, 1), ("v5p-64", 32, 8)])
def test_tpu_vm_slices(accelerator, chips, hosts):
    tpu_slice = vm_slice(accelerator)
    assert (tpu_slice.chips, tpu_slice.hosts) == (chips, hosts)


def _tiny_study(tmp_path, batch=64):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_studies import write_tiny_base

    base = write_tiny_base(tmp_path / "base.toml")
    base.write_text(base.read_text().replace("batch_size = 64\nprogress", f"batch_size = {batch}\nprogress"))
    spec = tmp_path / "tiny.toml"
    spec.write_text(f'name = "tiny"\nbase_config = "{base}"\nruns_root = "runs/tiny"\nseeds = [0]\n'
                    '[grid]\n"model.width" = [4]\n"objective.lam" = [1.0, 6.0]\n'
                    '[war]\nreference_width = 4\nwidths = [4]\nmodes = ["unweighted_ratio"]\n')
    return load_study(spec)


def test_tpu_vm_script_issues_the_expected_gcloud_commands(tmp_path):
    study = _tiny_study(tmp_path)
    vm = TpuVm("my-tpu", "us-west4-a", "v5litepod-16", runs_per_slice=2, project="proj")
    script = tmp_path / "tpu.sh"
    script.write_text(tpu_vm_script(study, vm, ".venv/bin/nt-robust", memory_check=False))
    subprocess.run(["bash", "-n", str(script)], check=True)
    env, log = _stubs(tmp_path, "gcloud")
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    spec = shlex.quote(str(study.spec_path))
    study_cmd = f".venv/bin/nt-robust study {spec} --runs-root runs/tiny"
    prologue = "set -euo pipefail; cd nt_robust && mkdir -p runs/tiny/tpu_logs"
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-west4-a", "--project", "proj"]

    def run(i):
        return f"{study_cmd} --index {i} --distributed > runs/tiny/tpu_logs/run_{i}.$(hostname).log 2>&1"
    assert _calls(log) == [
        [*ssh, "--worker=all", "--command", f"{prologue}; {run(0)}; {run(1)}"],     # grid: 2 runs per call
        [*ssh, "--worker=all", "--command", f"{prologue}; {run(2)}"],               # WAR
        [*ssh, "--worker=0", "--command",
         f"{prologue}; JAX_PLATFORMS=cpu {study_cmd} --report > runs/tiny/tpu_logs/report.log 2>&1"]]
    assert not re.search(r"\bpip\b|install|apt-get|curl", script.read_text())   # installs nothing


def test_gke_tpu_manifest_one_pod_per_host_passes_the_schema(tmp_path):
    study = _tiny_study(tmp_path)
    resources = Resources(image="img:1", tpu="tpu-v5-lite-podslice/4x4", time="02:00:00", volume_claim="work")
    documents = _documents(gke_tpu_manifest(study, resources, memory_check=False))
    _validate(documents)
    kinds = [d["kind"] for d in documents]
    assert kinds == ["Service", "Job"] * 3 + ["Job"]              # 3 runs, then the report
    for index in range(3):
        service, job = documents[2 * index], documents[2 * index + 1]
        name = job["metadata"]["name"]
        assert service["spec"] == {"clusterIP": "None", "selector": {"job-name": name}}
        spec = job["spec"]
        pod = spec["template"]["spec"]
        assert spec["completions"] == spec["parallelism"] == 4 and spec["completionMode"] == "Indexed"
        assert pod["subdomain"] == service["metadata"]["name"] == name
        assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                       "cloud.google.com/gke-tpu-topology": "4x4"}
        container = pod["containers"][0]
        assert container["resources"]["limits"]["google.com/tpu"] == "4"
        env = {e["name"]: e for e in container["env"]}
        assert env["TPU_WORKER_HOSTNAMES"]["value"] == ",".join(f"{name}-{h}.{name}" for h in range(4))
        assert "job-completion-index" in env["TPU_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert container["args"][0].endswith(f"--index {index} --distributed")
    report = documents[-1]["spec"]["template"]["spec"]
    assert "nodeSelector" not in report and "JAX_PLATFORMS=cpu exec" in report["containers"][0]["args"][0]


def test_bad_tpu_input_is_refused_before_anything_is_emitted(tmp_path, capsys):
    study = _tiny_study(tmp_path, batch=48)           # 48 rows do not divide over 32 chips
    with pytest.raises(ConfigError, match=r"batch_size = 48 does not divide over v5litepod-32's 32 chips on 8 hosts"):
        tpu_vm_script(study, TpuVm("t", "z", "v5litepod-32"), "nt-robust")
    with pytest.raises(ConfigError, match="unknown TPU accelerator type 'v9-8'"):
        vm_slice("v9-8")
    with pytest.raises(ConfigError, match="unknown GKE TPU accelerator 'tpu-v9'"):
        gke_slice("tpu-v9/2x2")
    with pytest.raises(ConfigError, match="topology must be like 4x4"):
        gke_slice("tpu-v5-lite-podslice/4by4")
    assert cli.main(["study", str(study.spec_path), "--emit", "k8s", "--image", "i",
                     "--tpu", "tpu-v4-podslice/2x4x4"]) == 2
    err = capsys.readouterr()
    assert "batch_size = 48 does not divide over tpu-v4-podslice/2x4x4's 32 chips" in err.err and not err.out


def test_runs_that_do_not_fit_the_slice_are_refused(tmp_path):
    """The estimate's per-chip peak (nt_robust.studies.cost) against the chip's memory: a
    4M-wide MLP at batch 64 needs more than a v5e chip's 16 GiB on one chip, and fits when the
    batch's memory splits over the 8 chips of a v5litepod-8."""
    study = _tiny_study(tmp_path)
    spec = study.spec_path
    spec.write_text(spec.read_text().replace('"model.width" = [4]', '"model.width" = [4000000]')
                    .replace("reference_width = 4\nwidths = [4]", "reference_width = 4000000\nwidths = [4000000]"))
    big = load_study(spec)
    with pytest.raises(ConfigError, match=r"width 4000000 .* GiB per chip on v5litepod-1 .* 16 GiB"):
        check_slice(big, vm_slice("v5litepod-1"), "v5litepod-1")
    check_slice(big, vm_slice("v5litepod-8"), "v5litepod-8")

"""The emitted Slurm script on a real Slurm (issue 38 item 1): a single-node cluster (munged,
slurmctld, slurmd as root, config written here) runs a tiny synthetic study's script: arrays and
dependencies grid -> WAR -> attacks -> report, per-attempt logs (``%A_%a``, appended), a grid
task requeued mid-run (``scontrol requeue``) and a task whose time limit fires Slurm's
``--signal=B:TERM`` both resume exactly (their metrics and per-example predictions equal those
of runs nobody interrupted), the report at the end, and the multi-node form's launch (``srun``,
one task per node, ``--distributed`` joining through JAX's Slurm detection) on the one node.
Daemons are stopped even on failure.

Runs when ``NT_ROBUST_SLURM_TEST=1`` and the machine has Debian's slurm-wlm and munge
(``apt-get install -y slurm-wlm munge``) and the test runs as root; otherwise skipped, saying
which. It takes minutes (Slurm's timer that sends the time-limit signal runs every 30 s, and
the runs train on a shared CPU), too long for every suite run: run it before each change to
nt_robust/studies/cluster*.py::

    NT_ROBUST_SLURM_TEST=1 python -m pytest -q tests/studies/test_slurm_real.py
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nt_robust.studies.cluster import Resources, slurm_script
from nt_robust.studies.sweep import load_study
from test_studies import write_tiny_base  # noqa: E402 (pytest puts this folder on sys.path)

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", "slurmd")
ENABLE = "NT_ROBUST_SLURM_TEST"


def _skip_reason() -> str | None:
    if os.environ.get(ENABLE) != "1":
        return f"a real Slurm test of minutes: set {ENABLE}=1 to run it"
    missing = [d for d in DAEMONS + ("sbatch", "scontrol") if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())]
    if missing:
        return f"needs {', '.join(missing)}: apt-get install -y slurm-wlm munge"
    if os.geteuid() != 0:
        return "starts slurmctld and slurmd, which needs root"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """A one-node Slurm in ``root``: start(), run(...) a client command, stop()."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(f"""ClusterName=ntrtest
SlurmctldHost={self.host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=30
InactiveLimit=0
NodeName={self.host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run([_binary("munged"), f"--socket={r}/munge/munge.sock", f"--key-file={key}",
                        f"--pid-file={r}/munge/pid", f"--log-file={r}/munge/log", f"--seed-file={r}/munge/seed",
                        "--force"], check=True)
        subprocess.run([_binary("slurmctld"), "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run([_binary("slurmd"), "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise AssertionError(f"the node did not come up: {state!r}\n{self.logs()}")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check)

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel every job, stop the daemons (each by its own pid file), munged last."""
        self.run("scancel", "--user=root", check=False)
        time.sleep(1)
        for name in ("slurmd", "slurmctld", "munge/"):
            pid_file = self.root / (f"{name}.pid" if not name.endswith("/") else "munge/pid")
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path / "slurm")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def write_study(root: Path, name: str, epochs: int, war: bool) -> Path:
    base = write_tiny_base(root / f"{name}_base.toml")
    base.write_text(base.read_text().replace("epochs = 2", f"epochs = {epochs}"))
    spec = root / f"{name}.toml"
    extra = '''[war]
reference_width = 4
widths = [32]
modes = ["unweighted_ratio"]
[attack_check]
protocols = ["pgd20-0.007", "cw20"]
examples = 16
''' if war else ""
    grid = '"model.width" = [4, 32]\n"objective.lam" = [1.0, 6.0]' if war else '"model.width" = [4]'
    spec.write_text(f'name = "{name}"\nbase_config = "{base}"\nruns_root = "{root / name}"\nseeds = [0]\n'
                    f'[grid]\n{grid}\n{extra}')
    return spec


def executable(root: Path) -> Path:
    """What the jobs run: this checkout's CLI under this interpreter (nice: a shared machine)."""
    path = root / "nt-robust"
    path.write_text(f"#!/bin/bash\nexport PYTHONPATH={ROOT}\n"
                    f"exec nice -n 10 {sys.executable} -m nt_robust.cli \"$@\"\n")
    path.chmod(0o755)
    return path


def submit(cluster: Cluster, spec: Path, root: Path, time_limit: str) -> dict[str, str]:
    study = load_study(spec)
    script = root / f"submit_{study.name}.sh"
    script.write_text(slurm_script(study, Resources(cpus_per_task=1, time=time_limit,
                                                    executable=str(executable(root)), repo=str(root))))
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script)], env=cluster.env, capture_output=True, text=True, check=True).stdout
    return {line.split(":")[0]: line.split()[2] for line in out.splitlines()}


def job_field(cluster: Cluster, job: str, field: str) -> str | None:
    done = cluster.run("scontrol", "-o", "show", "job", job, check=False)
    for word in done.stdout.split():
        if word.startswith(f"{field}="):
            return word.split("=", 1)[1]
    return None


def wait_for(condition, timeout: float, what: str, cluster: Cluster):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.run('squeue', check=False).stdout}\n{cluster.logs()}")


def epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def release_requeued(cluster: Cluster, job: str, timeout: float = 120, time_limit: str | None = None) -> None:
    """Slurm holds a requeued job ~2 min (BeginTime) before its next attempt: start it now."""
    wait_for(lambda: job_field(cluster, job, "Restarts") not in (None, "0")
             and job_field(cluster, job, "JobState") == "PENDING", timeout, f"job {job} requeued", cluster)
    extra = [f"TimeLimit={time_limit}"] if time_limit else []
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", *extra)


def task_job_id(cluster: Cluster, array_job: str, task: int) -> str:
    return wait_for(lambda: next((line.split()[1] for line in cluster.run(
        "squeue", "-h", "-o", "%i %A", check=False).stdout.splitlines() if line.split()[0] == f"{array_job}_{task}"),
        None), 60, f"array task {array_job}_{task} to start", cluster)


def comparable(run_dir: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The run's metrics rows without wall-clock fields, and its final per-example arrays."""
    rows = [{k: v for k, v in json.loads(line).items() if not any(t in k for t in ("seconds", "flops_per_s", "mfu"))}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with np.load(run_dir / "eval" / "final_test.npz") as arrays:
        return rows, {k: arrays[k] for k in arrays.files}


def assert_same_run(run_dir: Path, reference: Path) -> None:
    rows, arrays = comparable(run_dir)
    ref_rows, ref_arrays = comparable(reference)
    assert rows == ref_rows
    assert arrays.keys() == ref_arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], ref_arrays[key], err_msg=key)


def run_process(runs_root: Path, index: int) -> int:
    """The pid of the Python process training study index ``index`` under ``runs_root``."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if "nt_robust.cli" in text and str(runs_root) in text and text[-2:] == ["--index", str(index)]:
            return int(proc.name)
    return 0


def test_study_on_a_real_slurm_requeues_and_resumes_exactly(cluster, tmp_path):
    started = time.monotonic()
    version = cluster.run("sbatch", "--version").stdout.strip()
    spec = write_study(tmp_path, "tiny", epochs=8, war=True)
    jobs = submit(cluster, spec, tmp_path, "00:10:00")
    assert list(jobs) == ["grid", "war", "attacks", "report"]
    runs_root, runs = tmp_path / "tiny", load_study(spec).runs()

    # Grid tasks 0 and 1 start together. Task 0: scontrol requeue once it has finished its first
    # epoch (a checkpoint) and not its last. Task 1: its time limit. Slurm checks limits every 30 s,
    # so the run is paused (SIGSTOP) after its first epoch; its limit drops to 2 min, so the
    # --signal=B:TERM@120 warning fires at the next check; the task script passes SIGTERM on, the
    # run continues (SIGCONT) and stops.
    requeued_task, timed_task = task_job_id(cluster, jobs["grid"], 0), task_job_id(cluster, jobs["grid"], 1)
    requeued_run, timed_run = runs_root / runs[0].name, runs_root / runs[1].name
    pid, requeued, deadline = 0, False, time.monotonic() + 180
    try:
        while not (pid and requeued):
            assert time.monotonic() < deadline, f"grid tasks 0 and 1 did not start training\n{cluster.logs()}"
            if not pid and epochs_done(timed_run) >= 1:
                pid = run_process(runs_root, 1)
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    assert epochs_done(timed_run) < 8
            if not requeued and epochs_done(requeued_run) >= 1:
                cluster.run("scontrol", "requeue", requeued_task)
                requeued = True
                assert epochs_done(requeued_run) < 8
            time.sleep(0.1)
        log = runs_root / "slurm" / f"grid_{jobs['grid']}_1.out"
        cluster.run("scontrol", "update", f"JobId={timed_task}", "TimeLimit=2")
        wait_for(lambda: "== SIGTERM" in log.read_text(), 90, "the time-limit signal", cluster)
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
    release_requeued(cluster, requeued_task)
    release_requeued(cluster, timed_task, time_limit="10")

    wait_for(lambda: job_field(cluster, jobs["report"], "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
             600, "the report job", cluster)
    tasks = {"grid": [f"{jobs['grid']}_{i}" for i in range(4)], "war": [f"{jobs['war']}_4"],
             "attacks": [jobs["attacks"]], "report": [jobs["report"]]}
    logs = runs_root / "slurm"
    for stage, ids in tasks.items():
        for task_id in ids:
            assert job_field(cluster, task_id, "JobState") == "COMPLETED", (task_id, sorted(logs.iterdir()))
    # dependencies: each stage started after every task of the one before it ended
    spans = [(min(job_field(cluster, t, "StartTime") for t in ids), max(job_field(cluster, t, "EndTime") for t in ids))
             for ids in tasks.values()]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end

    # per-attempt logs: one file per array task (%A_%a), a requeued task's attempts appended to it
    grid, war = jobs["grid"], jobs["war"]
    assert sorted(p.name for p in logs.glob("*.out")) == sorted(
        [f"grid_{grid}_{i}.out" for i in range(4)] + [f"war_{war}_4.out", f"attacks_{jobs['attacks']}.out",
                                                       f"report_{jobs['report']}.out"])
    for i in (0, 1):
        text = (logs / f"grid_{grid}_{i}.out").read_text()
        assert "attempt 1 on" in text and "attempt 2 on" in text and "resuming" in text
    timed_log = log.read_text()
    assert "== SIGTERM: passing it to the run" in timed_log and "requeueing job" in timed_log
    assert "stopped by SIGTERM" in timed_log
    assert (tmp_path / "figures" / "tiny" / "report.md").exists()

    # exact resumption: the interrupted runs equal runs nobody interrupted
    reference_root = tmp_path / "reference"
    for index, run_dir in ((0, requeued_run), (1, timed_run)):
        subprocess.run([str(tmp_path / "nt-robust"), "study", str(spec), "--runs-root", str(reference_root),
                        "--index", str(index)], check=True, capture_output=True, cwd=tmp_path)
        assert_same_run(run_dir, reference_root / run_dir.name)
    # the multi-node form's launch on this one node: srun, one task per node, JAX finding the job
    # from Slurm's environment (the run is finished: it is skipped once the process has joined)
    out = tmp_path / "srun_%A_%a.out"
    cluster.run("sbatch", "--wait", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--array=0-0",
                f"--output={out}", str(logs / "task.sh"), "--srun", str(tmp_path / "nt-robust"), "study", str(spec),
                "--runs-root", str(runs_root), "--distributed")
    text = next(tmp_path.glob("srun_*_0.out")).read_text()
    assert "joining the job at the auto-detected coordinator" in text and "finished, skipped" in text
    print(f"\n{version}: the real-Slurm test took {time.monotonic() - started:.0f} s")

"""The emitted Slurm script on a real Slurm (issue 38 item 1): a single-node cluster (munged,
slurmctld, slurmd as root, config written here) runs a tiny synthetic study's script: arrays and
dependencies grid -> WAR -> attacks -> report, per-attempt logs (``%A_%a``, appended), a grid
task requeued mid-run (``scontrol requeue``) and a task whose time limit fires Slurm's
``--signal=B:TERM`` both resume exactly (their metrics and per-example predictions equal those
of runs nobody interrupted), and the report at the end. Daemons are stopped even on failure.

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
examples = 32
''' if war else ""
    grid = '"model.width" = [4, 32]\n"objective.lam" = [1.0, 6.0]' if war else '"model.width" = [4]'
    spec.write_text(f'name = "{name}"\nbase_config = "{base}"\nruns_root = "{root / name}"\nseeds = [0]\n'
                    f'[grid]\n{grid}\n{extra}')
    return spec


def executable(root: Path) -> Path:
    """What the jobs run: this checkout's CLI under this interpreter (nice: a shared machine)."""
    path = root / "nt-robust"
    path.write_text(f"#!/bin/bash\nexport PYTHONPATH={ROOT}\nexec nice -n 10 {sys.executable} -m nt_robust.cli \"$@\"\n")
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


def test_study_on_a_real_slurm_requeues_and_resumes_exactly(cluster, tmp_path):
    started = time.monotonic()
    version = cluster.run("sbatch", "--version").stdout.strip()
    main_spec = write_study(tmp_path, "tiny", epochs=6, war=True)
    slow_spec = write_study(tmp_path, "slow", epochs=40, war=False)
    main_jobs = submit(cluster, main_spec, tmp_path, "00:10:00")
    slow_jobs = submit(cluster, slow_spec, tmp_path, "00:10:00")
    assert set(main_jobs) == {"grid", "war", "attacks", "report"} and set(slow_jobs) == {"grid", "report"}
    cluster.run("scancel", slow_jobs.pop("report"))  # one run: nothing to report
    main_runs, slow_run = tmp_path / "tiny", tmp_path / "slow" / "width4_seed0"

    # scontrol requeue of grid task 1 once it has finished its first epoch (a checkpoint) and not its last
    task = task_job_id(cluster, main_jobs["grid"], 1)
    requeued_run = main_runs / load_study(main_spec).runs()[1].name
    wait_for(lambda: epochs_done(requeued_run) >= 1, 180, "grid task 1's first epoch", cluster)
    assert epochs_done(requeued_run) < 6
    cluster.run("scontrol", "requeue", task)
    release_requeued(cluster, task)

    # the time limit: once the slow run is past its first epoch, its limit drops to 2 min, so the
    # --signal=B:TERM@120 warning fires at Slurm's next 30 s check; then the limit goes back up
    slow_task = task_job_id(cluster, slow_jobs["grid"], 0)
    wait_for(lambda: epochs_done(slow_run) >= 1, 180, "the slow run's first epoch", cluster)
    cluster.run("scontrol", "update", f"JobId={slow_task}", "TimeLimit=2")
    release_requeued(cluster, slow_task, timeout=90, time_limit="10")

    wait_for(lambda: job_field(cluster, main_jobs["report"], "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
             600, "the report job", cluster)
    wait_for(lambda: job_field(cluster, f"{slow_jobs['grid']}_0", "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
             300, "the slow study's run", cluster)
    logs = tmp_path / "tiny" / "slurm"
    for jobs, root in ((main_jobs, tmp_path / "tiny"), (slow_jobs, tmp_path / "slow")):
        for stage, job in jobs.items():
            tasks = [f"{job}_{i}" for i in range(4)] if stage == "grid" and root.name == "tiny" else \
                [f"{job}_0"] if stage == "grid" else [f"{job}_4"] if stage == "war" else [job]
            for task in tasks:
                assert job_field(cluster, task, "JobState") == "COMPLETED", (task, sorted((root / "slurm").iterdir()))

    # dependencies: each stage started after the previous one ended
    def times(job, field):
        return sorted(job_field(cluster, f"{job}_{i}" if stage in ("grid", "war") else job, field) or ""
                      for i in (range(4) if stage == "grid" else [4] if stage == "war" else [None]))
    order = []
    for stage in ("grid", "war", "attacks", "report"):
        order.append((times(main_jobs[stage], "StartTime")[0], times(main_jobs[stage], "EndTime")[-1]))
    for (_, end), (start, _) in zip(order, order[1:]):
        assert start >= end

    # per-attempt logs: one file per array task (%A_%a), the requeued task's two attempts appended to it
    names = sorted(p.name for p in logs.glob("*.out"))
    grid, war = main_jobs["grid"], main_jobs["war"]
    assert names == sorted([f"grid_{grid}_{i}.out" for i in range(4)] + [f"war_{war}_4.out",
                            f"attacks_{main_jobs['attacks']}.out", f"report_{main_jobs['report']}.out"])
    requeued_log = (logs / f"grid_{grid}_1.out").read_text()
    assert "attempt 1 on" in requeued_log and "attempt 2 on" in requeued_log
    assert "resuming" in requeued_log
    slow_log = next((tmp_path / "slow" / "slurm").glob("grid_*_0.out")).read_text()
    assert "== SIGTERM: passing it to the run" in slow_log and "requeueing job" in slow_log
    assert "attempt 2 on" in slow_log and "resuming" in slow_log

    assert (tmp_path / "figures" / "tiny" / "report.md").exists()

    # exact resumption: the interrupted runs equal runs nobody interrupted
    for spec, index, run_dir in ((main_spec, 1, requeued_run), (slow_spec, 0, slow_run)):
        reference_root = tmp_path / "reference" / spec.stem
        subprocess.run([str(tmp_path / "nt-robust"), "study", str(spec), "--runs-root", str(reference_root),
                        "--index", str(index)], check=True, capture_output=True, cwd=tmp_path)
        assert_same_run(run_dir, reference_root / run_dir.name)
    print(f"\n{version}: the real-Slurm test took {time.monotonic() - started:.0f} s")

"""Fault injection (issue 36): faults and bad input, each checked for what survives and what
the program says. Every fault here is a row of docs/reliability.md naming its test.

The rule: nothing a run or study wrote is lost or silently wrong (metrics and summaries as
safe as the weights, every file tied to its config), every error is one line
``nt-robust: error: ...`` naming the file or field and the fix (exit 2, no traceback), and
nothing hangs past its timeout. Faults are real where they can be: real SIGINT and SIGTERM
sent to a real training process while its epoch-end checkpoint is being written, a real
full disk (a 200 KiB tmpfs, where this process may mount one), real symbolic links, real
damaged files. Runs are the tiny synthetic MLP of tests/train/conftest.py (7 steps).
"""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.cli import main
from nt_robust.config import ConfigError, load_config, to_dict
from nt_robust.train import ExperimentConfig, RunConfigMismatchError, Trainer, train
from nt_robust.train.checkpoints import DIGEST, DIGEST_FOLLOWS, CheckpointCorruptError, CheckpointSaveError, verify_digest
from nt_robust.train.run_dir import RunDirectoryNotWritableError, config_hash


def _train_conftest():
    """tests/train/conftest.py, whose TINY_RUN is the session's tiny run (two conftest modules
    share the name "conftest", so it is loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_RUN = _train_conftest().TINY_RUN

SIGNAL_RUN = TINY_RUN + ["train.checkpoint_every_steps=2"]  # latest/ holds steps 6 and 7 at the end
FAULTS = Path(__file__).with_name("fault_subprocess.py")
SUBPROCESS_TIMEOUT = 240


def tiny(*extra: str, base: list[str] = TINY_RUN) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, list(base) + list(extra))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def assert_nothing_lost(run_dir: Path, epochs: int = 1) -> None:
    """metrics.jsonl has every epoch's row, summary.json's final is the last one, and that
    row's test robust accuracy is what eval/final_test.npz (the last weights' predictions) says."""
    rows = storage.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    summary = storage.read_json(run_dir / "summary.json")
    assert summary["final"] == rows[-1]
    final = storage.load_arrays(run_dir / "eval" / "final_test.npz")
    assert summary["final"]["test_robust_accuracy"] == pytest.approx(np.mean(final["adv_pred"] == final["labels"]))
    assert summary["config_hash"] == config_hash(storage.read_json(run_dir / "config.json"))


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in this process; it must fail with exit 2 and one clear line, no traceback."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "nt-robust: error: " in err and "Traceback" not in err, err
    return err


@pytest.fixture
def finished(tiny_run, tmp_path) -> Path:
    """A copy of the session's finished tiny run."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


# --- real signals and a real full disk, in their own processes (started together) ------------

def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def _run_together(cases: dict[str, tuple[str, Path]], logs: Path) -> dict[str, tuple]:
    """Start fault_subprocess.py for every case at once (its output in ``logs``); send SIGINT or
    SIGTERM to those cases when their save of step 7 has begun; {case: (returncode, output,
    run_dir, seconds)}."""
    started, procs = time.monotonic(), {}
    for case, (mode, run_dir) in cases.items():
        log = open(logs / f"{case.replace(' ', '_')}.log", "w+")
        procs[case] = (subprocess.Popen([sys.executable, str(FAULTS), mode, str(run_dir), json.dumps(SIGNAL_RUN)],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "JAX_PLATFORMS": "cpu"}), log)
    sent, ended = set(), {}
    while len(ended) < len(procs) and time.monotonic() - started < SUBPROCESS_TIMEOUT:
        for case, (proc, log) in procs.items():
            marker = Path(f"{cases[case][1]}.saving")
            if case in ("SIGINT", "SIGTERM") and case not in sent and marker.exists():
                proc.send_signal(getattr(signal, case))  # the save of step 7 waits for it
                Path(f"{cases[case][1]}.signalled").touch()
                sent.add(case)
            if case not in ended and proc.poll() is not None:
                log.seek(0)
                ended[case] = (proc.returncode, log.read(), cases[case][1], time.monotonic() - started)
        time.sleep(0.02)
    for case, (proc, log) in procs.items():
        if case not in ended:
            proc.kill()
            ended[case] = (None, f"hung for {SUBPROCESS_TIMEOUT} s", cases[case][1], SUBPROCESS_TIMEOUT)
        log.close()
    return ended


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Three training processes at once: one sent SIGINT and one SIGTERM while the epoch-end
    checkpoint (step 7) is being written, one training on a 200 KiB tmpfs (or None where
    mounting is not permitted). Yields {case: (returncode, stderr, run_dir, seconds)}."""
    root = tmp_path_factory.mktemp("faults")
    disk = root / "small_disk"
    mounted = _can_mount_tmpfs(disk)
    cases = {"SIGINT": ("signal-at-save", root / "sigint"), "SIGTERM": ("signal-at-save", root / "sigterm")}
    if mounted:
        cases["full disk"] = ("cli", disk / "run")
    try:
        ended = _run_together(cases, root)
        if mounted:  # the space is freed: the run moves to a disk with room, as its user would free space
            shutil.copytree(disk / "run", root / "freed")
            ended["full disk"] = (*ended["full disk"][:2], root / "freed", ended["full disk"][3])
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)
    yield ended


@pytest.mark.parametrize("name,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_epoch_end_save_loses_no_metrics_row(processes, name, code, said):
    returncode, output, run_dir, _ = processes[name]
    assert returncode == code, output[-3000:]
    assert f"{said}; its last checkpoint is step 7 in {run_dir / 'checkpoints' / 'latest'}" in output, output[-3000:]
    assert "Run the same command again to resume" in output and "Traceback" not in output
    latest = run_dir / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["6", "7"]  # the save finished, nothing half written
    assert verify_digest(latest / "7") is None and (latest / "7" / DIGEST).exists()
    # The signal landed between the checkpoint and metrics.jsonl: the row is only in the checkpoint.
    assert storage.read_jsonl(run_dir / "metrics.jsonl") == [] and not (run_dir / "summary.json").exists()
    assert train(tiny(base=SIGNAL_RUN), run_dir)["final"]["epoch"] == 1  # resume: rebuilt, not retrained
    assert sorted(p.name for p in latest.iterdir()) == ["6", "7"]
    assert_nothing_lost(run_dir)


def test_real_full_disk_is_a_checkpoint_save_error_without_tracebacks_and_resumes(processes):
    if "full disk" not in processes:
        pytest.skip("mounting a tmpfs is not permitted here (see test_tensorstore_full_disk_error_...)")
    returncode, output, run_dir, seconds = processes["full disk"]
    assert returncode == 2, output[-3000:]
    assert "nt-robust: error: CheckpointSaveError: could not write checkpoint" in output, output[-3000:]
    assert "No space left on device" in output and "is intact" in output and "rerun the same command" in output
    for noise in ("Traceback", "Event loop is closed", "RESOURCE_EXHAUSTED", "never retrieved"):
        assert noise not in output, output[-3000:]
    train(tiny(base=SIGNAL_RUN), run_dir)  # the half-written step is removed, the run resumes and finishes
    assert not list((run_dir / "checkpoints" / "latest").glob("*.orbax-checkpoint-tmp"))
    assert_nothing_lost(run_dir)


# --- the metrics row, the summary and the config, in this process -----------------------------

def test_tensorstore_full_disk_error_is_a_checkpoint_save_error(tmp_path, monkeypatch):
    # What TensorStore raises on a full disk (measured on a tmpfs): a ValueError, not an OSError.
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    async def full(self, item, directory):
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{directory}/metadata": [OS error 28]')

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full)
    with pytest.raises(CheckpointSaveError, match="latest/2: No space left on device.*no earlier checkpoint"):
        train(tiny(base=SIGNAL_RUN), tmp_path / "run")  # the first save: step 2


def test_deleted_metrics_of_a_finished_run_are_rebuilt_and_the_summary_is_not_rewritten(finished):
    summary_bytes = (finished / "summary.json").read_bytes()
    rows = storage.read_jsonl(finished / "metrics.jsonl")
    (finished / "metrics.jsonl").unlink()
    assert train(tiny(), finished)["final"] == rows[-1]
    assert storage.read_jsonl(finished / "metrics.jsonl") == rows
    assert (finished / "summary.json").read_bytes() == summary_bytes  # never rewritten from a weaker source


def test_damaged_metrics_file_is_rebuilt_from_the_checkpoint(finished, caplog):
    rows = storage.read_jsonl(finished / "metrics.jsonl")
    (finished / "metrics.jsonl").write_text('{"epoch": 1, "trunc')
    with caplog.at_level(logging.WARNING, logger="nt_robust.train"):
        train(tiny(), finished)
    assert f"{finished / 'metrics.jsonl'} is damaged (line 1" in caplog.text
    assert storage.read_jsonl(finished / "metrics.jsonl") == rows


def test_metrics_row_past_the_checkpoint_is_dropped(finished):
    rows = storage.read_jsonl(finished / "metrics.jsonl")
    storage.write_jsonl(finished / "metrics.jsonl", rows + [{**rows[-1], "epoch": 2}])  # from an epoch never saved
    train(tiny(), finished)
    assert storage.read_jsonl(finished / "metrics.jsonl") == rows


@pytest.mark.parametrize("damage", ["deleted", "damaged"])
def test_lost_summary_is_rebuilt_from_the_checkpoint_with_the_last_epochs_row(finished, damage):
    expected = storage.read_json(finished / "summary.json")
    if damage == "deleted":
        (finished / "summary.json").unlink()
    else:
        (finished / "summary.json").write_text("{")
    (finished / "metrics.jsonl").unlink()  # the old code then wrote final = null and 0 s of training
    rebuilt = train(tiny(), finished)
    assert rebuilt["final"] == expected["final"] and rebuilt["train_seconds_total"] == expected["train_seconds_total"]
    assert_nothing_lost(finished)


def test_other_config_with_config_json_deleted_is_refused_naming_both_values(finished):
    (finished / "config.json").unlink()
    before = snapshot(finished)
    with pytest.raises(RunConfigMismatchError) as error:
        train(tiny("objective.lam=1", "optim.lr=0.02"), finished)
    message = str(error.value)
    assert "objective.lam: 6.0 -> 1.0" in message and "optim.lr: 0.05 -> 0.02" in message
    assert "checkpoint -> this config" in message and "--set name=" in message
    assert snapshot(finished) == before  # no config.json or summary.json written under the new values


def test_same_config_with_config_json_deleted_resumes_and_rewrites_it(finished):
    config = storage.read_json(finished / "config.json")
    (finished / "config.json").unlink()
    train(tiny(), finished)
    assert storage.read_json(finished / "config.json") == config


def _strip_config_from_records(run_dir: Path) -> None:
    """Make every checkpoint look as if written before records held the config."""
    for metadata in (run_dir / "checkpoints").glob("*/*/record/metadata"):
        record = json.loads(metadata.read_text())
        record.pop("config"), record.pop("config_hash")
        metadata.write_text(json.dumps(record))
    for step_dir in (run_dir / "checkpoints").glob("*/*"):
        (step_dir / DIGEST).unlink()  # (the record changed, so its digest would not verify)
        metadata = step_dir / "record" / "metadata"
        record = json.loads(metadata.read_text())
        record.pop(DIGEST_FOLLOWS)
        metadata.write_text(json.dumps(record))


def test_old_checkpoints_without_config_and_no_config_json_are_refused(finished):
    _strip_config_from_records(finished)
    (finished / "config.json").unlink()
    with pytest.raises(RunConfigMismatchError, match="nothing says which config made them.*config.json back"):
        train(tiny(), finished)


def test_old_checkpoints_without_config_are_checked_against_config_json(finished, caplog):
    _strip_config_from_records(finished)
    with pytest.raises(RunConfigMismatchError, match=r"objective\.lam: 6\.0 -> 1\.0"):
        train(tiny("objective.lam=1"), finished)
    with caplog.at_level(logging.INFO, logger="nt_robust.train"):
        train(tiny(), finished)
    assert "predate config records; checked against config.json only" in caplog.text


def test_train_epochs_may_change_only_through_a_recorded_extension(finished):
    (finished / "config.json").unlink()
    with pytest.raises(RunConfigMismatchError, match=r"train\.epochs: 1 -> 2"):
        Trainer(tiny("train.epochs=2"), finished).fit(stop_after_steps=8)
    storage.write_json(finished / "extensions.json", [{"from_epochs": 1, "to_epochs": 2}])
    assert Trainer(tiny("train.epochs=2"), finished).fit(stop_after_steps=8) == {"stopped_at_step": 8}


def test_resume_on_another_device_count_warns_naming_the_original(finished, caplog):
    environment = storage.read_json(finished / "environment.json")
    storage.write_json(finished / "environment.json", {**environment, "device_count": 3})
    with caplog.at_level(logging.WARNING, logger="nt_robust.train"):
        train(tiny(), finished)
    import jax

    assert f"was started on 3 device(s) and resumes on {jax.device_count()}" in caplog.text
    assert "--cpu-devices 3" in caplog.text


# --- checkpoints ------------------------------------------------------------------------------

def test_step_without_its_digest_is_not_restored_unchecked(finished, capsys):
    (finished / "checkpoints" / "latest" / "7" / DIGEST).unlink()  # killed between orbax's rename and the digest
    with pytest.raises(CheckpointCorruptError, match="no nt_robust_digest.json although its record says one"):
        Trainer(tiny(), finished).restore("latest")
    err = cli_error(capsys, "eval", str(finished), "--checkpoint", "latest", "--examples", "8")
    assert "CheckpointCorruptError" in err and str(finished / "checkpoints" / "latest" / "7") in err


def test_damaged_eval_result_npz_names_the_file_and_never_unpickles(finished):
    path = finished / "eval" / "final_test.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(storage.DamagedFileError, match=f"{path} is damaged") as error:
        storage.load_arrays(path)
    assert "pickle" not in str(error.value)
    np.save(path.with_suffix(".obj.npy"), np.array([object()]), allow_pickle=True)
    with pytest.raises(ValueError, match="is damaged"):
        storage.load_arrays(path.with_suffix(".obj.npy"))


# --- damaged files in every command -----------------------------------------------------------

@pytest.mark.parametrize("command,damaged", [
    ("compare", "config.json"), ("compare", "summary.json"), ("plot", "metrics.jsonl"), ("eval", "config.json"),
    ("train", "config.json"), ("compare", "eval/x.json"),
], ids=["compare-config", "compare-summary", "plot-metrics", "eval-config", "train-config", "compare-eval-result"])
def test_damaged_json_files_are_named_in_every_command(finished, capsys, command, damaged):
    path = finished / damaged
    path.write_text('{"name": "tiny", "mod')
    argv = {"compare": ["compare", str(finished)], "plot": ["plot", str(finished), "--out", str(finished / "c.png")],
            "eval": ["eval", str(finished), "--examples", "8"], "train": ["train", str(finished)]}[command]
    err = cli_error(capsys, *argv)
    assert f"{path} is damaged" in err and "Restore it from a backup" in err


def test_study_report_skips_a_damaged_run_naming_it(finished, tmp_path, caplog):
    from nt_robust.studies.aggregate import collect_examples, collect_runs

    other = tmp_path / "other"
    shutil.copytree(finished, other)
    (other / "summary.json").write_text("not json")
    (finished / "eval" / "best_val_test.npz").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="nt_robust.studies"):
        rows = collect_runs([finished, other])
        examples = collect_examples([finished, other])
    assert {r["run"] for r in rows} == {"tiny"} and len(rows) == 3  # one run, three selection rules
    assert f"skipping the damaged run {other}" in caplog.text and str(other / "summary.json") in caplog.text
    assert "best_val_test.npz is damaged" in caplog.text and "test" not in examples["tiny"]


# --- files on disk ----------------------------------------------------------------------------

def test_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(finished, tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (finished / ".lock").unlink()
    (finished / ".lock").symlink_to(outside)
    with pytest.raises(RunDirectoryNotWritableError, match=r"\.lock is a symbolic link .*Remove the link"):
        train(tiny(), finished)
    assert outside.read_text() == "keep me"
    link = finished / "results.lock"  # a study's results/.lock is taken by storage.file_lock
    link.symlink_to(outside)
    with pytest.raises(OSError, match="is a symbolic link"):
        with storage.file_lock(link):
            pass
    assert outside.read_text() == "keep me"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)],
                         ids=["umask022", "umask027", "umask077"])
def test_result_files_get_the_permissions_of_the_umask_like_checkpoints(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        storage.write_json(tmp_path / "summary.json", {"a": 1})
        storage.save_arrays(tmp_path / "eval.npz", {"a": np.zeros(2)})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    for name in ("summary.json", "eval.npz", "plain"):  # "plain": what open() and orbax's files get
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_full_disk_while_writing_a_result_names_the_file(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fsync", no_space)
    with pytest.raises(OSError, match=f"No space left on device \\(writing {tmp_path / 'r.json'}"):
        storage.write_json(tmp_path / "r.json", {})
    assert list(tmp_path.iterdir()) == []


def test_eval_on_a_full_disk_is_refused_before_the_attack(tmp_path):
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (disk / "filler").write_bytes(b"\0" * 150_000)
        with pytest.raises(OSError, match=f"No space left on device: {disk / 'eval'} has \\d+ bytes free"):
            storage.check_writable(disk / "eval", "eval stores its results")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_unwritable_kernel_cache_leaves_native_out_instead_of_stopping(tmp_path, monkeypatch):
    from nt_robust.cpu import choice, native

    if shutil.which(native.COMPILER) is None:
        pytest.skip("no C++ compiler: the kernels are unavailable for another reason")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "register", native.register.__wrapped__)  # not this process's build
    reason = choice.native_unavailable()
    assert reason is not None and "cannot be built into the cache" in reason and str(tmp_path / "cache") in reason


# --- bad input: configs, specs, the environment -----------------------------------------------

@pytest.mark.parametrize("override,field", [
    ("optim.lr=inf", "optim.lr"), ("optim.weight_decay=inf", "optim.weight_decay"),
    ("eval.lipschitz_eps=inf", "eval.lipschitz_eps"), ('name=".."', "name"), ('name="."', "name"),
], ids=["lr-inf", "weight-decay-inf", "lipschitz-eps-inf", "name-dotdot", "name-dot"])
def test_non_finite_values_and_path_names_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')} must be"):
        load_config(ExperimentConfig, None, [override])


def test_eval_of_zero_examples_is_refused_before_loading(finished, capsys):
    err = cli_error(capsys, "eval", str(finished), "--examples", "0")
    assert "--examples must be at least 1" in err


def test_training_divergence_in_the_cli_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    err = cli_error(capsys, "train", "--run-dir", str(tmp_path / "run"),
                    *[a for o in TINY_RUN + ["optim.lr=1e30", "optim.momentum=0"] for a in ("--set", o)])
    assert "TrainingDivergedError" in err and "in a new run (--set name=" in err


def test_unexpected_errors_say_how_to_see_the_traceback(monkeypatch, capsys):
    import nt_robust.environment as environment

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(environment, "environment_info", broken)
    err = cli_error(capsys, "info")
    assert "TypeError: a bug (unexpected; rerun with -v or NT_ROBUST_DEBUG=1" in err
    monkeypatch.setenv("NT_ROBUST_DEBUG", "1")
    assert main(["info"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def _spec(tmp_path: Path, body: str, name: str = '"faults"') -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = {name}\nbase_config = "{tmp_path / "base.toml"}"\nruns_root = "{tmp_path / "runs"}"\n'
                    + body)
    (tmp_path / "base.toml").write_text('[data]\ndataset = "synthetic"\n[model]\narch = "mlp"\n')
    return spec


@pytest.mark.parametrize("name,body,message", [
    ('"faults"', '[grid]\n"model.width" = [8, 8]\n', "grid 'model.width' lists 8 twice"),
    ('"faults"', '[grid]\n"objective.lam" = [1, 1.0]\n', "grid 'objective.lam' lists 1.0 twice"),
    ('"faults"', 'seeds = [0, 0]\n[grid]\n"model.width" = [8]\n', "seeds lists 0 twice"),
    ('"faults"', 'seeds = []\n[grid]\n"model.width" = [8]\n', "seeds must be a non-empty list"),
    ('"../outside"', '[grid]\n"model.width" = [8]\n', "name must be a plain name"),
    ('5', '[grid]\n"model.width" = [8]\n', "name must be a plain name"),
    ('"faults"', 'grid = 5\n', "grid must be a table"),
    ('"faults"', '[grid]\n"model.width" = [8]\n"objective.lam" = [1.0]\n[war]\nwidths = [16]\n',
     "[war] needs 'reference_width'"),
    ('"faults"', '[grid]\n"model.width" = [8]\n"objective.lam" = [1.0]\n[war]\nreference_width = 8\nwidths = [16, 16]\n',
     "[war] widths lists 16 twice"),
    ('"faults"', '[grid\n', "is not valid TOML"),
], ids=["grid-duplicate", "grid-equal-numbers", "seeds-duplicate", "seeds-empty", "name-dotdot", "name-number",
        "grid-not-table", "war-no-reference", "war-widths-duplicate", "not-toml"])
def test_bad_study_specs_are_refused_naming_the_key(tmp_path, capsys, name, body, message):
    from nt_robust.studies.sweep import load_study

    spec = _spec(tmp_path, body, name)
    with pytest.raises(ConfigError) as error:
        load_study(spec)
    assert message in str(error.value) and str(spec) in str(error.value)
    assert not (tmp_path / "runs").exists()


def _finished_study_run(tmp_path: Path, legacy: bool = False):
    """A study of one run, whose run directory holds a finished run's config and summary."""
    from nt_robust.studies.sweep import load_study

    spec = _spec(tmp_path, 'set = ["train.epochs=2"]\n[grid]\n"model.width" = [8]\n')
    study = load_study(spec)
    run = study.runs()[0]
    config = to_dict(load_config(ExperimentConfig, study.base_config, list(run.overrides)))
    storage.write_json(study.run_dir(run) / "config.json", config)
    storage.write_json(study.run_dir(run) / "summary.json", {"final": {"epoch": 2}, "selected_by_val_robust_accuracy": None,
                                                         **({} if legacy else {"config_hash": config_hash(config)})})
    return spec, study, run


@pytest.mark.parametrize("legacy", [False, True], ids=["hashed", "before-hashes"])
def test_study_reuses_a_finished_run_only_under_the_same_config(tmp_path, caplog, legacy):
    from nt_robust.studies.pipeline import run_study
    from nt_robust.studies.sweep import load_study, run_index

    spec, study, run = _finished_study_run(tmp_path, legacy)
    with caplog.at_level(logging.INFO, logger="nt_robust.studies"):
        assert run_index(study, 0)["final"] == {"epoch": 2}  # same config: reused, not retrained
    assert ("predates config hashes; compared with its config.json" in caplog.text) == legacy
    spec.write_text(spec.read_text().replace("train.epochs=2", "train.epochs=3"))  # the spec is edited
    edited = load_study(spec)
    for attempt in (lambda: run_index(edited, 0), lambda: run_study(edited, "grid")):
        with pytest.raises(ConfigError, match=r"train\.epochs: 2 -> 3.*The spec was edited after the run finished"):
            attempt()


def test_study_run_without_hash_or_config_json_is_not_reused(tmp_path):
    from nt_robust.studies.sweep import run_index

    _, study, run = _finished_study_run(tmp_path, legacy=True)
    (study.run_dir(run) / "config.json").unlink()
    with pytest.raises(ConfigError, match="cannot be compared with the spec's"):
        run_index(study, 0)


@pytest.mark.parametrize("env,message", [
    ({"NT_ROBUST_COORDINATOR": "127.0.0.1:1"}, "NT_ROBUST_NUM_PROCESSES must be too"),
    ({"NT_ROBUST_COORDINATOR": "127.0.0.1:1", "NT_ROBUST_NUM_PROCESSES": "2", "NT_ROBUST_PROCESS_ID": "2"},
     "NT_ROBUST_PROCESS_ID=2 must be below NT_ROBUST_NUM_PROCESSES=2"),
    ({"NT_ROBUST_COORDINATOR": "127.0.0.1:1", "NT_ROBUST_NUM_PROCESSES": "2", "NT_ROBUST_PROCESS_ID": "1",
      "NT_ROBUST_COORDINATOR_TIMEOUT": "soon"}, "NT_ROBUST_COORDINATOR_TIMEOUT must be a whole number"),
], ids=["no-num-processes", "process-id-too-large", "bad-timeout"])
def test_distributed_settings_are_checked_before_joining(monkeypatch, env, message):
    from nt_robust.train.sharding import DistributedSetupError, initialize_distributed_from_env

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedSetupError, match=message):
        initialize_distributed_from_env()


def test_unreachable_coordinator_is_an_error_within_its_timeout(monkeypatch):
    from nt_robust.train.sharding import DistributedSetupError, initialize_distributed

    monkeypatch.setenv("NT_ROBUST_COORDINATOR_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(DistributedSetupError, match="coordinator 127.0.0.1:1 did not answer within 1 s"):
        initialize_distributed("127.0.0.1:1", 2, 1)
    assert time.monotonic() - start < 10


def test_kernel_choice_made_without_the_native_kernels_is_measured_again_once_they_build(tmp_path, monkeypatch):
    from nt_robust.cpu import choice

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    storage.write_json(choice.cache_path(), {"key": {"impl": "xla", "xla_ms": 2.0, "shifted_matmul_ms": 3.0,
                                                     "native_unavailable": "g++ is not on PATH"}})
    monkeypatch.setattr(choice, "native_unavailable", lambda: None)  # g++ installed since
    measured = []

    def measure_now():
        measured.append(True)
        return {"xla_ms": 2.0, "shifted_matmul_ms": 3.0, "native_ms": 1.0}

    chosen = choice._cached_choice(choice.CHOICES, "NT_ROBUST_TEST_UNSET", "key", measure_now,
                                   lambda t: min(("xla", "shifted_matmul", "native"), key=lambda k: t[f"{k}_ms"]),
                                   "a test layer")
    assert measured and chosen["impl"] == "native" and chosen["source"] == "measured now"
    assert storage.read_json(choice.cache_path())["key"]["impl"] == "native"


def test_damaged_attack_check_result_is_left_out_of_the_report_naming_it(tmp_path, caplog):
    from nt_robust.studies.attack_check import _result_stem, collect_attack_check
    from nt_robust.studies.sweep import load_study

    _, study, run = _finished_study_run(tmp_path)
    spec = tmp_path / "spec.toml"
    spec.write_text(spec.read_text() + '[attack_check]\nprotocols = ["pgd20-0.007", "cw20"]\nexamples = 8\n')
    study = load_study(spec)
    damaged = Path(f"{_result_stem(study, run, 'cw20')}.json")
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text('{"robust_accuracy": 0.')
    with caplog.at_level(logging.WARNING, logger="nt_robust.studies"):
        assert collect_attack_check(study) == []
    assert f"{damaged} is damaged" in caplog.text and "treated as not evaluated" in caplog.text


def test_resume_by_run_directory_with_config_json_deleted_uses_the_checkpoints_config(finished, capsys):
    config = storage.read_json(finished / "config.json")
    (finished / "config.json").unlink()
    (finished / "summary.json").unlink()
    assert main(["train", str(finished)]) == 0
    err = capsys.readouterr().err  # (the CLI logs to stderr)
    assert f"{finished / 'config.json'} is missing: using the config recorded in the run's newest checkpoint" in err
    assert storage.read_json(finished / "config.json") == config
    assert_nothing_lost(finished)

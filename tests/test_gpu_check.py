"""An NVIDIA GPU visible but JAX on the CPU (issue 38 item 7): train, eval and study refuse
without --allow-cpu. The GPU is a fake nvidia-smi on PATH; JAX here really runs on the CPU."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from nt_robust import cli, gpu_check

H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f1c2a3b-0000-1111-2222-333344445555)"


def fake_nvidia_smi(folder, lines, code=0):
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    body = "".join(f"echo '{line}'\n" for line in lines)
    script.write_text(f"#!/bin/sh\n[ \"$1\" = \"-L\" ] || exit 3\n{body}exit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def gpu_machine(tmp_path, monkeypatch):
    """A PATH whose nvidia-smi lists one H100; nothing that says the CPU is meant."""
    folder = fake_nvidia_smi(tmp_path / "bin", [H100])
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(gpu_check.ALLOW_CPU_ENV, raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("NT_ROBUST_COORDINATOR", raising=False)


def test_visible_gpus_from_nvidia_smi_or_the_driver(tmp_path, monkeypatch):
    empty = tmp_path / "proc_empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "one", [H100, "GPU 1: NVIDIA H100"])))
    assert gpu_check.visible_nvidia_gpus(empty) == [H100, "GPU 1: NVIDIA H100"]
    # nvidia-smi present but failing (no driver loaded) and no driver entries: no GPU
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "failing", [], code=9)))
    assert gpu_check.visible_nvidia_gpus(empty) == []
    assert gpu_check.visible_nvidia_gpus(tmp_path / "no_such_dir") == []
    (tmp_path / "proc" / "0000:01:00.0").mkdir(parents=True)
    assert gpu_check.visible_nvidia_gpus(tmp_path / "proc") == [f"GPU at PCI 0000:01:00.0 ({tmp_path / 'proc'})"]


def test_train_is_refused_with_what_to_install(gpu_machine, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--run-dir", str(run_dir), "--set", "data.dataset=synthetic", "--set", "model.arch=mlp"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"CpuFallbackError: an NVIDIA GPU is visible ({H100}) but JAX runs on the CPU (jax " in err
    assert 'pip install -e ".[cuda12]"' in err and "--allow-cpu" in err and "GPU install" in err
    assert not run_dir.exists()


@pytest.mark.parametrize("how", ["flag", "env", "platforms"])
def test_the_cpu_can_be_asked_for(gpu_machine, tmp_path, capsys, monkeypatch, how):
    argv = ["eval", str(tmp_path / "no_run_here")]
    if how == "flag":
        argv.append("--allow-cpu")
    elif how == "env":
        monkeypatch.setenv(gpu_check.ALLOW_CPU_ENV, "1")
    else:
        monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert cli.main(argv) == 2  # past the check: the missing run directory is the error now
    err = capsys.readouterr().err
    assert "CpuFallbackError" not in err and "no_run_here" in err


def test_a_run_joining_a_job_asks_jax_in_a_subprocess(gpu_machine, monkeypatch):
    asked = []
    real = gpu_check.jax_backend
    monkeypatch.setattr(gpu_check, "jax_backend", lambda in_subprocess=False: asked.append(in_subprocess)
                        or real(in_subprocess))
    args = argparse.Namespace(command="train", distributed=True, coordinator=None, dry_run=False)
    with pytest.raises(gpu_check.CpuFallbackError):
        gpu_check.check_gpu_used(args)
    assert asked == [True]
    # nothing is computed: not checked
    gpu_check.check_gpu_used(argparse.Namespace(command="train", distributed=True, dry_run=True))
    gpu_check.check_gpu_used(argparse.Namespace(command="compare"))

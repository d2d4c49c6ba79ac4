"""XLA:CPU set-up: the scheduler flag is added once and never over a user's own choice;
the CPU device count is validated and refused once the backend runs."""

import os

import jax
import pytest

from nt_robust.environment import CPU_SCHEDULER_FLAG, configure_xla_cpu, set_cpu_devices


def test_scheduler_flag_is_appended_to_existing_flags(monkeypatch):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert configure_xla_cpu() is True
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {CPU_SCHEDULER_FLAG}"
    assert configure_xla_cpu() is False  # a second call adds nothing
    assert os.environ["XLA_FLAGS"].count("xla_cpu_scheduler_type") == 1


def test_users_choice_and_opt_out_are_respected(monkeypatch):
    monkeypatch.delenv("NT_ROBUST_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT")
    assert configure_xla_cpu() is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("NT_ROBUST_XLA_CPU_FLAGS", "off")
    assert configure_xla_cpu() is False and os.environ["XLA_FLAGS"] == ""


def test_cpu_device_count_is_validated_and_refused_once_the_backend_runs(monkeypatch):
    monkeypatch.delenv("NT_ROBUST_CPU_DEVICES", raising=False)
    assert set_cpu_devices() is None  # nothing asked: JAX's default stands
    monkeypatch.setenv("NT_ROBUST_CPU_DEVICES", "two")
    with pytest.raises(ValueError, match="NT_ROBUST_CPU_DEVICES must be a positive integer"):
        set_cpu_devices()
    with pytest.raises(ValueError, match="integer >= 1"):
        set_cpu_devices(0)
    jax.devices()  # the backend is running now
    with pytest.raises(RuntimeError, match="already started its backend"):
        set_cpu_devices(3)

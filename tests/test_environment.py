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


SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: a second processor that must not be read
flags\t\t: fpu
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve sve2
CPU implementer\t: 0x41
"""


def test_cpu_info_names_the_model_and_the_isa_features_that_pick_float_kernels(tmp_path):
    from nt_robust.environment import cpu_info, describe_cpu, environment_info
    path = tmp_path / "cpuinfo"
    path.write_text(SAPPHIRE_RAPIDS)
    info = cpu_info(path)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" and info["vendor"] == "GenuineIntel"
    assert info["isa"] == ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                           "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    assert "amx_tile" in describe_cpu(info) and "Xeon" in describe_cpu(info)
    assert (info["family"], info["model_number"]) == ("6", "143") and "family 6 model 143" in describe_cpu(info)
    assert "family" not in describe_cpu({k: v for k, v in info.items() if k not in ("family", "model_number")})
    path.write_text(GRAVITON)
    arm = cpu_info(path)
    assert arm["isa"] == ["asimd", "sve", "sve2"] and arm["vendor"] == "0x41"
    missing = cpu_info(tmp_path / "absent")
    assert missing["isa"] == [] and missing["model"]  # falls back to what platform knows
    recorded = environment_info()["cpu"]  # what every run's environment.json carries
    assert set(recorded) == {"model", "vendor", "isa", "cores", "family", "model_number"} and recorded["cores"] >= 1

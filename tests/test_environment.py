"""Provenance (nt_robust.environment): what environment.json records, under the key names old
records have; the CPU described by model, numbers and ISA; and no import of the models."""

import os
import subprocess
import sys

from nt_robust.cpu.machine import cpu_info, describe_cpu
from nt_robust.environment import environment_info

# environment.json's keys: runs of every version are compared by them (issue 35: unchanged)
RECORD_KEYS = {"time_utc", "python", "platform", "host", "cpu", "packages", "git_commit", "backend", "device_count",
               "local_device_count", "device_kinds", "process_count", "process_index", "xla_flags", "cpu_host",
               "conv_impl_auto", "conv_impl_auto_choice", "native_conv", "dense_impl_auto", "dense_impl_auto_choice",
               "native_dense", "cpu_devices", "malloc"}


def test_the_record_keeps_its_key_names_and_says_what_auto_means_here():
    info = environment_info("xla", "xla")
    assert set(info) == RECORD_KEYS
    assert info["backend"] == "cpu" and info["cpu_host"]["cpu"] is True
    # conftest pins "auto" (NT_ROBUST_CONV_IMPL_AUTO, NT_ROBUST_DENSE_IMPL_AUTO): the record says so
    conv, dense = os.environ["NT_ROBUST_CONV_IMPL_AUTO"], os.environ["NT_ROBUST_DENSE_IMPL_AUTO"]
    assert info["conv_impl_auto"] == {"xla": "flipped_dx"}.get(conv, conv) and info["dense_impl_auto"] == dense
    assert info["conv_impl_auto_choice"] == {"impl": conv, "source": "NT_ROBUST_CONV_IMPL_AUTO"}
    assert info["dense_impl_auto_choice"] == {"impl": dense, "source": "NT_ROBUST_DENSE_IMPL_AUTO"}
    assert info["native_conv"] is None and info["native_dense"] is None  # the run uses XLA's


def test_provenance_imports_no_model():
    code = ("import sys, nt_robust.environment; "
            "print(sorted(m for m in sys.modules if m.startswith('nt_robust.models')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[]"


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

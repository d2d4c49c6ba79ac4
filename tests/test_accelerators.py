"""The accelerator table (nt_robust.accelerators): every entry sourced and ordered, lookups by
``device_kind`` and short name, peaks and MFU against the vendor numbers, the precision classes."""

from __future__ import annotations

import math

import pytest

from nt_robust import accelerators


def test_peak_table_entries_and_lookup():
    for entry in accelerators.PEAKS:
        assert entry.source.startswith("https://"), entry
        values = [v for v in (entry.fp32, entry.tf32, entry.bf16) if v is not None]
        assert values and values == sorted(values), entry   # bf16 >= tf32 >= fp32 where given
        assert entry.memory_gib > 0
    kinds = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA H200": "h200",
             "NVIDIA A100-SXM4-80GB": "a100", "Tesla V100-SXM2-16GB": "v100", "TPU v4": "tpu-v4",
             "TPU v5 lite": "tpu-v5e", "TPU v5p": "tpu-v5p", "TPU v5": "tpu-v5p", "h100": "h100",
             "tpu-v5e": "tpu-v5e"}
    for kind, name in kinds.items():
        assert accelerators.find_device(kind).name == name, kind
    assert accelerators.find_device("cpu") is None and accelerators.peak_flops("cpu", "fp32") is None
    assert accelerators.mfu(1e12, "cpu", "fp32") is None
    assert accelerators.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12
    assert math.isclose(accelerators.mfu(0.5 * 989.5e12 * 2, "h100", "bf16", devices=2), 0.5)
    assert accelerators.peak_flops("v100", "bf16") is None
    with pytest.raises(ValueError, match="precision"):
        accelerators.peak_flops("h100", "fp16")


def test_precision_class():
    assert accelerators.precision_class("bfloat16", None, "gpu") == "bf16"
    assert accelerators.precision_class("float32", None, "gpu") == "tf32"
    assert accelerators.precision_class("float32", "default", "gpu") == "tf32"   # model.matmul_precision's default
    assert accelerators.precision_class("float32", "high", "gpu") == "tf32"
    assert accelerators.precision_class("float32", "highest", "gpu") == "fp32"
    assert accelerators.precision_class("float32", None, "tpu") == "bf16"
    assert accelerators.precision_class("float32", "highest", "cpu") == "fp32"
    with pytest.raises(ValueError, match="dtype"):
        accelerators.precision_class("float16")

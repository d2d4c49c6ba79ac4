"""Accelerator chips: their dense peak FLOP/s per precision class, their memory, and MFU.

Data about chips and nothing else (no project imports), so that any layer may read it::

    from nt_robust import accelerators
    accelerators.peak_flops("NVIDIA H100 80GB HBM3", "bf16")      # 9.895e14 FLOP/s
    accelerators.precision_class("float32", "highest", "gpu")     # "fp32"
    accelerators.mfu(achieved_flops_per_s, "h100", "bf16", devices=8)

:data:`PEAKS` holds dense (no 2:4 sparsity) vendor numbers per chip, each with its source.
CPUs have no entry: their MFU is None. The FLOPs of a training step are counted in
:mod:`nt_robust.train.cost`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

PRECISIONS = ("bf16", "tf32", "fp32")


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one accelerator chip per precision class (None: not published
    or not supported), its memory, the substrings of ``jax.Device.device_kind`` (lower case)
    that identify it and the vendor page the numbers come from."""

    name: str
    match: tuple[str, ...]
    bf16: float | None
    tf32: float | None
    fp32: float | None
    memory_gib: float
    source: str

    def tflops(self, precision: str) -> float | None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return getattr(self, precision)


# More specific entries first: "h100 pcie" before "h100".
PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("v100", ("v100",), bf16=None, tf32=None, fp32=15.7, memory_gib=32,
               source="https://images.nvidia.com/content/technologies/volta/pdf/"
                      "volta-v100-datasheet-update-us-1165301-r5.pdf (V100 SXM2; no bf16/TF32 tensor cores)"),
    DevicePeak("a100", ("a100",), bf16=312.0, tf32=156.0, fp32=19.5, memory_gib=80,
               source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                      "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (A100 SXM, dense)"),
    DevicePeak("h100-pcie", ("h100 pcie", "h100-pcie"), bf16=756.0, tf32=378.0, fp32=51.0, memory_gib=80,
               source="https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet "
                      "(H100 PCIe; the datasheet's sparse numbers halved)"),
    DevicePeak("h100", ("h100",), bf16=989.5, tf32=494.5, fp32=67.0, memory_gib=80,
               source="https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet "
                      "(H100 SXM; the datasheet's sparse numbers halved)"),
    DevicePeak("h200", ("h200",), bf16=989.5, tf32=494.5, fp32=67.0, memory_gib=141,
               source="https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM; sparse numbers halved)"),
    DevicePeak("tpu-v4", ("tpu v4",), bf16=275.0, tf32=None, fp32=None, memory_gib=32,
               source="https://cloud.google.com/tpu/docs/v4"),
    DevicePeak("tpu-v5e", ("tpu v5 lite", "tpu v5e", "v5litepod"), bf16=197.0, tf32=None, fp32=None,
               memory_gib=16, source="https://cloud.google.com/tpu/docs/v5e"),
    DevicePeak("tpu-v5p", ("tpu v5p", "tpu v5"), bf16=459.0, tf32=None, fp32=None, memory_gib=95,
               source="https://cloud.google.com/tpu/docs/v5p"),
)


def find_device(kind: str) -> DevicePeak | None:
    """The :data:`PEAKS` entry for a ``device_kind`` ("NVIDIA H100 80GB HBM3") or a short
    name ("h100", "tpu-v5e"); None for CPUs and unknown chips."""
    text = kind.strip().lower()
    for peak in PEAKS:
        if text == peak.name:
            return peak
    for peak in PEAKS:
        if any(m in text for m in peak.match):
            return peak
    return None


def precision_class(dtype: str = "float32", matmul_precision: str | None = None,
                    platform: str = "gpu") -> str:
    """Which peak applies: "bf16" for ``model.dtype = bfloat16``; for float32 on a GPU
    "tf32" unless the matmul precision is "highest" (XLA:GPU uses TF32 for float32 dots and
    convolutions at "default" and "high"), else "fp32"; on a TPU float32 at "default" runs
    single bf16 passes ("bf16"), at "high"/"highest" several ("fp32", no published peak)."""
    if dtype in ("bfloat16", "bf16"):
        return "bf16"
    if dtype not in ("float32", "fp32"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    precision = (matmul_precision or "default").lower()
    if platform == "tpu":
        return "bf16" if precision in ("default", "bfloat16", "fastest") else "fp32"
    if platform == "gpu":
        return "fp32" if precision in ("highest", "float32") else "tf32"
    return "fp32"


def peak_flops(kind: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one chip of ``kind`` at ``precision`` (None if unknown)."""
    entry = find_device(kind)
    tflops = None if entry is None else entry.tflops(precision)
    return None if tflops is None else tflops * 1e12


def mfu(flops_per_s: float | None, kind: str, precision: str, devices: int = 1) -> float | None:
    """Model FLOP utilization: achieved FLOP/s over ``devices`` × the chip's peak."""
    peak = peak_flops(kind, precision)
    if peak is None or flops_per_s is None:
        return None
    return flops_per_s / (peak * devices)


# --------------------------------------------------------------------------- device memory

def device_memory_bytes(device: Any | None = None) -> int | None:
    """Memory one device can hold: ``memory_stats()['bytes_limit']`` on accelerators, the
    host's physical memory on CPU (None when neither is known)."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
        entry = find_device(device.device_kind)
        return None if entry is None else int(entry.memory_gib * 2**30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None

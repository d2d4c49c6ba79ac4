"""FLOPs of the training step from XLA's cost analysis, achieved FLOP/s, and MFU.

A FLOP here is what XLA's ``HloCostAnalysis`` counts: 2 per multiply-add of a dot or a
convolution — for a convolution only the kernel taps that land on the input, not on its
zero padding — plus about 1 per output element of each elementwise op. For the models of
this project the dots and convolutions are all but a few percent of it
(tests/test_flops.py checks it against a hand count of WRN-d-k and MLP multiply-adds)::

    from nt_robust import flops
    per_step = flops.train_step_flops(config, image_shape=(32, 32, 3), num_classes=10)
    per_step["flops_per_image"]                       # ~ 27 forward passes for TRADES-10
    peak = flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16")   # 9.895e14 FLOP/s
    flops.mfu(achieved_flops_per_s, "NVIDIA H100 80GB HBM3", "bf16")

Which count, and why — one count per step, whatever runs it:

* A FLOP count is a property of the model and the step, not of the kernels that run it.
  The native CPU kernels (``conv_impl``/``dense_impl`` = "native", which "auto" picks on many
  CPUs) are XLA custom calls, and XLA's cost analysis counts nothing inside a custom call;
  the shifted-matmul weight gradient multiplies the padding taps too. So every count is taken
  from the step lowered with XLA's own convolutions and products (:func:`counting_config`),
  the same for every ``conv_impl`` and ``dense_impl`` (tests/test_flops.py checks it).
* XLA counts the body of a ``while`` loop once, not once per trip (measured: a WRN-10-1
  TRADES step at batch 8 counts 85 MFLOP with ``train_attack.loop = "fori"`` and 254 MFLOP
  unrolled), so the count comes from the step with ``train_attack.loop = "unroll"``: the
  same arithmetic, traced and *lowered* (not yet optimized, global over devices) but never
  compiled or run. Lowered and compiled counts differ by the fusion's small rewrites (1.4 %
  for that WRN-10-1 step).

Peak FLOP/s: :data:`PEAKS`, dense (no 2:4 sparsity) vendor numbers per chip, each with its
source. CPUs have no entry: their MFU is None.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

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


def config_precision(config: Any) -> tuple[str, str | None]:
    """(compute dtype, matmul precision) of an ExperimentConfig: ``model.dtype`` (float32 when
    the config has no such field) and the first ``matmul_precision`` field found on the
    config or one of its sections (None: XLA's default)."""
    dtype = str(getattr(config.model, "dtype", "float32"))
    precision = getattr(config, "matmul_precision", None)
    if precision is None and dataclasses.is_dataclass(config):
        for field in dataclasses.fields(config):
            section = getattr(config, field.name)
            if dataclasses.is_dataclass(section) and getattr(section, "matmul_precision", None) is not None:
                precision = section.matmul_precision
                break
    return dtype, None if precision is None else str(precision)


# --------------------------------------------------------------------------- cost analysis

def cost_flops(stage: Any) -> float | None:
    """``flops`` from a ``Lowered`` or ``Compiled`` stage's ``cost_analysis()`` (a dict, or a
    list of one dict in older JAX); None when the backend gives none."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # some backends/versions do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or analysis.get("flops") is None:
        return None
    return float(analysis["flops"])


def memory_bytes(compiled: Any) -> dict[str, int] | None:
    """XLA's buffer plan of a compiled program: argument, output, temp and alias bytes and
    ``peak_bytes`` = argument + output + temp − alias (donated inputs reuse their buffers)
    + generated code. None when the backend gives no memory analysis."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return None
    if analysis is None:
        return None
    names = ("argument", "output", "temp", "alias", "generated_code")
    out = {name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0) for name in names}
    out["peak_bytes"] = out["argument"] + out["output"] + out["temp"] - out["alias"] + out["generated_code"]
    return out


def xla_implementations(config: Any) -> Any:
    """``config`` with XLA's own convolutions and matrix products (``conv_impl`` and
    ``dense_impl`` = "xla"): what an accelerator runs, and what XLA's cost analysis can see."""
    model = dataclasses.replace(config.model, conv_impl="xla", dense_impl="xla")
    return dataclasses.replace(config, model=model)


def counting_config(config: Any) -> Any:
    """The step every FLOP count is taken from: ``config`` with XLA's implementations and the
    training attack unrolled (the same arithmetic, every op visible to the count)."""
    config = xla_implementations(config)
    return dataclasses.replace(config, train_attack=dataclasses.replace(config.train_attack, loop="unroll"))


def state_bytes(state: Any) -> int:
    """Bytes of a (possibly abstract) pytree of arrays: parameters, optimizer state, BN statistics."""
    return int(sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(state)))


def abstract_step(config: Any, image_shape: Sequence[int], num_classes: int, batch_size: int | None = None,
                  steps_per_epoch: int = 1):
    """``(jitted step, abstract state, abstract images, abstract labels)`` for ``config``:
    shapes only (``jax.eval_shape``), so lowering or compiling it allocates no parameters."""
    from nt_robust.models import create_model, init_variables
    from nt_robust.train.optim import make_optimizer
    from nt_robust.train.state import create_train_state
    from nt_robust.train.step import init_key, make_train_step

    batch = batch_size or config.train.batch_size
    model = create_model(config.model, num_classes)
    optimizer = make_optimizer(config.optim, config.train.epochs, steps_per_epoch)

    def init():
        variables = init_variables(model, init_key(config.train.seed), tuple(image_shape))
        return create_train_state(variables, optimizer, config.objective.lam,
                                  use_ema=config.optim.ema_decay is not None, seed=config.train.seed)

    state = jax.eval_shape(init)
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step = jax.jit(make_train_step(model, config, optimizer), donate_argnums=0)
    return step, state, images, labels


def train_step_flops(config: Any, image_shape: Sequence[int], num_classes: int,
                     batch_size: int | None = None, compile: bool = False) -> dict[str, Any]:
    """FLOPs of one global training step of ``config`` at ``batch_size`` (default
    ``train.batch_size``), from XLA's cost analysis of :func:`counting_config`'s step (XLA's
    implementations, the attack unrolled; the same count for every ``conv_impl`` and
    ``dense_impl``): lowered only (default; cheap, no compile) or also compiled
    (``compile=True``, adding ``memory``: XLA's buffer plan of that step, see
    :func:`memory_bytes`). ``state_bytes``: the training state's bytes (exact, from shapes)::

        train_step_flops(config, (32, 32, 3), 10)["flops_per_image"]
    """
    step, state, images, labels = abstract_step(counting_config(config), image_shape, num_classes, batch_size)
    lowered = step.lower(state, images, labels)
    result: dict[str, Any] = {"batch_size": images.shape[0], "source": "lowered", "state_bytes": state_bytes(state)}
    flops = cost_flops(lowered)
    if compile:
        compiled = lowered.compile()
        flops, result["source"] = cost_flops(compiled) or flops, "compiled"
        result["memory"] = memory_bytes(compiled)
    result["flops_per_step"] = flops
    result["flops_per_image"] = None if flops is None else flops / images.shape[0]
    return result


def jitted_step_flops(jitted: Any, args: Sequence[Any], config: Any, image_shape: Sequence[int],
                      num_classes: int) -> dict[str, Any]:
    """FLOPs of one global step of an already-called jitted train step (the Trainer's), at
    its batch: :func:`train_step_flops`'s count (one trace and lowering, no compile), so a
    run's ``train_flops_per_s`` counts the same work whichever kernels ran it. ``jitted`` is
    not used for the count: its compiled program may hide work in custom calls. Returns
    ``flops_per_step``, ``source`` and ``batch_size``; ``flops_per_step`` is None when the
    backend has no cost analysis."""
    del jitted  # kept in the signature: callers pass the step they ran
    batch = int(args[1].shape[0])
    counted = train_step_flops(config, image_shape, num_classes, batch)
    return {"flops_per_step": counted["flops_per_step"],
            "source": "lowered (XLA's convolutions and products, attack unrolled)", "batch_size": batch}


# --------------------------------------------------------------------------- devices

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

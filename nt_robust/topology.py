"""A training run laid out on a topology it is not running on: `nt-robust train --dry-run
--topology v5litepod-16` (or ``--hosts 4 --chips-per-host 4 --device tpu-v5e``) prints what each
host feeds, the mesh, the precision and the memory per chip, without a TPU::

    plan = plan_topology(config, Topology.parse("v4-32"))
    print(describe_plan(plan))

The layout is the one :mod:`nt_robust.train.sharding` builds on the real slice: one JAX process
per host, one device per chip (v4 and v5p chips are one "megacore" device each), a 1-D
``data`` mesh over every device in ``jax.devices()`` order, the state replicated, each global
batch of ``train.batch_size`` split into equal contiguous blocks of rows, one per host
(``process_rows``), then one per chip. Every host reads the whole training set and takes its
rows of each batch (``docs/design.md``, "Per-host data").

Accelerator types are Cloud TPU's names: ``v4-N`` and ``v5p-N`` count TensorCores (2 per
chip), ``v5litepod-N`` (also ``v5e-N``) counts chips; hosts have 4 chips in multi-host
slices (:data:`TPU_TYPES`). Peaks and memory per chip come from ``nt_robust.accelerators.PEAKS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from nt_robust.config import ConfigError


@dataclasses.dataclass(frozen=True)
class TpuType:
    """How a Cloud TPU accelerator type's number counts chips, and its hosts' chips."""

    device: str             # the nt_robust.accelerators.PEAKS entry
    prefixes: tuple[str, ...]
    cores_per_chip: int     # what the type's number counts per chip (2: TensorCores)
    chips_per_host: int     # in a multi-host slice
    max_single_host: int    # chips one host holds when the whole slice is one host


TPU_TYPES: tuple[TpuType, ...] = (
    TpuType("tpu-v4", ("v4",), cores_per_chip=2, chips_per_host=4, max_single_host=4),
    TpuType("tpu-v5e", ("v5litepod", "v5e"), cores_per_chip=1, chips_per_host=4, max_single_host=8),
    TpuType("tpu-v5p", ("v5p",), cores_per_chip=2, chips_per_host=4, max_single_host=4),
)
_NAME = re.compile(r"^(?:tpu-)?([a-z0-9]+?)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """``hosts`` × ``chips_per_host`` devices of kind ``device`` (a PEAKS name); ``name`` as given."""

    name: str
    device: str | None
    hosts: int
    chips_per_host: int

    @property
    def chips(self) -> int:
        return self.hosts * self.chips_per_host

    @staticmethod
    def parse(name: str) -> "Topology":
        """``v4-32`` -> 4 hosts x 4 chips of tpu-v4; ConfigError naming the known types otherwise."""
        known = ", ".join(f"{p}-N" for t in TPU_TYPES for p in t.prefixes)
        match = _NAME.match(name.strip().lower())
        kind = match and next((t for t in TPU_TYPES if match.group(1) in t.prefixes), None)
        if not match or kind is None:
            raise ConfigError(f"--topology {name!r} is not an accelerator type known here ({known}, e.g. v5litepod-16 "
                              "or v4-32); for another machine give --hosts H --chips-per-host C (and --device)")
        count = int(match.group(2))
        if count < kind.cores_per_chip or count % kind.cores_per_chip:
            raise ConfigError(f"--topology {name!r}: {match.group(1)}-N counts TensorCores, {kind.cores_per_chip} per "
                              f"chip, so N must be a multiple of {kind.cores_per_chip}")
        chips = count // kind.cores_per_chip
        if chips <= kind.max_single_host:
            return Topology(name, kind.device, 1, chips)
        if chips % kind.chips_per_host:
            raise ConfigError(f"--topology {name!r}: a multi-host {match.group(1)} slice has {kind.chips_per_host} chips "
                              f"per host, so {chips} chips do not make whole hosts")
        return Topology(name, kind.device, chips // kind.chips_per_host, kind.chips_per_host)


def add_topology_arguments(parser: argparse.ArgumentParser) -> None:
    """``--topology`` / ``--hosts`` / ``--chips-per-host`` / ``--device`` (with ``--dry-run``)."""
    group = parser.add_argument_group("dry run on another topology (with --dry-run; no TPU needed)")
    group.add_argument("--topology", metavar="TYPE", help="a Cloud TPU accelerator type, e.g. v5litepod-16, v4-32, v5p-8")
    group.add_argument("--hosts", type=int, metavar="H", help="hosts (processes), with --chips-per-host")
    group.add_argument("--chips-per-host", type=int, metavar="C", help="accelerator chips (devices) per host")
    group.add_argument("--device", metavar="KIND", help="with --hosts: the chip, a name of nt_robust.accelerators.PEAKS "
                                                         "(tpu-v4, tpu-v5e, tpu-v5p, h100, a100, ...)")


def topology_from_args(args: argparse.Namespace) -> Topology | None:
    """The topology the command line asks a dry run for; None when it asks for none."""
    topology, hosts, chips = getattr(args, "topology", None), getattr(args, "hosts", None), getattr(args, "chips_per_host", None)
    device = getattr(args, "device", None)
    if topology is None and hosts is None and chips is None and device is None:
        return None
    if not getattr(args, "dry_run", False):
        raise ConfigError("--topology, --hosts, --chips-per-host and --device lay a run out without running it: "
                          "add --dry-run (a real multi-host run takes its topology from the cluster: --distributed)")
    if topology is not None:
        if hosts is not None or chips is not None or device is not None:
            raise ConfigError("give either --topology TYPE or --hosts H --chips-per-host C [--device KIND], not both")
        return Topology.parse(topology)
    if hosts is None or chips is None or hosts < 1 or chips < 1:
        raise ConfigError(f"--hosts and --chips-per-host must both be given, whole numbers >= 1 (got --hosts {hosts}, "
                          f"--chips-per-host {chips})")
    if device is not None:
        from nt_robust.accelerators import PEAKS, find_device
        if find_device(device) is None:
            raise ConfigError(f"--device {device!r} is not a chip known here: one of "
                              f"{', '.join(p.name for p in PEAKS)}")
    return Topology(f"--hosts {hosts} --chips-per-host {chips}", device, hosts, chips)


def _divides(value: int, field: str, topology: Topology) -> None:
    for count, what in ((topology.hosts, "hosts"), (topology.chips, "chips")):
        if value % count:
            lower = value // topology.chips * topology.chips
            fits = " or ".join(str(n) for n in (lower, lower + topology.chips) if n > 0)
            raise ConfigError(
                f"{field} = {value} does not divide over the {count} {what} of {topology.name} ({topology.hosts} "
                f"host(s) x {topology.chips_per_host} chip(s)): use a multiple of {topology.chips}, e.g. {fits} "
                f"(--set {field}=N)")


def plan_topology(config: Any, topology: Topology) -> dict[str, Any]:
    """What ``config`` (an ExperimentConfig) runs as on ``topology``: batches per host and chip,
    the mesh, precision, and memory per chip against the chip's (ConfigError if a batch does
    not divide)."""
    from nt_robust.accelerators import find_device, precision_class
    from nt_robust.train.config import estimate_training_memory
    from nt_robust.train.precision import float32_matmul

    batch, eval_batch = config.train.batch_size, config.eval.batch_size
    _divides(batch, "train.batch_size", topology)
    _divides(eval_batch, "eval.batch_size", topology)
    per_host = batch // topology.hosts
    chip = find_device(topology.device) if topology.device else None
    platform = "tpu" if topology.device and topology.device.startswith("tpu") else "gpu"
    precision = precision_class(config.model.dtype, config.model.matmul_precision, platform) if chip else None
    estimate = estimate_training_memory(config)
    # weights, gradients, momentum: a replica on every chip; activations: the chip's rows only
    per_chip_bytes = estimate["weights_bytes"] + estimate["activation_bytes"] * (batch // topology.chips) // batch
    return {
        "topology": topology.name, "device": topology.device, "hosts": topology.hosts,
        "chips_per_host": topology.chips_per_host, "chips": topology.chips,
        "mesh": {"axes": ["data"], "shape": [topology.chips]},
        "global_batch": batch, "per_host_batch": per_host, "per_chip_batch": batch // topology.chips,
        "host_rows": [[h * per_host, (h + 1) * per_host] for h in range(topology.hosts)],
        "eval_per_host_batch": eval_batch // topology.hosts,
        "compute_dtype": config.model.dtype, "matmul_precision": config.model.matmul_precision,
        "float32_matmul_runs_as": float32_matmul(platform, config.model.matmul_precision)
        if config.model.dtype == "float32" else None,
        "peak_class": precision,
        "peak_tflops_per_chip": None if chip is None else chip.tflops(precision),
        "memory_per_chip_bytes": per_chip_bytes,
        "chip_memory_bytes": None if chip is None else int(chip.memory_gib * 2**30),
    }


def describe_plan(plan: dict[str, Any]) -> str:
    """The plan in a few lines, for ``train --dry-run``."""
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    rows = ", ".join(f"host {h}: rows {a}-{b - 1}" for h, (a, b) in enumerate(plan["host_rows"][:4]))
    more = f", ... (host h: rows {plan['per_host_batch']}·h to {plan['per_host_batch']}·(h+1)-1)" \
        if plan["hosts"] > 4 else ""
    device = f" ({plan['device']})" if plan["device"] else ""
    lines = [
        f"topology {plan['topology']}: {plan['hosts']} host(s) x {plan['chips_per_host']} chip(s) = {plan['chips']} "
        f"devices{device}",
        f"mesh: 1-D ('data',) over {plan['chips']} devices in jax.devices() order; state replicated, batch sharded",
        f"train.batch_size {plan['global_batch']}: {plan['per_host_batch']} rows per host, {plan['per_chip_batch']} "
        f"per chip ({rows}{more}); eval.batch_size: {plan['eval_per_host_batch']} per host",
        f"compute dtype {plan['compute_dtype']}, model.matmul_precision {plan['matmul_precision']}"
        + (f" (float32 matmuls run as {plan['float32_matmul_runs_as']})" if plan["float32_matmul_runs_as"] else ""),
    ]
    if plan["peak_class"]:
        lines.append(f"peak assumed per chip: {plan['peak_tflops_per_chip']} TFLOP/s ({plan['peak_class']})")
    memory = f"memory per chip by the estimate: {gib(plan['memory_per_chip_bytes'])}"
    if plan["chip_memory_bytes"]:
        fits = plan["memory_per_chip_bytes"] <= plan["chip_memory_bytes"]
        memory += (f" of {gib(plan['chip_memory_bytes'])} per chip"
                   + ("" if fits else " -- does NOT fit: lower train.batch_size, model.width or use model.dtype = bfloat16"))
    lines.append(memory)
    return "\n".join(lines)


def describe_topology(config: Any, args: argparse.Namespace) -> str | None:
    """``describe_plan`` for the topology the command line names; None when it names none
    (ConfigError for bad input, or a topology without --dry-run)."""
    topology = topology_from_args(args)
    return None if topology is None else describe_plan(plan_topology(config, topology))


def tpu_defaults_markdown() -> str:
    """README's "TPU defaults" table, from the code (tests/test_topology.py keeps them equal)."""
    from nt_robust.accelerators import find_device, precision_class
    from nt_robust.models import ModelConfig
    from nt_robust.train.precision import float32_matmul

    model = ModelConfig()
    peak = precision_class(model.dtype, model.matmul_precision, "tpu")
    lines = [f"With the defaults (`model.dtype = \"{model.dtype}\"`, `model.matmul_precision = "
             f"\"{model.matmul_precision}\"`) a TPU run keeps parameters in float32 and runs float32 matmuls and "
             f"convolutions as {float32_matmul('tpu', model.matmul_precision)}, so the estimate takes the "
             f"{peak} peak. `high` runs them as {float32_matmul('tpu', 'high')} and `highest` as "
             f"{float32_matmul('tpu', 'highest')}: the {precision_class('float32', 'high', 'tpu')} class, which has "
             "no published TPU peak (no MFU). `model.dtype = \"bfloat16\"` computes in bfloat16 (bf16 peak).",
             "",
             "| accelerator type | chips per host (multi-host) | one host up to | bf16 peak per chip (TFLOP/s) | "
             "memory per chip (GiB) |",
             "|---|---|---|---|---|"]
    for kind in TPU_TYPES:
        chip = find_device(kind.device)
        counts = "TensorCores, 2 per chip" if kind.cores_per_chip == 2 else "chips"
        names = " or ".join(f"`{p}-N`" for p in kind.prefixes)
        lines.append(f"| {names} (N: {counts}) | {kind.chips_per_host} | {kind.max_single_host} chips | "
                     f"{chip.bf16:g} | {chip.memory_gib:g} |")
    return "\n".join(lines)

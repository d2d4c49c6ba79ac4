"""What a run is computed with: versions, devices, processes, CPU model and ISA, git commit,
XLA flags; the persistent compilation cache and XLA:CPU's scheduler.

    info = environment_info(conv_impl="auto", dense_impl="auto")   # saved as RUN_DIR/environment.json
    cpu_info()                     # {"model": "AMD EPYC ...", "vendor": ..., "isa": ["avx2", ...], "cores": 2}
    configure_xla_cpu()            # what the CLI does at start-up, before the backend starts
    enable_compilation_cache()
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Sequence

import jax

from nt_robust.cpu_host import backend_started, cpu_host
from nt_robust.host_memory import malloc_settings
from nt_robust.models.conv import resolve_conv_impl
from nt_robust.models.dense import resolve_dense_impl

PACKAGES = ("nt_robust", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in PACKAGES}


def git_commit() -> str | None:
    """The commit of the nt_robust checkout (with ``+dirty`` if modified), if it is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


# Instruction-set features that change which float kernels XLA, Eigen, oneDNN and numpy
# pick (and so summation orders and rounding): what a result's machine is told apart by.
ISA_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve", "sve2")


def cpu_info(cpuinfo_path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name, vendor, the :data:`ISA_FEATURES` it has and the cores this
    process may use. Reads ``/proc/cpuinfo`` (Linux); elsewhere only what ``platform`` knows."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "vendor": None, "isa": [],
                            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                            "family": None, "model_number": None}
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor describes them all
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    info["model"] = fields.get("model name") or fields.get("cpu model") or info["model"]
    info["vendor"] = fields.get("vendor_id") or fields.get("cpu implementer")
    # "AMD EPYC" names Zen 4 (family 25) and Zen 5 (family 26) alike: the numbers tell them apart.
    info["family"], info["model_number"] = fields.get("cpu family"), fields.get("model")
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    info["isa"] = [feature for feature in ISA_FEATURES if feature in flags]
    return info


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line, e.g. ``AMD EPYC family 26 model 2 (2 cores; avx2 fma avx512f ...)`` (family and
    model numbers where /proc/cpuinfo has them; records from before they were kept lack them)."""
    info = info or cpu_info()
    numbers = (f" family {info['family']} model {info['model_number']}"
               if info.get("family") and info.get("model_number") else "")
    return f"{info['model']}{numbers} ({info['cores']} cores; {' '.join(info['isa']) or 'ISA unknown'})"


def environment_info(conv_impl: str = "auto", dense_impl: str = "auto") -> dict[str, Any]:
    devices = jax.devices()
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu": cpu_info(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_host": cpu_host().as_record(),
        "conv_impl_auto": resolve_conv_impl("auto"),
        "conv_impl_auto_choice": _auto_choice_record("conv"),
        "native_conv": _native_kernels_record(resolve_conv_impl(conv_impl) == "native"),
        "dense_impl_auto": resolve_dense_impl("auto"),
        "dense_impl_auto_choice": _auto_choice_record("dense"),
        "native_dense": _native_kernels_record(resolve_dense_impl(dense_impl) == "native"),
        "cpu_devices": cpu_device_choice(),
        "malloc": malloc_settings(),
    }


def _native_kernels_record(used: bool) -> dict[str, Any] | None:
    """The native kernels' library and build key where the run uses them (``used``: its
    ``model.conv_impl`` or ``model.dense_impl`` resolves to "native" here); None otherwise."""
    if not used:
        return None
    from nt_robust.models import native_conv

    return {**native_conv.native_status(), "build_key": native_conv.build_key()}


def _auto_choice_record(kind: str) -> dict[str, Any] | None:
    """How "auto" chose the run's convolutions (``kind`` "conv") or dense-layer products
    ("dense") on this machine; None off a CPU host (``nt_robust.cpu_host``), where "auto"
    means XLA's."""
    if not cpu_host():
        return None
    from nt_robust.models import conv_choice

    return conv_choice.cpu_conv_choice() if kind == "conv" else conv_choice.cpu_dense_choice()


def cache_dir() -> Path:
    """nt_robust's per-user cache: ``$XDG_CACHE_HOME/nt_robust`` (default ``~/.cache/nt_robust``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nt_robust"


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes (runs of a sweep that differ only in
    λ or seed share programs). ``NT_ROBUST_COMPILATION_CACHE=off`` disables it; any other
    value is the cache directory (default ``~/.cache/nt_robust/xla``)."""
    setting = os.environ.get("NT_ROBUST_COMPILATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return
    jax.config.update("jax_compilation_cache_dir", setting or str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


CPU_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
# jaxlib 0.10.2 runs convolutions through YNNPACK by default; XLA's Eigen convolutions are
# faster on 2 cores: conv-net steps on one device 1.3-1.6x, attack steps 1.2-1.6x. Only on the
# jaxlib it was measured with: XLA aborts on flags it does not know, and a later jaxlib may
# route fusions differently.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# The same with elementwise fusions through YNNPACK ("+eltwise"), where "auto" keeps XLA's
# convolutions: the layout transposes XLA puts around every weight-gradient convolution ran
# 3-4x faster on a Zen 5 EPYC, natural conv-net steps 1.1-1.2x. Where "auto" runs the native
# kernels there are no such transposes, and on an Intel Xeon the fusions made WRN-16-k steps
# take 11-30 % longer and APGD-CE up to 2x (docs/benchmarks.md).
YNN_ELTWISE_FLAG = YNN_FUSION_FLAG + ",+eltwise"
# (flag, the XLA option it sets, jaxlib versions [from, before) it is added for)
CPU_FLAGS = ((CPU_SCHEDULER_FLAG, "xla_cpu_scheduler_type", (0, 10, 0), None),
             (YNN_FUSION_FLAG, "xla_cpu_experimental_ynn_fusion_type", (0, 10, 2), (0, 11, 0)))


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def configure_xla_cpu() -> bool:
    """Add :data:`CPU_FLAGS` to ``XLA_FLAGS`` (what the CLI does at start-up):

    - the memory-optimized scheduler: the default one keeps the unrolled attack's
      activations alive (XLA plans 1.5 GB of temporaries for the small CNN's TRADES step,
      0.3 GB with this one), and the step is no slower;
    - Eigen's convolutions instead of YNNPACK's (jaxlib 0.10.2 to 0.10.x, where it was
      measured), and YNNPACK's elementwise fusions (with the transposes in them) instead of
      XLA's loops unless ``conv_impl = "auto"`` runs the native kernels on this machine
      (:func:`elementwise_fusions_pay`).

    Both were measured in docs/benchmarks.md. They take effect only before JAX starts its
    backend (XLA reads ``XLA_FLAGS`` then), and only for CPU compiles. Each is left alone
    when ``XLA_FLAGS`` already sets its option, all of them when
    ``NT_ROBUST_XLA_CPU_FLAGS=off``, and each on a jaxlib outside the versions it was
    checked on. Once the backend has started nothing is added: the flags could no longer
    take effect here, yet environment.json would record them and child processes would
    compile with them, so a parent and its child would round differently (a caller of
    ``cli.main(argv)`` in a process that already ran JAX). Nothing is added, measured or
    built off a CPU host (``nt_robust.cpu_host``: a GPU or TPU host). Returns whether any
    flag was added.
    """
    if os.environ.get("NT_ROBUST_XLA_CPU_FLAGS", "").lower() in ("off", "0", "false", "no"):
        return False
    if not cpu_host():
        return False
    if backend_started():
        return False
    version = _jaxlib_version()
    if version is None:
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    added = [flag for flag, option, first, before in CPU_FLAGS
             if first <= version and (before is None or version < before) and option not in flags]
    if YNN_FUSION_FLAG in added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()  # what the choice below is measured under
        if elementwise_fusions_pay():
            added[added.index(YNN_FUSION_FLAG)] = YNN_ELTWISE_FLAG
    if added:
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return bool(added)


def elementwise_fusions_pay() -> bool:
    """Whether :data:`YNN_ELTWISE_FLAG` should replace :data:`YNN_FUSION_FLAG` here: unless
    ``conv_impl = "auto"`` runs the native kernels on this machine (``$NT_ROBUST_CONV_IMPL_AUTO``,
    else the cached measurement, else measured now in a subprocess, once per machine, under the
    flags without it; if that fails, the fusions stay, as before the choice existed)."""
    forced = os.environ.get("NT_ROBUST_CONV_IMPL_AUTO", "").strip()
    if forced:
        return forced != "native"
    from nt_robust.models import conv_choice

    impl = conv_choice.cached_impl()
    if impl is None:
        impl = conv_choice.measure_in_subprocess()
    return impl != "native"


# Architectures whose training steps run faster split over one XLA device per core: measured
# on 2 cores (docs/benchmarks.md), small-CNN and WRN-16-k steps 1.04-2x; MLP steps are slower
# split (up to 2.7x), so they stay on one device.
CONV_ARCHS = ("cnn", "wrn")
MAX_AUTO_CPU_DEVICES = 8  # measured up to 4 devices on 2 cores; more devices only shrink per-device batches
_cpu_device_choice: dict[str, Any] = {"count": None, "source": "JAX's default (one device)"}


def auto_cpu_devices(models: Sequence[tuple[str, int, int]], cores: int | None = None) -> int:
    """The CPU device count the CLI picks when none is asked for, from the (arch, train batch,
    eval batch) of every run it will train: one device per core (at most
    :data:`MAX_AUTO_CPU_DEVICES`, and a count that divides every batch) when all are conv
    nets, else 1::

        auto_cpu_devices([("wrn", 128, 256)], cores=2)   # 2
        auto_cpu_devices([("mlp", 128, 256)], cores=2)   # 1
    """
    cores = cores or cpu_info()["cores"] or 1
    if not models or any(arch not in CONV_ARCHS for arch, _, _ in models):
        return 1
    count = min(cores, MAX_AUTO_CPU_DEVICES)
    while count > 1 and any(batch % count for _, *batches in models for batch in batches):
        count -= 1
    return count


def cpu_device_choice() -> dict[str, Any]:
    """How this process's CPU device count was chosen (``count`` None: JAX's default), as
    :func:`set_cpu_devices` recorded it; saved in environment.json."""
    return dict(_cpu_device_choice)


def set_cpu_devices(count: int | None = None, source: str | None = None) -> int | None:
    """Split the host CPU into ``count`` XLA devices (default: ``$NT_ROBUST_CPU_DEVICES``;
    neither: leave JAX's default of one). Training and its per-epoch evaluation then shard
    each batch over them exactly as over GPUs (protocol evaluations do not), so XLA:CPU
    keeps every core busy (the CLI's choice without either: :func:`auto_cpu_devices`).
    Results depend on the device count at float-rounding level; the count and ``source``
    (how it was chosen) are recorded in environment.json. Must run before JAX starts its
    backend. Off a CPU host (``nt_robust.cpu_host``) nothing is split: the count is
    recorded as not applied and None is returned. Returns the count set."""
    if count is None:
        setting = os.environ.get("NT_ROBUST_CPU_DEVICES", "").strip()
        if not setting:
            return None
        if not setting.isdigit():
            raise ValueError(f"NT_ROBUST_CPU_DEVICES must be a positive integer, got {setting!r}")
        count, source = int(setting), "NT_ROBUST_CPU_DEVICES"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of CPU devices must be an integer >= 1, got {count!r}")
    host = cpu_host()
    if not host:
        _cpu_device_choice.update(count=None, source=f"{source or 'set_cpu_devices'} asked for {count}, "
                                                     f"not applied: not a CPU host ({host.reason})")
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as error:  # JAX refuses once its backend has started
        raise RuntimeError(f"cannot split the CPU into {count} devices: JAX has already started its "
                           "backend in this process; set the count first thing (nt-robust train|eval|study ... --cpu-devices N, "
                           "or NT_ROBUST_CPU_DEVICES=N in the environment)") from error
    _cpu_device_choice.update(count=count, source=source or "set_cpu_devices")
    return count

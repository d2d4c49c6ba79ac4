"""XLA:CPU's process set-up: the flags of :mod:`nt_robust.cpu.xla_flags`, added before JAX
starts its backend, and only on a CPU host (``nt_robust.cpu_host``)::

    configure_xla_cpu()        # what the CLI does at start-up; True when a flag was added
    elementwise_fusions_pay()  # whether YNNPACK's elementwise fusions are asked for too
"""

from __future__ import annotations

import os

from nt_robust.cpu import xla_flags
from nt_robust.cpu.xla_flags import CPU_FLAGS, YNN_ELTWISE_FLAG, YNN_FUSION_FLAG
from nt_robust.cpu_host import backend_started, cpu_host


def configure_xla_cpu() -> bool:
    """Add :data:`~nt_robust.cpu.xla_flags.CPU_FLAGS` to ``XLA_FLAGS`` (what the CLI does at start-up):

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
    version = xla_flags.jaxlib_version()
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
    """Whether :data:`~nt_robust.cpu.xla_flags.YNN_ELTWISE_FLAG` should replace
    :data:`~nt_robust.cpu.xla_flags.YNN_FUSION_FLAG` here: unless ``conv_impl = "auto"`` runs
    the native kernels on this machine (``$NT_ROBUST_CONV_IMPL_AUTO``, else the cached
    measurement, else measured now in a subprocess, once per machine, under the flags without
    it; if that fails, the fusions stay, as before the choice existed)."""
    forced = os.environ.get("NT_ROBUST_CONV_IMPL_AUTO", "").strip()
    if forced:
        return forced != "native"
    from nt_robust.cpu import choice

    impl = choice.cached_impl()
    if impl is None:
        impl = choice.measure_in_subprocess()
    return impl != "native"

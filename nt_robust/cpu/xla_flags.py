"""The XLA:CPU flags nt_robust adds at start-up (``nt_robust.cpu.setup.configure_xla_cpu``),
each with the jaxlib versions it was measured on: XLA aborts on a flag it does not know::

    CPU_FLAGS          # ((flag, the XLA option it sets, first jaxlib, jaxlib before which), ...)
    jaxlib_version()   # (0, 10, 2), or None when jaxlib is missing or oddly numbered
"""

from __future__ import annotations

import importlib.metadata

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


def jaxlib_version() -> tuple[int, ...] | None:
    """The installed jaxlib as (major, minor, patch); None when missing or not numeric."""
    try:
        return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None

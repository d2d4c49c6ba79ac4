"""What every cluster emitter shares: the per-task :class:`Resources` and the stages' index
ranges (nt_robust/studies/cluster.py says what each emitter writes)::

    Resources(gpus_per_task=1, time="04:00:00", mem="32G")
    stage_ranges(study)        # {"grid": (0, G - 1), "war": (G, G + W - 1)}
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from nt_robust.config import ConfigError

if TYPE_CHECKING:  # the CLI's parser imports the emitters: nothing here may import JAX at module level
    from nt_robust.studies.sweep import Study

GRID_STAGE, WAR_STAGE = "grid", "war"  # nt_robust.studies.sweep's (tests/studies/test_cluster.py checks)
DEFAULT_EXECUTABLE = ".venv/bin/nt-robust"
DEFAULT_SIGNAL_MARGIN = 120
SLURM_MEMORY = re.compile(r"^(\d+)([KMGT]?)$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Per task. None: the scheduler's default."""

    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None          # HH:MM:SS
    mem: str | None = None           # Slurm style: 32G = 32 GiB (k8s gets "32Gi")
    nodes: int = 1                   # > 1: multi-node runs (srun, --distributed)
    signal_margin: int = DEFAULT_SIGNAL_MARGIN  # Slurm: SIGTERM this many seconds before --time
    executable: str = DEFAULT_EXECUTABLE
    repo: str | None = None          # Slurm: the repository's absolute path (default: the current directory)
    image: str | None = None         # k8s: an image with the repository's environment (required)
    volume_claim: str | None = None  # k8s: a PersistentVolumeClaim holding repo, data and runs
    workdir: str = "/work"           # k8s: where the repository is in the pod
    tpu: str | None = None           # k8s on GKE: ACCELERATOR/TOPOLOGY, e.g. tpu-v5-lite-podslice/4x4

    def __post_init__(self) -> None:
        if self.time is not None and time_seconds(self.time) is None:
            raise ConfigError(f"--time must be HH:MM:SS (e.g. 04:00:00), got {self.time!r}")
        if self.mem is not None and not SLURM_MEMORY.match(self.mem):
            raise ConfigError(f"--mem must be a whole number with an optional K, M, G or T (Slurm's units: "
                              f"32G is 32 GiB; no unit is MiB), got {self.mem!r}")
        for name in ("gpus_per_task", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1, got {self.nodes}")
        if self.signal_margin < 1:
            raise ConfigError(f"--signal-margin must be >= 1 second, got {self.signal_margin}")
        if self.time and self.signal_margin >= time_seconds(self.time):
            raise ConfigError(f"--signal-margin {self.signal_margin} s leaves no time to train within --time "
                              f"{self.time}: give a longer --time or a shorter --signal-margin")


def time_seconds(text: str) -> int | None:
    """``"HH:MM:SS"`` in seconds; None if ``text`` is not of that form."""
    parts = text.split(":")
    if not (len(parts) == 3 and all(p.isdigit() for p in parts)):
        return None
    h, m, s = (int(p) for p in parts)
    return h * 3600 + m * 60 + s


def stage_ranges(study: Study) -> dict[str, tuple[int, int]]:
    """``{stage: (first index, last index)}`` of the stages that have runs."""
    ranges = {}
    for stage in (GRID_STAGE, WAR_STAGE):
        indices = [r.index for r in study.runs() if r.stage == stage]
        if indices:
            assert indices == list(range(indices[0], indices[-1] + 1)), "a stage's indices are contiguous"
            ranges[stage] = (indices[0], indices[-1])
    return ranges

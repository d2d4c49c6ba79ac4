"""One directory per run; studies read nothing else::

    RUN_DIR/config.json         resolved config (what ran, every default filled in)
    RUN_DIR/environment.json    versions, devices, processes, git commit
    RUN_DIR/metrics.jsonl       one line per epoch
    RUN_DIR/summary.json        final and best-epoch metrics, both selection rules
    RUN_DIR/checkpoints/        orbax: latest/, best_val/, best_test/
    RUN_DIR/eval/*.npz          per-example arrays (labels, predictions, margins, Lipschitz)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nt_robust import io


class RunConfigMismatchError(RuntimeError):
    """The run directory already holds a run made with a different config."""


_MISSING = object()


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}" if path else key)
        return found
    return [] if old == new else [(path, old, new)]


# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("train.progress",)
# Config fields added after runs were made, with the behaviour a saved config without one
# ran with (not necessarily today's default): resuming such a run needs that value.
ADDED_FIELDS = {"model.conv_impl": "xla"}


def _matters(path: str, old: Any, new: Any) -> bool:
    if path.startswith(RESUMABLE_CHANGES):
        return False
    return not (old is _MISSING and path in ADDED_FIELDS and new == ADDED_FIELDS[path])


def _describe(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


class RunDirectory:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.environment_path = self.root / "environment.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.summary_path = self.root / "summary.json"
        self.checkpoint_dir = self.root / "checkpoints"
        self.eval_dir = self.root / "eval"

    def claim(self, config: dict[str, Any], environment: dict[str, Any], write: bool = True) -> bool:
        """Record ``config`` for a new run, or check it matches the run already here.
        Returns True when an existing run will be resumed."""
        if self.config_path.exists():
            previous = io.read_json(self.config_path)
            differences = [f"{path}: {_describe(old)} -> {_describe(new)}"
                           for path, old, new in _differences(previous, config) if _matters(path, old, new)]
            if differences:
                legacy = [f"--set {path}={value}" for path, value in ADDED_FIELDS.items()
                          if any(d.startswith(f"{path}: (absent)") for d in differences)]
                raise RunConfigMismatchError(
                    f"{self.root} already holds a run with a different config ({'; '.join(differences[:5])}). "
                    "Resume it with its own config"
                    + (f" (it predates {', '.join(legacy)}: add that to resume it exactly)" if legacy else "")
                    + ", give this run another name (--set name=...) or --run-dir, or delete that directory.")
            resumed = True
        else:
            resumed = False
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
            io.write_json(self.config_path, config)
            io.write_json(self.environment_path if not resumed else self.root / "environment.resumed.json",
                          environment)
        return resumed

    def read_metrics(self) -> list[dict[str, Any]]:
        return io.read_jsonl(self.metrics_path)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        io.write_jsonl(self.metrics_path, rows)

    def save_eval(self, name: str, per_example: dict[str, Any]) -> None:
        io.save_arrays(self.eval_dir / f"{name}.npz", per_example)

    def write_summary(self, summary: dict[str, Any]) -> None:
        io.write_json(self.summary_path, summary)

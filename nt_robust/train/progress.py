"""Training progress that suits where it goes: a tqdm bar on a terminal, one plain line every
``interval`` seconds elsewhere (a batch job's log file, a pipe), so a Slurm log is not filled
with carriage-return updates::

    bar = progress_bar(total=382, initial=0, desc="epoch 1/100", enabled=True)
    bar.update(1); bar.set_postfix(loss="0.812", acc="0.410", refresh=False); bar.close()

``NT_ROBUST_PROGRESS_SECONDS`` sets the interval of the plain lines (default 60).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable, TextIO

log = logging.getLogger("nt_robust.train")


class LineProgress:
    """The tqdm calls the trainer makes, written as one log line every ``interval`` seconds."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, emit: Callable[[str], None] | None = None) -> None:
        self.total, self.n, self.desc, self.interval, self.clock = total, initial, desc, interval, clock
        self.emit = emit or (lambda line: log.info("%s", line))
        self.postfix: dict[str, Any] = {}
        self.start = self.last = clock()
        self.start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            self.emit(f"{self.desc}: step {self.n}/{self.total} ({rate:.2f} steps/s{extra})")

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str, enabled: bool, stream: TextIO | None = None):
    """A tqdm bar when ``enabled`` and ``stream`` (default stderr) is a terminal; a
    :class:`LineProgress` when enabled elsewhere; a disabled tqdm bar otherwise."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if enabled and not is_tty:
        interval = float(os.environ.get("NT_ROBUST_PROGRESS_SECONDS", "60") or 60)
        return LineProgress(total, initial, desc, interval=interval)
    return tqdm(total=total, initial=initial, unit="step", leave=False, desc=desc, disable=not enabled, file=stream)

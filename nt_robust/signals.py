"""SIGTERM handled like Ctrl-C, for every long command::

    from nt_robust.signals import Terminated, raise_terminated
    signal.signal(signal.SIGTERM, raise_terminated)   # the CLI does this in its own process
    try:
        ...
    except KeyboardInterrupt as interrupt:            # Ctrl-C, or Terminated (signum SIGTERM)
        ...

SIGTERM is what Slurm (time limit, preemption), Kubernetes and ``kill`` send. By default it
ends a Python process at once and without a word; raised as a ``KeyboardInterrupt`` instead,
the command stops where Ctrl-C would stop it: the trainer at its next checkpoint boundary
(nt_robust/train/checkpoints.py defers it during a save), an evaluation after its last
finished batch, and the CLI says what happened (exit status 143). No project imports: the CLI
installs it before anything heavy is loaded.
"""

from __future__ import annotations

import signal
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""

    signum = signal.SIGTERM


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop as Ctrl-C would."""
    raise Terminated()

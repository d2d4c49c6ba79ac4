"""Keep glibc's malloc from handing XLA:CPU's large scratch buffers back to the kernel.

XLA:CPU's Eigen convolutions allocate their packing buffers with ``malloc`` on every call,
from its worker threads: for the small CNN's training step at batch 128, buffers of
38-151 MB several times a step. glibc serves such a request from a fresh ``mmap`` and
unmaps it on ``free``, so every step touches ~90 MB of new pages: 22 000 page faults a
step, each zeroing a page (docs/benchmarks.md measures what this costs). Three
``mallopt`` settings make freed memory stay in the process and be reused::

    tune_malloc()          # what the CLI does at start-up, before JAX starts its backend
    malloc_settings()      # {"tuned": True, "settings": {...}, "note": ...}: saved in environment.json

- ``M_ARENA_MAX = 1``: every thread allocates from the main heap (a thread's own arena
  is at most 64 MB and serves anything larger by ``mmap`` whatever the settings);
- ``M_MMAP_MAX = 0``: no request is served by ``mmap``;
- ``M_TRIM_THRESHOLD = -1``: free memory at the top of the heap is never given back
  (glibc reads -1 as the largest size; with a 1 GiB threshold, a WRN-16-2 TRADES step,
  whose buffers pass 1 GiB, was trimmed and re-faulted every step).

The price: the resident set stays at its peak instead of shrinking between steps.
Only on Linux with glibc, only on a CPU host (``nt_robust.cpu_host``: no JAX accelerator
plugin installed, or ``JAX_PLATFORMS`` asking for the CPU; on a GPU or TPU host the device
allocator does this job), and never when ``NT_ROBUST_MALLOC=default``. It must run before the threads whose
allocations it is for exist: glibc fixes the arena limit when a second arena is first made.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

from nt_robust.cpu_host import cpu_host

# mallopt parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
_PARAMETERS = {"M_ARENA_MAX": M_ARENA_MAX, "M_MMAP_MAX": M_MMAP_MAX, "M_TRIM_THRESHOLD": M_TRIM_THRESHOLD}
_state: dict[str, Any] = {"tuned": False, "settings": None, "note": "not asked (tune_malloc was not called)"}


def malloc_settings() -> dict[str, Any]:
    """What :func:`tune_malloc` did in this process (saved in environment.json)."""
    return dict(_state)


def _skip_reason() -> str | None:
    if os.environ.get("NT_ROBUST_MALLOC", "").strip().lower() in ("default", "off", "0", "false", "no"):
        return "NT_ROBUST_MALLOC asks for glibc's defaults"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not Linux with glibc ({platform.system()}, {platform.libc_ver()[0] or 'unknown libc'})"
    host = cpu_host()
    return None if host.cpu else f"not a CPU host: {host.reason}"


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` unless :func:`_skip_reason` says not
    to; returns whether they were applied. A second call changes nothing."""
    if _state["tuned"]:
        return True
    reason = _skip_reason()
    if reason is not None:
        _state.update(tuned=False, settings=None, note=reason)
        return False
    libc = ctypes.CDLL("libc.so.6")
    failed = [name for name, value in SETTINGS.items() if libc.mallopt(_PARAMETERS[name], value) != 1]
    if failed:  # mallopt returns 1 on success
        _state.update(tuned=False, settings=None, note=f"mallopt refused {failed}")
        return False
    _state.update(tuned=True, settings=dict(SETTINGS),
                  note="glibc keeps freed memory for reuse (nt_robust.cpu.malloc); NT_ROBUST_MALLOC=default turns it off")
    return True

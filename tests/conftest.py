"""Test-wide settings: compiled programs are cached in a per-session directory (shared
with the subprocesses the tests start), never in the user's cache."""

import atexit
import os
import shutil
import tempfile

if "NT_ROBUST_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="nt_robust_xla_")
    os.environ["NT_ROBUST_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

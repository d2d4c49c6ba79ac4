"""Test-wide settings: compiled programs are cached in a per-session directory (shared
with the subprocesses the tests start), never in the user's cache; conv_impl and dense_impl
"auto" are fixed rather than measured."""

import atexit
import os
import shutil
import tempfile

if "NT_ROBUST_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="nt_robust_xla_")
    os.environ["NT_ROBUST_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# conv_impl = "auto" is measured once per machine (nt_robust.cpu.choice); where the two
# weight gradients time alike, two fresh processes could choose differently, and tests that
# compare processes bit for bit would flake. The suite fixes it (tests/cpu/test_conv.py
# tests the measurement and its cache themselves).
os.environ.setdefault("NT_ROBUST_CONV_IMPL_AUTO", "shifted_matmul")
# Likewise model.dense_impl = "auto" (nt_robust.cpu.choice.cpu_dense_choice): XLA's
# products; tests/cpu/test_native_dense.py tests the kernel and the measurement.
os.environ.setdefault("NT_ROBUST_DENSE_IMPL_AUTO", "xla")
# The cost estimate's cache of FLOP counts and memory plans (nt_robust.studies.cost.cached) is
# for users; tests count afresh (tests/studies/test_cost.py tests the cache in a temporary home).
os.environ.setdefault("NT_ROBUST_ESTIMATE_CACHE", "off")
# The suite computes on the CPU even on a machine whose NVIDIA GPU JAX does not use
# (nt_robust.gpu_check would refuse `train` there); tests/test_gpu_check.py unsets it.
os.environ.setdefault("NT_ROBUST_ALLOW_CPU", "1")

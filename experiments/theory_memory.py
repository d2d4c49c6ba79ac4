"""How many points fit: time and peak memory of n×n kernels (ours tiled, nt analytic batched, nt empirical).

Each measurement runs in a fresh subprocess so its peak resident memory is its own (VmHWM
from /proc/self/status: ``ru_maxrss`` survives fork + exec on Linux and would report the
parent's peak when this runs inside theory_all.py)::

    python experiments/theory_memory.py --preset cpu   # -> figures/theory/memory.json
"""

from __future__ import annotations

import json
import subprocess
import sys

from nt_robust.storage import write_json
from nt_robust.theory.experiment import TheoryExperiment
from nt_robust.theory.presets import get_preset

_CHILD = r"""
import json, resource, sys, time
def peak_rss_gb():
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
import jax, jax.numpy as jnp, numpy as np
kind, n, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.asarray(jax.random.uniform(jax.random.key(0), (n, 784)))
x = 28.0 * x / np.linalg.norm(x, axis=1, keepdims=True)
t = time.time()
if kind == "ours_tiled":
    from nt_robust.theory.batching import tiled_kernel
    from nt_robust.theory.kernels import KernelSpec, ntk
    spec = KernelSpec(3)
    k = tiled_kernel(lambda a, b: ntk(spec, a, b), x, x, tile=1000)
elif kind == "nt_analytic_batched":
    from nt_robust.theory.kernels import KernelSpec, nt_stax_mlp
    from nt_robust.theory.nt_compat import nt
    kernel_fn = nt.batch(nt_stax_mlp(KernelSpec(3))[2], batch_size=500, store_on_device=False)
    k = np.asarray(kernel_fn(x, x, "ntk"))
elif kind == "nt_empirical_batched":
    from nt_robust.theory.networks import MLPSpec, apply, init_params
    from nt_robust.theory.nt_compat import NTK_IMPL, nt
    spec = MLPSpec(3, width)
    params = init_params(spec, jax.random.key(1), 784)
    fn = nt.empirical_ntk_fn(lambda p, v: apply(spec, p, v)[:, None], trace_axes=(), implementation=NTK_IMPL)
    kernel_fn = nt.batch(lambda a, b, p: fn(a, b, p)[..., 0, 0], batch_size=250, store_on_device=False)
    k = np.asarray(kernel_fn(x, x, params))
print(json.dumps({"kind": kind, "n": n, "width": width if kind == "nt_empirical_batched" else None,
                  "seconds": time.time() - t, "peak_rss_gb": peak_rss_gb(),
                  "finite": bool(np.isfinite(k).all()), "result_gb": k.nbytes / 2**30}))
"""


def run(kind: str, n: int, width: int = 0, timeout: int = 900) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(n), str(width)], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "n": n, "width": width, "error": f"timeout after {timeout}s"}
    if out.returncode != 0:
        return {"kind": kind, "n": n, "width": width, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(preset_name: str, out_dir: str) -> dict:
    """Every kernel kind at the preset's sizes, one fresh process each; OUT/memory.json (marked
    partial) after each, since a large size can take long or run out of memory."""
    preset = get_preset(preset_name)
    rows = []
    for n in preset.memory_sizes:
        for kind in ("ours_tiled", "nt_analytic_batched"):
            rows.append(run(kind, n))
            print(rows[-1], flush=True)
            write_json(f"{out_dir}/memory.json", {"preset": preset_name, "depth": 3, "rows": rows, "partial": True})
    rows.append(run("nt_empirical_batched", max(min(preset.memory_sizes) // 2, 100), 256))
    print(rows[-1], flush=True)
    return {"preset": preset_name, "depth": 3, "rows": rows}


EXPERIMENT = TheoryExperiment("memory", __doc__, measure)


if __name__ == "__main__":
    EXPERIMENT.main()

"""neural-tangents is imported only through nt_compat, and never drags in TensorFlow."""

import subprocess
import sys

import pytest

_PROBE = """
import sys
import nt_robust, nt_robust.theory, nt_robust.theory.kernels, nt_robust.theory.networks
import nt_robust.theory.gradients, nt_robust.theory.lazy_training, nt_robust.theory.stability
before = 'neural_tangents' in sys.modules
from nt_robust.theory.nt_compat import nt, stax, NTK_IMPL
print(before, 'neural_tangents' in sys.modules, 'tensorflow' in sys.modules)
"""


def test_import_is_lazy_and_tensorflow_free():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"], out.stdout + out.stderr


def test_shim_is_idempotent_and_kernels_run():
    jnp = pytest.importorskip("jax.numpy")
    from nt_robust.theory import nt_compat

    nt_compat.apply_shim()  # a second application changes nothing
    _, _, kernel_fn = nt_compat.stax.serial(nt_compat.stax.Dense(8), nt_compat.stax.Relu(), nt_compat.stax.Dense(1))
    k = kernel_fn(jnp.ones((2, 3)), None, "ntk")
    assert k.shape == (2, 2) and bool(jnp.all(jnp.isfinite(k)))

"""The exported PyTorch model computes the Flax model's logits (skipped without torch)."""

import jax
import numpy as np
import pytest

from nt_robust.models import MLP, SmallCNN

torch = pytest.importorskip("torch")

from nt_robust.attacks.torch_export import nhwc_to_nchw, to_torch  # noqa: E402

torch.set_num_threads(1)  # torch's thread pool beside JAX's is very slow on a busy 2-core machine


@pytest.mark.parametrize("model, shape", [
    (MLP(width=16, depth=2, num_classes=10), (8, 8, 1)),
    (MLP(width=8, depth=1, num_classes=5, input_mean=(0.5, 0.4), input_std=(0.2, 0.3)), (4, 4, 2)),
    (SmallCNN(width=1, num_classes=10), (8, 8, 3)),
])
def test_exported_logits_match(model, shape):
    x = np.random.default_rng(0).uniform(size=(6,) + shape).astype(np.float32)
    # Random weights from numpy: jax's own initializers take long to compile on a busy CPU.
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
    expected = np.asarray(model.apply(variables, x))
    with torch.no_grad():
        got = to_torch(model, variables)(torch.from_numpy(nhwc_to_nchw(x))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_unsupported_model_is_refused():
    from nt_robust.models import WideResNet
    with pytest.raises(NotImplementedError):
        to_torch(WideResNet(depth=10, width=1), {"params": {}})

"""Conv-net theory: empirical NTKs of our Flax models, a BatchNorm-free WRN in
neural-tangents' stax with its infinite-width kernel, the input gradient that kernel
predicts at initialization, and a certified |W|-product bound on ‖∇ₓf‖₁.

    from nt_robust.theory.conv import (wrn_arch, wrn_stax, stax_init, analytic_grad_sq_norm,
                                       flax_empirical_ntk, model_input_grads, abs_product_bound)
    init_fn, apply_fn, kernel_fn = wrn_stax(depth=10, width=4)     # stem and groups widened
    params = stax_init(init_fn, seed=0, input_shape=x.shape)      # N(0, 1) weights, drawn by numpy
    expected = analytic_grad_sq_norm(wrn_arch(10), x, std=0.35)   # (N,) E‖∇ₓf‖² at init, k → ∞
    theta = flax_empirical_ntk(model, variables, x)               # (N, N), logit 0, BN in eval mode
    grads = model_input_grads(model, variables, x)                # (N, H, W, C), compiled once per model
    bound = abs_product_bound(raw_model, variables, x.shape[1:], std=0.35)   # ≥ ‖∇ₓ logit₀‖₁ everywhere
                                                                  # (raw_model: built without input_mean/std)

Conventions (docs/theory.md §12): the scalar studied is logit 0 of the 10-class model (at
initialization every logit has the same law), as a function of the *pixel* image x in
[0, 1]; the models standardize x by the dataset's mean and std inside, and the stax
analogue is given (x − mean)/std, so every gradient is in pixel units.

The stax analogue ("WRN-d-k, BN-free") keeps the Flax WRN's topology — a 3x3 stem, three
groups of pre-activation basic blocks (16k, 32k, 64k channels; strides 1, 2, 2; a 1x1
shortcut conv on the activated input where the shape changes), a final ReLU, global
average pooling, a linear readout — with two changes that give it a width limit:

* every layer, the stem included, is widened with k (the Flax WRN's stem has 16 channels
  at every k, so no layer-wise infinite-width limit exists for it);
* NTK parameterization with fan-in variance W_std² = 2 at every conv and 1 at the readout,
  no biases (the Flax WRN uses PyTorch's fan-*out* init, whose variance at the first
  group's entry is 2/k of fan-in's: its output shrinks with k at init).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nt_robust.theory import grad_cov

ReadoutFn = Callable[[jax.Array], jax.Array]


# --- the BatchNorm-free analogue in neural-tangents' stax -------------------------------------

def wrn_arch(depth: int = 10, width: int = 1, W_std: float = math.sqrt(2.0), readout_std: float = 1.0,
             out_dim: int = 1) -> grad_cov.Layer:
    """The BN-free WRN-``depth``-``width`` (module docstring) as a :mod:`~nt_robust.theory.grad_cov`
    architecture: what :func:`wrn_stax` builds in stax and what :func:`analytic_grad_sq_diag`
    propagates."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, ...), got {depth}")
    if int(width) != width or width < 1:
        raise ValueError(f"WRN width must be an integer >= 1, got {width}")

    def conv(channels: int, stride: int = 1, size: int = 3) -> grad_cov.Conv:
        return grad_cov.Conv(channels, size, stride, W_std=W_std)

    def block(channels: int, stride: int, shape_changes: bool) -> grad_cov.Layer:
        residual = grad_cov.Serial((conv(channels, stride), grad_cov.Relu(), conv(channels)))
        if shape_changes:  # BN+ReLU (here ReLU) feed both the residual branch and the 1x1 shortcut
            return grad_cov.Serial((grad_cov.Relu(), grad_cov.Sum((residual, conv(channels, stride, 1)))))
        # a Serial of its own, as the hand-written stax network nested it (the same parameter tree)
        return grad_cov.Serial((grad_cov.Sum((grad_cov.Serial((grad_cov.Relu(), residual)), grad_cov.Identity())),))

    layers, channels_in = [conv(16 * width)], 16 * width
    for channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for b in range((depth - 4) // 6):
            s = stride if b == 0 else 1
            layers.append(block(channels, s, channels != channels_in or s != 1))
            channels_in = channels
    layers += [grad_cov.Relu(), grad_cov.GlobalAvgPool(), grad_cov.Dense(out_dim, W_std=readout_std)]
    return grad_cov.Serial(tuple(layers))


def wrn_stax(depth: int = 10, width: int = 1, W_std: float = math.sqrt(2.0), readout_std: float = 1.0,
             out_dim: int = 1) -> tuple[Callable, Callable, Callable]:
    """``(init_fn, apply_fn, kernel_fn)`` of the BN-free WRN-``depth``-``width`` (module docstring),
    :func:`wrn_arch` in stax.

    ``apply_fn(params, z)`` takes standardized NHWC images; ``kernel_fn`` is the exact
    infinite-width NNGP/NTK of the same architecture (independent of ``width``)."""
    return grad_cov.to_stax(wrn_arch(depth, width, W_std, readout_std, out_dim))


def stax_init(init_fn: Callable, seed: int, input_shape: Sequence[int]) -> Any:
    """Parameters of a bias-free NTK-parameterized stax network (``wrn_stax``) for ``seed``:
    every weight i.i.d. N(0, 1), the law ``init_fn`` draws from (W_std is applied in the
    forward pass), in ``init_fn``'s shapes, drawn by numpy (the same on every machine).
    ``init_fn`` itself runs layer by layer and jax's compiled normal draws compile slowly:
    7-16 s per WRN-10 on 2 cores, against milliseconds here."""
    leaves, tree = _stax_param_shapes(init_fn, tuple(input_shape))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(tree, [jnp.asarray(rng.standard_normal(leaf.shape, np.float32))
                                               for leaf in leaves])


@functools.lru_cache(maxsize=64)
def _stax_param_shapes(init_fn: Callable, input_shape: tuple[int, ...]) -> tuple[list, Any]:
    return jax.tree_util.tree_flatten(jax.eval_shape(lambda k: init_fn(k, input_shape)[1], jax.random.key(0)))


def analytic_grad_sq_norm(arch: grad_cov.Layer, x: jax.Array, mean: float = 0.0, std: float = 1.0,
                          batch_size: int = 64) -> jax.Array:
    """E‖∇ₓf(x)‖² at initialization for f(x) = g((x − mean)/std), per image, (N,), g the
    infinite-width network ``arch`` (:func:`wrn_arch`, :func:`nt_robust.theory.trained.mlp_arch`):
    the sum of :func:`analytic_grad_sq_diag`. Run it in float64 (``with jax.enable_x64(True):``)."""
    return grad_cov.grad_sq_norm(arch, x, mean, std, batch_size)


def analytic_grad_sq_diag(arch: grad_cov.Layer, x: jax.Array, mean: float = 0.0, std: float = 1.0,
                          batch_size: int = 64) -> jax.Array:
    """E[(∂f/∂x_j)²] at initialization for every input coordinate j, per image, (N, d),
    propagated layer by layer with the NNGP (:func:`nt_robust.theory.grad_cov.grad_sq_diag`;
    no derivative of the kernel at its ρ = 1 cusp, issue 40), ``batch_size`` directions at a
    time. At infinite width ∇ₓf is a Gaussian vector with this variance per coordinate, so
    E‖∇ₓf‖₁ = √(2/π) Σ_j √diag_j (:func:`nt_robust.theory.trained.predicted_grad_l1`)."""
    return grad_cov.grad_sq_diag(arch, x, mean, std, batch_size)


# --- empirical quantities of finite networks --------------------------------------------------

def flax_empirical_ntk(model: nn.Module, variables: Any, x: jax.Array, implementation: Any = None,
                       output: int = 0) -> jax.Array:
    """neural-tangents' empirical NTK of logit ``output`` of a Flax model, (N, N), BN in eval mode.

    ``implementation`` defaults to JACOBIAN_CONTRACTION (reverse mode). NTK_VECTOR_PRODUCTS
    is forward mode: it cannot go through the custom-VJP convolutions ("auto" on CPU), so it
    is refused for such a model with the fix."""
    from nt_robust.cpu.ops import supports_forward_mode
    from nt_robust.theory.nt_compat import NTK_IMPL, NTK_IMPL_VP

    implementation = NTK_IMPL if implementation is None else implementation
    conv, dot_general = getattr(model, "conv", None), getattr(model, "dot_general", None)
    if implementation == NTK_IMPL_VP and conv is not None and not supports_forward_mode(conv):
        raise ValueError(
            f"NTK_VECTOR_PRODUCTS differentiates the model in forward mode, which its convolution "
            f"({conv.__name__}, a jax.custom_vjp) does not support: build the "
            f"model with conv_impl='xla' (same function and parameters), or use JACOBIAN_CONTRACTION")
    if implementation == NTK_IMPL_VP and dot_general is not None and not supports_forward_mode(dot_general):
        raise ValueError(
            f"NTK_VECTOR_PRODUCTS differentiates the model in forward mode, which the native dense kernel "
            f"({dot_general.__name__}, a jax.custom_vjp) does not support: build the model with "
            f"dense_impl='xla' (same function and parameters), or use JACOBIAN_CONTRACTION")
    rest = {k: v for k, v in variables.items() if k != "params"}
    return _flax_ntk(model, variables["params"], rest, x, implementation, output)


# Module-level jits with the model (or stax apply_fn) static and the variables as arguments:
# a new init of the same network reuses the compiled kernel instead of baking the weights in.
@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _flax_ntk(model: nn.Module, params: Any, rest: Any, x: jax.Array, implementation: Any, output: int) -> jax.Array:
    from nt_robust.theory.nt_compat import nt

    f = lambda p, v: model.apply({"params": p, **rest}, v, train=False)[:, output:output + 1]  # noqa: E731
    return nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=implementation)(x, None, params)[:, :, 0, 0]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _stax_ntk(apply_fn: Callable, params: Any, z: jax.Array, implementation: Any) -> jax.Array:
    from nt_robust.theory.nt_compat import nt

    return nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=implementation)(z, None, params)[:, :, 0, 0]


def stax_empirical_ntk(apply_fn: Callable, params: Any, z: jax.Array, implementation: Any = None) -> jax.Array:
    """neural-tangents' empirical NTK of a scalar-output stax network, (N, N)."""
    from nt_robust.theory.nt_compat import NTK_IMPL

    return _stax_ntk(apply_fn, params, z, NTK_IMPL if implementation is None else implementation)


def logit_input_grads(logits_fn: ReadoutFn, x: jax.Array, output: int = 0) -> jax.Array:
    """∇ₓ of logit ``output`` at each image, shaped like ``x``. ``logits_fn`` must treat images
    independently (BatchNorm in eval mode). Compiles per call (the weights ``logits_fn``
    closes over become constants); across many inits use :func:`model_input_grads`."""
    return jax.jit(jax.grad(lambda v: jnp.sum(logits_fn(v)[:, output])))(x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def model_input_grads(model: nn.Module, variables: Any, x: jax.Array, output: int = 0) -> jax.Array:
    """:func:`logit_input_grads` of ``model.apply(variables, ·, train=False)``, compiled once per model."""
    return jax.grad(lambda v: jnp.sum(model.apply(variables, v, train=False)[:, output]))(x)


@functools.partial(jax.jit, static_argnums=(0,))
def stax_input_grads(apply_fn: Callable, params: Any, x: jax.Array, mean: float, std: float) -> jax.Array:
    """∇ₓ of the scalar stax network ``apply_fn(params, (x − mean)/std)`` at each image."""
    return jax.grad(lambda v: jnp.sum(apply_fn(params, (v - mean) / std)[:, 0]))(x)


@functools.partial(jax.jit, static_argnums=(0,))
def _apply_eval(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
    return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=(0,))
def _apply_stax(apply_fn: Callable, params: Any, x: jax.Array) -> jax.Array:
    return apply_fn(params, x)


def kernel_distance(a: jax.Array, b: jax.Array) -> float:
    """‖â − b̂‖_F / ‖b̂‖_F between the kernels normalized by their mean diagonal: a change of
    the kernel's *shape*, blind to its overall scale (which the WRN's init changes with k)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a / np.mean(np.diag(a)), b / np.mean(np.diag(b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mean_diagonal(a: jax.Array) -> float:
    """The kernel's scale: its mean diagonal Θ(x, x)."""
    return float(np.mean(np.diag(np.asarray(a, np.float64))))


# --- the certified |W|-product bound ----------------------------------------------------------

def _abs_variables(variables: Any, output: int) -> Any:
    """Variables of the network's *absolute linear part*: |kernels|, |BN scales|, biases and
    BN means 0, BN variances kept, the readout reduced to |column ``output``|."""
    def transform(path, leaf):
        name = path[-1].key
        if name in ("bias", "mean"):
            return jnp.zeros_like(leaf)
        if name in ("kernel", "scale"):
            leaf = jnp.abs(leaf)
            if name == "kernel" and path[-2].key == "classifier":
                leaf = jnp.zeros_like(leaf).at[:, output].set(leaf[:, output])
            return leaf
        return leaf  # var

    return jax.tree_util.tree_map_with_path(transform, variables)


def abs_product_bound(model: nn.Module, variables: Any, image_shape: Sequence[int], std: float | Sequence[float],
                      output: int = 0) -> float:
    """A certified upper bound on ‖∇ₓ logit_output(x)‖₁, valid at every x, for a Flax WRN or MLP.

    ∇ₓf = (1/std)·Wᴸ Dᴸ⁻¹ ⋯ D¹ W¹ with every ReLU derivative D in [0, 1] and every residual
    block's Jacobian S + J_B (S the identity or the 1x1 shortcut), so entrywise
    |∇ₓf| ≤ (1/std)·|Wᴸ| ⋯ |W¹| (with |S| + |J_B| per block and |γ|/√(σ²+ε) per eval-mode
    BatchNorm), and ‖∇ₓf‖₁ ≤ that nonnegative product applied to the all-ones image. The
    product is computed by running the same model with :func:`_abs_variables` on 1/std: all
    pre-activations are then ≥ 0, so each ReLU is the identity and the model computes exactly
    the product. The model must have been built *without* its input normalization (pass
    ``input_mean=input_std=None``). Max pooling is not covered (use
    :func:`smallcnn_abs_product_bound`)."""
    if getattr(model, "input_mean", None) is not None or getattr(model, "input_std", None) is not None:
        raise ValueError("abs_product_bound: build the model without input_mean/input_std; the std is "
                         "passed as `std` (the mean shift has no Jacobian)")
    ones = jnp.ones((1, *image_shape), jnp.float32) / jnp.asarray(std, jnp.float32)
    bound = float(_apply_eval(model, _abs_variables(variables, output), ones)[0, output])
    if not math.isfinite(bound):
        raise FloatingPointError("abs_product_bound overflowed float32: evaluate it in float64")
    return bound


def smallcnn_abs_product_bound(params: Any, image_shape: Sequence[int], std: float, output: int = 0) -> float:
    """The |W|-product bound on ‖∇ₓ logit_output‖₁ for the SmallCNN (``nt_robust.models.SmallCNN``).

    As :func:`abs_product_bound`, except that a 2x2 max pool's Jacobian picks one input of
    each window, so it is bounded entrywise by the window's *sum* (sum pooling)."""
    h = jnp.ones((1, *image_shape), jnp.float32) / std
    for stage in (1, 2):
        for conv in (1, 2):
            kernel = jnp.abs(params[f"conv{stage}_{conv}"]["kernel"])
            h = lax.conv_general_dilated(h, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2)) * 4.0  # sum pooling
    h = h.reshape(1, -1)
    for layer in ("dense1", "dense2"):
        h = h @ jnp.abs(params[layer]["kernel"])
    return float((h @ jnp.abs(params["classifier"]["kernel"][:, output]))[0])


def stax_abs_product_bound(apply_fn: Callable, params: Any, image_shape: Sequence[int], std: float) -> float:
    """The |W|-product bound for a scalar stax network without biases (``wrn_stax``): the
    network with |W| on the all-ones image / std (its ReLUs then act as the identity)."""
    abs_params = jax.tree_util.tree_map(jnp.abs, params)
    return float(_apply_stax(apply_fn, abs_params, jnp.ones((1, *image_shape), jnp.float32) / std)[0, 0])


# --- a short natural training, for "after training" measurements -----------------------------

def short_natural_training(model: nn.Module, variables: Any, x: np.ndarray, labels: np.ndarray, steps: int,
                           batch_size: int = 64, learning_rate: float = 0.02, seed: int = 0) -> Any:
    """``steps`` SGD-momentum (0.9) steps of cross-entropy on random batches, BatchNorm in train
    mode (its running statistics updated); returns the new variables. A few hundred steps
    leave the net far from convergence on purpose: "after short training"."""
    import optax

    optimizer = optax.sgd(learning_rate, momentum=0.9)
    params, stats = variables["params"], variables.get("batch_stats", {})
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        index = rng.choice(len(x), batch_size, replace=False)
        params, stats, opt_state = _sgd_step(model, learning_rate, params, stats, opt_state,
                                             jnp.asarray(x[index]), jnp.asarray(labels[index]))
    return {"params": params, **({"batch_stats": stats} if stats else {})}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sgd_step(model: nn.Module, learning_rate: float, params: Any, stats: Any, opt_state: Any, xb: jax.Array,
              yb: jax.Array) -> tuple[Any, Any, Any]:
    import optax

    from nt_robust.train.step import forward_train

    def loss_fn(p):
        logits, new_stats = forward_train(model, p, stats, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new_stats

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optax.sgd(learning_rate, momentum=0.9).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

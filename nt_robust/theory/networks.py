"""Finite-width ReLU MLPs in NTK and standard parameterization (pure JAX).

The finite counterparts of :mod:`nt_robust.theory.kernels` (same conventions as nt's
``stax.Dense``): ``depth`` Dense layers, ``depth - 1`` hidden ReLU layers of ``width``
units, a scalar (or ``out_dim``) output. Parameters are a list of ``{"w", "b"}`` dicts::

    from nt_robust.theory.networks import MLPSpec, init_params, apply, sphere_logits_fn
    spec = MLPSpec(depth=3, width=1024, parameterization="ntk")
    params = init_params(spec, jax.random.key(0), in_dim=784)
    f = apply(spec, params, x)                         # (N,) for out_dim=1
    logits_fn = sphere_logits_fn(spec, params)         # unit-sphere images -> (N, 2) logits

NTK parameterization: ``w, b ~ N(0, 1)``, ``h = W_std/√fan_in · x w + b_std · b``.
Standard: ``w ~ N(0, W_std²/fan_in)``, ``b ~ N(0, b_std²)``, ``h = x w + b``. Both give
the same function at initialization; they differ in their gradients with respect to
the parameters, hence in the NTK and in the learning rate gradient descent needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from nt_robust.theory.kernels import KernelSpec

Params = list[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """Architecture of a finite ReLU MLP (hashable: usable as a static jit argument)."""

    depth: int = 2
    width: int = 512
    parameterization: str = "ntk"
    W_std: float = math.sqrt(2.0)
    b_std: float | None = 0.1
    out_dim: int = 1

    def kernel_spec(self) -> KernelSpec:
        """The infinite-width description of this network (for the standard NTK, at this width)."""
        return KernelSpec(self.depth, self.W_std, self.b_std, self.parameterization, self.width)


def init_params(spec: MLPSpec, key: jax.Array, in_dim: int) -> Params:
    """Random parameters at initialization (see the module docstring for the laws)."""
    dims = [in_dim] + [spec.width] * (spec.depth - 1) + [spec.out_dim]
    params = []
    for fan_in, fan_out, layer_key in zip(dims[:-1], dims[1:], jax.random.split(key, spec.depth)):
        w_key, b_key = jax.random.split(layer_key)
        w = jax.random.normal(w_key, (fan_in, fan_out))
        b = jax.random.normal(b_key, (fan_out,))
        if spec.parameterization == "standard":
            w = w * spec.W_std / math.sqrt(fan_in)
            b = b * (spec.b_std or 0.0)
        params.append({"w": w, "b": b if spec.b_std is not None else jnp.zeros_like(b)})
    return params


def effective_layers(spec: MLPSpec, params: Params) -> list[tuple[jax.Array, jax.Array]]:
    """``(W, b)`` per layer such that ``h = x @ W + b`` (the parameterization folded in)."""
    layers = []
    for layer in params:
        if spec.parameterization == "ntk":
            scale = spec.W_std / math.sqrt(layer["w"].shape[0])
            layers.append((scale * layer["w"], (spec.b_std or 0.0) * layer["b"]))
        else:
            layers.append((layer["w"], layer["b"] if spec.b_std is not None else 0.0 * layer["b"]))
    return layers


def apply(spec: MLPSpec, params: Params, x: jax.Array) -> jax.Array:
    """Network output for ``x`` (N, ...) flattened to (N, d): (N,) if out_dim == 1 else (N, out_dim)."""
    h = x.reshape(x.shape[0], -1)
    layers = effective_layers(spec, params)
    for w, b in layers[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = layers[-1]
    out = h @ w + b
    return out[:, 0] if spec.out_dim == 1 else out


def sphere_scale(in_dim: int) -> float:
    """√d: unit-sphere inputs are fed as √d·u so that Σ¹(u, u') = W_std² u·u' + b_std²."""
    return math.sqrt(in_dim)


def scalar_fn(spec: MLPSpec, params: Params) -> Callable[[jax.Array], jax.Array]:
    """``u -> f(√d·u)`` for unit-sphere inputs u (N, ...): the function whose gradients we study."""

    def f(u: jax.Array) -> jax.Array:
        flat = u.reshape(u.shape[0], -1)
        return apply(spec, params, sphere_scale(flat.shape[1]) * flat)

    return f


def binary_logits(g: jax.Array) -> jax.Array:
    """Two-class logits [−g/2, g/2] from a scalar score: class 1 iff g > 0, margin |g|."""
    return jnp.stack([-g / 2, g / 2], axis=-1)


def sphere_logits_fn(spec: MLPSpec, params: Params) -> Callable[[jax.Array], jax.Array]:
    """A logits_fn (unit-sphere inputs -> (N, 2)) for nt_robust.attacks and nt_robust.metrics."""
    f = scalar_fn(spec, params)
    return lambda u: binary_logits(f(u))


def param_norm(params: Params) -> jax.Array:
    """Euclidean norm of all parameters together."""
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(params)))


def relative_change(params: Params, params0: Params) -> jax.Array:
    """‖θ − θ₀‖ / ‖θ₀‖ (small means the run stayed in the lazy regime)."""
    diff = jax.tree_util.tree_map(lambda a, b: a - b, params, params0)
    return param_norm(diff) / param_norm(params0)

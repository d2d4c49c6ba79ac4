"""The input gradient's variance at initialization, width → ∞, propagated layer by layer.

    from nt_robust.theory.grad_cov import Dense, Flatten, Relu, Serial, grad_sq_diag, to_stax
    arch = Serial((Flatten(), Dense(512, W_std=2**0.5), Relu(), Dense(1)))   # or conv.wrn_arch(10)
    init_fn, apply_fn, kernel_fn = to_stax(arch)          # the same network in neural-tangents' stax
    with jax.enable_x64(True):
        diag = grad_sq_diag(arch, x, mean, std)           # (N, d): E[(∂f/∂x_j)²], f(x) = g((x − mean)/std)

**Why not differentiate the kernel.** E[(∂f/∂x_j)²] = ∂²K(z, z′)/∂z_j∂z′_j at z′ = z (K the
NNGP kernel) is true, but autodiff of the ReLU kernel there multiplies κ₀′(ρ) = ∞ at ρ = 1
by a tangent of ρ that is 0 only up to rounding: the value depends on how ρ rounds
(issue 40; 1 % off for the MLP twin). Here nothing is differentiated at ρ = 1.

**What is propagated.** At infinite width every layer's pre-activation h and its tangent
X = ∂h/∂z_j (one input direction at a time) are, per channel, i.i.d. across channels and
jointly Gaussian over spatial positions p. Three channel-averaged covariances over pairs of
positions (p, q) describe them, exactly the NNGP's spatial covariance and its two tangents::

    S_pq = E[h_p h_q],   C_pq = E[h_p X_q],   G_pq = E[X_p X_q].

A conv or dense layer (fresh weights, fan-in variance W_std²) maps each of the three the same
linear way stax maps the NNGP covariance; a bias adds b² to S only; a residual sum adds the
branches' (their last layers' weights are independent, so cross terms vanish); global
average pooling averages over (p, q); Flatten averages the diagonal. Through a ReLU, with
a = h_p, b = h_q, X = X_p, Y = X_q, ρ = S_pq/√(S_pp S_qq), s = √(1 − ρ²), θ = arccos ρ::

    E[φ(a)φ(b)]       = √(S_pp S_qq) κ₁(ρ)                              (the NNGP)
    E[φ(a) φ′(b) Y]   = κ₀(ρ) C_pq + (s/2π) √(S_pp/S_qq) C_qq
    E[φ′(a)X φ′(b)Y]  = κ₀(ρ) G_pq + (1/2π) [s/(1+ρ) (x_a y_a + x_b y_b) − Δx Δy / s]

with κ₀ = (π − θ)/(2π), κ₁ = (s + (π − θ)ρ)/(2π), x_a = C_pp/√S_pp, x_b = C_qp/√S_qq,
y_a = C_pq/√S_pp, y_b = C_qq/√S_qq, Δx = x_a − x_b, Δy = y_a − y_b (Gaussian integrals over
the wedge {a > 0, b > 0}: regress X, Y on the standardized (a, b)). The last term is
bounded (|Δx| ≤ √G_pp·√(2(1 − ρ)), Cauchy–Schwarz), tends to 0 as ρ → 1 and is written so
that no difference of nearly equal numbers is divided by s. At p = q (the same unit, ρ = 1
by construction) the three are S/2, C/2 and G/2 exactly: E[1(a>0) X Y] = E[XY]/2 by the
symmetry of the fresh weights, w → −w; κ₀(1) = 1/2 is the ReLU's derivative kernel on the
diagonal. For an MLP only p = q occurs, which gives the closed form
E[(∂f/∂x_j)²] = (W_std²/d)(W_std²/2)^(L−1) (L Dense layers, no input scaling; with x = √d·u
as in :mod:`nt_robust.theory.networks`, E‖∇ᵤf‖² = d·W_std²(W_std²/2)^(L−1)).

Only pairs p ≠ q at (nearly) the same correlation 1 — two positions whose receptive fields
see identical pixels — remain sensitive to rounding, as the function itself is there
(κ₀(ρ) has an infinite slope at ρ = 1, so a rounding δ of ρ moves it by √(2δ)/(2π)); such
pairs are exactly degenerate when computed from identical numbers (ρ rounds to exactly 1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Union

import jax
import jax.numpy as jnp
from jax import lax


# --- the architecture: a few stax layers, hashable, translated to stax by to_stax --------------

@dataclasses.dataclass(frozen=True)
class Dense:
    """stax.Dense(features, W_std, b_std): acts on the last (channel) axis."""
    features: int
    W_std: float = 1.0
    b_std: float | None = None


@dataclasses.dataclass(frozen=True)
class Conv:
    """stax.Conv(channels, (size, size), (stride, stride), padding="SAME", W_std, b_std)."""
    channels: int
    size: int = 3
    stride: int = 1
    W_std: float = 1.0
    b_std: float | None = None


@dataclasses.dataclass(frozen=True)
class Relu:
    """stax.Relu()."""


@dataclasses.dataclass(frozen=True)
class Flatten:
    """stax.Flatten()."""


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
    """stax.GlobalAvgPool()."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """stax.Identity()."""


@dataclasses.dataclass(frozen=True)
class Serial:
    """stax.serial(*layers)."""
    layers: tuple


@dataclasses.dataclass(frozen=True)
class Sum:
    """stax.FanOut(n), stax.parallel(*branches), stax.FanInSum(): a residual block's sum."""
    branches: tuple


Layer = Union[Dense, Conv, Relu, Flatten, GlobalAvgPool, Identity, Serial, Sum]


def to_stax(layer: Layer) -> tuple[Callable, Callable, Callable]:
    """``(init_fn, apply_fn, kernel_fn)`` of ``layer`` in neural-tangents' stax. A Sum inside
    a Serial is spliced into it (FanOut, parallel, FanInSum), as a stax network is usually
    written, so the parameter tree is the hand-written network's."""
    from nt_robust.theory.nt_compat import stax

    return stax.serial(*_stax_layers(layer, stax))


def _stax_layers(layer: Layer, stax) -> list:
    if isinstance(layer, Serial):
        parts = []
        for sub in layer.layers:
            if isinstance(sub, Serial):
                parts.append(stax.serial(*_stax_layers(sub, stax)))
            else:   # a plain layer is one part; a Sum's three are spliced in
                parts.extend(_stax_layers(sub, stax))
        return parts
    if isinstance(layer, Sum):
        return [stax.FanOut(len(layer.branches)),
                stax.parallel(*(stax.serial(*_stax_layers(b, stax)) if isinstance(b, (Serial, Sum))
                                else _stax_layers(b, stax)[0] for b in layer.branches)),
                stax.FanInSum()]
    if isinstance(layer, Dense):
        return [stax.Dense(layer.features, W_std=layer.W_std, b_std=layer.b_std)]
    if isinstance(layer, Conv):
        return [stax.Conv(layer.channels, (layer.size, layer.size), (layer.stride, layer.stride), padding="SAME",
                          W_std=layer.W_std, b_std=layer.b_std)]
    simple = {Relu: stax.Relu, Flatten: stax.Flatten, GlobalAvgPool: stax.GlobalAvgPool, Identity: stax.Identity}
    if type(layer) in simple:
        return [simple[type(layer)]()]
    raise TypeError(f"to_stax: unknown layer {layer!r} (use the dataclasses of nt_robust.theory.grad_cov)")


# --- the ReLU step on one pair of positions ---------------------------------------------------

def relu_pair_moments(s_aa, s_bb, s_ab, c_ab, c_bb, c_aa, c_ba, g_ab, g_aa, g_bb):
    """(E[φ(a)φ(b)], E[φ(a)φ′(b)Y], E[φ′(a)X φ′(b)Y]) for (a, b, X, Y) jointly Gaussian and
    centred, φ = ReLU, given S = Cov(a, b) entries ``s_*``, ``c_ab`` = E[aY], ``c_bb`` = E[bY],
    ``c_aa`` = E[aX], ``c_ba`` = E[bX], ``g_ab`` = E[XY], ``g_aa`` = E[X²], ``g_bb`` = E[Y²]
    (module docstring). Broadcasts; a zero variance of a or b gives 0 (φ′(0) = 0, as jax)."""
    valid = (s_aa > 0) & (s_bb > 0)
    norm = jnp.sqrt(jnp.where(valid, s_aa * s_bb, 1.0))
    rho = jnp.clip(jnp.where(valid, s_ab / norm, 0.0), -1.0, 1.0)
    s = jnp.sqrt((1.0 - rho) * (1.0 + rho))
    theta = jnp.arccos(rho)
    kappa0 = jnp.where(valid, (jnp.pi - theta) / (2 * jnp.pi), 0.0)
    kappa1 = (s + (jnp.pi - theta) * rho) / (2 * jnp.pi)
    sd_a, sd_b = jnp.sqrt(jnp.where(valid, s_aa, 1.0)), jnp.sqrt(jnp.where(valid, s_bb, 1.0))
    nngp = jnp.where(valid, norm * kappa1, 0.0)
    cross = kappa0 * c_ab + jnp.where(valid, s / (2 * jnp.pi) * (sd_a / sd_b) * c_bb, 0.0)
    x_a, x_b, y_a, y_b = c_aa / sd_a, c_ba / sd_b, c_ab / sd_a, c_bb / sd_b
    open_ = valid & (s > 0)
    safe_s = jnp.where(open_, s, 1.0)
    cusp = (x_b - x_a) * ((y_b - y_a) / safe_s)
    bound = 2 * jnp.sqrt(jnp.maximum(g_aa * g_bb, 0.0)) * s / (1 + rho)   # Cauchy–Schwarz: |Δx Δy|/s ≤ this
    wedge = s / (1 + rho) * (x_a * y_a + x_b * y_b) - jnp.clip(cusp, -bound, bound)
    tangent = kappa0 * g_ab + jnp.where(open_, wedge / (2 * jnp.pi), 0.0)
    return nngp, cross, tangent


# --- propagation ------------------------------------------------------------------------------

@dataclasses.dataclass
class _State:
    """S (P, P); C, G (B, P, P) for B input directions; P = H·W positions of shape ``hw``."""
    S: jax.Array
    C: jax.Array
    G: jax.Array
    hw: tuple[int, int]


def _conv_cov(a: jax.Array, hw: tuple[int, int], size: int, stride: int) -> tuple[jax.Array, tuple[int, int]]:
    """Σ_o A[s·p + o, s·q + o] / size² over the window offsets o, zero-padded as "SAME" (the
    channel-averaged covariance after a conv with fresh i.i.d. weights, before W_std²)."""
    h, w = hw
    pads = lax.padtype_to_pads((h, w), (size, size), (stride, stride), "SAME")
    out_hw = (-(-h // stride), -(-w // stride))
    lead = a.shape[:-2]
    a = a.reshape(*lead, h, w, h, w)
    a = jnp.pad(a, [(0, 0)] * len(lead) + [pads[0], pads[1], pads[0], pads[1]])
    total = 0.0
    for o1 in range(size):
        for o2 in range(size):
            sl = (slice(o1, o1 + stride * (out_hw[0] - 1) + 1, stride),
                  slice(o2, o2 + stride * (out_hw[1] - 1) + 1, stride))
            total = total + a[(..., *sl, *sl)]
    p = out_hw[0] * out_hw[1]
    return (total / (size * size)).reshape(*lead, p, p), out_hw


def _propagate(layer: Layer, st: _State) -> _State:
    if isinstance(layer, Serial):
        for sub in layer.layers:
            st = _propagate(sub, st)
        return st
    if isinstance(layer, Sum):
        outs = [_propagate(b, st) for b in layer.branches]
        if len({o.hw for o in outs}) != 1:
            raise ValueError(f"Sum: the branches' spatial shapes differ ({[o.hw for o in outs]})")
        return _State(sum(o.S for o in outs), sum(o.C for o in outs), sum(o.G for o in outs), outs[0].hw)
    if isinstance(layer, Identity):
        return st
    if isinstance(layer, (Dense, Conv)):
        w2, b2 = layer.W_std**2, (layer.b_std or 0.0) ** 2
        if isinstance(layer, Conv):
            S, hw = _conv_cov(st.S, st.hw, layer.size, layer.stride)
            C, _ = _conv_cov(st.C, st.hw, layer.size, layer.stride)
            G, _ = _conv_cov(st.G, st.hw, layer.size, layer.stride)
        else:
            S, C, G, hw = st.S, st.C, st.G, st.hw
        return _State(w2 * S + b2, w2 * C, w2 * G, hw)
    if isinstance(layer, Relu):
        S, C, G = st.S, st.C, st.G
        p = S.shape[-1]
        eye = jnp.eye(p, dtype=bool)
        s_diag = jnp.diagonal(S)
        c_diag = jnp.diagonal(C, axis1=-2, axis2=-1)                   # (B, P): E[h_p X_p]
        g_diag = jnp.diagonal(G, axis1=-2, axis2=-1)
        nngp, cross, tangent = relu_pair_moments(
            s_diag[:, None], s_diag[None, :], S, C, c_diag[..., None, :], c_diag[..., :, None],
            jnp.swapaxes(C, -1, -2), G, g_diag[..., :, None], g_diag[..., None, :])
        # the same unit at p = q: exactly half (the w → −w symmetry), no arccos of a rounded 1
        return _State(jnp.where(eye, S / 2, nngp), jnp.where(eye, C / 2, cross), jnp.where(eye, G / 2, tangent), st.hw)
    if isinstance(layer, Flatten):
        mean_diag = lambda a: jnp.mean(jnp.diagonal(a, axis1=-2, axis2=-1), axis=-1)[..., None, None]  # noqa: E731
        return _State(mean_diag(st.S), mean_diag(st.C), mean_diag(st.G), (1, 1))
    if isinstance(layer, GlobalAvgPool):
        pool = lambda a: jnp.mean(a, axis=(-2, -1))[..., None, None]  # noqa: E731
        return _State(pool(st.S), pool(st.C), pool(st.G), (1, 1))
    raise TypeError(f"unknown layer {layer!r} (use the dataclasses of nt_robust.theory.grad_cov)")


def _flattens_first(layer: Layer) -> bool:
    """Whether the network starts by flattening its input (an MLP): then the input's
    spatial layout does not matter and it is fed as one position of d channels."""
    while isinstance(layer, Serial) and layer.layers:
        layer = layer.layers[0]
    return isinstance(layer, Flatten)


def _as_images(arch: Layer, x: jax.Array) -> jax.Array:
    if not isinstance(arch, (Dense, Conv, Relu, Flatten, GlobalAvgPool, Identity, Serial, Sum)):
        raise TypeError(
            f"pass the network's architecture (nt_robust.theory.conv.wrn_arch, nt_robust.theory.trained.mlp_arch "
            f"or the dataclasses of nt_robust.theory.grad_cov), not {type(arch).__name__}: the gradient variance is "
            f"propagated layer by layer, not differentiated from a kernel_fn (docs/theory.md §12)")
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs, (N, H, W, C), (N, H, W) or (N, d); got shape {x.shape}")
    if _flattens_first(arch) or x.ndim == 2:
        return x.reshape(x.shape[0], 1, 1, -1)
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise ValueError(f"a conv network takes images (N, H, W, C) or (N, H, W); got shape {x.shape}")
    return x


def _input_state(z: jax.Array) -> tuple[jax.Array, int, int]:
    h, w, c = z.shape
    flat = z.reshape(h * w, c)
    return flat, c, h * w


def _output(st: _State, what: str) -> jax.Array:
    if st.hw != (1, 1):
        raise ValueError(f"{what}: the network must end with one value per channel (GlobalAvgPool, or Flatten "
                         f"then Dense); it ends on a {st.hw[0]}x{st.hw[1]} map")
    return st


@functools.partial(jax.jit, static_argnums=(0, 2))
def _diag_one(arch: Layer, z: jax.Array, batch_size: int) -> jax.Array:
    flat, c, p = _input_state(z)
    s0 = flat @ flat.T / c

    def one(j: jax.Array) -> jax.Array:
        e = jax.nn.one_hot(j, p * c, dtype=z.dtype).reshape(p, c)
        st = _State(s0, (flat @ e.T / c)[None], (e @ e.T / c)[None], z.shape[:2])
        return _output(_propagate(arch, st), "grad_sq_diag").G[0, 0, 0]

    return lax.map(one, jnp.arange(p * c), batch_size=batch_size)


@functools.partial(jax.jit, static_argnums=0)
def _nngp_one(arch: Layer, z: jax.Array) -> jax.Array:
    flat, c, _ = _input_state(z)
    empty = jnp.zeros((0, *(flat.shape[0],) * 2), z.dtype)
    st = _State(flat @ flat.T / c, empty, empty, z.shape[:2])
    return _output(_propagate(arch, st), "nngp_diag").S[0, 0]


def grad_sq_diag(arch: Layer, x: jax.Array, mean: float = 0.0, std: float = 1.0, batch_size: int = 64) -> jax.Array:
    """E[(∂f/∂x_j)²] at initialization, width → ∞, for every input coordinate j of every
    input, (N, d), where f(x) = g((x − mean)/std) and g is the network ``arch`` (any one
    logit: all have the same law). Directions are propagated ``batch_size`` at a time
    (``lax.map``); the result does not depend on it. Run in float64
    (``with jax.enable_x64(True):`` and a float64 ``x``) for 1e-12 accuracy::

        with jax.enable_x64(True):
            diag = grad_sq_diag(wrn_arch(10), jnp.asarray(x, jnp.float64), mean=0.286, std=0.331)
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    z = (_as_images(arch, x) - mean) / std
    return jnp.stack([_diag_one(arch, zi, int(batch_size)) for zi in z]) / std**2


def grad_sq_norm(arch: Layer, x: jax.Array, mean: float = 0.0, std: float = 1.0, batch_size: int = 64) -> jax.Array:
    """E‖∇ₓf(x)‖² at initialization, width → ∞, per input, (N,): the sum of :func:`grad_sq_diag`."""
    return jnp.sum(grad_sq_diag(arch, x, mean, std, batch_size), axis=-1)


def nngp_diag(arch: Layer, x: jax.Array, mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """K(z, z) of the propagated NNGP covariance, per input, (N,): the same number as
    ``to_stax(arch)[2](z, z, "nngp")``'s diagonal (a check of the conventions)."""
    z = (_as_images(arch, x) - mean) / std
    return jnp.stack([_nngp_one(arch, zi) for zi in z])

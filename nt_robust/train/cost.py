"""FLOPs of the training step from XLA's cost analysis, and its memory plan.

A FLOP here is what XLA's ``HloCostAnalysis`` counts: 2 per multiply-add of a dot or a
convolution — for a convolution only the kernel taps that land on the input, not on its
zero padding — plus about 1 per output element of each elementwise op. For the models of
this project the dots and convolutions are all but a few percent of it
(tests/test_flops.py checks it against a hand count of WRN-d-k and MLP multiply-adds)::

    from nt_robust import accelerators
    from nt_robust.train import cost
    per_step = cost.train_step_flops(config, image_shape=(32, 32, 3), num_classes=10)
    per_step["flops_per_image"]                       # ~ 27 forward passes for TRADES-10
    klass = accelerators.precision_class(*cost.config_precision(config), "gpu")
    accelerators.mfu(achieved_flops_per_s, "NVIDIA H100 80GB HBM3", klass)

Which count, and why — one count per step, whatever runs it:

* A FLOP count is a property of the model and the step, not of the kernels that run it.
  The native CPU kernels (``conv_impl``/``dense_impl`` = "native", which "auto" picks on many
  CPUs) are XLA custom calls, and XLA's cost analysis counts nothing inside a custom call;
  the shifted-matmul weight gradient multiplies the padding taps too. So every count is taken
  from the step lowered with XLA's own convolutions and products (:func:`counting_config`),
  the same for every ``conv_impl`` and ``dense_impl`` (tests/test_flops.py checks it).
* XLA counts the body of a ``while`` loop once, not once per trip (measured: a WRN-10-1
  TRADES step at batch 8 counts 85 MFLOP with ``train_attack.loop = "fori"`` and 254 MFLOP
  unrolled), so the count comes from the step with ``train_attack.loop = "unroll"``: the
  same arithmetic, traced and *lowered* (not yet optimized, global over devices) but never
  compiled or run. Lowered and compiled counts differ by the fusion's small rewrites (1.4 %
  for that WRN-10-1 step).

Chip peaks and MFU: :mod:`nt_robust.accelerators`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from nt_robust.models import create_model
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.optim import make_optimizer
from nt_robust.train.state import initial_state
from nt_robust.train.step import make_train_step


def config_precision(config: ExperimentConfig) -> tuple[str, str]:
    """(compute dtype, matmul precision) of ``config``: ``model.dtype`` and
    ``model.matmul_precision``, the arguments of
    :func:`nt_robust.accelerators.precision_class`."""
    return str(config.model.dtype), str(config.model.matmul_precision)


# --------------------------------------------------------------------------- cost analysis

def cost_flops(stage: Any) -> float | None:
    """``flops`` from a ``Lowered`` or ``Compiled`` stage's ``cost_analysis()`` (a dict, or a
    list of one dict in older JAX); None when the backend gives none."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # some backends/versions do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or analysis.get("flops") is None:
        return None
    return float(analysis["flops"])


def memory_bytes(compiled: Any) -> dict[str, int] | None:
    """XLA's buffer plan of a compiled program: argument, output, temp and alias bytes and
    ``peak_bytes`` = argument + output + temp − alias (donated inputs reuse their buffers)
    + generated code. None when the backend gives no memory analysis."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return None
    if analysis is None:
        return None
    names = ("argument", "output", "temp", "alias", "generated_code")
    out = {name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0) for name in names}
    out["peak_bytes"] = out["argument"] + out["output"] + out["temp"] - out["alias"] + out["generated_code"]
    return out


def xla_implementations(config: Any) -> Any:
    """``config`` with XLA's own convolutions and matrix products (``conv_impl`` and
    ``dense_impl`` = "xla"): what an accelerator runs, and what XLA's cost analysis can see."""
    model = dataclasses.replace(config.model, conv_impl="xla", dense_impl="xla")
    return dataclasses.replace(config, model=model)


def counting_config(config: Any) -> Any:
    """The step every FLOP count is taken from: ``config`` with XLA's implementations and the
    training attack unrolled (the same arithmetic, every op visible to the count)."""
    config = xla_implementations(config)
    return dataclasses.replace(config, train_attack=dataclasses.replace(config.train_attack, loop="unroll"))


def state_bytes(state: Any) -> int:
    """Bytes of a (possibly abstract) pytree of arrays: parameters, optimizer state, BN statistics."""
    return int(sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(state)))


def abstract_step(config: Any, image_shape: Sequence[int], num_classes: int, batch_size: int | None = None,
                  steps_per_epoch: int = 1):
    """``(jitted step, abstract state, abstract images, abstract labels)`` for ``config``:
    shapes only (``jax.eval_shape``), so lowering or compiling it allocates no parameters."""
    batch = batch_size or config.train.batch_size
    model = create_model(config.model, num_classes)
    optimizer = make_optimizer(config.optim, config.train.epochs, steps_per_epoch)
    state = jax.eval_shape(lambda: initial_state(config, model, image_shape, optimizer=optimizer))
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step = jax.jit(make_train_step(model, config, optimizer), donate_argnums=0)
    return step, state, images, labels


def train_step_flops(config: Any, image_shape: Sequence[int], num_classes: int,
                     batch_size: int | None = None, compile: bool = False) -> dict[str, Any]:
    """FLOPs of one global training step of ``config`` at ``batch_size`` (default
    ``train.batch_size``), from XLA's cost analysis of :func:`counting_config`'s step (XLA's
    implementations, the attack unrolled; the same count for every ``conv_impl`` and
    ``dense_impl``): lowered only (default; cheap, no compile) or also compiled
    (``compile=True``, adding ``memory``: XLA's buffer plan of that step, see
    :func:`memory_bytes`). ``state_bytes``: the training state's bytes (exact, from shapes)::

        train_step_flops(config, (32, 32, 3), 10)["flops_per_image"]
    """
    step, state, images, labels = abstract_step(counting_config(config), image_shape, num_classes, batch_size)
    lowered = step.lower(state, images, labels)
    result: dict[str, Any] = {"batch_size": images.shape[0], "source": "lowered", "state_bytes": state_bytes(state)}
    flops = cost_flops(lowered)
    if compile:
        compiled = lowered.compile()
        flops, result["source"] = cost_flops(compiled) or flops, "compiled"
        result["memory"] = memory_bytes(compiled)
    result["flops_per_step"] = flops
    result["flops_per_image"] = None if flops is None else flops / images.shape[0]
    return result


def jitted_step_flops(jitted: Any, args: Sequence[Any], config: Any, image_shape: Sequence[int],
                      num_classes: int) -> dict[str, Any]:
    """FLOPs of one global step of an already-called jitted train step (the Trainer's), at
    its batch: :func:`train_step_flops`'s count (one trace and lowering, no compile), so a
    run's ``train_flops_per_s`` counts the same work whichever kernels ran it. ``jitted`` is
    not used for the count: its compiled program may hide work in custom calls. Returns
    ``flops_per_step``, ``source`` and ``batch_size``; ``flops_per_step`` is None when the
    backend has no cost analysis."""
    del jitted  # kept in the signature: callers pass the step they ran
    batch = int(args[1].shape[0])
    counted = train_step_flops(config, image_shape, num_classes, batch)
    return {"flops_per_step": counted["flops_per_step"],
            "source": "lowered (XLA's convolutions and products, attack unrolled)", "batch_size": batch}



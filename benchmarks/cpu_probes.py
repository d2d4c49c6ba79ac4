"""The CPU probes of ``train_step.py --probe NAME``: small, targeted timings behind the
choices in ``nt_robust``'s CPU engine (docs/benchmarks.md reports them)::

    .venv/bin/python benchmarks/train_step.py --probe cache-keys     # which config changes recompile
    .venv/bin/python benchmarks/train_step.py --probe conv-grads     # fwd / dx / dw of one conv layer
    .venv/bin/python benchmarks/train_step.py --probe step-parts --models wrn16-1 --devices 1

Each probe takes the worker ``spec`` (see ``harness``) and returns one JSON-able dict;
:data:`PROBES` maps the ``--probe`` names to them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness import MODELS, NUM_CLASSES, configure_jax, jax_config, jax_step, time_steps
from torch_reference import torch_models


def im2col_weight_gradient(x, g, kernel_shape, padding):
    """The conv weight gradient as one matmul over an explicit 9x im2col patch tensor
    (stride 1): the first alternative we tried to XLA's, kept for the conv-grads probe."""
    import jax.numpy as jnp

    kh, kw, cin, cout = kernel_shape
    h, w = g.shape[1:3]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return (patches.reshape(-1, kh * kw * cin).T @ g.reshape(-1, cout)).reshape(kernel_shape)



def probe_cache_keys(spec: dict[str, Any]) -> dict[str, Any]:
    """Which config changes give a different XLA program (= a recompile, and a miss in the
    persistent cache), judged by the hash of the lowered StableHLO text."""
    import hashlib

    configure_jax(spec)
    variants = {
        "base": dict(), "lam=12": dict(lam=12.0), "seed=1": dict(seed=1), "epochs=50": dict(epochs=50),
    }
    model = MODELS[spec["model"]]
    hashes, timings = {}, {}
    for name, kwargs in variants.items():
        config = jax_config(spec, model, **kwargs)
        jitted, state, images, labels, _, _ = jax_step(spec, config)
        t0 = time.perf_counter()
        text = jitted.lower(state, images, labels).as_text()
        timings[name] = round(time.perf_counter() - t0, 3)
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    wider = dict(model, width=model["width"] * 2)
    config = jax_config(spec, wider)
    jitted, state, images, labels, _, _ = jax_step(spec, config)
    hashes[f"width={wider['width']}"] = hashlib.sha256(
        jitted.lower(state, images, labels).as_text().encode()).hexdigest()[:16]
    same = {name: value == hashes["base"] for name, value in hashes.items() if name != "base"}
    return {"probe": "cache-keys", "model": spec["model"], "objective": spec["objective"],
            "program_hash": hashes, "same_program_as_base": same, "trace_lower_s": timings}


def probe_conv_layout(spec: dict[str, Any]) -> dict[str, Any]:
    """Forward+backward of one 3x3 convolution (SmallCNN's second layer, batch ``--batch``)
    with activations in NHWC and in NCHW: which layout does XLA's CPU backend run faster?"""
    import jax
    import jax.numpy as jnp

    configure_jax(spec)
    h, w, _ = spec["input"]
    results = {}
    for layout, x_shape, kernel_shape, numbers in (
            ("NHWC", (spec["batch"], h, w, 32), (3, 3, 32, 32), ("NHWC", "HWIO", "NHWC")),
            ("NCHW", (spec["batch"], 32, h, w), (32, 32, 3, 3), ("NCHW", "OIHW", "NCHW"))):
        x = jnp.full(x_shape, 0.5, jnp.float32)
        kernel = jnp.full(kernel_shape, 0.01, jnp.float32)

        def loss(x, kernel, numbers=numbers):
            out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=numbers)
            return jnp.sum(jax.nn.relu(out) ** 2)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        jax.block_until_ready(grad(x, kernel))
        timing = time_steps(lambda: jax.block_until_ready(grad(x, kernel)), 1, spec["steps"], spec["min_seconds"])
        timing.pop("_elapsed")
        results[layout] = timing
    return {"probe": "conv-layout", "batch": spec["batch"], "conv": "3x3, 32->32 channels", "results": results}


def probe_conv_grads(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for the three pieces of a 3x3 convolution layer in training — forward,
    input gradient (dx: all an attack needs) and weight gradient (dw: only the update needs
    it) — in XLA, as an im2col matmul, as the library's shifted matmuls
    (``model.conv_impl = "shifted_matmul"``), and in PyTorch (when installed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu.conv import shifted_matmul_conv

    configure_jax(spec)
    numbers = ("NHWC", "HWIO", "NHWC")
    try:
        import torch
        torch.set_num_threads(spec.get("torch_threads") or os.cpu_count())
    except Exception:  # noqa: BLE001
        torch = None
    # the last three: WRN-16-1's groups (stride-1 layers)
    batch, layers, results = spec["batch"], [(32, 32, 32), (16, 64, 64), (32, 64, 64), (32, 16, 16), (16, 32, 32), (8, 64, 64)], {}
    for size, cin, cout in layers:
        rng = np.random.default_rng(0)
        x_np = rng.random((batch, size, size, cin), np.float32)
        w_np = (rng.standard_normal((3, 3, cin, cout)) * 0.05).astype(np.float32)
        x, w = jnp.asarray(x_np), jnp.asarray(w_np)
        pad = ((1, 1), (1, 1))

        def conv(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=numbers)

        def conv_shifted(x, w):
            return shifted_matmul_conv(x, w, (1, 1), pad, dimension_numbers=numbers)

        g = jnp.ones((batch, size, size, cout), jnp.float32)
        fns = {
            "jax_fwd": jax.jit(conv),
            "jax_dx": jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]),
            "jax_dw": jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]),
            "jax_dw_im2col": jax.jit(lambda x, w, g: im2col_weight_gradient(x, g, w.shape, pad)),
            "jax_dw_shifted_matmul": jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv_shifted(x, w_), w)[1](g)[0]),
        }
        row = {}
        for name, fn in fns.items():
            args = (x, w) if name == "jax_fwd" else (x, w, g)
            jax.block_until_ready(fn(*args))
            timing = time_steps(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), 1,
                                 spec["steps"], spec["min_seconds"])
            row[name] = round(1000 * timing["s_per_step_median"], 1)
        reference = fns["jax_dw"](x, w, g)
        for name in ("jax_dw_im2col", "jax_dw_shifted_matmul"):
            candidate = fns[name](x, w, g)
            row[f"{name}_max_rel_diff"] = float(jnp.max(jnp.abs(candidate - reference)) / jnp.max(jnp.abs(reference)))
        if torch is not None:
            tx = torch.tensor(x_np).permute(0, 3, 1, 2).contiguous()
            tw = torch.tensor(w_np).permute(3, 2, 0, 1).contiguous()
            tg = torch.ones(batch, cout, size, size)
            torch_fns = {
                "torch_fwd": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
                "torch_dx": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, padding=1),
                "torch_dw": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, padding=1),
            }
            for name, fn in torch_fns.items():
                fn()
                timing = time_steps(fn, 1, spec["steps"], spec["min_seconds"])
                row[name] = round(1000 * timing["s_per_step_median"], 1)
        results[f"{size}x{size}, {cin}->{cout}"] = row
    return {"probe": "conv-grads", "batch": batch, "unit": "ms (median)", "load_1min_end": os.getloadavg()[0],
            "results": results}


def probe_transposes(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for the layout transposes XLA:CPU puts around a weight-gradient
    convolution (NHWC -> CHWN of WRN-16-1's first-group activations, batch ``--batch``), fused
    with an elementwise op as in the step, against a plain elementwise copy. Run it with and
    without ``--no-library-xla-flags`` to see what YNNPACK's elementwise fusions change."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    configure_jax(spec)
    x = jnp.asarray(np.random.default_rng(0).random((spec["batch"], 32, 32, 16), np.float32))
    fns = {"copy": lambda x: x * 2.0,
           "transpose_nhwc_to_chwn": lambda x: jnp.transpose(x * 2.0, (3, 1, 2, 0)),
           "transpose_nhwc_to_hwcn": lambda x: jnp.transpose(x * 2.0, (1, 2, 3, 0))}
    results = {}
    for name, fn in fns.items():
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(x))
        timing = time_steps(lambda jitted=jitted: jax.block_until_ready(jitted(x)), 3, max(spec["steps"], 20),
                             spec["min_seconds"])
        results[name] = round(1000 * timing["s_per_step_median"], 3)
    return {"probe": "transposes", "shape": list(x.shape), "unit": "ms (median)",
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": results}


def probe_step_parts(spec: dict[str, Any]) -> dict[str, Any]:
    """Where a conv net's natural step goes, in both frameworks: milliseconds for the
    train-mode forward pass with the cross-entropy, that plus the input gradient (what an
    attack step adds: every layer's dx), and that plus the parameter gradients (every layer's
    dx and dw: the natural step without the update), for the first ``--models`` entry, unsharded
    (run it with ``--devices 1``); then the same with every BatchNorm replaced by the identity (BatchNorm's share).
    ``parameter_gradient_ms - input_gradient_ms`` is about the weight gradients' cost.
    ``eval_mode_input_gradient_ms``: forward and input gradient with BatchNorm in eval mode,
    one iteration of the training attack (``objective.attack_bn_mode = "eval"``)."""
    from unittest import mock

    import jax
    import numpy as np
    import optax

    import nt_robust.models.wide_resnet as wide_resnet
    from nt_robust.models import create_model, init_variables

    configure_jax(spec)
    fields, (h, w, c), batch = MODELS[spec["model"]], spec["input"], spec["batch"]
    if fields["arch"] != "wrn":
        raise SystemExit("--probe step-parts is for the WideResNets (its no-BatchNorm variant replaces theirs)")
    rng = np.random.default_rng(0)
    images_np = rng.random((batch, h, w, c), np.float32)
    labels_np = rng.integers(0, NUM_CLASSES, batch)

    def time_ms(fn):
        return round(1000 * time_steps(fn, 2, spec["steps"], spec["min_seconds"])["s_per_step_median"], 1)

    def jax_parts() -> dict[str, float]:
        config = jax_config(spec, fields)
        model = create_model(config.model, num_classes=NUM_CLASSES)
        variables = init_variables(model, jax.random.key(0), (h, w, c))
        stats = variables.get("batch_stats", {})
        images, labels = jax.numpy.asarray(images_np), jax.numpy.asarray(labels_np)

        def loss(params, x):
            logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        def eval_loss(params, x):
            logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        parts = {"forward_ms": jax.jit(loss), "input_gradient_ms": jax.jit(jax.grad(loss, argnums=1)),
                 "parameter_gradient_ms": jax.jit(jax.grad(loss)),
                 "eval_mode_input_gradient_ms": jax.jit(jax.grad(eval_loss, argnums=1))}
        params = variables["params"]
        return {name: time_ms(lambda fn=fn: jax.block_until_ready(fn(params, images))) for name, fn in parts.items()}

    def torch_parts(without_bn: bool) -> dict[str, float] | str:
        try:
            import torch
            from torch.nn import functional as F
        except Exception as error:  # noqa: BLE001 (optional dependency)
            return f"import torch failed: {error!r}"
        torch.set_num_threads(spec.get("torch_threads") or os.cpu_count())
        torch.manual_seed(0)
        model = torch_models()[2](c, fields["depth"], fields["width"]).train()
        if without_bn:
            for module in list(model.modules()):
                for name, child in module.named_children():
                    if isinstance(child, torch.nn.BatchNorm2d):
                        setattr(module, name, torch.nn.Identity())
        images = torch.tensor(images_np).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(labels_np)

        def forward():
            with torch.no_grad():
                F.cross_entropy(model(images), labels)

        def input_gradient():
            x = images.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), labels), x)

        def parameter_gradient():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()

        timings = {"forward_ms": time_ms(forward), "parameter_gradient_ms": time_ms(parameter_gradient)}
        for parameter in model.parameters():  # an attack's backward pass: no weight gradients
            parameter.requires_grad_(False)
        timings["input_gradient_ms"] = time_ms(input_gradient)
        model.eval()
        timings["eval_mode_input_gradient_ms"] = time_ms(input_gradient)
        return {key: timings[key] for key in ("forward_ms", "input_gradient_ms", "parameter_gradient_ms",
                                              "eval_mode_input_gradient_ms")}

    results = {"with_batchnorm": {"jax": jax_parts(), "torch": torch_parts(False)}}
    identity = lambda train, name, dtype=None: (lambda x: x)  # noqa: E731
    with mock.patch.object(wide_resnet, "_batch_norm", identity):
        results["without_batchnorm"] = {"jax": jax_parts(), "torch": torch_parts(True)}
    return {"probe": "step-parts", "model": spec["model"], "batch": batch, "devices": jax.device_count(),
            "unit": "ms (median)",
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": results}


def probe_loop_input_gradient(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds for ten input gradients of a 3x3 convolution (50x28x28x32, an attack
    iteration's shape on the small CNN), chained in a ``lax.fori_loop`` against unrolled,
    with autodiff's input gradient (``conv_impl = "xla"``) and with the flipped-kernel one
    of ``conv_impl = "flipped_dx"``: XLA:CPU runs autodiff's off its fast path in loops."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nt_robust.cpu.ops import conv_function

    configure_jax(spec)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((50, 28, 28, 32), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 32)).astype(np.float32) * 0.05)
    results = {}
    for impl in ("xla", "flipped_dx"):
        conv = conv_function(impl)

        def step(_, y, conv=conv):
            return jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, kernel, (1, 1), ((1, 1), (1, 1)),
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))))(y)

        def unrolled(y, step=step):
            for i in range(10):
                y = step(i, y)
            return y

        for layout, fn in (("fori_loop", lambda y, step=step: lax.fori_loop(0, 10, step, y)), ("unrolled", unrolled)):
            jitted = jax.jit(fn)
            jax.block_until_ready(jitted(x))
            timing = time_steps(lambda jitted=jitted: jax.block_until_ready(jitted(x)), 1, spec["steps"],
                                 spec["min_seconds"])
            results[f"{impl}, {layout}"] = round(1000 * timing["s_per_step_median"], 1)
    return {"probe": "loop-input-gradient", "unit": "ms (median) for 10 input gradients", "results": results}


PROBES = {"cache-keys": probe_cache_keys, "conv-layout": probe_conv_layout, "conv-grads": probe_conv_grads,
          "transposes": probe_transposes, "step-parts": probe_step_parts,
          "loop-input-gradient": probe_loop_input_gradient}



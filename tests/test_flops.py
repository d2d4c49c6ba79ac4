"""FLOPs from XLA's cost analysis (nt_robust.train.cost) against hand counts of multiply-adds.

The hand counts below are written from the architectures' definitions (docs and
nt_robust/models/*), not from nt_robust.train.cost. What XLA's HloCostAnalysis counts, and
what the bands below therefore allow:

* 2 FLOPs per multiply-add of a dot or convolution; for a convolution only the kernel
  taps that fall on the input, not on its zero padding (so a 3x3 convolution over an 8x8
  map does 22/24 of the taps per axis; the stride-2 ones 11/12, see ``valid_taps``);
* about 1 FLOP per output element of each elementwise op. That is the only slack: every
  band is [2 x hand-counted multiply-adds, that + a bound on the elementwise work],
  the bound built from op counts (per-element constants stated where used), never fitted.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import pytest

from nt_robust.train import cost as step_cost
from nt_robust.config import load_config
from nt_robust.models import count_parameters, create_model, init_variables
from nt_robust.train import ExperimentConfig


def valid_taps(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(sum over output positions of the kernel taps inside the input, output size) along one axis
    of a convolution with symmetric padding ``pad`` (flax ``padding=pad``)."""
    out = (size + 2 * pad - kernel) // stride + 1
    taps = sum(1 for o in range(out) for t in range(kernel) if 0 <= o * stride - pad + t < size)
    return taps, out


def conv_count(h: int, w: int, cin: int, cout: int, kernel: int, stride: int, pad: int):
    """Multiply-adds (valid taps only), the same with padding counted, and the output (h, w)."""
    th, ho = valid_taps(h, kernel, stride, pad)
    tw, wo = valid_taps(w, kernel, stride, pad)
    return cin * cout * th * tw, cin * cout * kernel * kernel * ho * wo, ho, wo


def wrn_count(depth: int, k: int, h: int, w: int, c: int, classes: int) -> dict[str, int]:
    """Per-image multiply-adds of WRN-depth-k's forward pass: 3x3 stem to 16 channels, three
    groups of (depth-4)/6 pre-activation blocks (16k, 32k, 64k channels, strides 1, 2, 2;
    conv1 3x3 at the block's stride, conv2 3x3, a 1x1 shortcut at the stride when the
    channels or the stride change), global pooling, a dense classifier. Also the stem's
    share, the count with padding taps included, and the elements entering BatchNorms."""
    macs, full, h, w = conv_count(h, w, c, 16, 3, 1, 1)
    stem = macs
    channels, bn_elements = 16, 0
    for group_channels, group_stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        for block in range((depth - 4) // 6):
            stride = group_stride if block == 0 else 1
            bn_elements += h * w * channels                         # bn1 on the block's input
            m1, f1, ho, wo = conv_count(h, w, channels, group_channels, 3, stride, 1)
            bn_elements += ho * wo * group_channels                 # bn2 on conv1's output
            m2, f2, _, _ = conv_count(ho, wo, group_channels, group_channels, 3, 1, 1)
            macs, full = macs + m1 + m2, full + f1 + f2
            if channels != group_channels or stride != 1:
                ms, fs, _, _ = conv_count(h, w, channels, group_channels, 1, stride, 0)
                macs, full = macs + ms, full + fs
            h, w, channels = ho, wo, group_channels
    bn_elements += h * w * channels                                 # final BN
    macs, full = macs + channels * classes, full + channels * classes
    return {"macs": macs, "full_macs": full, "stem_macs": stem, "bn_elements": bn_elements}


def _config(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, ["data.crop_padding=0", "data.flip=false", *overrides])


def test_config_precision_reads_the_model_section():
    assert step_cost.config_precision(_config()) == ("float32", "default")
    assert step_cost.config_precision(_config("model.dtype=bfloat16", "model.matmul_precision=highest")) == \
        ("bfloat16", "highest")


def test_valid_taps_by_hand():
    # 3x3, pad 1 on 8: outputs 0 and 7 lose one tap each; stride 2 on 8 -> 4 outputs, only
    # output 0 overhangs (rows -1, 0, 1); stride 2 on 4 -> 2 outputs (rows -1..1, 1..3).
    assert valid_taps(8, 3, 1, 1) == (22, 8)
    assert valid_taps(8, 3, 2, 1) == (11, 4)
    assert valid_taps(4, 3, 2, 1) == (5, 2)
    assert valid_taps(8, 1, 2, 0) == (4, 4)


def test_wrn_forward_flops_match_hand_count():
    """Eval-mode forward pass of WRN-10-1 on 8x8x3, batch 4: XLA's count (of the lowered
    program: compiling convolutions takes XLA:CPU tens of seconds) is 2 x the
    valid-tap multiply-adds plus elementwise work, bounded by 8 FLOPs per BatchNorm input
    element (inference BN: subtract, scale, shift; ReLU; the residual add; the input
    normalization and pooling, at most one more each)."""
    batch, counts = 4, wrn_count(10, 1, 8, 8, 3, 10)
    model = create_model(_config("model.arch=wrn", "model.depth=10", "model.width=1",
                                 "model.conv_impl=xla").model, 10)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (8, 8, 3)))  # shapes only
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    counted = step_cost.cost_flops(forward.lower(variables, jax.ShapeDtypeStruct((batch, 8, 8, 3), jnp.float32)))
    expected = 2 * counts["macs"] * batch
    upper = expected + 8 * counts["bn_elements"] * batch
    assert expected <= counted <= upper, (counted, expected, upper)
    # Negative control: counting the zero-padding taps (26 % more here) leaves the band.
    assert 2 * counts["full_macs"] * batch > upper


def _step_band(config: ExperimentConfig, image_shape, macs: float, first_macs: float, elementwise: float):
    """(lower, upper) for one training step's FLOPs per image. Forward-equivalents with K
    attack steps (objective.bn_passes = "authors"):
      natural: forward, weight gradient, input gradient of every layer but the first: 3M - M1;
      TRADES:  attack: the clean target forward + K x (forward + input gradient incl. the
               first layer); loss: 2 training forwards + 2 x (weight gradient + input gradient
               of every layer but the first) -> (2K + 7) M - 2 M1.
    ``elementwise``: the per-image bound on everything else (added to the upper end)."""
    k = config.train_attack.num_steps
    if config.objective.kind == "natural":
        mac_equivalents = 3 * macs - first_macs
    else:
        mac_equivalents = (2 * k + 7) * macs - 2 * first_macs
    return 2 * mac_equivalents, 2 * mac_equivalents + elementwise


def test_wrn_natural_step_flops_within_band():
    """WRN-10-1 natural step (conv_impl = xla) at batch 8. Elementwise bound: 48 FLOPs per
    BatchNorm input element (training BN ~7 forward, ~10 backward, ReLU 2, residual 2: ~21,
    doubled), 10 per parameter per step for SGD (decay 2, momentum 2, update 2, apply 1)."""
    batch = 8
    config = _config("model.arch=wrn", "model.depth=10", "model.width=1", "model.conv_impl=xla",
                     "objective.kind=natural", f"train.batch_size={batch}")
    counts = wrn_count(10, 1, 8, 8, 3, 10)
    params = count_parameters(jax.eval_shape(lambda: init_variables(create_model(config.model, 10), jax.random.key(0),
                                                                    (8, 8, 3)))["params"])
    lower, upper = _step_band(config, (8, 8, 3), counts["macs"], counts["stem_macs"],
                              48 * counts["bn_elements"] + 10 * params / batch)
    counted = step_cost.train_step_flops(config, (8, 8, 3), 10)
    assert counted["source"] == "lowered" and counted["batch_size"] == batch
    assert lower <= counted["flops_per_image"] <= upper, (counted, lower, upper)


@pytest.mark.parametrize("kind", ["natural", "trades"])
def test_mlp_step_flops_within_band(kind):
    """MLP-2x256 on 16x16x1 (10 classes), batch 8. Elementwise bound per image: 4 per hidden
    unit per forward-equivalent (bias, ReLU and their gradients), 40 per logit per pass
    (softmax/log-softmax/KL and gradients), 64 per input element per attack (threefry
    bits for the start noise: ~50 integer ops per element, projection and clip), 10 per
    parameter per step / batch (SGD). TRADES at K = 10 attack steps."""
    batch, width, inputs, classes = 8, 256, 256, 10
    config = _config("model.arch=mlp", f"model.width={width}", "model.depth=2", f"objective.kind={kind}",
                     f"train.batch_size={batch}")
    first, macs = inputs * width, inputs * width + width * width + width * classes
    params = macs + 2 * width + classes
    passes = 2 * config.train_attack.num_steps + 7 if kind == "trades" else 3
    elementwise = 4 * 2 * width * passes + 40 * classes * passes + 64 * inputs + 10 * params / batch
    lower, upper = _step_band(config, (16, 16, 1), macs, first, elementwise)
    counted = step_cost.train_step_flops(config, (16, 16, 1), classes, compile=kind == "natural")
    assert lower <= counted["flops_per_image"] <= upper, (counted, lower, upper)
    if kind == "natural":  # the compiled count and XLA's buffer plan
        assert counted["source"] == "compiled"
        memory = counted["memory"]
        # The donated state (params + momentum, float32) is aliased, so it is counted once.
        assert memory["argument"] >= 2 * 4 * params and memory["alias"] >= 2 * 4 * params
        assert memory["peak_bytes"] >= memory["argument"]


# --------------------------------------------------------------------------- one count, any kernels

IMPLS = {"mlp": [("dense_impl", "xla"), ("dense_impl", "native")],
         "cnn": [("conv_impl", i) for i in ("xla", "flipped_dx", "shifted_matmul", "native")],
         "wrn": [("conv_impl", i) for i in ("xla", "flipped_dx", "shifted_matmul", "native")]}
ARCH_SETTINGS = {"mlp": ["model.arch=mlp", "model.width=32", "model.depth=2"],
                 "cnn": ["model.arch=cnn", "model.width=1"],
                 "wrn": ["model.arch=wrn", "model.depth=10", "model.width=1"]}


@pytest.mark.parametrize("kind", ["natural", "trades"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "wrn"])
def test_step_flops_are_the_same_for_every_implementation(arch, kind):
    """The count of a step is a property of the model: the Trainer's path (jitted_step_flops)
    and train_step_flops give one number for every conv_impl / dense_impl, the native kernels
    (XLA custom calls, invisible to its cost analysis) included."""
    batch, shape = 8, (16, 16, 1)
    counts = set()
    for field, impl in IMPLS[arch]:
        config = _config(*ARCH_SETTINGS[arch], f"model.{field}={impl}", f"objective.kind={kind}",
                         "train_attack.num_steps=2", f"train.batch_size={batch}")
        args = (None, jax.ShapeDtypeStruct((batch, *shape), jnp.uint8), None)
        counts.add(step_cost.jitted_step_flops(None, args, config, shape, 10)["flops_per_step"])
    assert len(counts) == 1 and None not in counts, counts


def test_native_kernels_hide_flops_from_a_raw_count():
    """Negative control for the test above: lowering the step as the native kernels run it
    counts a fraction of the work (what step_cost.py did before it counted XLA's step)."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("the native kernels need g++")
    config = _config(*ARCH_SETTINGS["wrn"], "model.conv_impl=native", "objective.kind=natural", "train.batch_size=8")
    step, state, images, labels = step_cost.abstract_step(config, (16, 16, 1), 10)
    raw = step_cost.cost_flops(step.lower(state, images, labels))
    assert raw < 0.2 * step_cost.train_step_flops(config, (16, 16, 1), 10)["flops_per_step"]


def test_wrn34_10_trades_step_at_batch_128_matches_the_hand_count():
    """The paper's step: WRN-34-10, TRADES with K = 10 attack steps, CIFAR-shaped, batch 128.
    Band: 2 x ((2K + 7) M - 2 M1) multiply-adds per image, plus elementwise work bounded per
    forward-equivalent by 16 FLOPs per BatchNorm input element (the natural step's 48 over its
    3 forward-equivalents), 64 per input element per attack step (noise bits, projection,
    clip), 40 per logit per pass, 10 per parameter per step / batch (SGD)."""
    batch, k = 128, 10
    config = load_config(ExperimentConfig, "experiments/cifar10_wrn34_trades.toml",
                         ["model.width=10", f"train.batch_size={batch}", f"train_attack.num_steps={k}"])
    counts = wrn_count(34, 10, 32, 32, 3, 10)
    params = 46_160_474  # WRN-34-10's parameters (tests/train/test_cli_usability.py: from the shapes)
    passes = 2 * k + 7
    elementwise = 16 * counts["bn_elements"] * passes + 64 * 32 * 32 * 3 * k + 40 * 10 * passes + 10 * params / batch
    lower, upper = _step_band(config, (32, 32, 3), counts["macs"], counts["stem_macs"], elementwise)
    counted = step_cost.train_step_flops(config, (32, 32, 3), 10)
    assert counted["batch_size"] == batch
    assert lower <= counted["flops_per_image"] <= upper, (counted["flops_per_image"], lower, upper)
    assert upper / lower < 1.02   # the band is tight: the multiply-adds are the count

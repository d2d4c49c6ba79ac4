"""Models: parameter counts derived by hand, shapes, normalization inside the model, BN modes."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nt_robust.models import (MLP, ModelConfig, SmallCNN, WideResNet, count_parameters,
                              create_model, init_variables, make_logits_fn)


def hand_count_wrn(depth: int, width: int, num_classes: int, in_channels: int = 3) -> int:
    """WRN parameters written out from the architecture, independently of the model code."""
    n = (depth - 4) // 6
    total = 3 * 3 * in_channels * 16  # stem conv, no bias
    channels_in = 16
    for channels in (16 * width, 32 * width, 64 * width):
        for block in range(n):
            c_in = channels_in if block == 0 else channels
            total += 2 * c_in                  # bn1 scale + bias
            total += 9 * c_in * channels       # conv1
            total += 2 * channels              # bn2
            total += 9 * channels * channels   # conv2
            if c_in != channels:
                total += c_in * channels       # 1x1 shortcut conv
        channels_in = channels
    total += 2 * 64 * width                    # final bn
    total += 64 * width * num_classes + num_classes
    return total


def params_of(config: ModelConfig, image_shape=(32, 32, 3), num_classes=10):
    model = create_model(config, num_classes)
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
    return count_parameters(shapes["params"])


def test_wrn_34_10_parameter_count_matches_hand_derivation():
    counted = params_of(ModelConfig("wrn", width=10, depth=34))
    assert counted == hand_count_wrn(34, 10, 10)
    assert round(counted / 1e6, 1) == 46.2


@pytest.mark.parametrize("depth,width", [(10, 1), (16, 2), (22, 3), (28, 1)])
def test_wrn_parameter_counts_for_other_depths_and_widths(depth, width):
    assert params_of(ModelConfig("wrn", width=width, depth=depth)) == hand_count_wrn(depth, width, 10)


def test_mlp_parameter_count_closed_form():
    d, m, k, L = 28 * 28, 37, 10, 3
    expected = (d * m + m) + (L - 1) * (m * m + m) + (m * k + k)
    assert params_of(ModelConfig("mlp", width=m, depth=L), image_shape=(28, 28, 1)) == expected


def test_small_cnn_parameter_count_scales_with_width():
    def expected(w, h=28):
        convs = (9 * 1 * 32 * w + 32 * w) + (9 * 32 * w * 32 * w + 32 * w) \
            + (9 * 32 * w * 64 * w + 64 * w) + (9 * 64 * w * 64 * w + 64 * w)
        flat = (h // 4) * (h // 4) * 64 * w
        dense = (flat * 200 * w + 200 * w) + (200 * w * 200 * w + 200 * w) + (200 * w * 10 + 10)
        return convs + dense
    for w in (1, 2):
        assert params_of(ModelConfig("cnn", width=w), image_shape=(28, 28, 1)) == expected(w)


@pytest.mark.parametrize("arch", ["wrn", "mlp", "cnn"])
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (12, 20, 2)])
def test_any_input_shape_gives_logits(arch, image_shape):
    model = create_model(ModelConfig(arch, width=1, depth=10 if arch == "wrn" else 2), num_classes=7)
    variables = init_variables(model, jax.random.key(1), image_shape)
    logits = model.apply(variables, jnp.ones((3, *image_shape)), train=False)
    assert logits.shape == (3, 7)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_normalization_inside_model_equals_normalizing_outside():
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    plain = WideResNet(depth=10, width=1, num_classes=10)
    normed = WideResNet(depth=10, width=1, num_classes=10, input_mean=mean, input_std=std)
    x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
    variables = plain.init(jax.random.key(3), x, train=False)
    inside = normed.apply(variables, x, train=False)
    outside = plain.apply(variables, (x - jnp.array(mean)) / jnp.array(std), train=False)
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-5)


def test_normalization_with_wrong_channel_count_is_a_clear_error():
    model = MLP(width=4, depth=1, input_mean=(0.5, 0.5, 0.5), input_std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3 channels|1 channels"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_bn_modes_train_uses_batch_statistics_and_never_mutates_variables():
    model = WideResNet(depth=10, width=1, num_classes=3)
    x = jax.random.uniform(jax.random.key(4), (8, 8, 8, 3))
    variables = model.init(jax.random.key(5), x, train=False)
    before = jax.tree_util.tree_map(np.asarray, variables)
    eval_logits = make_logits_fn(model, variables, "eval")(x)
    train_logits = make_logits_fn(model, variables, "train")(x)
    # Fresh running stats are mean 0 / var 1, the batch's are not: the two modes must differ.
    assert not np.allclose(eval_logits, train_logits)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.asarray, variables))
    with pytest.raises(ValueError, match="bn_mode"):
        make_logits_fn(model, variables, "running")


@pytest.mark.parametrize("kwargs,field", [
    (dict(arch="resnet"), "model.arch"), (dict(width=0), "model.width"),
    (dict(width=2.5), "model.width"), (dict(arch="wrn", depth=12), "model.depth"),
])
def test_invalid_model_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_labels():
    assert ModelConfig("wrn", 10, 34).label == "WRN-34-10"
    assert ModelConfig("mlp", 256, 2).label == "MLP-2x256"
    assert ModelConfig("cnn", 4).label == "CNNx4"
    assert isinstance(create_model(ModelConfig("cnn", 4), 10), SmallCNN)


def test_the_model_modules_import_nothing_from_the_cpu_engine():
    """The models are pure Flax: importing them loads no part of nt_robust.cpu (the kernels, the
    per-machine choice); only create_model reaches it, to resolve the config's functions."""
    code = ("import sys, nt_robust.models.wide_resnet, nt_robust.models.small, nt_robust.models.layers; "
            "print(sorted(m for m in sys.modules if m.startswith('nt_robust.cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("arch,field,impl", [("wrn", "conv_impl", "shifted_matmul"), ("cnn", "conv_impl", "xla"),
                                             ("cnn", "conv_impl", "flipped_dx"), ("mlp", "dense_impl", "xla")])
def test_create_model_hands_the_config_s_function_to_the_layers(arch, field, impl):
    from jax import lax

    from nt_robust.cpu.conv import flipped_dx_conv, shifted_matmul_conv

    model = create_model(ModelConfig(arch, depth=10, **{field: impl}), num_classes=10)
    expected = {"shifted_matmul": shifted_matmul_conv, "flipped_dx": flipped_dx_conv,
                "xla": lax.dot_general if arch == "mlp" else lax.conv_general_dilated}[impl]
    assert (model.dot_general if arch == "mlp" else model.conv) is expected
    # and the layers run it: the custom VJPs show in the program, XLA's convolution alone does not
    jaxpr = str(jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x))(jnp.zeros((1, 8, 8, 3))))
    assert ("custom_vjp" in jaxpr) == (impl in ("shifted_matmul", "flipped_dx"))

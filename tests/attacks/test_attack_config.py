"""AttackConfig validation, presets and serialization."""

import dataclasses

import jax
import pytest

from nt_robust.attacks import CW20, FGSM, PGD20, PGD_AT_TRAIN, PRESETS, TRADES_TRAIN, AttackConfig


def test_presets_match_the_paper_settings():
    assert (PGD20.norm, PGD20.eps, PGD20.step_size, PGD20.num_steps, PGD20.loss, PGD20.start) == (
        "linf", 0.031, 0.007, 20, "ce", "uniform")
    assert (TRADES_TRAIN.num_steps, TRADES_TRAIN.loss, TRADES_TRAIN.start, TRADES_TRAIN.start_std) == (
        10, "kl", "gaussian", 0.001)
    assert (PGD_AT_TRAIN.loss, PGD_AT_TRAIN.start) == ("ce", "gaussian")
    assert (CW20.loss, CW20.num_steps, CW20.step_size) == ("cw", 20, 0.007)
    assert set(PRESETS.values()) == {PGD20, CW20, TRADES_TRAIN, PGD_AT_TRAIN}


def test_eps_is_stored_exactly_as_given():
    assert PGD20.eps == 0.031 and PGD20.eps != 8 / 255
    assert FGSM(8 / 255).eps == 8 / 255
    fgsm = FGSM(0.031)
    assert (fgsm.num_steps, fgsm.step_size, fgsm.start, fgsm.norm, fgsm.loss) == (1, 0.031, "none", "linf", "ce")


def test_config_round_trips_through_dict_and_is_hashable():
    config = dataclasses.replace(PGD20, restarts=3, loop="fori")
    assert AttackConfig(**config.to_dict()) == config
    assert hash(AttackConfig(**config.to_dict())) == hash(config)
    jax.jit(lambda x, c: x, static_argnums=1)(1.0, config)  # usable as a static argument


@pytest.mark.parametrize("field, value, error", [
    ("eps", -0.1, ValueError), ("eps", float("nan"), ValueError), ("eps", float("inf"), ValueError),
    ("eps", "0.031", TypeError), ("step_size", -1.0, ValueError), ("num_steps", -1, ValueError),
    ("num_steps", 2.5, TypeError), ("num_steps", True, TypeError), ("restarts", 0, ValueError),
    ("start_std", -0.001, ValueError), ("norm", "l1", ValueError), ("loss", "mse", ValueError),
    ("start", "zeros", ValueError), ("loop", "scan", ValueError),
])
def test_invalid_fields_are_rejected_by_name(field, value, error):
    settings = dict(eps=0.031, step_size=0.007, num_steps=10)
    settings[field] = value
    with pytest.raises(error, match=field):
        AttackConfig(**settings)


def test_restarts_without_random_start_are_rejected():
    with pytest.raises(ValueError, match="restarts"):
        AttackConfig(eps=0.031, step_size=0.007, num_steps=10, start="none", restarts=2)


def test_fields_are_keyword_only():
    with pytest.raises(TypeError):
        AttackConfig("linf", 0.031, 0.007, 10)  # noqa: the order of floats is too easy to get wrong

"""The one validation idiom (nt_robust.config.require / check_choice / check_real / check_int):
each bound, None where optional, the type errors, and the path a nested config adds."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from nt_robust.attacks import AttackConfig
from nt_robust.config import (ConfigError, ConfigTypeError, build, check_choice, check_int, check_real,
                              load_config, require)
from nt_robust.train import ExperimentConfig


@pytest.mark.parametrize("bounds, inside, outside, says", [
    ({"minimum": 0}, [0, 0.5, 7], [-1e-9], ">= 0"),
    ({"above": 0}, [1e-9, 3], [0, -1], "> 0"),
    ({"minimum": 0, "below": 1}, [0, 0.999], [1, -0.1], "in [0, 1)"),
    ({"above": 0, "maximum": 4}, [4, 0.1], [0, 4.001], "in (0, 4]"),
    ({"maximum": 2}, [2, -5], [2.5], "<= 2"),
])
def test_check_real_keeps_each_bound_and_names_it(bounds, inside, outside, says):
    for value in inside:
        assert check_real("a.b", value, **bounds) == value
    for value in [*outside, math.nan, math.inf, -math.inf]:
        with pytest.raises(ConfigError, match=rf"^a\.b must be a finite number {re.escape(says)}, got "):
            check_real("a.b", value, **bounds)


def test_types_none_and_numpy_scalars():
    assert check_real("x", None, optional=True) is None and check_int("x", None, optional=True) is None
    assert check_int("x", np.int64(3), minimum=1) == 3 and type(check_int("x", np.int64(3))) is int
    assert check_real("x", np.float32(0.5)) == 0.5 and type(check_real("x", np.float32(0.5))) is float
    for check, value in [(check_real, "0.1"), (check_real, True), (check_int, 2.0), (check_int, False),
                         (check_real, None), (check_int, None)]:
        with pytest.raises(ConfigTypeError, match="^x must be") as error:
            check(path="x", value=value)
        assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)
    with pytest.raises(ConfigError, match=r"^x must be an integer >= 1 or none, got 0$"):
        check_int("x", 0, minimum=1, optional=True)


def test_check_choice_and_require():
    assert check_choice("k", "b", ("a", "b")) == "b"
    with pytest.raises(ConfigError, match=r"^k must be one of \('a', 'b'\) \(why\), got 'c'$"):
        check_choice("k", "c", ["a", "b"], "why")
    require(True, "k", "never said")
    with pytest.raises(ConfigError, match="^k needs more$"):
        require(False, "k", "needs more")


def test_a_nested_config_error_says_where_it_sits():
    with pytest.raises(ConfigError, match=r"^eval\.attack: eps must be a finite number >= 0, got -1"):
        load_config(ExperimentConfig, None, ["eval.attack.eps=-1"])
    with pytest.raises(ConfigError, match=r"^optim\.momentum must be a finite number in \[0, 1\), got 1\.0$"):
        load_config(ExperimentConfig, None, ["optim.momentum=1.0"])
    with pytest.raises(ConfigError, match=r"^train_attack: restarts > 1 needs a random start"):
        build(ExperimentConfig, {"train_attack": {"eps": 0.1, "step_size": 0.1, "num_steps": 1, "loss": "kl",
                                                  "start": "none", "restarts": 2}})
    with pytest.raises(TypeError, match="^num_steps must be an integer"):
        AttackConfig(eps=0.1, step_size=0.1, num_steps=2.5)

"""Typed, validated configs built from TOML files and ``--set key=value`` overrides.

Every config is a frozen dataclass. :func:`build` turns a nested dict into one, checking
unknown keys and types and naming the offending field in every error::

    config = load_config(ExperimentConfig, "experiments/quick_fmnist.toml",
                         overrides=["objective.lam=12", "model.width=4"])
    to_dict(config)        # plain nested dict, saved as the run's config.json

Every config dataclass validates itself in ``__post_init__`` with the same few checks, each
naming the field and what it must be (ConfigError)::

    check_choice("optim.schedule", self.schedule, SCHEDULES)
    check_real("optim.momentum", self.momentum, minimum=0, below=1)
    check_int("train.epochs", self.epochs, minimum=1)
    require(self.max_lam >= self.min_lam, "war.max_lam", "must be >= war.min_lam")   # fields together
"""

from __future__ import annotations

import dataclasses
import difflib
import fractions
import math
import numbers
import os
import re
import tomllib
import types
import typing
from typing import Any, Collection, Mapping, TypeVar

T = TypeVar("T")
NONE_STRINGS = ("none", "None", "null")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (a string where a number goes): a ConfigError and a TypeError."""


class ExactFloat(float):
    """A float that remembers how it was written: ``ExactFloat(8 / 255, "8/255")``. Compares,
    hashes and computes as the float (the correctly rounded value of the fraction); configs
    that keep a ``<field>_text`` beside the number (``AttackConfig.eps_text``) take the text
    from it, so a run records both."""

    text: str

    def __new__(cls, value: float, text: str) -> "ExactFloat":
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __reduce__(self) -> tuple:
        return ExactFloat, (float(self), self.text)

    def __repr__(self) -> str:
        return float.__repr__(self)


_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_FRACTION = re.compile(rf"\s*({_DECIMAL})\s*/\s*({_DECIMAL})\s*")


def parse_exact(text: str, path: str = "value") -> ExactFloat:
    """``"8/255"`` -> ``ExactFloat(0.0313..., "8/255")`` (the fraction's correctly rounded
    float); a decimal string (``"0.031"``) is read as written. ConfigError, naming ``path``,
    for anything else: ``8/0``, ``-8/255`` (ε and step sizes are >= 0), ``8/255/2``."""
    stripped = text.strip()
    match = _FRACTION.fullmatch(stripped)
    if match:
        numerator, denominator = (fractions.Fraction(g) for g in match.groups())
        if denominator == 0:
            raise ConfigError(f"{path} = {text!r} divides by zero")
        return ExactFloat(float(numerator / denominator), stripped.replace(" ", ""))
    if stripped.startswith("-") and _FRACTION.fullmatch(stripped[1:]):
        raise ConfigError(f"{path} = {text!r} is negative; write a fraction as p/q with p, q >= 0")
    if re.fullmatch(_DECIMAL, stripped):
        return ExactFloat(float(stripped), stripped)
    raise ConfigError(f"{path} must be a number or an exact fraction p/q (e.g. \"8/255\"), got {text!r}")


def exact_text(value: Any, text: str | None = None) -> str:
    """How to print a number that may have been written as a fraction: ``text`` if given,
    else the ExactFloat's text, else the float's repr (``0.031``, never rounded)."""
    if text:
        return text
    return getattr(value, "text", None) or repr(value if isinstance(value, (int, str)) else float(value))


# The one validation idiom of every config's __post_init__: each check names the field by
# ``path`` and says what it must be, raising ConfigError (ConfigTypeError for a wrong type);
# :func:`build` adds where the config sits (``eval.attack: eps must be ...``).

def require(condition: bool, path: str, message: str) -> None:
    """ConfigError ``"{path} {message}"`` unless ``condition``: the rules that tie fields together::

        require(self.max_lam >= self.min_lam, "war.max_lam", f"must be >= war.min_lam, got {self.max_lam}")
    """
    if not condition:
        raise ConfigError(f"{path} {message}")


def check_choice(path: str, value: T, choices: Collection[Any], why: str = "") -> T:
    """``value`` if it is one of ``choices``, else ConfigError (``why`` explains the choices)::

        check_choice("optim.schedule", "cosine", ("piecewise", "cosine"))   # "cosine"
    """
    if value not in choices:
        raise ConfigError(f"{path} must be one of {tuple(choices)}{f' ({why})' if why else ''}, got {value!r}")
    return value


def _bounds(minimum: float | None, above: float | None, maximum: float | None, below: float | None) -> str:
    low = f"[{minimum:g}" if minimum is not None else f"({above:g}" if above is not None else None
    high = f"{maximum:g}]" if maximum is not None else f"{below:g})" if below is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}" if high else ""


def check_real(path: str, value: Any, *, minimum: float | None = None, above: float | None = None,
               maximum: float | None = None, below: float | None = None, optional: bool = False) -> float | None:
    """``float(value)`` if it is a finite real number within the bounds (``minimum <= value``,
    ``above < value``, ``value <= maximum``, ``value < below``; None where ``optional``), else
    ConfigError naming the field and the range::

        check_real("optim.momentum", 0.9, minimum=0, below=1)   # 0.9
        check_real("optim.momentum", 1.0, minimum=0, below=1)   # optim.momentum must be a finite number in [0, 1), got 1.0
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{path} must be a real number{' or none' if optional else ''}, got {value!r}")
    if not (math.isfinite(value) and (minimum is None or value >= minimum) and (above is None or value > above)
            and (maximum is None or value <= maximum) and (below is None or value < below)):
        raise ConfigError(f"{path} must be a finite number{_bounds(minimum, above, maximum, below)}"
                          f"{' or none' if optional else ''}, got {value!r}")
    return float(value)


def check_int(path: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """``int(value)`` if it is an integer (not a bool) >= ``minimum`` (None where ``optional``),
    else ConfigError naming the field::

        check_int("train.epochs", 0, minimum=1)   # train.epochs must be an integer >= 1, got 0
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(f"{path} must be an integer{' or none' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path} must be an integer >= {minimum}{' or none' if optional else ''}, got {value!r}")
    return int(value)


def build(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Construct dataclass ``cls`` from ``data``; missing keys take the defaults."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a table of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suggestion = f"; did you mean {_join(path, hint[0])!r}?" if hint else ""
            raise ConfigError(f"unknown config key {_join(path, key)!r}{suggestion} "
                              f"(known keys here: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in fields:
        if name not in data:
            continue
        value = data[name]
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A partial table updates the default section instead of replacing it.
            value = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(default)}, **value}
        kwargs[name] = _coerce(hints[name], value, _join(path, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # ConfigError included: say where a nested config sits
        message = str(error)
        if not path or message.startswith(path):
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(message) from None
        raise ConfigError(f"{path}: {message}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) suitable for JSON."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return plain(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"objective.lam=12"`` -> ``(["objective", "lam"], 12)``; values are TOML literals,
    and anything that is not one is taken as a string (``data.dataset=cifar10``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = [k.strip() for k in key.split(".")]
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of nested ``data`` with each ``a.b=value`` applied. (TOML has no null: for
    an optional field, the strings ``none``/``null`` mean None.)"""
    result = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is a value, not a section")
        node[keys[-1]] = value
    return result


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> T:
    """Read a TOML file (or start from defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)!r} does not exist "
                              "(the ready-made ones are in experiments/)") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {error}") from None
    return build(cls, apply_overrides(data, overrides or []))


def toml_kind(path: str | os.PathLike, kinds: Mapping[str, Collection[str]]) -> str | None:
    """Which kind of TOML file ``path`` is, from its top-level keys: ``kinds`` maps each kind
    to the keys it knows, and a file is the one kind whose own keys (known to no other kind)
    it uses. None for an unreadable file, or one that uses no kind's own keys, or several's::

        toml_kind("experiments/quick_fmnist.toml",
                  {"study": ["name", "base_config", "grid"], "train": ["name", "model", "train"]})  # "train"
    """
    try:
        with open(path, "rb") as handle:
            keys = set(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    used = [kind for kind, known in kinds.items()
            if keys & (set(known) - set().union(*(set(k) for other, k in kinds.items() if other != kind)))]
    return used[0] if len(used) == 1 else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and (value is None or value in NONE_STRINGS):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {annotation}")
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            return value
        return build(annotation, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, ExactFloat):
            return value
        if isinstance(value, str):   # "8/255": an exact fraction (TOML has none; --set passes it as text)
            return parse_exact(value, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value

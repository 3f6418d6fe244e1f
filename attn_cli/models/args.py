"""Typed model arguments: every config value a family reads, checked for type, range and
finiteness when it is read.

A family declares its config as a frozen dataclass of `arg(kind, default)` fields, with the
defaults of transformers' config class (as mlx-lm's `ModelArgs`), and reads a config.json with
`parse`. A bad value is one InputError naming the key and the value, never a TypeError deep in
the forward pass nor a run on to NaN maps:

    config.json: num_attention_heads must be a positive integer, got '2'

GGUF metadata is checked by the same kinds (gguf/to_hf.py asks the family's args class), under
the GGUF key's own name. Values are kept as given (an int stays an int), so what a trace
records of the config does not change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from attn_cli.errors import InputError

A = TypeVar("A", bound="Args")


@dataclass(frozen=True)
class Kind:
    """What a value must be: `what` completes "… must be", `test` says whether it is."""

    what: str
    test: Callable[[Any], bool]


def _integer(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _number(v: Any) -> bool:
    """A finite real number; booleans are not numbers."""
    return (
        isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool | np.bool_)
        and math.isfinite(v)
    )


POSITIVE_INT = Kind("a positive integer", lambda v: _integer(v) and v > 0)
COUNT = Kind("an integer ≥ 0", lambda v: _integer(v) and v >= 0)
POSITIVE = Kind("a positive finite number", lambda v: _number(v) and v > 0)
NUMBER = Kind("a finite number", _number)
FRACTION = Kind("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1)
FLAG = Kind("true or false", lambda v: isinstance(v, bool | np.bool_))
TEXT = Kind("a string", lambda v: isinstance(v, str))
OBJECT = Kind("a JSON object", lambda v: isinstance(v, Mapping))
TEXTS = Kind(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
)


def show(value: Any, limit: int = 40) -> str:
    """A value as the message quotes it: JSON's words for null and booleans, repr otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check(kind: Kind, value: Any, label: str, nullable: bool = False) -> Any:
    """`value` if it is of `kind` (or None when `nullable`); else an InputError:
    "{label} must be {kind.what}, got {value}"."""
    if (value is None and nullable) or (value is not None and kind.test(value)):
        return value
    raise InputError(f"{label} must be {kind.what}, got {show(value)}")


def arg(kind: Kind, default: Any = dataclasses.MISSING, *, nullable: bool | None = None) -> Any:
    """A config field of `kind`; no default: the config must give it. null is accepted when the
    default is None, or when `nullable` says so."""
    allow_null = default is None if nullable is None else nullable
    return field(default=default, metadata={"kind": kind, "nullable": allow_null})


def source_of(cfg: Mapping[str, Any]) -> str:
    """What messages call a config: config.json, or the GGUF metadata it was made from."""
    return "GGUF metadata" if "gguf" in cfg else "config.json"


_FIELDS: dict[type, dict[str, dataclasses.Field]] = {}


def _fields_by_name(cls: type) -> dict[str, dataclasses.Field]:
    """An args class's fields by name: a config is parsed for every call of a family's
    functions (each new token of a generation), so each key's lookup must not scan them all."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = {f.name: f for f in fields(cls)}
    return found


@dataclass(frozen=True, kw_only=True)
class Args:
    """Base of every family's args dataclass (fields declared with `arg`)."""

    @classmethod
    def parse(cls: type[A], cfg: Mapping[str, Any], source: str | None = None) -> A:
        """The fields from `cfg` (defaults for what it leaves out), each checked; then the
        checks between fields (`validate`)."""
        where = source or source_of(cfg)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in cfg:
                value = cfg[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                raise InputError(f"{where}: {f.name} is missing")
            values[f.name] = cls.check(f.name, value, f"{where}: {f.name}")
        args = cls(**values)
        args.validate(where)
        return args

    @classmethod
    def check(cls, key: str, value: Any, label: str) -> Any:
        """`value` checked as field `key` is (GGUF metadata read for that key, too)."""
        f = cls._field(key)
        return check(f.metadata["kind"], value, label, f.metadata["nullable"])

    @classmethod
    def default(cls, key: str) -> Any:
        return cls._field(key).default

    @classmethod
    def _field(cls, key: str) -> dataclasses.Field:
        f = _fields_by_name(cls).get(key)
        if f is None:
            raise KeyError(f"{cls.__name__} has no field {key!r}")
        return f

    def validate(self, source: str) -> None:
        """Checks between fields (a family overrides it); each field alone is already checked."""

    def as_config(self) -> dict[str, Any]:
        """Every field by its config name (defaults filled in): for code that reads a mapping."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

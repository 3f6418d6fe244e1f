"""Option parsing shared by the API, the pipelines and a loaded model: layer/head selections,
step names, and the `Options` of `explain`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli import narrate
from attn_cli.errors import InputError, opt

# A layer or head selection: one index, several, "all", or None (all).
Selection = int | Sequence[int] | str | None


def _is_int(v: object) -> bool:
    """An integer value, numpy's included; not a bool (True is not a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """A real number, numpy's (np.float32(0.5)) included; not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parse_selection(value: Selection, count: int, param: str, flag: str, what: str) -> list[int]:
    """An index, a list of indices or 'all' -> the sorted indices, checked against `count`."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return list(range(count))
    if isinstance(value, str):
        try:
            items: list[Any] = [int(v) for v in value.split(",")]
        except ValueError:
            raise InputError(
                f"{opt(param, value, flag)}: takes a number, a list or 'all'"
            ) from None
    elif _is_int(value):
        items = [value]
    elif isinstance(value, Sequence) and value and all(_is_int(v) for v in value):
        items = list(value)
    else:
        raise InputError(f"{opt(param, value, flag)}: takes a number, a list of numbers or 'all'")
    for v in items:
        if not 0 <= v < count:
            raise InputError(f"{opt(param, v, flag)}: {what} (0–{count - 1}) or 'all'")
    return sorted({int(v) for v in items})


def parse_steps(value: str | Sequence[str] | None, param: str = "steps") -> list[str] | None:
    """'W,Y' / ['W', 'Y'] -> the names; None or 'all' -> None (every step)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if names == ["all"]:
        return None
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{opt(param, value)}: give step names such as 'W' or 'W,Y', or 'all'")
    for n in names:
        if n not in narrate.STEP_NAMES:
            raise InputError(
                f"{opt(param, value)}: {n!r} is not a step (steps: {', '.join(narrate.STEP_NAMES)})"
            )
    return names


def step_filter(names: list[str] | None) -> narrate.StepFilter:
    if names is None:
        return narrate.keep_all
    wanted = set(names)
    return lambda name: name in wanted


@dataclass
class Options:
    """What `explain` runs. Natural Python types: layer=2, layer=[0, 2], layer="all"."""

    tokenizer: str | Path | None = None
    special: bool = False
    embeddings: str | Path = "minilm"
    dim: int | None = None
    seed: int = 0
    scale: bool = False
    # The Q/K/V pipeline:
    qkv: bool = False
    norm: bool = True  # X_norm = LayerNorm(X) before the projections (Q/K/V only)
    heads: int = 1
    d_k: int | None = None
    causal: bool = False
    temperature: float = 1.0
    weights: str | Path | None = None
    # A real checkpoint:
    model: str | Path | None = None
    layer: Selection = None
    head: Selection = None
    pair: str | None = None  # a second sentence (BERT-family models: token_type_ids 1)
    # What the trace keeps (None: every step):
    steps: str | Sequence[str] | None = None

    @classmethod
    def checked(cls, options: dict[str, Any], caller: str) -> Options:
        """Options from a call's keywords, checked now: an unknown keyword or a bad value is
        one InputError naming `caller`."""
        try:
            opts = cls(**options)
        except TypeError as exc:
            raise InputError(str(exc).replace("Options.__init__()", f"{caller}()")) from None
        opts.check()
        return opts

    def check(self) -> None:
        """Options that cannot go together are errors, never silent overrides."""
        for name in ("special", "scale", "qkv", "norm", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{opt(name, getattr(self, name))}: must be True or False")
        for name in ("heads", "seed"):
            if not _is_int(getattr(self, name)):
                raise InputError(f"{opt(name, getattr(self, name))}: must be an integer")
        for name in ("dim", "d_k"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise InputError(f"{opt(name, value)}: must be an integer")
        if self.seed < 0:  # the ranges of heads, dim and d_k are checked where they are used
            raise InputError(f"{opt('seed')} must be 0 or more, got {self.seed}")
        # numpy's numbers are accepted and stored as Python's (the trace's config is JSON)
        self.heads, self.seed = int(self.heads), int(self.seed)
        self.dim = None if self.dim is None else int(self.dim)
        self.d_k = None if self.d_k is None else int(self.d_k)
        parse_steps(self.steps)
        if self.model is not None:
            own = [
                name
                for name, on in (
                    ("qkv", self.qkv),
                    ("norm", not self.norm),
                    ("weights", self.weights is not None),
                    ("embeddings", str(self.embeddings) != "minilm"),
                    ("dim", self.dim is not None),
                    ("tokenizer", self.tokenizer is not None),
                    ("scale", self.scale),
                    ("heads", self.heads != 1),
                    ("d_k", self.d_k is not None),
                    ("causal", self.causal),
                    ("temperature", self.temperature != 1.0),
                )
                if on
            ]
            if own:
                raise InputError(
                    f"{opt(own[0])} does not apply with {opt('model')}: a checkpoint brings its own "
                    "tokenizer, embeddings, projections and mask"
                )
            return
        if self.pair is not None:
            raise InputError(
                f"{opt('pair')} applies to {opt('model')} (a BERT-family checkpoint, which was "
                "trained on sentence pairs)"
            )
        if self.layer is not None or self.head is not None:
            raise InputError(
                f"{opt('layer') if self.layer is not None else opt('head')} applies to {opt('model')}"
            )
        if not self.qkv:
            given = [
                name
                for name, on in (
                    ("heads", self.heads != 1),
                    ("d_k", self.d_k is not None),
                    ("causal", self.causal),
                    ("temperature", self.temperature != 1.0),
                    ("weights", self.weights is not None),
                    ("norm", not self.norm),
                )
                if on
            ]
            if given:
                raise InputError(
                    f"{opt(given[0])} applies to the Q/K/V pipeline: add {opt('qkv', True)}"
                )
        elif self.scale:
            raise InputError(
                f"{opt('qkv')} always scales by √d_k (the W_scaled step): drop {opt('scale')}"
            )
        t = self.temperature
        if not is_number(t) or not (np.isfinite(t) and t > 0):
            shown = f"{t:g}" if is_number(t) else repr(t)
            raise InputError(f"{opt('temperature')} must be a positive number, got {shown}")
        self.temperature = float(t)

"""Choosing the next token from the model's logits: greedy, or sampled with a temperature,
top-k and top-p (nucleus), in transformers' order (temperature, then top-k, then top-p).

Sampling draws from numpy's PCG64 generator seeded with `seed`: a seed gives the same draws on
every machine (the probabilities are computed in float64).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.errors import InputError, opt


def _number(name: str, value: Any, low: float, high: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low or (high is not None and value > high):
        span = f"between {low:g} and {high:g}" if high is not None else f"{low:g} or more"
        raise InputError(f"{opt(name, value)}: must be a number {span}")
    return float(value)


def _count(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{opt(name, value)}: must be a whole number, {low} or more")
    return value


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen. Greedy (the most likely token) unless a temperature > 0,
    top_k or top_p > 0 asks for sampling; temperature 0 or top_p 0 mean greedy."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    @classmethod
    def checked(
        cls,
        temperature: Any = None,
        top_k: Any = None,
        top_p: Any = None,
        seed: Any = None,
    ) -> Sampler:
        """The options checked, one line naming a bad one; a sampler without a seed gets one
        drawn now (recorded, so the run can be repeated)."""
        t = None if temperature is None else _number("temperature", temperature, 0.0)
        k = None if top_k is None else _count("top_k", top_k, 1)
        p = None if top_p is None else _number("top_p", top_p, 0.0, 1.0)
        s = None if seed is None else _count("seed", seed, 0)
        sampler = cls(t, k, p, s)
        if not sampler.greedy and s is None:
            sampler = cls(t, k, p, secrets.randbelow(2**32))
        return sampler

    @property
    def greedy(self) -> bool:
        if self.temperature == 0.0 or self.top_p == 0.0:
            return True
        return self.temperature is None and self.top_k is None and self.top_p is None

    def generator(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.seed or 0))

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """The next token id from one row of logits."""
        if self.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / (self.temperature or 1.0)
        if self.top_k is not None and self.top_k < len(z):
            kth = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = softmax(z)
        if self.top_p is not None and self.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]  # the mass of the likelier tokens
            p[order[before >= self.top_p]] = 0.0  # the smallest set reaching top_p is kept
        cumulative = np.cumsum(p)
        u = rng.random() * cumulative[-1]
        return int(min(np.searchsorted(cumulative, u, side="right"), len(p) - 1))


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities of a row of logits, float64."""
    z = z.astype(np.float64)
    e = np.exp(z - np.max(z))
    return e / e.sum()

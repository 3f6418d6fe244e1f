"""What a worker computes: every head's statistic sums over a batch of lines (corpus.py runs
batches locally, cluster.py on a Dask cluster; corpus_ledger.py merges them exactly)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli.attention import entropy
from attn_cli.methods.registry import ModelParts, attention_stack, forward
from attn_cli.pretrained import load_model
from attn_cli.tokenizer import encode

STATISTICS = ("to_first", "to_sep", "to_punct", "to_prev", "to_next", "to_self", "entropy")

# Word-piece markers stripped before deciding whether a token is punctuation.
_MARKERS = ("##", "Ġ", "▁", "Ċ")


def is_punctuation(token: str) -> bool:
    """True for a token made only of punctuation characters (Unicode category P*), once
    word-piece markers (##, Ġ, ▁) and spaces are stripped."""
    t = token
    for m in _MARKERS:
        t = t.replace(m, "")
    t = t.strip()
    return bool(t) and all(unicodedata.category(c).startswith("P") for c in t)


@dataclass
class Totals:
    """Running sums (L, H) and how many tokens each statistic averaged over."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    tokens: int = 0
    skipped: int = 0  # lines longer than the model's positions (or max_tokens); blank lines
    # are not inputs and are not counted

    def add(self, other: Totals) -> None:
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.copy()
            self.counts[k] = self.counts.get(k, 0) + other.counts[k]
        self.lines += other.lines
        self.tokens += other.tokens
        self.skipped += other.skipped

    def means(self) -> dict[str, np.ndarray]:
        """Every statistic's (L, H) mean; NaN where nothing was counted (one-token lines have
        no previous or next token) and for a head its layer does not have (`present`)."""
        absent = self.sums["present"] == 0 if "present" in self.sums else False
        return {
            k: np.where(absent, np.nan, self.sums[k] / self.counts[k])
            if self.counts[k]
            else np.full_like(self.sums[k], np.nan)
            for k in STATISTICS
            if k in self.sums
        }


def line_totals(attention: np.ndarray, special: Sequence[bool], punct: Sequence[bool]) -> Totals:
    """Sums of every statistic for one line: attention (L, H, n, n), masks (n,). A head its
    layer does not have (NaN, `attention_stack`) adds 0; then `present` counts the lines each
    head was seen in."""
    a = np.asarray(attention, dtype=np.float64)
    missing = np.asarray(np.isnan(a).all(axis=(-2, -1)))
    a = np.where(missing[..., None, None], 0.0, a)
    n = a.shape[-1]
    sp = np.asarray(special, dtype=bool).copy()
    sp[0] = False  # the first token has a statistic of its own
    pu = np.asarray(punct, dtype=bool)
    i = np.arange(n)
    sums = {
        "to_first": a[..., :, 0].sum(-1),
        "to_sep": a[..., :, sp].sum(axis=(-2, -1)),
        "to_punct": a[..., :, pu].sum(axis=(-2, -1)),
        "to_prev": a[..., i[1:], i[1:] - 1].sum(-1),
        "to_next": a[..., i[:-1], i[:-1] + 1].sum(-1),
        "to_self": a[..., i, i].sum(-1),
        "entropy": np.where(missing, 0.0, entropy(a).sum(-1)),
    }
    counts = {k: n for k in STATISTICS}
    if missing.any():  # the same heads on every line of a model
        sums["present"], counts["present"] = (~missing).astype(np.float64), 1
    counts["to_prev"] = counts["to_next"] = n - 1
    return Totals(sums, counts, 1, n)


# --- running a model over lines -------------------------------------------------------------

LineRunner = Callable[[str], "tuple[np.ndarray, list[bool], list[bool]] | None"]


class CachedWeights:
    """A WeightSource that keeps every tensor once read: a corpus run reads each weight once
    per worker instead of once per line (memory: the model's size, which a run needs anyway)."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._source[name]
        return self._cache[name]

    def __contains__(self, name: object) -> bool:
        return name in self._source

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._source.shape(name))

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        return np.asarray(self._source.rows(name, ids))


def model_runner(model: str, max_tokens: int | None = None) -> LineRunner:
    """A function line -> (attention (L, H, n, n), special mask, punctuation mask), or None
    for a line that yields no tokens or is longer than the model's positions (or max_tokens)."""

    m = load_model(model)  # any checkpoint --model takes: directories, shards, GGUF
    fam, tok = m.family, m.tokenizer
    weights = CachedWeights(m.weights)
    parts = ModelParts(fam, weights, m.config, tok)
    limit = m.dims.max_positions
    if max_tokens is not None:
        limit = max_tokens if limit is None else min(limit, max_tokens)

    def run(line: str) -> tuple[np.ndarray, list[bool], list[bool]] | None:
        enc = encode(tok, line)
        ids = list(enc.ids)
        if not ids or (limit is not None and len(ids) > limit):
            return None
        special = [bool(s) for s in enc.special_tokens_mask]
        punct = [not s and is_punctuation(t) for s, t in zip(special, enc.tokens, strict=True)]
        return attention_stack(forward(parts, ids)), special, punct

    return run


def chunk_totals(run: LineRunner, lines: Sequence[str]) -> Totals:
    total = Totals()
    for line in lines:
        if not line.strip():
            continue  # blank lines are not inputs
        got = run(line)
        if got is None:
            total.skipped += 1
        else:
            total.add(line_totals(*got))
    return total

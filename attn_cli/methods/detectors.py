"""Head detectors, as TransformerLens defines them (transformer_lens.head_detector).

A detection pattern P (n × n, 0/1, lower-triangular) marks where an ideal head of a kind would
look; a head's score is the share of its attention that lands there:

    score = Σ_ij W_ij · P_ij / Σ_ij W_ij          (TransformerLens' "mul" error measure)

- previous-token: P_ij = 1 for j = i − 1
- duplicate-token: P_ij = 1 for j < i with t_j = t_i (an earlier copy of the same token)
- induction: the duplicate pattern shifted one column right: P_ij = 1 when t_(j−1) = t_i,
  j − 1 < i, j ≥ 1 (the token that followed an earlier copy)

Options as in TransformerLens: exclude_bos zeroes column 0 of W, exclude_current_token its
diagonal, before scoring. Without exclude_current_token a perfect previous-token head scores
(n − 1)/n, because token 0 has no previous token and must attend somewhere (itself).
Induction is measured on a random token sequence repeated twice (`repeated_random_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attn_cli.narrate import method_text as text
from attn_cli.trace import TraceStep

DETECTORS = ("prev_token", "duplicate_token", "induction")


def previous_token_pattern(n: int) -> np.ndarray:
    """P_ij = [j = i − 1]."""
    return np.eye(n, k=-1)


def duplicate_token_pattern(tokens: Sequence[int]) -> np.ndarray:
    """P_ij = [j < i and t_j = t_i]."""
    t = np.asarray(tokens)
    eq = (t[:, None] == t[None, :]).astype(np.float64)
    np.fill_diagonal(eq, 0.0)
    return np.tril(eq)


def induction_pattern(tokens: Sequence[int]) -> np.ndarray:
    """The duplicate pattern shifted one column right, column 0 zero, lower triangle kept."""
    dup = duplicate_token_pattern(tokens)
    shifted = np.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]
    return np.tril(shifted)


def pattern(kind: str, tokens: Sequence[int]) -> np.ndarray:
    if kind == "prev_token":
        return previous_token_pattern(len(tokens))
    if kind == "duplicate_token":
        return duplicate_token_pattern(tokens)
    if kind == "induction":
        return induction_pattern(tokens)
    raise ValueError(f"unknown detector {kind!r} (known: {', '.join(DETECTORS)})")


def head_scores(
    attention: np.ndarray,
    detection: np.ndarray,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> np.ndarray:
    """Σ W·P / Σ W for every head: attention (…, n, n) -> (…). A head with no attention left
    (everything excluded) scores 0; a head a layer does not have (NaN maps) scores NaN."""
    a = np.array(attention, dtype=np.float64)  # a copy: columns get zeroed
    if exclude_bos:
        a[..., :, 0] = 0.0
    if exclude_current_token:
        idx = np.arange(a.shape[-1])
        a[..., idx, idx] = 0.0
    hit = (a * detection).sum(axis=(-2, -1))
    total = a.sum(axis=(-2, -1))
    return np.divide(hit, total, out=np.where(np.isnan(total), np.nan, 0.0), where=total > 0)


def detect(
    attentions: np.ndarray,
    tokens: Sequence[int],
    kinds: Sequence[str] = DETECTORS,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> dict[str, np.ndarray]:
    """Every detector's (L, H) scores from (L, H, n, n) attention on `tokens`."""
    return {
        k: head_scores(attentions, pattern(k, tokens), exclude_bos, exclude_current_token)
        for k in kinds
    }


def repeated_random_tokens(
    length: int, vocab: int, seed: int = 0, low: int = 1000, prefix: Sequence[int] = ()
) -> list[int]:
    """prefix + r + r with r `length` token ids drawn uniformly from [low, vocab) (ids below
    `low` hold special and unused tokens in most vocabularies)."""
    if vocab <= low:
        low = 0
    r = np.random.default_rng(seed).integers(low, vocab, size=length).tolist()
    return [*prefix, *r, *r]


def heads_step(name: str, scores: np.ndarray, **fields: object) -> TraceStep:
    """A layers × heads step (kind "heads": rows L0…, cols H0…) with its catalogue text."""
    formula, description = text(name, **fields)
    n_layers, n_heads = scores.shape
    return TraceStep(
        name,
        formula,
        description,
        np.asarray(scores, dtype=np.float32),
        [f"L{i}" for i in range(n_layers)],
        [f"H{h}" for h in range(n_heads)],
        "heads",
    )


def detector_steps(scores: dict[str, np.ndarray]) -> list[TraceStep]:
    return [heads_step(name, s) for name, s in scores.items()]

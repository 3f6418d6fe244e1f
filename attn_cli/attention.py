"""The maths of self-attention, in plain numpy.

Pure functions: arrays in, arrays out. No I/O, no printing. Tokens are rows throughout:
X is (n, d) with one row per token, so the seed's Y = Xᵀ·W (tokens as columns) is Y = W·X here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def row_softmax(w: np.ndarray) -> np.ndarray:
    """Softmax of each row, made stable by subtracting the row max first.

    exp(w - max) never overflows, so logits of ±1e30 are fine. Masked entries are -inf and get
    weight exactly 0. A row that is masked entirely has no distribution to normalise: it comes
    out as all zeros (never NaN), so that row's output is the zero vector.
    """
    m = np.max(w, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # fully masked row: keep exp(-inf) = 0, avoid inf - inf
    e = np.exp(w - m)
    total = np.sum(e, axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def causal_mask(n: int) -> np.ndarray:
    """True where query i may look at key j (j <= i): the lower triangle, diagonal included."""
    return np.tri(n, dtype=bool)


class AttentionSteps(NamedTuple):
    """Every intermediate of scaled dot-product attention, in the order it is computed."""

    W_raw: np.ndarray  # (n_q, n_k) scores, q·k
    W_scaled: np.ndarray  # (n_q, n_k) scores / √d_k
    W_masked: np.ndarray | None  # (n_q, n_k) with -inf where the mask forbids a position
    W: np.ndarray  # (n_q, n_k) rows sum to 1
    Y: np.ndarray  # (n_q, d_v) weighted mix of the values


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    temperature: float = 1.0,
) -> AttentionSteps:
    """softmax(q·kᵀ / √d_k / T, masked) · v, keeping every step."""
    d_k = q.shape[-1]
    w_raw = q @ k.T  # [n_q, d_k] @ [d_k, n_k] -> [n_q, n_k]
    w_scaled = w_raw / np.sqrt(d_k)
    w_masked = None if mask is None else np.where(mask, w_scaled, -np.inf)
    logits = w_scaled if w_masked is None else w_masked
    w = row_softmax(logits / temperature if temperature != 1.0 else logits)
    y = w @ v  # [n_q, n_k] @ [n_k, d_v] -> [n_q, d_v]
    return AttentionSteps(w_raw, w_scaled, w_masked, w, y)


class ToySteps(NamedTuple):
    """Seed 001's parameter-free self-attention: the token vectors are their own q, k and v."""

    W_raw: np.ndarray
    W_scaled: np.ndarray | None
    W: np.ndarray
    Y: np.ndarray


def toy_self_attention(x: np.ndarray, scale: bool = False) -> ToySteps:
    """W_raw = X·Xᵀ, (W_scaled = W_raw/√d), W = row_softmax(·), Y = W·X."""
    w_raw = x @ x.T  # [n, d] @ [d, n] -> [n, n], symmetric
    w_scaled = w_raw / np.sqrt(x.shape[1]) if scale else None
    w = row_softmax(w_raw if w_scaled is None else w_scaled)
    y = w @ x  # [n, n] @ [n, d] -> [n, d]
    return ToySteps(w_raw, w_scaled, w, y)


def split_heads(w: np.ndarray, heads: int) -> list[np.ndarray]:
    """(d, H·d_h) -> H matrices of (d, d_h): head h owns columns h·d_h … (h+1)·d_h − 1."""
    return np.split(w, heads, axis=-1)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x·W (+ b), weights stored [in, out]."""
    return x @ w if b is None else x @ w + b


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a row-stochastic matrix; 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


class MultiHeadSteps(NamedTuple):
    """Every intermediate of multi-head attention: per-head Q/K/V and attention steps, then the
    concatenated head outputs and the output projection."""

    Q: list[np.ndarray]  # per head, (n, d_k)
    K: list[np.ndarray]  # per head, (n, d_k)
    V: list[np.ndarray]  # per head, (n, d_v)
    heads: list[AttentionSteps]
    Y_concat: np.ndarray  # (n, H·d_v)
    O: np.ndarray | None  # (n, d_out), only with an output projection


def multi_head_attention(
    x: np.ndarray,
    w_q: np.ndarray,
    w_k: np.ndarray,
    w_v: np.ndarray,
    heads: int,
    b_q: np.ndarray | None = None,
    b_k: np.ndarray | None = None,
    b_v: np.ndarray | None = None,
    w_o: np.ndarray | None = None,
    b_o: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    temperature: float = 1.0,
) -> MultiHeadSteps:
    """Project X to queries, keys and values, attend within each head, concatenate, project."""
    q = linear(x, w_q, b_q)  # [n, d] @ [d, H·d_k] -> [n, H·d_k]
    k = linear(x, w_k, b_k)  # [n, d] @ [d, H·d_k] -> [n, H·d_k]
    v = linear(x, w_v, b_v)  # [n, d] @ [d, H·d_v] -> [n, H·d_v]
    qs, ks, vs = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    per_head = [
        attention(qh, kh, vh, mask, temperature) for qh, kh, vh in zip(qs, ks, vs, strict=True)
    ]
    y_concat = np.concatenate([h.Y for h in per_head], axis=-1)  # H × [n, d_v] -> [n, H·d_v]
    o = None if w_o is None else linear(y_concat, w_o, b_o)  # [n, H·d_v] @ [H·d_v, d_o]
    return MultiHeadSteps(qs, ks, vs, per_head, y_concat, o)

"""The maths of self-attention, in plain numpy.

Pure functions: arrays in, arrays out. No I/O, no printing. Tokens are rows throughout:
X is (n, d) with one row per token, so "Y = Xᵀ·W" with tokens as columns is Y = W·X here.
Several heads are stacked on a leading axis: Q is (H, n, d_k).

One attention layer, in the order the functions run:
  project      Q = X·W_q + b_q, K = X·W_k + b_k, V = X·W_v + b_v, split into heads
  qk_hook      optional: q/k norms, rotary embeddings … (named stages, each kept)
  attend       W_raw = Q·Kᵀ, W_scaled, (W_capped), (W_masked), W = softmax, Y = W·V
  combine      Y_concat = [Y⁽⁰⁾ … Y⁽ᴴ⁻¹⁾] (merge_heads), O = Y_concat·W_o + b_o (linear)

records.multi_head_attention runs them in that order and records every step; a family whose
attention differs calls the pieces it needs and records its own stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from attn_cli.blas import by_rows, matmul

# Rows of the score matrix computed per BLAS call: bounds temporaries, and keeps every call a
# plain GEMM (see `scores`).
SCORE_BLOCK = 4096


def row_softmax(w: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Softmax of each row, made stable by subtracting the row max first.

    exp(w - max) never overflows, so logits of ±1e30 are fine. Masked entries are -inf and get
    weight exactly 0. A row that is masked entirely has no distribution to normalise: it comes
    out as all zeros (never NaN), so that row's output is the zero vector.

    `in_place`: w itself becomes the weights (the same numbers), no n × n array is made.
    """
    # the one n × n array (w itself when in place): exp and the division happen in it
    out = w if in_place else np.empty(w.shape, dtype=np.result_type(w.dtype, np.float16))
    return by_rows(_softmax_into, w, out)


def _softmax_into(w: np.ndarray, e: np.ndarray) -> None:
    m = np.max(w, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # fully masked row: keep exp(-inf) = 0, avoid inf - inf
    np.subtract(w, m, out=e)
    np.exp(e, out=e)
    total = np.sum(e, axis=-1, keepdims=True)
    # a row with total 0 is all zeros already: divided by 1 (a plain division, twice as fast
    # as one with where=)
    np.divide(e, np.where(total > 0, total, 1), out=e)


def causal_mask(n: int) -> np.ndarray:
    """True where query i may look at key j (j <= i): the lower triangle, diagonal included."""
    return np.tri(n, dtype=bool)


def sliding_window_mask(n: int, window: int) -> np.ndarray:
    """Causal, and only the last `window` tokens: True where i - window < j <= i."""
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return (j <= i) & (j > i - window)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a row-stochastic matrix; 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x·W (+ b), weights stored [in, out]."""
    return matmul(x, w) if b is None else matmul(x, w) + b


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(n, H·d_h) -> (H, n, d_h): head h owns columns h·d_h … (h+1)·d_h − 1."""
    n = x.shape[0]
    return x.reshape(n, heads, -1).transpose(1, 0, 2)


def merge_heads(y: np.ndarray) -> np.ndarray:
    """(H, n, d_h) -> (n, H·d_h): the heads side by side, head 0 first."""
    return y.transpose(1, 0, 2).reshape(y.shape[1], -1)


def kv_group(heads: int, kv_heads: int) -> int:
    """How many query heads share one key/value head (grouped-query attention)."""
    return heads // kv_heads


def kv_head_of(h: int, heads: int, kv_heads: int) -> int:
    """The key/value head query head h reads: h // (H / kv_heads)."""
    return h // kv_group(heads, kv_heads)


def repeat_kv(k: np.ndarray, heads: int) -> np.ndarray:
    """(KV, n, d) -> (H, n, d): each key/value head repeated for the query heads sharing it."""
    group = heads // k.shape[0]
    return k if group == 1 else np.repeat(k, group, axis=0)


def scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q·kᵀ over the last two axes: (…, n_q, d) × (…, n_k, d) -> (…, n_q, n_k).

    Computed in row blocks against a transposed copy of k, so no BLAS call ever sees the same
    buffer twice: for `x @ x.T` numpy takes a SYRK shortcut, and OpenBLAS's threaded SYRK
    crashes from n ≈ 16k (and has returned wrong float32 results on some CPUs).
    """
    k_t = np.ascontiguousarray(np.swapaxes(k, -1, -2))  # [..., d, n_k], a buffer of its own
    n_q = q.shape[-2]
    if n_q <= SCORE_BLOCK:
        return matmul(q, k_t)
    out = np.empty((*q.shape[:-1], k_t.shape[-1]), dtype=np.result_type(q, k_t))
    for start in range(0, n_q, SCORE_BLOCK):
        stop = min(start + SCORE_BLOCK, n_q)
        out[..., start:stop, :] = matmul(q[..., start:stop, :], k_t)
    return out


def softcap(w: np.ndarray, cap: float) -> np.ndarray:
    """cap·tanh(w / cap): large scores are squashed smoothly into (−cap, cap) (Gemma 2)."""
    return cap * np.tanh(w / cap)


EMPTY = np.empty(0, dtype=np.float32)  # Y of `weigh`'s steps, before the values are mixed


class AttentionSteps(NamedTuple):
    """Every intermediate of scaled dot-product attention, heads stacked on axis 0."""

    W_raw: np.ndarray  # (H, n_q, n_k) scores, q·k
    W_scaled: np.ndarray  # (H, n_q, n_k) scores × scale (1/√d_k unless the model says otherwise)
    W_capped: np.ndarray | None  # (H, n_q, n_k) soft-capped scores, only with a cap
    W_masked: np.ndarray | None  # (H, n_q, n_k) with -inf where the mask forbids a position
    W: np.ndarray  # (H, n_q, n_k) rows sum to 1
    Y: np.ndarray  # (H, n_q, d_v) weighted mix of the values
    # (H, n_q, n_k) scaled scores plus an additive position bias, only with one (T5)
    W_biased: np.ndarray | None = None


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    scale: float | None = None,
    cap: float | None = None,
    temperature: float = 1.0,
    bias: np.ndarray | None = None,
) -> AttentionSteps:
    """softmax(cap(q·kᵀ · scale + bias), masked) / T) · v, keeping every step.

    bias: an additive score bias, (H, n_q, n_k) or broadcastable to it (T5's relative
    position buckets), added after the scale.

    q is (H, n, d_k); k and v are (KV, n, d) with KV dividing H (grouped key/value heads are
    shared by H / KV query heads each). scale defaults to 1/√d_k.
    """
    heads = q.shape[0]
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)  # [KV, n, d] -> [H, n, d]
    w_raw = scores(q, k)  # [H, n, d_k] @ [H, d_k, n] -> [H, n, n]
    steps = weigh(w_raw, q.shape[-1], mask, scale, cap, temperature, bias)
    y = matmul(steps.W, v)  # [H, n, n] @ [H, n, d_v] -> [H, n, d_v]
    return steps._replace(Y=y)


def weigh(
    w_raw: np.ndarray,
    d_k: int,
    mask: np.ndarray | None = None,
    scale: float | None = None,
    cap: float | None = None,
    temperature: float = 1.0,
    bias: np.ndarray | None = None,
) -> AttentionSteps:
    """`attend`'s steps from the raw scores to the weights W: scale, bias, cap, mask, softmax.
    Y is left empty for the caller to mix the values with W."""
    s = 1.0 / np.sqrt(d_k) if scale is None else scale
    w_scaled = w_raw * np.asarray(s, dtype=w_raw.dtype)
    w_biased = None if bias is None else w_scaled + bias.astype(w_raw.dtype, copy=False)
    logits = w_scaled if w_biased is None else w_biased
    w_capped = None if cap is None else softcap(logits, cap)
    logits = logits if w_capped is None else w_capped
    w_masked = None if mask is None else np.where(mask, logits, -np.inf)
    if w_masked is not None:
        logits = w_masked
    w = row_softmax(logits / temperature if temperature != 1.0 else logits)
    return AttentionSteps(w_raw, w_scaled, w_capped, w_masked, w, EMPTY, w_biased)


def attend_in_place(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    scale: float | None = None,
    cap: float | None = None,
    temperature: float = 1.0,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """attend's W and Y alone, bit for bit: every step from the scores to the weights is taken
    in place in the one (H, n_q, n_k) array of the scores, which becomes W. attend keeps each
    step (W_raw, W_scaled …), three or more arrays of that size; a run that shows only the maps
    (a 30-s Whisper encoder: 8 × 1,500² per layer) needs one."""
    heads, d_k = q.shape[0], q.shape[-1]
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)  # [KV, n, d] -> [H, n, d]
    w = scores(q, k)  # W_raw: [H, n, d_k] @ [H, d_k, n] -> [H, n, n]
    w *= np.asarray(1.0 / np.sqrt(d_k) if scale is None else scale, dtype=w.dtype)  # W_scaled
    if bias is not None:
        w += bias.astype(w.dtype, copy=False)  # W_biased
    if cap is not None:  # W_capped = cap·tanh(w / cap)
        w /= cap
        np.tanh(w, out=w)
        w *= cap
    if mask is not None:
        np.copyto(w, -np.inf, where=~mask)  # W_masked
    if temperature != 1.0:
        w /= temperature
    w = row_softmax(w, in_place=True)
    return w, matmul(w, v)  # [H, n, n] @ [H, n, d_v] -> [H, n, d_v]


@dataclass(frozen=True)
class AttentionParams:
    """One attention layer's projections, stored [in, out] so Q = X·W_q."""

    w_q: np.ndarray  # (d, H·d_k)
    w_k: np.ndarray  # (d, KV·d_k)
    w_v: np.ndarray  # (d, KV·d_v)
    heads: int
    kv_heads: int | None = None  # None: one key/value head per query head
    b_q: np.ndarray | None = None
    b_k: np.ndarray | None = None
    b_v: np.ndarray | None = None
    w_o: np.ndarray | None = None  # (H·d_v, d_o)
    b_o: np.ndarray | None = None

    @property
    def kv(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def d_k(self) -> int:
        return self.w_q.shape[1] // self.heads

    @property
    def d_v(self) -> int:
        return self.w_v.shape[1] // self.kv


def project(x: np.ndarray, p: AttentionParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries, keys and values, split into heads: (H, n, d_k), (KV, n, d_k), (KV, n, d_v)."""
    q = split_heads(linear(x, p.w_q, p.b_q), p.heads)  # [n, d] @ [d, H·d_k] -> [H, n, d_k]
    k = split_heads(linear(x, p.w_k, p.b_k), p.kv)  # [n, d] @ [d, KV·d_k] -> [KV, n, d_k]
    v = split_heads(linear(x, p.w_v, p.b_v), p.kv)  # [n, d] @ [d, KV·d_v] -> [KV, n, d_v]
    return q, k, v


# A hook transforms queries and keys before the scores (q/k norms, rotary embeddings). It
# returns named stages, each a (q, k) pair, in order; the last stage is what gets scored.
QKStage = tuple[str, np.ndarray, np.ndarray]
QKHook = Callable[[np.ndarray, np.ndarray], list[QKStage]]


class ToySteps(NamedTuple):
    """Parameter-free self-attention: the token vectors are their own queries, keys and values."""

    W_raw: np.ndarray
    W_scaled: np.ndarray | None
    W: np.ndarray
    Y: np.ndarray


def toy_self_attention(x: np.ndarray, scale: bool = False) -> ToySteps:
    """W_raw = X·Xᵀ, (W_scaled = W_raw/√d), W = row_softmax(·), Y = W·X."""
    w_raw = scores(x, x)  # [n, d] @ [d, n] -> [n, n], symmetric
    c = np.asarray(1.0 / np.sqrt(x.shape[1]), dtype=w_raw.dtype)  # float32 stays float32
    w_scaled = w_raw * c if scale else None
    w = row_softmax(w_raw if w_scaled is None else w_scaled)
    y = w @ x  # [n, n] @ [n, d] -> [n, d]
    return ToySteps(w_raw, w_scaled, w, y)

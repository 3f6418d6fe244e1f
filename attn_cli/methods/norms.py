"""Attention norms (Kobayashi et al. 2020, "Attention is Not Only a Weight").

A head's output for token i is Σ_j α_ij · f(x_j) with f(x) = (x·W_V + b_V)·W_O⁽ʰ⁾, where W_O⁽ʰ⁾
is the head's rows of the output projection. The weight α_ij says how much i looks at j; the
norm ‖α_ij · f(x_j)‖ says how much j actually moves i. Summed over the heads of a layer,
Σ_h Σ_j α_ij⁽ʰ⁾ f_h(x_j) + b_O is exactly the attention output O.

With grouped key/value heads, head h reads value head kv_head_of(h): f_h(x_j) = V[kv(h)]_j·W_O⁽ʰ⁾
(the values V already include b_V).

Memory stays O(n²): the summed vectors Σ_h α_ij⁽ʰ⁾ f_h(x_j) are (n, n, d) and are only ever built
one block of (query rows × key columns) at a time (`pair_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from attn_cli.attention import AttentionParams, kv_head_of
from attn_cli.narrate import method_step
from attn_cli.trace import TraceStep

# Largest block of (rows × cols × d) floats built at once (64 MB of float32).
BLOCK_ELEMENTS = 1 << 24


def head_output_weights(p: AttentionParams) -> np.ndarray:
    """W_O split into the heads' row blocks: (H, d_v, d_o); head h owns rows h·d_v … (h+1)·d_v − 1."""
    if p.w_o is None:
        raise ValueError("attention norms need the output projection W_O")
    return p.w_o.reshape(p.heads, p.d_v, p.w_o.shape[1])


def transformed_vectors(v: np.ndarray, p: AttentionParams, cols: slice = slice(None)) -> np.ndarray:
    """f_h(x_j) = V[kv(h)]_j · W_O⁽ʰ⁾ for every head and the key positions `cols`: (H, c, d_o).

    `v` is the forward pass's (KV, n, d_v) values (biases included)."""
    w_o = head_output_weights(p)
    kv = np.array([kv_head_of(h, p.heads, p.kv) for h in range(p.heads)])
    return np.matmul(v[kv, cols, :], w_o)  # [H, c, d_v] @ [H, d_v, d_o] -> [H, c, d_o]


def value_norms(v: np.ndarray, p: AttentionParams) -> np.ndarray:
    """‖f_h(x_j)‖ for every head and token: (H, n). Computed a block of tokens at a time."""
    n = v.shape[1]
    d_o = head_output_weights(p).shape[2]
    step = max(1, BLOCK_ELEMENTS // (p.heads * d_o))
    out = np.empty((p.heads, n), dtype=np.float64)
    for s in range(0, n, step):
        f = transformed_vectors(v, p, slice(s, s + step))
        out[:, s : s + step] = np.linalg.norm(f, axis=-1)
    return out


def attention_norms(weights: np.ndarray, v: np.ndarray, p: AttentionParams) -> np.ndarray:
    """‖α_ij⁽ʰ⁾ · f_h(x_j)‖ = α_ij⁽ʰ⁾ · ‖f_h(x_j)‖ per head: (H, n, n)."""
    return weights * value_norms(v, p)[:, None, :]


# f_h(x_j) for a block of keys, (c, H, d_o) -> (c, H, d_o): lets ALTI fold its norm into f.
FMap = Callable[[np.ndarray], np.ndarray]


def key_blocks(
    weights: np.ndarray,
    v: np.ndarray,
    p: AttentionParams,
    f_map: FMap | None = None,
    dtype: type = np.float32,
) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Blocks of S_ij = Σ_h α_ij⁽ʰ⁾ f_h(x_j), key-major: yields (rows, cols, S) with S a fresh
    contiguous (c, r, d_o) array (S[k, q] is the pair (rows[q], cols[k])).

    Key columns are the outer loop so each block of f is computed once; a block never holds
    more than about BLOCK_ELEMENTS numbers. `f_map` transforms f first (ALTI's frozen norm).
    """
    heads, n_q, n_k = weights.shape
    d_o = head_output_weights(p).shape[2]
    cols_step = max(1, min(n_k, BLOCK_ELEMENTS // (heads * d_o)))
    for c0 in range(0, n_k, cols_step):
        cols = slice(c0, min(c0 + cols_step, n_k))
        f = transformed_vectors(v, p, cols).transpose(1, 0, 2)  # [c, H, d_o]
        if f_map is not None:
            f = f_map(f)
        f = np.ascontiguousarray(f, dtype=dtype)
        c = f.shape[0]
        rows_step = max(1, BLOCK_ELEMENTS // (c * d_o))
        for r0 in range(0, n_q, rows_step):
            rows = slice(r0, min(r0 + rows_step, n_q))
            a: np.ndarray = np.ascontiguousarray(
                weights[:, rows, cols].transpose(2, 1, 0), dtype=dtype
            )
            yield rows, cols, np.matmul(a, f)  # per key j: [r, H] @ [H, d_o] -> [c, r, d_o]


def pair_blocks(
    weights: np.ndarray, v: np.ndarray, p: AttentionParams, dtype: type = np.float64
) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Blocks of S_ij = Σ_h α_ij⁽ʰ⁾ f_h(x_j), query-major: (rows, cols, S (r, c, d_o))."""
    for rows, cols, s in key_blocks(weights, v, p, dtype=dtype):
        yield rows, cols, s.transpose(1, 0, 2)


def pair_reduce(
    weights: np.ndarray,
    v: np.ndarray,
    p: AttentionParams,
    reduce: Callable[[slice, slice, np.ndarray], np.ndarray],
    f_map: FMap | None = None,
) -> np.ndarray:
    """(n, n) matrix whose block [rows, cols] is reduce(rows, cols, S)ᵀ, with S the key-major
    block (c, r, d) of `key_blocks` (reduce may overwrite it) and reduce returning (c, r)."""
    out = np.empty(weights.shape[1:], dtype=np.float64)
    for rows, cols, s in key_blocks(weights, v, p, f_map):
        out[rows, cols] = reduce(rows, cols, s).T
    return out


def summed_attention_norms(weights: np.ndarray, v: np.ndarray, p: AttentionParams) -> np.ndarray:
    """‖Σ_h α_ij⁽ʰ⁾ f_h(x_j)‖ for every pair: (n, n), in O(n²) memory.

    Through each key's Gram matrix G_j[h, g] = ⟨f_h(x_j), f_g(x_j)⟩ (H × H):
    ‖Σ_h α_h f_h‖² = Σ_hg α_h α_g G_j[h, g], so the cost is n²·H² instead of n²·H·d.
    """
    heads, n_q, n_k = weights.shape
    d_o = head_output_weights(p).shape[2]
    out = np.empty((n_q, n_k), dtype=np.float64)
    step = max(1, BLOCK_ELEMENTS // (heads * max(d_o, n_q)))
    for c0 in range(0, n_k, step):
        cols = slice(c0, min(c0 + step, n_k))
        f = transformed_vectors(v, p, cols).astype(np.float64)  # [H, c, d_o]
        gram = np.einsum("hcd,gcd->chg", f, f)  # [c, H, H]
        a = weights[:, :, cols].transpose(2, 1, 0).astype(np.float64)  # [c, n_q, H]
        sq = np.einsum("crh,crh->cr", np.matmul(a, gram), a)  # αᵀ·G·α per pair
        out[:, cols] = np.sqrt(np.maximum(sq, 0.0)).T
    return out


def norms_steps(
    per_head: np.ndarray | None,
    summed: np.ndarray | None,
    labels: Sequence[str],
    layer: int,
    heads: Sequence[int] | None = None,
) -> list[TraceStep]:
    """ "norms" steps (one per head) and a "norms_sum" step for the layer, kind "relevance"."""
    steps = []
    if per_head is not None:
        for h in range(len(per_head)) if heads is None else heads:
            steps.append(method_step("norms", per_head[h], labels, "relevance", layer, h))
    if summed is not None:
        steps.append(method_step("norms_sum", summed, labels, "relevance", layer))
    return steps

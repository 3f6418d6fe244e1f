"""Attention over long texts without an n × n matrix: the online softmax over key blocks that
flash attention uses, and the exact weights of any block of one head recomputed on demand.

For each block of queries the keys are read in blocks; a running row maximum m, a running sum
l of exp(s − m) and a running output acc = Σ exp(s − m)·v are rescaled whenever m grows, so
after the last key block Y = acc / l and the row's log-sum-exp is lse = m + log l. Memory is a
query block × key block of scores at a time: linear in the text. A sliding-window layer reads
only the key blocks its window reaches.

Once a head's queries, keys and lse are kept, any weight is exp(s_ij − lse_i): `block` gives an
exact rectangle of the map, `pooled` a small picture of all of it (each cell: the weight the
cell's queries give the cell's keys, averaged over the queries), both without the full map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QUERY_BLOCK = 512  # queries per step
KEY_BLOCK = 1024  # keys per step: a 512 × 1024 float32 score block is 2 MiB per query head


@dataclass(frozen=True)
class Geometry:
    """What shapes the scores of one layer: causal always, a window (None: every earlier key),
    the scale and an optional soft-cap."""

    scale: float
    cap: float | None = None
    window: int | None = None

    def first_key(self, query: int) -> int:
        """The first key query `query` may read."""
        return 0 if self.window is None else max(0, query - self.window + 1)


def _logits(q: np.ndarray, k_t: np.ndarray, geo: Geometry) -> np.ndarray:
    """cap(q·kᵀ · scale), as attention.attend computes them (scale applied after the product)."""
    s = q @ k_t
    s *= np.asarray(geo.scale, dtype=s.dtype)
    if geo.cap is not None:
        s = geo.cap * np.tanh(s / geo.cap)
    return s


def _allowed(rows: np.ndarray, cols: np.ndarray, geo: Geometry) -> np.ndarray | None:
    """The mask of a block (None: every cell allowed)."""
    if cols[-1] <= rows[0] and (geo.window is None or cols[0] > rows[-1] - geo.window):
        return None
    i, j = rows[:, None], cols[None, :]
    ok = j <= i
    if geo.window is not None:
        ok &= j > i - geo.window
    return ok


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    geo: Geometry,
    tick: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal attention of q (H, n, d_k) over k, v (KV, n, d) with KV dividing H: the output
    Y (H, n, d_v) and each row's log-sum-exp of its logits, lse (H, n). `tick(rows)` is called
    after each block of query rows."""
    heads, n, _ = q.shape
    kv = k.shape[0]
    group = heads // kv
    d_v = v.shape[-1]
    y = np.empty((heads, n, d_v), dtype=np.float32)
    lse = np.empty((heads, n), dtype=np.float32)
    k_t = np.ascontiguousarray(np.swapaxes(k, -1, -2))  # (KV, d_k, n): a buffer of its own
    for start in range(0, n, QUERY_BLOCK):
        stop = min(n, start + QUERY_BLOCK)
        rows = np.arange(start, stop)
        b = stop - start
        for g in range(kv):
            hs = slice(g * group, (g + 1) * group)
            qb = q[hs, start:stop].reshape(group * b, -1)  # the group's heads stacked
            m = np.full((group * b, 1), -np.inf, dtype=np.float32)
            total = np.zeros((group * b, 1), dtype=np.float32)
            acc = np.zeros((group * b, d_v), dtype=np.float32)
            for ks in range(geo.first_key(start), stop, KEY_BLOCK):
                ke = min(stop, ks + KEY_BLOCK)
                s = _logits(qb, k_t[g, :, ks:ke], geo)
                ok = _allowed(rows, np.arange(ks, ke), geo)
                if ok is not None:
                    s = np.where(np.tile(ok, (group, 1)), s, -np.inf)
                m_new = np.maximum(m, s.max(axis=1, keepdims=True))
                safe = np.where(np.isfinite(m_new), m_new, 0.0)
                s -= safe
                np.exp(s, out=s)
                rescale = np.exp(m - safe)
                total = total * rescale + s.sum(axis=1, keepdims=True)
                acc = acc * rescale + s @ v[g, ks:ke]
                m = m_new
            y[hs, start:stop] = (acc / total).reshape(group, b, d_v)
            lse[hs, start:stop] = (m + np.log(total)).reshape(group, b)
        if tick is not None:
            tick(b)
    return y, lse


def block(
    q: np.ndarray,
    k: np.ndarray,
    lse: np.ndarray,
    geo: Geometry,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """One head's exact weights W[rows, cols] from its queries q (n, d_k), keys k (n, d_k) and
    row log-sum-exps lse (n,): zero where the mask forbids a cell."""
    (r0, r1), (c0, c1) = rows, cols
    out = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    k_t = np.ascontiguousarray(k[c0:c1].T)
    for start in range(r0, r1, QUERY_BLOCK):
        stop = min(r1, start + QUERY_BLOCK)
        r = np.arange(start, stop)
        s = _logits(q[start:stop], k_t, geo)
        s -= lse[start:stop, None]
        np.exp(s, out=s)
        ok = _allowed(r, np.arange(c0, c1), geo)
        out[start - r0 : stop - r0] = s if ok is None else np.where(ok, s, 0.0)
    return out


def edges(n: int, cells: int) -> np.ndarray:
    """Where each of min(n, cells) equal bins of 0 … n starts, and n at the end."""
    return np.linspace(0, n, min(n, cells) + 1).round().astype(np.int64)


def pooled(
    q: np.ndarray,
    k: np.ndarray,
    lse: np.ndarray,
    geo: Geometry,
    row_edges: np.ndarray,
    col_edges: np.ndarray,
    tick: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The map of one head pooled into bins: cell (a, b) is the weight the queries of row bin
    a give the keys of column bin b, summed over the keys and averaged over the queries — so
    each row of the pooled map sums to 1, like the map itself. Only the keys a query may read
    are computed (the window of a sliding layer)."""
    n = len(q)
    out = np.zeros((len(row_edges) - 1, len(col_edges) - 1), dtype=np.float64)
    row_bin = np.searchsorted(row_edges, np.arange(n), side="right") - 1
    counts = np.diff(row_edges).astype(np.float64)
    for start in range(0, n, QUERY_BLOCK):
        stop = min(n, start + QUERY_BLOCK)
        for ks in range(geo.first_key(start), stop, KEY_BLOCK):
            ke = min(stop, ks + KEY_BLOCK)
            w = block(q, k, lse, geo, (start, stop), (ks, ke))
            inner = col_edges[(col_edges > ks) & (col_edges < ke)]
            cuts = np.concatenate([[ks], inner]) - ks
            col_sums = np.add.reduceat(w, cuts, axis=1)  # (rows, pieces)
            first = np.searchsorted(col_edges, ks, side="right") - 1
            bins = np.arange(first, first + len(cuts))
            np.add.at(out, (row_bin[start:stop, None], bins[None, :]), col_sums)
        if tick is not None:
            tick(stop - start)
    return out / counts[:, None]

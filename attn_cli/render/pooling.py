"""Shrinking a matrix to fit a screen, and projecting vectors to 2-D: pure numpy."""

from __future__ import annotations

import numpy as np


def block_edges(n: int, blocks: int) -> np.ndarray:
    """Start index of each of min(n, blocks) near-equal blocks covering 0 … n-1."""
    blocks = max(1, min(n, blocks))
    return np.unique(np.linspace(0, n, blocks + 1)[:-1].astype(np.int64))


def pool(
    m: np.ndarray, out_rows: int, out_cols: int, how: str = "max"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce m to at most out_rows × out_cols by max- or mean-pooling blocks of cells.

    Works on the matrix in place (np.ufunc.reduceat), so an n × n input never gets copied:
    the only temporaries are out_rows × n and out_rows × out_cols. -inf (masked) cells are
    ignored by 'mean' unless a whole block is masked.
    Returns (pooled, row_starts, col_starts).
    """
    r = block_edges(m.shape[0], out_rows)
    c = block_edges(m.shape[1], out_cols)
    if how == "max":
        return np.maximum.reduceat(np.maximum.reduceat(m, r, axis=0), c, axis=1), r, c
    if how != "mean":
        raise ValueError(how)
    finite = np.isfinite(m)
    if finite.all():
        sums = np.add.reduceat(np.add.reduceat(m, r, axis=0, dtype=np.float64), c, axis=1)
        counts = np.outer(np.diff(np.append(r, m.shape[0])), np.diff(np.append(c, m.shape[1])))
        return (sums / counts).astype(m.dtype, copy=False), r, c
    vals = np.where(finite, m, 0.0)
    sums = np.add.reduceat(np.add.reduceat(vals, r, axis=0), c, axis=1)
    counts = np.add.reduceat(np.add.reduceat(finite.astype(np.int64), r, axis=0), c, axis=1)
    return np.divide(sums, counts, out=np.full(sums.shape, -np.inf), where=counts > 0), r, c


def pca_2d(points: np.ndarray) -> np.ndarray:
    """Project rows onto their first two principal components (centred; SVD)."""
    centred = points - points.mean(axis=0)
    if centred.shape[1] < 2:
        return np.hstack([centred, np.zeros((len(centred), 2 - centred.shape[1]))])
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T  # [n, d] @ [d, 2] -> [n, 2]
    if out.shape[1] < 2:
        out = np.hstack([out, np.zeros((len(out), 2 - out.shape[1]))])
    return out


def mean_pairwise_distance(points: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows (0 for fewer than two rows)."""
    n = len(points)
    if n < 2:
        return 0.0
    sq = np.sum(points**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * points @ points.T, 0.0)
    iu = np.triu_indices(n, 1)
    return float(np.mean(np.sqrt(d2[iu])))

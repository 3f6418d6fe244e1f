"""Shrinking a matrix to fit a screen, and projecting vectors to 2-D: pure numpy."""

from __future__ import annotations

import numpy as np


def block_edges(n: int, blocks: int) -> np.ndarray:
    """Start index of each of min(n, blocks) near-equal blocks covering 0 … n-1."""
    blocks = max(1, min(n, blocks))
    return np.unique(np.linspace(0, n, blocks + 1)[:-1].astype(np.int64))


def pool(
    m: np.ndarray, out_rows: int, out_cols: int, how: str = "max", signed: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce m to at most out_rows × out_cols by max- or mean-pooling blocks of cells.

    Each block of whole rows is contiguous, so it is reduced in one pass over memory; the
    n × n input is never copied (the temporaries are one block's mask at most, and
    out_rows × n). -inf (masked) cells are ignored by 'mean' unless a whole block is masked.
    `signed` (a map shaded diverging around 0: scores, mixing weights): 'max' keeps each
    block's value of largest magnitude, with its sign, so a strong negative entry stays as
    visible as a positive one (-inf cells still count as masked, not as large).
    Returns (pooled, row_starts, col_starts).
    """
    if how not in ("max", "mean"):
        raise ValueError(how)
    r = block_edges(m.shape[0], out_rows)
    c = block_edges(m.shape[1], out_cols)
    r_end = np.append(r[1:], m.shape[0])
    if how == "max":
        rows = np.stack([m[a:b].max(axis=0) for a, b in zip(r, r_end, strict=True)])  # [R, n]
        hi = np.maximum.reduceat(rows, c, axis=1)  # [R, n] -> [R, C]
        if not signed:
            return hi, r, c
        lows = np.stack(
            [
                np.where(m[a:b] == -np.inf, np.inf, m[a:b]).min(axis=0)
                for a, b in zip(r, r_end, strict=True)
            ]
        )  # [R, n]: the smallest unmasked value of each column of a block of rows
        lo = np.minimum.reduceat(lows, c, axis=1)
        return np.where(-lo > hi, lo, hi), r, c
    sums = np.empty((len(r), m.shape[1]))
    counts = np.empty((len(r), m.shape[1]))
    for i, (a, b) in enumerate(zip(r, r_end, strict=True)):
        block = m[a:b]
        finite = np.isfinite(block)
        if finite.all():
            sums[i] = block.sum(axis=0, dtype=np.float64)
            counts[i] = b - a
        else:
            sums[i] = np.where(finite, block, 0).sum(axis=0, dtype=np.float64)
            counts[i] = finite.sum(axis=0)
    sums, counts = np.add.reduceat(sums, c, axis=1), np.add.reduceat(counts, c, axis=1)
    mean = np.divide(sums, counts, out=np.full(sums.shape, -np.inf), where=counts > 0)
    return mean.astype(m.dtype, copy=False), r, c


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

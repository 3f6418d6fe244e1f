"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Each layer mixes tokens by its heads' attention and keeps each token through the residual
connection. Rollout models a layer as Â = ½·mean_h(A) + ½·I (rows still sum to 1) and chains
the layers: R⁽ˡ⁾ = Â⁽ˡ⁾ · R⁽ˡ⁻¹⁾, R⁽⁰⁾ = Â⁽⁰⁾. Row i of R⁽ˡ⁾ says how much token i after layer l
draws on each input token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from attn_cli.narrate import method_step
from attn_cli.trace import TraceStep


def residual_attention(attention: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Â = (1 − r)·mean_h(A) + r·I for one layer's (H, n, n) weights (r = ½ by default)."""
    a = np.asarray(attention, dtype=np.float64)
    mean = a.mean(axis=0) if a.ndim == 3 else a  # [H, n, n] -> [n, n]
    n = mean.shape[-1]
    return (1.0 - residual) * mean + residual * np.eye(n)


def rollout(attentions: Iterable[np.ndarray], residual: float = 0.5) -> np.ndarray:
    """R⁽ˡ⁾ for every layer, (L, n, n): the running product Â⁽ˡ⁾ ··· Â⁽⁰⁾ (float64).

    `attentions` are the layers' (H, n, n) weights in order (or an (L, H, n, n) array). Memory
    is one (n, n) product per layer. Rows of every R sum to 1 when the weights' rows do.
    """
    out: list[np.ndarray] = []
    r: np.ndarray | None = None
    for a in attentions:
        a_hat = residual_attention(a, residual)
        r = a_hat if r is None else a_hat @ r  # [n, n] @ [n, n]
        out.append(r)
    if not out:
        raise ValueError("rollout needs at least one layer")
    return np.stack(out)


def chain(matrices: Iterable[np.ndarray]) -> np.ndarray:
    """Running products M⁽ˡ⁾ ··· M⁽⁰⁾ of per-layer (n, n) matrices, no residual added (ALTI's
    contributions already contain the residual path). (L, n, n)."""
    out: list[np.ndarray] = []
    r: np.ndarray | None = None
    for m in matrices:
        r = m if r is None else m @ r
        out.append(r)
    return np.stack(out)


def rollout_step(matrix: np.ndarray, labels: Sequence[str], layer: int) -> TraceStep:
    """The "rollout" step of one layer (kind "weights": rows sum to 1)."""
    return method_step("rollout", matrix, labels, "weights", layer)


def rollout_steps(
    rolled: np.ndarray, labels: Sequence[str], layers: Sequence[int] | None = None
) -> list[TraceStep]:
    """One "rollout" step per layer of `rolled` (L, n, n), or of the chosen layers."""
    idx = range(len(rolled)) if layers is None else layers
    return [rollout_step(rolled[i], labels, i) for i in idx]

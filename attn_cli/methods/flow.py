"""Attention flow (Abnar & Zuidema 2020), for short inputs; needs scipy (`attn-cli[flow]`).

The layers form a network: level 0 holds the input tokens, level l+1 the tokens after layer l,
and token i at level l+1 has a pipe to token j at level l of capacity Â⁽ˡ⁾_ij (the rollout
matrix ½·mean_h(A) + ½·I). The flow value F_ij is the maximum flow from token i at the top to
input token j, computed with scipy.sparse.csgraph.maximum_flow (Dinic).

That solver wants integer capacities: Â is scaled by 2³⁰ and rounded. Each capacity is then off
by at most 2⁻³¹, so a flow value is off by at most (number of edges) × 2⁻³¹ (≈ 6·10⁻⁶ for 12
layers of 32 tokens), and in practice far less. The scaled flow out of one token is ≤ 2³⁰ + n,
inside int32.

It takes n² max-flow problems on a graph of L·n² edges, so it is refused above
MAX_FLOW_TOKENS tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from attn_cli.errors import InputError
from attn_cli.methods.rollout import residual_attention
from attn_cli.narrate import method_step
from attn_cli.trace import TraceStep

SCALE_BITS = 30
MAX_FLOW_TOKENS = 32


def _scipy_flow():  # imported only here: scipy is an optional extra
    try:
        from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
        from scipy.sparse.csgraph import maximum_flow  # type: ignore[import-untyped]
    except ImportError:
        raise InputError("attention flow needs scipy: pip install 'attn-cli[flow]'") from None
    return csr_matrix, maximum_flow


def flow_graph(a_hats: Sequence[np.ndarray], scale_bits: int = SCALE_BITS):
    """The layered network as a scipy CSR matrix of int32 capacities.

    Node l·n + t is token t at level l (level 0 = inputs). Edge (l+1, i) -> (l, j) carries
    round(Â⁽ˡ⁾_ij · 2^scale_bits).
    """
    csr_matrix, _ = _scipy_flow()
    n = a_hats[0].shape[0]
    levels = len(a_hats) + 1
    rows, cols, caps = [], [], []
    ii, jj = np.nonzero(np.ones((n, n), dtype=bool))
    for l, a in enumerate(a_hats):
        c = np.rint(np.asarray(a, dtype=np.float64)[ii, jj] * 2.0**scale_bits).astype(np.int64)
        keep = c > 0
        rows.append((l + 1) * n + ii[keep])
        cols.append(l * n + jj[keep])
        caps.append(c[keep])
    size = levels * n
    return csr_matrix(
        (np.concatenate(caps).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(size, size),
    )


def attention_flow(
    attentions: Iterable[np.ndarray],
    residual: float = 0.5,
    max_tokens: int = MAX_FLOW_TOKENS,
    scale_bits: int = SCALE_BITS,
) -> np.ndarray:
    """F (n, n): max flow from each token after the last given layer to each input token.

    `attentions` are the layers' (H, n, n) weights, first layer first; pass fewer layers to get
    the flow at an earlier layer. Raises InputError above `max_tokens` tokens or without scipy.
    """
    _, maximum_flow = _scipy_flow()
    a_hats = [residual_attention(a, residual) for a in attentions]
    if not a_hats:
        raise ValueError("attention flow needs at least one layer")
    n = a_hats[0].shape[0]
    if n > max_tokens:
        raise InputError(
            f"attention flow solves {n}² max-flow problems and is limited to {max_tokens} tokens "
            f"(this input has {n}); use rollout for longer inputs"
        )
    graph = flow_graph(a_hats, scale_bits)
    top = len(a_hats) * n
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            res = maximum_flow(graph, top + i, j, method="dinic")
            out[i, j] = res.flow_value
    return out / 2.0**scale_bits


def flow_steps(flow: np.ndarray, labels: Sequence[str], layer: int) -> list[TraceStep]:
    """One "flow" step at `layer` (kind "relevance": flows are ≥ 0; rows need not sum to 1)."""
    sup = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
    scale, scale_1 = str(SCALE_BITS).translate(sup), str(SCALE_BITS + 1).translate(sup)
    return [method_step("flow", flow, labels, "relevance", layer, scale=scale, scale_1=scale_1)]

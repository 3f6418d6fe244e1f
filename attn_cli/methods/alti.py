"""ALTI, Aggregation of Layer-wise Token-to-token Interactions (Ferrando et al. 2022,
"Measuring the Mixing of Contextual Information in the Transformer").

The attention block's output for token i is split into one vector per input token j:

    pre-norm  (GPT-2, Llama …):  y_i = resid_i + O_i          T_i(x_j) = S_ij + [i = j]·resid_j
    post-norm (BERT):            y_i = LN(resid_i + O_i)      T_i(x_j) = L_i(S_ij + [i = j]·x_j)
    sandwich  (Gemma 2/3):       y_i = resid_i + N(O_i)       T_i(x_j) = L_i(S_ij) + [i = j]·resid_j

with S_ij = Σ_h α_ij⁽ʰ⁾ f_h(x_j) (see norms.py) and L_i the layer norm made linear by freezing
token i's standard deviation: L_i(z) = (z − mean(z)) ⊙ γ / σ_i (RMSNorm: no mean, σ_i the
root mean square). What no token owns (b_O, and
for post-norm L_i(b_O) + β) is left over, so y_i = Σ_j T_i(x_j) + bias_i exactly.

A token contributes as much as its piece is close to the whole, in L1:
    c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁) / Σ_k max(0, ‖y_i‖₁ − ‖y_i − T_i(x_k)‖₁)
and the layers' C are multiplied (rolled out) like attention rollout, without adding I (the
residual is already inside T).

σ_i here is the one the model used, √(var(z_i) + ε) (the authors' code adds ε to the values
and uses the unbiased std: a difference of order ε and 1/d).
The feed-forward block acts on each token alone, so it does not mix tokens and is left out,
as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from attn_cli.attention import AttentionParams
from attn_cli.methods.norms import pair_reduce
from attn_cli.methods.rollout import chain
from attn_cli.narrate import method_step
from attn_cli.trace import TraceStep


class PostNorm(NamedTuple):
    """A norm after the attention: on (residual + O) as in post-LN BERT ("sum"), or on O alone
    before the residual is added as in Gemma 2/3 ("attn")."""

    weight: np.ndarray  # γ (d,): the effective scale (Gemma's 1 + w already added)
    bias: np.ndarray | None  # β (d,) or None
    eps: float
    rms: bool = False  # RMSNorm: no mean subtraction, σ = √(mean(z²) + ε)
    applies_to: str = "sum"  # "sum": N(resid + O); "attn": resid + N(O)


class Decomposition(NamedTuple):
    """Everything ALTI needs for one layer, except the (n, n, d) pieces themselves."""

    y: np.ndarray  # (n, d) the attention block's output
    bias: np.ndarray  # (n, d) or (d,) the part no token owns
    sigma: np.ndarray | None  # (n, 1) post-norm: each token's frozen σ_i


def _center(z: np.ndarray, norm: PostNorm) -> np.ndarray:
    return z if norm.rms else z - z.mean(axis=-1, keepdims=True)


def decompose(
    resid: np.ndarray, o: np.ndarray, p: AttentionParams, norm: PostNorm | None
) -> Decomposition:
    """y (the block output), the unowned bias and σ, from the forward pass's residual and O."""
    b_o = np.zeros(o.shape[1], dtype=np.float64) if p.b_o is None else p.b_o.astype(np.float64)
    r64 = resid.astype(np.float64)
    if norm is None:
        return Decomposition(r64 + o, b_o, None)
    on_sum = norm.applies_to == "sum"
    zc = _center(r64 + o if on_sum else o.astype(np.float64), norm)
    sigma = np.sqrt((zc * zc).mean(axis=-1, keepdims=True) + norm.eps)  # [n, 1]
    gamma = norm.weight.astype(np.float64)
    beta = 0.0 if norm.bias is None else norm.bias.astype(np.float64)
    y = zc / sigma * gamma + beta + (0.0 if on_sum else r64)
    bias = _center(b_o[None, :], norm) / sigma * gamma + beta
    return Decomposition(y, bias, sigma)


def pieces(
    s: np.ndarray,
    rows: slice,
    cols: slice,
    resid: np.ndarray,
    dec: Decomposition,
    norm: PostNorm | None,
) -> np.ndarray:
    """T_i(x_j) for a block of pairs, from its S block (r, c, d) (query-major, as
    `pair_blocks` gives it): residual on the diagonal, then the frozen norm L_i."""
    t = s.astype(np.float64, copy=True)
    i = np.arange(rows.start, rows.stop)
    j = np.arange(cols.start, cols.stop)
    ri, cj = np.nonzero(i[:, None] == j[None, :])  # diagonal pairs inside this block
    residual_inside = norm is None or norm.applies_to == "sum"
    if residual_inside:
        t[ri, cj] += resid[i[ri]]
    if norm is not None:
        assert dec.sigma is not None
        t = _center(t, norm) / dec.sigma[rows, :, None] * norm.weight
        if not residual_inside:
            t[ri, cj] += resid[i[ri]]
    return t


def alti_distances(
    weights: np.ndarray,
    v: np.ndarray,
    p: AttentionParams,
    resid: np.ndarray,
    o: np.ndarray,
    norm: PostNorm | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """‖y_i − T_i(x_j)‖₁ for every pair (n, n), and ‖y_i‖₁ (n,). O(n²) memory.

    The frozen norm is linear, so it is applied to f_h(x_j) before the heads are mixed
    (L_i(Σ_h α f_h) = Σ_h α L(f_h) / σ_i): each block is then one matmul, a scale by 1/σ_i,
    a subtraction and an L1 sum, in float32.
    """
    dec = decompose(resid, o, p, norm)
    y = dec.y.astype(np.float32)
    r64 = resid.astype(np.float64)
    f_map = None
    own = r64  # what token j adds to its own row (pre-norm: its residual)
    inv_sigma = None
    if norm is not None:
        assert dec.sigma is not None
        gamma = norm.weight.astype(np.float64)
        inv_sigma = (1.0 / dec.sigma[:, 0]).astype(np.float32)

        def f_map(f: np.ndarray) -> np.ndarray:
            return _center(f.astype(np.float64), norm) * gamma

        if norm.applies_to == "sum":  # the residual goes through the norm too
            own = _center(r64, norm) * gamma
    scaled_residual = norm is not None and norm.applies_to == "sum"

    def reduce(rows: slice, cols: slice, s: np.ndarray) -> np.ndarray:
        q = np.arange(rows.start, rows.stop)
        k = np.arange(cols.start, cols.stop)
        kk, qq = np.nonzero(k[:, None] == q[None, :])  # diagonal pairs: s[kk, qq]
        if scaled_residual:
            s[kk, qq] += own[q[qq]].astype(np.float32)
        if inv_sigma is not None:
            s *= inv_sigma[None, rows, None]
        if not scaled_residual:
            s[kk, qq] += own[q[qq]].astype(np.float32)
        np.subtract(y[None, rows, :], s, out=s)
        np.abs(s, out=s)
        return s.sum(axis=-1)

    # ‖y_i‖₁ summed exactly as the distances are (float32, same order), so a token that sends
    # nothing (a masked, later token: T_i(x_j) = 0) gets a distance equal to it: exactly 0.
    y_l1 = np.abs(y[None]).sum(axis=-1)[0].astype(np.float64)
    return pair_reduce(weights, v, p, reduce, f_map), y_l1


def contributions(distances: np.ndarray, y_l1: np.ndarray) -> np.ndarray:
    """c_ij = max(0, ‖y_i‖₁ − d_ij), rows normalised to sum to 1 (all-zero rows stay 0)."""
    c = np.maximum(0.0, y_l1[:, None] - distances)
    total = c.sum(axis=-1, keepdims=True)
    return np.divide(c, total, out=np.zeros_like(c), where=total > 0)


def alti_layer(
    weights: np.ndarray,
    v: np.ndarray,
    p: AttentionParams,
    resid: np.ndarray,
    o: np.ndarray,
    norm: PostNorm | None = None,
) -> np.ndarray:
    """One layer's ALTI contributions C (n, n): rows are outputs, columns the layer's inputs."""
    return contributions(*alti_distances(weights, v, p, resid, o, norm))


def alti_rollout(per_layer: Sequence[np.ndarray]) -> np.ndarray:
    """C⁽ˡ⁾ ··· C⁽⁰⁾ for every layer: (L, n, n)."""
    return chain(per_layer)


def alti_step(name: str, matrix: np.ndarray, labels: Sequence[str], layer: int) -> TraceStep:
    """An "alti" or "alti_rollout" step of one layer (kind "weights": rows sum to 1)."""
    return method_step(name, matrix, labels, "weights", layer)


def alti_steps(
    per_layer: Sequence[np.ndarray],
    rolled: np.ndarray | None,
    labels: Sequence[str],
    layers: Sequence[int] | None = None,
) -> list[TraceStep]:
    """ "alti" (per layer) and "alti_rollout" steps of every layer, or of the chosen layers."""
    steps = []
    for i in range(len(per_layer)) if layers is None else layers:
        steps.append(alti_step("alti", per_layer[i], labels, i))
        if rolled is not None:
            steps.append(alti_step("alti_rollout", rolled[i], labels, i))
    return steps

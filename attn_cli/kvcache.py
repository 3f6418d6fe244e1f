"""A key/value cache for generation: each new token costs one row of attention per head.

A decoder's forward pass over the prompt stores every layer's keys (after the q/k stages: norms,
rotary embedding) and values here; the pass over each new token then projects only that token,
appends its key and value, and attends from its one query row over every key so far. The rows
are exactly those a full pass over prompt + answer computes for the new positions: the same
positions for the rotary embedding, the same causal and sliding-window masks (restricted to
the new rows), the same scale and caps. (Rotary scalings whose frequencies depend on the
length of the pass, dynamic NTK and LongRoPE past its original length, rotate each key with the
tables of the pass that first saw it, as transformers' cache does; a full pass over the longer
text can differ there.)

A family supports it with a forward pass that takes a `KVCache` (`layers(w, x, cfg, cache)`),
given to the Family as `CachedLayers(layers)`: generation finds `with_cache` on it. A layer's
attention is then `KVCache.attention` (the standard recipe) or the family's own code calling
`KVCache.extend`. The new tokens are embedded alone: the family's `embed` must not depend on
positions (rotary models), or it is a `PositionedEmbed` (learned positions that enter with the
embeddings: GPT-2), whose `at` embeds them at the positions after those the cache holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from attn_cli import attention as att
from attn_cli.records import (
    KEY,
    KV_HEADS,
    QUERY,
    QUERY_HEADS,
    TOKENS,
    AttentionRecord,
    Dims,
    LayerRecord,
    add_scores,
)


def mask_rows(start: int, total: int, window: int | None = None) -> np.ndarray:
    """Rows start … total − 1 of the causal mask over `total` tokens (True: may look), and of
    the sliding window of `window` tokens when given: i − window < j ≤ i."""
    i = np.arange(start, total)[:, None]
    j = np.arange(total)[None, :]
    allowed = j <= i
    return allowed if window is None else allowed & (j > i - window)


class KVCache:
    """Per layer, the keys (as scored: after the q/k stages) and values of every token so far,
    (KV, n, d), in buffers that grow by doubling."""

    def __init__(self, layers: int) -> None:
        self._k: list[np.ndarray | None] = [None] * layers
        self._v: list[np.ndarray | None] = [None] * layers
        self._n = [0] * layers

    @property
    def length(self) -> int:
        """How many tokens every layer holds (the position of the next token)."""
        return min(self._n)

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append new keys and values (KV, n_new, d) to a layer's; returns all of them so far."""
        n, new = self._n[layer], k.shape[1]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None or n + new > buf_k.shape[1]:
            size = max(2 * (n + new), 64)
            grown_k = np.empty((k.shape[0], size, k.shape[2]), dtype=np.float32)
            grown_v = np.empty((v.shape[0], size, v.shape[2]), dtype=np.float32)
            if buf_k is not None and buf_v is not None:
                grown_k[:, :n], grown_v[:, :n] = buf_k[:, :n], buf_v[:, :n]
            buf_k, buf_v = self._k[layer], self._v[layer] = grown_k, grown_v
        buf_k[:, n : n + new] = k
        buf_v[:, n : n + new] = v
        self._n[layer] = n + new
        return buf_k[:, : n + new], buf_v[:, : n + new]

    def attention(
        self,
        layer: int,
        x: np.ndarray,
        p: att.AttentionParams,
        mask: np.ndarray,
        qk_hook: att.QKHook | None = None,
        scale: float | None = None,
        cap: float | None = None,
        resid: np.ndarray | None = None,
    ) -> AttentionRecord:
        """records.multi_head_attention for the new tokens `x` only: their queries against every
        key so far. Stages X, Q, K, V (the new tokens'), the hook's, then W_raw, W_scaled,
        (W_capped), W_masked, W and Y over the new rows × all keys; the output O."""
        rec = AttentionRecord("self", TOKENS, TOKENS, p.heads, p.kv_heads, resid=resid, params=p)
        rec.add("X", x)
        q, k, v = att.project(x, p)
        rec.add("Q", q, heads=QUERY_HEADS, cols=Dims("q"))
        rec.add("K", k, heads=KV_HEADS, rows=QUERY, cols=Dims("k"))
        rec.add("V", v, heads=KV_HEADS, rows=QUERY, cols=Dims("v"))
        for name, q_s, k_s in [] if qk_hook is None else qk_hook(q, k):
            q = rec.add(f"Q_{name}", q_s, heads=QUERY_HEADS, cols=Dims("q"))
            k = rec.add(f"K_{name}", k_s, heads=KV_HEADS, rows=QUERY, cols=Dims("k"))
        keys, values = self.extend(layer, k, v)
        a = attend_grouped(q, keys, values, mask, scale, cap)
        add_scores(rec, a)
        rec.add("W", a.W, "weights", QUERY_HEADS, QUERY, KEY)
        rec.add("Y", a.Y, heads=QUERY_HEADS, cols=Dims("v"))
        rec.output = att.linear(att.merge_heads(a.Y), p.w_o, p.b_o) if p.w_o is not None else None
        rec.facts.update(
            scale=1.0 / float(np.sqrt(q.shape[-1])) if scale is None else float(scale),
            cap=cap,
            temperature=1.0,
            d_k=q.shape[-1],
        )
        return rec


def attend_grouped(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    scale: float | None = None,
    cap: float | None = None,
) -> att.AttentionSteps:
    """attention.attend for new queries (H, n_new, d_k) against the cache's keys and values
    (KV, n, d), without repeating the cache for each query head: the H / KV query heads that
    share a key/value head are stacked and multiplied with it at once (query head h reads
    key/value head h // (H / KV), so head-major rows group by reshaping)."""
    heads, n_new, d_k = q.shape
    kv, n = k.shape[0], k.shape[1]
    grouped = q.reshape(kv, heads // kv * n_new, d_k)  # [KV, group·n_new, d_k]
    # [KV, group·n_new, d_k] @ [KV, d_k, n] -> [H, n_new, n]; q and k are separate buffers, so
    # no SYRK shortcut (attention.scores)
    w_raw = (grouped @ k.transpose(0, 2, 1)).reshape(heads, n_new, n)
    steps = att.weigh(w_raw, d_k, mask, scale, cap)
    y = steps.W.reshape(kv, -1, n) @ v  # [KV, group·n_new, n] @ [KV, n, d_v]
    return steps._replace(Y=y.reshape(heads, n_new, -1))


class CachedLayers:
    """A Family's `layers` whose function also takes a KVCache: called as usual it is the full
    pass; `with_cache` runs it over new tokens only. A family that replaces `layers` with a
    plain function loses `with_cache`, so generation falls back to full passes for it."""

    def __init__(self, run: Callable[..., Iterator[LayerRecord]]) -> None:
        self.run = run

    def __call__(self, w: Any, x: np.ndarray, cfg: Any) -> Iterator[LayerRecord]:
        return self.run(w, x, cfg)

    def with_cache(self, w: Any, x: np.ndarray, cfg: Any, cache: KVCache) -> Iterator[LayerRecord]:
        return self.run(w, x, cfg, cache)


class PositionedEmbed:
    """A Family's `embed` whose function also takes the position of the first token (learned
    position embeddings added to the token embeddings): called as usual it embeds from position
    0; `at` embeds new tokens from position `start` (the cache's length)."""

    def __init__(self, run: Callable[..., np.ndarray]) -> None:
        self.run = run

    def __call__(self, w: Any, ids: list[int], cfg: Any) -> np.ndarray:
        return self.run(w, ids, cfg)

    def at(self, w: Any, ids: list[int], cfg: Any, start: int) -> np.ndarray:
        return self.run(w, ids, cfg, start)

"""Attention records: what one attention block computed, as ordered named stages.

A family's forward pass yields one `LayerRecord` per layer, holding one `AttentionRecord` per
attention block (self-attention, cross-attention, a linear-attention layer …) and the
residual stream leaving the layer. A record says what its rows and columns run over (a query
axis and a key axis, by name: "tokens", "source" …; the caller that knows the labels resolves
them), and lists the stages it computed in order — X, Q, K, V, Q_rot, W_raw, W, Y … — each
with its kind ("vectors", "scores", "weights", "partial_weights", "mixing", "parameters"), per
query head, per key/value head or for the whole block. Maps may be rectangular
(n_query × n_key). narrate.py turns records into described TraceSteps; the methods read the
record's attention map (`weights`), values, projections and residual stream.

`multi_head_attention` is the standard recipe (projections, optional q/k stages, scaled
dot-product softmax, combine) built from attention.py's maths; a family whose attention
differs records its own stages with `AttentionRecord.add`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli import attention as att

# A record's own axes, by role: its rows (queries) and its columns (keys).
QUERY, KEY = "query", "key"
# The axis every text pipeline runs over: the trace's tokens.
TOKENS = "tokens"
# A stage with one slice per query head, per key/value head (grouped-query attention).
QUERY_HEADS, KV_HEADS = "query", "kv"


@dataclass(frozen=True)
class Dims:
    """Rows or columns that are vector dimensions, labelled prefix0, prefix1 …"""

    prefix: str = "d"


# What a stage's rows (columns) are: the record's QUERY or KEY axis, dimensions, or labels of
# their own (the heads side by side in Y_concat, a sink's one column …).
Side = str | Dims | tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """One named intermediate. Per-head stages stack the heads on axis 0: (H, rows, cols) for
    QUERY_HEADS, (KV, rows, cols) for KV_HEADS; a whole-block stage is (rows, cols)."""

    name: str
    data: np.ndarray
    kind: str = "vectors"  # a trace step kind (trace.KINDS)
    heads: str | None = None  # QUERY_HEADS, KV_HEADS or None (the whole block)
    rows: Side = QUERY
    cols: Side = Dims()


@dataclass
class AttentionRecord:
    """One attention block of one layer: its axes, its stages in order, its output."""

    kind: str  # "self", "cross" or "linear"
    query: str  # the axis its queries (map rows) run over: "tokens" …
    key: str  # the axis its keys (map columns) run over: the query axis for self-attention
    heads: int
    kv_heads: int | None = None  # None: one key/value head per query head
    block: str | None = None  # None for a model's only block; "encoder", "decoder", "cross" …
    stages: list[Stage] = field(default_factory=list)
    output: np.ndarray | None = None  # O, (n_query, d): what the block adds to the residual
    resid: np.ndarray | None = None  # (n_query, d) the residual stream entering the block
    params: att.AttentionParams | None = None  # the projections (norms and ALTI split O by them)
    # What the stages' words need beyond their data: the score scale, cap, temperature, where
    # the projections come from … (read by narrate.py's stage texts).
    facts: dict[str, Any] = field(default_factory=dict)
    map: str = "W"  # the stage that is the attention map

    @property
    def kv(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    def add(
        self,
        name: str,
        data: np.ndarray,
        kind: str = "vectors",
        heads: str | None = None,
        rows: Side = QUERY,
        cols: Side = Dims(),
    ) -> np.ndarray:
        """Record stage `name` after the ones so far; returns its data."""
        self.stages.append(Stage(name, data, kind, heads, rows, cols))
        return data

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"this {self.kind}-attention record has no stage {name!r}")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.stage(name).data

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.stages)

    @property
    def weights(self) -> np.ndarray:
        """The attention map, (H, n_query, n_key) ((n_query, n_key) for a block without heads,
        the parameter-free pipeline's): softmax weights, weights with mass to a sink left out
        (partial_weights), or a linear layer's mixing matrix — see `map_kind`."""
        return self[self.map]

    @property
    def map_kind(self) -> str:
        return self.stage(self.map).kind


@dataclass
class LayerRecord:
    """What one layer computed: a record per attention block, and the residual stream after it."""

    blocks: list[AttentionRecord]
    out: np.ndarray  # (n, d) the residual stream leaving the layer

    @property
    def attention(self) -> AttentionRecord:
        """The layer's attention block, for layers that have one."""
        if len(self.blocks) != 1:
            names = ", ".join(str(b.block) for b in self.blocks)
            raise ValueError(f"this layer has {len(self.blocks)} attention blocks ({names})")
        return self.blocks[0]


_MAPS_ONLY: ContextVar[bool] = ContextVar("attn_cli_maps_only", default=False)


@contextmanager
def maps_only() -> Iterator[None]:
    """Inside: multi_head_attention records no score stages (W_raw, W_scaled …) and takes them
    in place in the array that becomes W (attention.attend_in_place), for a run that keeps no
    score step: a 30-s Whisper encoder's are 72 MiB per stage per layer. The W stage's words
    still name the scores it is the softmax of (facts["softmax_of"])."""
    token = _MAPS_ONLY.set(True)
    try:
        yield
    finally:
        _MAPS_ONLY.reset(token)


def add_scores(rec: AttentionRecord, a: att.AttentionSteps) -> None:
    """The score steps `attend` took (W_raw, W_scaled, and W_biased, W_capped, W_masked when
    the model has them), each kept as a stage of every query head."""
    for name, data in (
        ("W_raw", a.W_raw),
        ("W_scaled", a.W_scaled),
        ("W_biased", a.W_biased),
        ("W_capped", a.W_capped),
        ("W_masked", a.W_masked),
    ):
        if data is not None:
            rec.add(name, data, "scores", QUERY_HEADS, QUERY, KEY)


def multi_head_attention(
    x: np.ndarray,
    p: att.AttentionParams,
    mask: np.ndarray | None = None,
    qk_hook: att.QKHook | None = None,
    scale: float | None = None,
    cap: float | None = None,
    temperature: float = 1.0,
    inputs: tuple[Stage, ...] | None = None,
    parameters: bool = False,
    axis: str = TOKENS,
    block: str | None = None,
    resid: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    memory: np.ndarray | None = None,
    key_axis: str | None = None,
    memory_kv: tuple[np.ndarray, np.ndarray] | None = None,
) -> AttentionRecord:
    """Self-attention over `axis`, every step recorded: X (or `inputs`), Q, K, V, the hook's
    q/k stages (Q_norm, K_rot …), W_raw, W_scaled, (W_biased), (W_capped), (W_masked), W, Y;
    the output O. `resid` is the residual stream entering the block (a model's; x itself when
    x is not normalised first). `bias` is added to the scaled scores (T5's position buckets).

    Cross-attention: `memory` (n_key, d), the vectors the keys and values are made from (an
    encoder's output), over `key_axis` ("source"); the queries still come from x over `axis`.
    `memory_kv`: its keys and values already made, (KV, m, d_k) and (KV, m, d_v) (a decoder
    run once per generated token reuses them).

    `parameters` also records what the Q/K/V pipeline shows: each head's W_q, W_k, W_v, and
    Y_concat (several heads), W_o and O.
    """
    kind = "self" if memory is None else "cross"
    rec = AttentionRecord(
        kind, axis, key_axis or axis, p.heads, p.kv_heads, block, resid=resid, params=p
    )
    rec.stages += inputs if inputs is not None else (Stage("X", x),)
    d = x.shape[1]
    if parameters:
        for letter, w, count, width, heads in (
            ("q", p.w_q, p.heads, p.d_k, QUERY_HEADS),
            ("k", p.w_k, p.kv, p.d_k, KV_HEADS),
            ("v", p.w_v, p.kv, p.d_v, KV_HEADS),
        ):
            per_head = w.reshape(d, count, width).transpose(1, 0, 2)  # [d, G·w] -> [G, d, w]
            rec.add(f"W_{letter}", per_head, "parameters", heads, Dims("d"), Dims(letter))
    if memory is None:
        q, k, v = att.project(x, p)
    else:
        rec.add("X_source", memory, rows=KEY)
        q = att.split_heads(att.linear(x, p.w_q, p.b_q), p.heads)  # [n, d] -> [H, n, d_k]
        if memory_kv is None:
            k, v = memory_projections(memory, p)
        else:
            k, v = memory_kv
    d_k = q.shape[-1]
    rec.add("Q", q, heads=QUERY_HEADS, cols=Dims("q"))
    rec.add("K", k, heads=KV_HEADS, rows=KEY, cols=Dims("k"))
    rec.add("V", v, heads=KV_HEADS, rows=KEY, cols=Dims("v"))
    for name, q_s, k_s in [] if qk_hook is None else qk_hook(q, k):
        q = rec.add(f"Q_{name}", q_s, heads=QUERY_HEADS, cols=Dims("q"))
        k = rec.add(f"K_{name}", k_s, heads=KV_HEADS, rows=KEY, cols=Dims("k"))
    if _MAPS_ONLY.get():
        w, y = att.attend_in_place(q, k, v, mask, scale, cap, temperature, bias)
        score_names = ("W_scaled", "W_biased", "W_capped", "W_masked")
        given = (True, bias is not None, cap is not None, mask is not None)
        rec.facts["softmax_of"] = [n for n, g in zip(score_names, given, strict=True) if g][-1]
    else:
        a = att.attend(q, k, v, mask, scale, cap, temperature, bias)
        add_scores(rec, a)
        w, y = a.W, a.Y
    rec.add("W", w, "weights", QUERY_HEADS, QUERY, KEY)
    rec.add("Y", y, heads=QUERY_HEADS, cols=Dims("v"))
    y_concat = att.merge_heads(y)  # [H, n, d_v] -> [n, H·d_v]
    o = None if p.w_o is None else att.linear(y_concat, p.w_o, p.b_o)  # [n, H·d_v] @ [H·d_v, d_o]
    rec.output = o
    rec.facts.update(
        scale=1.0 / float(np.sqrt(d_k)) if scale is None else float(scale),
        cap=cap,
        temperature=temperature,
        d_k=d_k,
    )
    if parameters:
        d_v = y.shape[-1]
        concat = tuple(f"h{h}.v{j}" for h in range(p.heads) for j in range(d_v))
        if p.heads > 1:
            rec.add("Y_concat", y_concat, cols=concat)
        if o is not None and p.w_o is not None:
            rec.add("W_o", p.w_o, "parameters", None, concat if p.heads > 1 else Dims("v"))
            rec.add("O", o)
    return rec


def memory_projections(memory: np.ndarray, p: att.AttentionParams) -> tuple[np.ndarray, np.ndarray]:
    """A cross-attention's keys and values, made from `memory` (n_key, d)."""
    k = att.split_heads(att.linear(memory, p.w_k, p.b_k), p.kv)  # [m, d] -> [KV, m, d_k]
    v = att.split_heads(att.linear(memory, p.w_v, p.b_v), p.kv)  # [m, d] -> [KV, m, d_v]
    return k, v


def toy_attention(x: np.ndarray, scale: bool = False, axis: str = TOKENS) -> AttentionRecord:
    """Parameter-free self-attention (attention.toy_self_attention) as a record: X, W_raw,
    (W_scaled), W, Y — one head, every stage over the whole block."""
    s = att.toy_self_attention(x, scale=scale)
    rec = AttentionRecord("self", axis, axis, heads=1)
    rec.add("X", x)
    rec.add("W_raw", s.W_raw, "scores", None, QUERY, KEY)
    if s.W_scaled is not None:
        rec.add("W_scaled", s.W_scaled, "scores", None, QUERY, KEY)
    rec.add("W", s.W, "weights", None, QUERY, KEY)
    rec.output = rec.add("Y", s.Y)
    return rec

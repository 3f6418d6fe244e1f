"""Long texts through a decoder: every layer's attention computed blockwise (blockwise.py), and
for the layers and heads shown a pooled map of the whole text plus any exact block asked for
(`--rows A:B --cols C:D`), never the n × n map.

The path is taken when the rows or columns of a zoom are given, when the text has more than
LONG_TOKENS tokens, or when the full maps of the shown layers would not fit in memory
(memory.model_bytes); `Model.trace(long=True)` asks for it outright, long=False never. The decoders of models/_decoder.py read the plan of the run in progress (`current`)
and call `attention` instead of building the full map; `layer_steps` turns what it kept into
the trace's steps: W_pooled (the pooled map, kind weights: its rows sum to 1) and W_block (the
exact block, kind weights when its columns hold every key its rows read, partial_weights
otherwise).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attn_cli import attention as att
from attn_cli import blockwise, memory
from attn_cli.errors import InputError, opt
from attn_cli.records import TOKENS, AttentionRecord
from attn_cli.trace import TraceStep, token_labels

# Above this many tokens a decoder always takes the long path: one head's full map is 64 MiB
# or more per kind, more than any screen or page shows, and the layers nobody looks at run
# several times faster blockwise.
LONG_TOKENS = 4096
POOLED_CELLS = 256  # bins a side of the pooled map: a page's heatmap, twice a terminal's width
MAX_BLOCK_CELLS = 1 << 25  # an exact block of at most 32 Mi weights (128 MiB in float32)

Span = tuple[int, int]


@dataclass(frozen=True)
class Request:
    """What a caller asked of the long path: the zoom (half-open token ranges, either may be
    None: every token) and whether to take the path at all (None: when it is needed)."""

    rows: Span | None = None
    cols: Span | None = None
    force: bool | None = None

    @property
    def zoomed(self) -> bool:
        return self.rows is not None or self.cols is not None


@dataclass
class Plan:
    """The run in progress: which layers and heads are shown, the zoom, the pooled size, and
    what to call after each block of query rows (a progress bar)."""

    layers: frozenset[int]
    heads: tuple[int, ...]
    n: int
    rows: Span | None = None
    cols: Span | None = None
    cells: int = POOLED_CELLS
    tick: Callable[[int], None] | None = None


@dataclass
class Kept:
    """What a shown layer keeps of its attention: per shown head, the pooled map and the zoomed
    block, and the queries, keys and log-sum-exps that recompute any block exactly."""

    geo: blockwise.Geometry
    row_edges: np.ndarray
    col_edges: np.ndarray
    queries: dict[int, np.ndarray] = field(default_factory=dict)
    keys: dict[int, np.ndarray] = field(default_factory=dict)
    lse: dict[int, np.ndarray] = field(default_factory=dict)
    pooled: dict[int, np.ndarray] = field(default_factory=dict)
    blocks: dict[int, np.ndarray] = field(default_factory=dict)
    rows: Span | None = None
    cols: Span | None = None

    def block(self, head: int, rows: Span, cols: Span) -> np.ndarray:
        """Head `head`'s exact weights W[rows, cols], recomputed from what was kept."""
        return blockwise.block(
            self.queries[head], self.keys[head], self.lse[head], self.geo, rows, cols
        )


_PLAN: ContextVar[Plan | None] = ContextVar("attn_cli_long_plan", default=None)


def current() -> Plan | None:
    """The long path's plan of the run in progress; None: the ordinary path."""
    return _PLAN.get()


@contextmanager
def planned(plan: Plan) -> Iterator[Plan]:
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def supports(family: Any) -> bool:
    """Whether a family's forward pass takes the long path: the shared decoder's does (also
    when wrapped, as a key/value cache's `CachedLayers` wraps it in `run`)."""
    layers = getattr(family.layers, "run", family.layers)
    return getattr(layers, "__module__", None) == "attn_cli.models._decoder"


def span(value: Any, n: int, name: str) -> Span | None:
    """A zoom range: 'A:B' or (A, B), half-open, either end may be left out; checked against n."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            a = int(parts[0]) if parts[0].strip() else 0
            b = int(parts[1]) if parts[1].strip() else n
        except ValueError:
            raise InputError(f"{opt(name, value)}: takes A:B, token positions A … B-1") from None
    else:
        try:
            a, b = (int(x) for x in value)
        except (TypeError, ValueError):
            raise InputError(f"{opt(name, value)}: takes (A, B) or 'A:B'") from None
    if not 0 <= a < b:
        raise InputError(f"{opt(name, value)}: needs 0 <= A < B")
    if a >= n:
        raise InputError(f"{opt(name, value)}: the text has {n:,} tokens (0–{n - 1})")
    return a, min(b, n)


def long_bytes(n: int, hidden: int, heads: int, kv: int, head_dim: int, inner: int) -> int:
    """The long path's peak beyond what the process holds: the residual stream and its norm,
    Q, K, V, Y and O of one layer, the MLP's gate, up and product, the score blocks of a group
    of query heads, and one shown head's kept queries and keys per layer. Linear in n."""
    vectors = n * 4 * (4 * hidden + 2 * heads * head_dim + 2 * kv * head_dim + 3 * inner)
    block = min(n, blockwise.QUERY_BLOCK) * min(n, blockwise.KEY_BLOCK)
    scores = 4 * block * 4 * max(1, heads // kv)  # the block, its exp, mask and tile copies
    return int((vectors + scores) * 1.1) + 16 * 2**20


def size(count: int) -> str:
    """A byte count in GiB, MiB or KiB, whichever reads best."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{max(1, round(count / 2**10))} KiB"


def map_size(n: int, heads: int, layers: int) -> str:
    """How big the full maps would be, in words."""
    return f"{layers} × {heads} maps of {n:,} × {n:,} would take {size(layers * heads * n * n * 4)}"


def attention(
    plan: Plan,
    layer: int,
    x: np.ndarray,
    p: att.AttentionParams,
    window: int | None,
    qk_hook: att.QKHook | None,
    scale: float | None,
    cap: float | None,
    resid: np.ndarray,
) -> AttentionRecord:
    """One decoder layer's self-attention computed blockwise: its output O, and for a shown
    layer what `layer_steps` shows (record.facts['long'])."""
    q, k, v = att.project(x, p)
    stages = [] if qk_hook is None else qk_hook(q, k)
    if stages:  # the last stage is what gets scored
        q, k = stages[-1][1], stages[-1][2]
    del stages
    d_k = q.shape[-1]
    s = 1.0 / float(np.sqrt(d_k)) if scale is None else float(scale)
    geo = blockwise.Geometry(s, cap, window)
    q = q.astype(np.float32, copy=False)
    k = k.astype(np.float32, copy=False)
    y, lse = blockwise.attend(q, k, v.astype(np.float32, copy=False), geo, plan.tick)
    rec = AttentionRecord("self", TOKENS, TOKENS, p.heads, p.kv_heads, resid=resid, params=p)
    merged = att.merge_heads(y)
    del y
    rec.output = None if p.w_o is None else att.linear(merged, p.w_o, p.b_o)
    rec.facts.update(scale=s, cap=cap, temperature=1.0, d_k=d_k, window=window)
    if layer in plan.layers:
        n = len(x)
        kept = Kept(
            geo,
            blockwise.edges(n, plan.cells),
            blockwise.edges(n, plan.cells),
            rows=plan.rows,
            cols=plan.cols,
        )
        for h in plan.heads:
            g = att.kv_head_of(h, p.heads, p.kv)
            kept.queries[h] = np.ascontiguousarray(q[h])
            kept.keys[h] = np.ascontiguousarray(k[g])
            kept.lse[h] = lse[h].copy()
            kept.pooled[h] = blockwise.pooled(
                q[h], k[g], lse[h], geo, kept.row_edges, kept.col_edges, plan.tick
            )
            if plan.rows is not None or plan.cols is not None:
                kept.blocks[h] = kept.block(h, plan.rows or (0, n), plan.cols or (0, n))
        rec.facts["long"] = kept
    return rec


def check_block(rows: Span, cols: Span) -> None:
    cells = (rows[1] - rows[0]) * (cols[1] - cols[0])
    if cells > MAX_BLOCK_CELLS:
        raise InputError(
            f"{opt('rows')}/{opt('cols')}: a block of {rows[1] - rows[0]:,} × "
            f"{cols[1] - cols[0]:,} weights is more than the {MAX_BLOCK_CELLS:,} shown at once "
            "(its exact numbers would not fit a page): zoom in further"
        )


def _bin_labels(edges: np.ndarray) -> list[str]:
    return [
        f"{a}–{b - 1}" if b - a > 1 else str(a) for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


# What each long trace kept for zooms after the run, by id of the trace (in this process only:
# exports never hold queries or keys).
_KEPT: dict[int, tuple[Any, dict[int, Kept]]] = {}


def remember(trace: Any, layer: int, record: AttentionRecord) -> None:
    """Keep a shown layer's queries, keys and normalisers with `trace` for `zoom`."""
    entry = _KEPT.get(id(trace))
    if entry is None or entry[0] is not trace:
        entry = _KEPT[id(trace)] = (trace, {})
        weakref.finalize(trace, _KEPT.pop, id(trace), None)
    entry[1][layer] = record.facts["long"]


def zoomable(trace: Any, layer: int | None, head: int | None) -> bool:
    """Whether `zoom` can recompute blocks of this layer and head of `trace`: a long trace
    made in this process (a loaded one holds no queries or keys)."""
    entry = _KEPT.get(id(trace))
    if entry is None or entry[0] is not trace or layer is None:
        return False
    kept = entry[1].get(layer)
    return kept is not None and head in kept.queries


def zoom(trace: Any, layer: int, head: int, rows: Any, cols: Any) -> TraceStep:
    """The exact weights W[rows, cols] of a shown layer and head of a long trace made in this
    process, recomputed from its kept queries and keys; also appended to the trace's steps."""
    if not zoomable(trace, layer, head):
        raise InputError(
            f"layer {layer}, head {head}: not a shown layer and head of a long trace made in "
            "this process (a loaded trace holds no queries or keys to zoom with)"
        )
    kept = _KEPT[id(trace)][1][layer]
    n = len(trace.tokens)
    r = span(rows, n, "rows") or (0, n)
    c = span(cols, n, "cols") or (0, n)
    check_block(r, c)
    kept.rows, kept.cols = r, c
    kept.blocks[head] = kept.block(head, r, c)
    step = _block_step(kept, layer, head, token_labels(trace.tokens))
    trace.steps.append(step)
    return step


def _block_step(kept: Kept, layer: int, h: int, labels: list[str]) -> TraceStep:
    """W_block: head h's exact block of weights, as kept.rows × kept.cols."""
    n = len(labels)
    (r0, r1), (c0, c1) = kept.rows or (0, n), kept.cols or (0, n)
    first = kept.geo.first_key(r0)
    whole = c0 <= first and c1 >= r1  # every key the rows read is a column
    return TraceStep(
        "W_block",
        f"W[{r0}:{r1}, {c0}:{c1}] = exp(s_ij − logsumexp_j s_ij)",
        f"Exact attention weights of queries {r0}–{r1 - 1} (rows) over keys "
        f"{c0}–{c1 - 1} (columns), recomputed from the layer's queries and keys "
        "and each row's softmax normaliser over all its keys: "
        + (
            "every key these rows read is here, so each row sums to 1."
            if whole
            else "keys outside the block are left out, so each row sums to its share of 1."
        ),
        kept.blocks[h],
        [f"{i}:{labels[i]}" for i in range(r0, r1)],  # position: token
        [f"{j}:{labels[j]}" for j in range(c0, c1)],
        "weights" if whole else "partial_weights",
        layer,
        h,
    )


def layer_steps(
    record: AttentionRecord, layer: int, heads: list[int], labels: list[str]
) -> list[TraceStep]:
    """A long layer's steps for each shown head: W_pooled, then W_block if a zoom was asked."""
    kept: Kept = record.facts["long"]
    n = len(labels)
    window = kept.geo.window
    reads = "every earlier token" if window is None else f"the last {window} tokens"
    steps = []
    for h in heads:
        pooled = kept.pooled[h]
        rows_per, cols_per = n / pooled.shape[0], n / pooled.shape[1]
        steps.append(
            TraceStep(
                "W_pooled",
                "P_ab = mean_{i ∈ rows a} Σ_{j ∈ cols b} W_ij",
                f"The attention map of all {n:,} tokens, pooled: each cell is the weight the "
                f"~{rows_per:.0f} queries of its row range give the ~{cols_per:.0f} keys of its "
                "column range, summed over those keys and averaged over those queries (block "
                "mean × keys per block), so each row still sums to 1. Computed blockwise from "
                f"exact weights (each query reads {reads}); the full {n:,} × {n:,} map "
                f"({size(n * n * 4)}) was never held. --rows A:B --cols C:D shows exact weights.",
                pooled.astype(np.float32),
                _bin_labels(kept.row_edges),
                _bin_labels(kept.col_edges),
                "weights",
                layer,
                h,
            )
        )
        if h in kept.blocks:
            steps.append(_block_step(kept, layer, h, labels))
    return steps


def blockwise_advice(family: Any, methods: bool) -> str:
    """What the memory message adds about the long path."""
    if not supports(family):
        return f" ({family.name} has no blockwise path; decoders do)"
    if methods:
        return f" (without {opt('methods')}, long texts are computed blockwise)"
    return f"; {opt('rows')} A:B {opt('cols')} C:D keeps exact blocks only"


def has_long_path(family: Any) -> bool:
    """Whether `family` computes texts blockwise: a text decoder on the shared decoder (not a
    picture's encoder, not an encoder–decoder model)."""
    return family.vision is None and family.seq2seq is None and supports(family)


def no_long_path(family: Any) -> InputError:
    """The one-line refusal of a zoom (or long=True) for a family without the long path."""
    return InputError(
        f"{opt('rows')}/{opt('cols')}: {family.name} has no long (blockwise) path to recompute "
        "exact blocks with; leave them out for its full maps (attn-cli show FILE --rows A:B "
        "--cols C:D zooms a saved trace's heatmap)"
    )


def check_request(request: Request, family: Any) -> None:
    """Refuse, before any work, a zoom or long=True that `family` cannot honour."""
    if (request.zoomed or request.force) and not has_long_path(family):
        raise no_long_path(family)


def decide(
    request: Request,
    family: Any,
    d: Any,
    n: int,
    need: int,
    layers: list[int],
    heads: list[int],
    methods: bool,
    inner: int,
) -> Plan | None:
    """The long path's plan for a run of `family` (its Dims `d`), or None for the ordinary
    path. Taken when asked (request.force, a zoom), above LONG_TOKENS tokens, or when the full
    maps of the shown layers (`need` bytes) would not fit — unless the family has no blockwise
    path or methods need every full map, which keep the ordinary path when they were not asked
    for a zoom. Refused in one line when even the chosen path would not fit."""
    what = f"the text is {n:,} tokens, over {len(layers)} layers of {d.heads} heads"
    full = map_size(n, d.heads, len(layers))
    if request.force is False and request.zoomed:
        raise InputError(f"{opt('rows')}/{opt('cols')} apply to the long path (long=False)")
    asked = bool(request.force or request.zoomed)
    wanted = asked or n > LONG_TOKENS or not memory.fits(need)
    if not asked and (not supports(family) or methods):
        wanted = False  # the ordinary path, or its memory message below
    if request.force is False or not wanted:
        memory.check_fits(
            need,
            what,
            f"{full}: choose fewer layers ({opt('layer')}), fewer steps ({opt('steps')}) or a "
            f"shorter text{blockwise_advice(family, methods)}",
        )
        return None
    if not supports(family):
        raise no_long_path(family)
    if methods:
        raise InputError(
            f"{opt('methods')}: the methods need every layer's full map ({full}); "
            "leave them out on long texts or shorten the text"
        )
    rows, cols = span(request.rows, n, "rows"), span(request.cols, n, "cols")
    if request.zoomed:
        check_block(rows or (0, n), cols or (0, n))
    memory.check_fits(
        long_bytes(n, d.hidden, d.heads, d.kv_heads, d.head_dim, inner),
        f"the text is {n:,} tokens, computed blockwise (memory linear in the text)",
        f"with full maps it would need more ({full}): choose fewer layers ({opt('layer')}), "
        f"fewer steps ({opt('steps')}) or a shorter text",
    )
    return Plan(frozenset(layers), tuple(heads), n, rows, cols)


def long_layers(
    plan: Plan | None, layers: Iterator[Any], bar: Any = None, computed: int = 0
) -> Iterator[Any]:
    """A family's layers, each computed under `plan` (None: as they are). With a progress bar,
    it counts the query rows of the `computed` layers and the shown heads' pooled maps, and
    shows the time left."""
    if plan is None:
        yield from layers
        return
    with ExitStack() as stack:
        if bar is not None:
            total = plan.n * (computed + len(plan.layers) * len(plan.heads))
            stack.enter_context(bar.counting(total, "tokens"))
            plan.tick = bar.advance
        while True:
            with planned(plan):
                layer = next(layers, None)
            if layer is None:
                return
            yield layer

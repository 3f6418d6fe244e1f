"""What the browser shows, computed from a Trace alone (numpy, no Textual): which layer × head
maps exist, the steps of each, a token's top-k and entropy, the geometry points and the
neuron view's numbers. Kept apart from the widgets so it can be tested without a terminal."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import entropy
from attn_cli.render.pooling import pca_2d
from attn_cli.trace import MAP_KINDS, Trace, TraceStep, token_labels

Key = tuple[int | None, int | None]  # (layer, head)

# "Q·Kᵀ", "X·Xᵀ", "Q_rot·K_rotᵀ …": the operands of a score step's formula.
_PRODUCT = re.compile(r"^\s*([A-Za-z_][\w]*)\s*·\s*([A-Za-z_][\w]*)ᵀ")


def _sort_key(v: int | None) -> int:
    return -1 if v is None else v


# Maps of these kinds are what attention did (the grid shows them); scores only stand in
# for them in a trace that has none.
ATTENTION_KINDS = ("weights", "partial_weights", "mixing")


class TraceIndex:
    """The maps of one trace's attention block on a layer × head grid, and the steps behind
    each map. block: which of the trace's blocks (Trace.blocks: "encoder", "cross" …) when it
    has several; steps of no block belong to every one."""

    def __init__(self, trace: Trace, block: str | None = None) -> None:
        self.trace = trace
        self.block = block
        mine = [s for s in trace.steps if s.block in (block, None)]
        kinds = {s.kind for s in mine}
        map_kinds = (
            ATTENTION_KINDS
            if kinds & set(ATTENTION_KINDS)
            else ("scores",)
            if "scores" in kinds
            else ()
        )
        self.maps: dict[Key, TraceStep] = {}
        for s in mine:
            if s.kind in map_kinds and (s.layer, s.head) not in self.maps:
                # Prefer W over any other weights step at the same place.
                self.maps[(s.layer, s.head)] = s
        for s in mine:
            if s.kind in map_kinds and s.name == "W":
                self.maps[(s.layer, s.head)] = s
        # The queries: the trace's tokens, or the axis this block's maps run over (an
        # encoder's source tokens in an encoder–decoder trace).
        row_axes = {m.row_axis for m in self.maps.values()}
        axis = row_axes.pop() if len(row_axes) == 1 else None
        queries = trace.axes[axis].labels if axis in trace.axes else trace.tokens
        self.n = len(queries)
        self.query_labels = token_labels(queries)
        keys: list[Key] = list(self.maps) or [(None, None)]
        self.layers: list[int | None] = sorted({k[0] for k in keys}, key=_sort_key)
        self.heads: list[int | None] = sorted({k[1] for k in keys}, key=_sort_key)
        self.keys = set(keys)
        self._steps: dict[Key, list[TraceStep]] = {}

    def first_key(self) -> Key:
        for layer in self.layers:
            for head in self.heads:
                if (layer, head) in self.keys:
                    return (layer, head)
        return (None, None)

    def steps_at(self, key: Key) -> list[TraceStep]:
        """Every step that belongs to this layer/head, in trace order: the head's own steps,
        its layer's shared steps (X of that layer) and the steps outside any layer/head."""
        if key not in self._steps:
            layer, head = key
            self._steps[key] = [
                s
                for s in self.trace.steps
                if s.layer in (layer, None)
                and s.head in (head, None)
                and s.block in (self.block, None)
            ] or list(self.trace.steps)
        return self._steps[key]

    def default_step(self, key: Key) -> int:
        steps = self.steps_at(key)
        m = self.maps.get(key)
        for i, s in enumerate(steps):
            if s is m:
                return i
        return 0

    def step_named(self, key: Key, name: str) -> TraceStep | None:
        """The step called `name` for this layer/head, the head's own one first."""
        found = [s for s in self.steps_at(key) if s.name == name]
        found.sort(key=lambda s: (s.head is None, s.layer is None))
        return found[0] if found else None

    def move(self, key: Key, d_layer: int, d_head: int) -> Key:
        """The neighbouring map: one layer (d_layer) or one head (d_head) away, clamped; a
        missing layer/head pair falls back to the nearest head present in that layer."""
        layer, head = key
        li = min(max(self.layers.index(layer) + d_layer, 0), len(self.layers) - 1)
        hi = min(max(self.heads.index(head) + d_head, 0), len(self.heads) - 1)
        target = (self.layers[li], self.heads[hi])
        if target in self.keys:
            return target
        present = [h for h in self.heads if (self.layers[li], h) in self.keys]
        if d_head or not present:
            return key
        best = min(present, key=lambda h: abs(self.heads.index(h) - hi))
        return (self.layers[li], best)

    @property
    def span(self) -> int:
        """The longest side of any map: the tokens, or a cross map's source when longer."""
        return max([self.n] + [max(m.data.shape) for m in self.maps.values()])

    def key_count(self, key: Key) -> int:
        """How many keys (columns) this layer/head's map has: the tokens, or the source
        tokens of a cross map."""
        m = self.maps.get(key)
        return int(m.data.shape[1]) if m is not None and is_token_map(m, self.n) else self.n


def is_token_map(step: TraceStep, n: int) -> bool:
    """queries × keys (scores, weights, mixing …) whose rows are the trace's tokens and whose
    columns are its tokens too, or the keys of another axis (cross attention)."""
    return (
        step.kind in MAP_KINDS
        and step.data.ndim == 2
        and step.data.shape[0] == n
        and (step.col_axis is not None or step.data.shape[1] == n)
    )


def has_token_rows(step: TraceStep, n: int) -> bool:
    return step.kind != "parameters" and step.data.ndim == 2 and step.data.shape[0] == n


@dataclass
class TokenInfo:
    index: int
    top: list[tuple[int, float]]  # (key position, weight), largest first
    entropy: float  # nats
    relative: float  # entropy / log(number of keys it can see)
    # Column sum: how many rows' worth of weight lands on this token; None for a cross map,
    # whose columns are other tokens.
    received: float | None
    sink: float | None = None  # partial weights: the row's mass that went to a sink (1 − sum)


def token_info(w: np.ndarray, i: int, k: int = 3, step: TraceStep | None = None) -> TokenInfo:
    """Query i's top-k keys, entropy (nats, and relative to a uniform row over the keys it
    can see: the non-zero ones of a causal row count as visible), and the weight it receives.
    step: the map `w` comes from, for its kind and axes (a mixing map ranks keys by absolute
    value and measures entropy over absolute shares; partial weights report the sink)."""
    row = w[i]
    kind = "weights" if step is None else step.kind
    self_map = step is None or step.self_map
    shares = np.abs(row) / max(float(np.abs(row).sum()), 1e-300) if kind == "mixing" else row
    order = np.argsort(-shares, kind="stable")[:k]
    top = [(int(j), float(row[j])) for j in order if shares[j] > 0]
    h = float(entropy(shares[None, :])[0])
    visible = w.shape[1]
    if self_map and w.shape[0] == w.shape[1] > 1 and not np.triu(w, 1).any():
        visible = i + 1  # causal: query i sees keys 0 … i
    rel = h / math.log(visible) if visible > 1 else 0.0
    received = float(w[:, i].sum()) if self_map and i < w.shape[1] else None
    sink = max(0.0, 1.0 - float(row.sum())) if kind == "partial_weights" else None
    return TokenInfo(i, top, h, rel, received, sink)


@dataclass
class Geometry:
    x: TraceStep
    y: TraceStep
    shared: bool  # one PCA fitted to both (same width) or one per step
    px: np.ndarray  # [n, 2]
    py: np.ndarray  # [n, 2]


def geometry_at(index: TraceIndex, key: Key) -> Geometry | None:
    """X and the output of this head (Y, else O or H) on 2-D PCA: one shared projection when
    they have the same width (seed 001's picture), else one per step."""
    n = index.n
    x = index.step_named(key, "X")
    if x is None or not has_token_rows(x, n):
        return None
    y = None
    for name in ("Y", "O", "H"):
        cand = index.step_named(key, name)
        if cand is not None and has_token_rows(cand, n) and cand is not x:
            y = cand
            break
    if y is None:
        return None
    xd = np.nan_to_num(x.data.astype(np.float64))
    yd = np.nan_to_num(y.data.astype(np.float64))
    if xd.shape[1] == yd.shape[1]:
        pts = _signed(pca_2d(np.vstack([xd, yd])))
        return Geometry(x, y, True, pts[:n], pts[n:])
    return Geometry(x, y, False, _signed(pca_2d(xd)), _signed(pca_2d(yd)))


def _signed(pts: np.ndarray) -> np.ndarray:
    """Fix each principal axis's sign (its largest coordinate positive), so the picture does
    not mirror between LAPACK builds."""
    idx = np.argmax(np.abs(pts), axis=0)
    signs = np.sign(pts[idx, np.arange(pts.shape[1])])
    return pts * np.where(signs == 0, 1.0, signs)


@dataclass
class ScoreCell:
    name: str
    formula: str
    value: float
    row: np.ndarray  # the query's whole row of this step


@dataclass
class Neuron:
    """BertViz's neuron view for one head, one query token i and one key token j."""

    key: Key
    i: int
    j: int
    q_name: str
    k_name: str
    q: np.ndarray  # [d_k]
    k: np.ndarray  # [d_k]
    product: np.ndarray  # q ⊙ k
    total: float  # Σ q ⊙ k
    raw: ScoreCell | None  # the W_raw cell (equals total)
    scores: list[ScoreCell]  # every score step of the head, in order (W_raw, W_scaled, …)
    scaled: float | None  # W_scaled's cell, or W_raw / √d_k when the trace has no W_scaled
    scaled_from_trace: bool
    weight: float | None  # the W cell
    weights_row: np.ndarray | None

    @property
    def d_k(self) -> int:
        return int(self.q.shape[0])


def neuron_at(index: TraceIndex, key: Key, i: int, j: int) -> Neuron | None:
    """q_i, k_j and their per-dimension products for this head, with the trace's own score
    and weight cells. q and k are the operands of W_raw's formula (Q·Kᵀ, or X·Xᵀ for the
    parameter-free pipeline); None when the trace does not hold them."""
    n = index.n
    n_keys = index.key_count(key)
    steps = [s for s in index.steps_at(key) if is_token_map(s, n) and s.data.shape[1] == n_keys]
    scores = [s for s in steps if s.kind == "scores"]
    raw = index.step_named(key, "W_raw")
    names = ("Q", "K")
    if raw is not None and (m := _PRODUCT.match(raw.formula)):
        names = (m.group(1), m.group(2))
    qs, ks = index.step_named(key, names[0]), index.step_named(key, names[1])
    if qs is None or ks is None:
        qs, ks = index.step_named(key, "Q"), index.step_named(key, "K")
    if qs is None or ks is None or not has_token_rows(qs, n):
        return None
    if ks.kind == "parameters" or ks.data.ndim != 2 or ks.data.shape[0] != n_keys:
        return None
    if qs.data.shape[1] != ks.data.shape[1]:
        return None
    q = qs.data[i].astype(np.float64)
    k = ks.data[j].astype(np.float64)
    product = q * k
    cells = [ScoreCell(s.name, s.formula, float(s.data[i, j]), s.data[i]) for s in scores]
    raw_cell = next((c for c in cells if c.name == "W_raw"), None)
    scaled_cell = next((c for c in cells if c.name == "W_scaled"), None)
    total = float(product.sum())
    if scaled_cell is not None:
        scaled, from_trace = scaled_cell.value, True
    else:
        base = raw_cell.value if raw_cell is not None else total
        scaled, from_trace = base / math.sqrt(q.shape[0]), False
    w = index.step_named(key, "W")
    if w is not None and not (is_token_map(w, n) and w.data.shape[1] == n_keys):
        w = None
    return Neuron(
        key=key,
        i=i,
        j=j,
        q_name=qs.name,
        k_name=ks.name,
        q=q,
        k=k,
        product=product,
        total=total,
        raw=raw_cell,
        scores=cells,
        scaled=scaled,
        scaled_from_trace=from_trace,
        weight=None if w is None else float(w.data[i, j]),
        weights_row=None if w is None else w.data[i],
    )

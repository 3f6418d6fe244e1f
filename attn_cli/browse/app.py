"""The Textual app behind `attn-cli browse`: a layer × head grid, the selected step as a
heatmap, the selected token's numbers and geometry, and BertViz's neuron view. It reads only
Trace objects, so a saved trace browses exactly like a fresh run."""

from __future__ import annotations

import math

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Region
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from attn_cli import long
from attn_cli.attention import entropy
from attn_cli.blockwise import edges
from attn_cli.browse.state import (
    Key,
    Neuron,
    TraceIndex,
    geometry_at,
    has_token_rows,
    is_token_map,
    neuron_at,
    token_info,
)
from attn_cli.browse.widgets import (
    DIM,
    LABEL,
    PINNED,
    GeometryView,
    Heatmap,
    PictureView,
    ThumbGrid,
    exact,
    fit,
    where_label,
)
from attn_cli.render.common import Scale, format_number
from attn_cli.render.statistics import map_patterns
from attn_cli.trace import Trace, TraceStep, printable


class Scroll(VerticalScroll, can_focus=False):
    """Scrolls with the mouse wheel but never takes focus, so the arrow keys stay bound to
    layers and heads instead of scrolling a panel."""


KEYS = [
    ("← → / h l", "previous / next head"),
    ("↑ ↓ / k j", "previous / next layer"),
    ("tab / shift+tab", "next / previous step (Q, K, V, W_raw, … W, Y)"),
    ("[ ]", "previous / next token: pins its row and column"),
    (", .", "previous / next key token (the cell cursor)"),
    ("enter", "neuron view of query × key: q, k, q⊙k, Σ, score, weight"),
    ("hover a cell", "its exact value (row token, column token, value)"),
    ("click a row label", "select that token"),
    ("click a cell", "select query and key; click it again: neuron view"),
    ("click a thumbnail", "open that layer and head"),
    ("click a patch", "image traces: that patch's attention over the picture"),
    ("z", "long texts: the exact block under W_pooled's cursor cell, as W_block"),
    ("n", "numbers in the cells on / off (colour only)"),
    ("< >", "previous / next input (several texts)"),
    ("b", "next attention block (encoder, decoder, cross …) when there are several"),
    ("?", "this list"),
    ("escape", "close a view"),
    ("q", "quit"),
]


# Keys that mean the same on the grid and in the neuron view.
HEAD_LAYER_BINDINGS = [
    Binding("left,h", "head(-1)", "head", show=False),
    Binding("right,l", "head(1)", "head", show=False),
    Binding("up,k", "layer(-1)", "layer", show=False),
    Binding("down,j", "layer(1)", "layer", show=False),
]
KEY_TOKEN_BINDINGS = [
    Binding("comma", "key_token(-1)", "key", show=False),
    Binding("full_stop", "key_token(1)", "key", show=False),
]
HELP_BINDING = Binding("question_mark", "app.push_screen('help')", "keys")


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: auto; max-width: 90%; height: auto; max-height: 100%;
            border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape,question_mark,enter", "app.pop_screen", "close"),
    ]

    def compose(self) -> ComposeResult:
        text = Text("Keys\n", style="bold")
        width = max(len(k) for k, _ in KEYS)
        for k, what in KEYS:
            text.append(k.ljust(width + 2), LABEL)
            text.append(what + "\n")
        text.append("escape or ? closes this list", DIM)
        yield Static(text, id="help")


class NeuronScreen(Screen[tuple[int, int, Key]]):
    """q_i, k_j, q⊙k per dimension, their sum (the W_raw cell), the score steps and the
    weight, plus the query's whole row so the softmax's other inputs are visible."""

    DEFAULT_CSS = """
    NeuronScreen { layout: vertical; }
    #n-title { height: 1; background: $panel; }
    #n-body { height: 1fr; }
    #n-dims { width: 1fr; min-width: 30; scrollbar-size-vertical: 1; }
    #n-side { width: 1fr; scrollbar-size-vertical: 1; padding-left: 1; }
    #n-dims-text, #n-side-text { text-wrap: nowrap; text-overflow: ellipsis; }
    """
    BINDINGS = [
        Binding("escape,enter,backspace", "back", "back"),
        Binding("left_square_bracket", "query(-1)", "query", show=False),
        Binding("right_square_bracket", "query(1)", "query", show=False),
        *KEY_TOKEN_BINDINGS,
        *HEAD_LAYER_BINDINGS,
        HELP_BINDING,
    ]

    def __init__(self, index: TraceIndex, key: Key, i: int, j: int, precision: int = 4) -> None:
        super().__init__()
        self.index, self.key, self.i, self.j = index, key, i, j
        self.precision = precision
        self.labels = index.query_labels
        self.neuron: Neuron | None = None

    @property
    def key_labels(self) -> list[str]:
        """The keys' labels: the map's columns (a cross map's are the source tokens)."""
        m = self.index.maps.get(self.key)
        return (
            m.cols
            if m is not None and m.data.shape[1] == self.index.key_count(self.key)
            else self.labels
        )

    def compose(self) -> ComposeResult:
        yield Static(id="n-title")
        with Horizontal(id="n-body"):
            yield Scroll(Static(id="n-dims-text"), id="n-dims")
            yield Scroll(Static(id="n-side-text"), id="n-side")
        yield Footer()

    def on_mount(self) -> None:
        self.update_view()

    def tok(self, i: int, labels: list[str] | None = None) -> str:
        return f"{printable((labels or self.labels)[i])} ({i})"

    def update_view(self) -> None:
        self.neuron = neuron_at(self.index, self.key, self.i, self.j)
        title = Text(" Neuron view", style="bold")
        where = where_label(self.key)
        if where:
            title.append(f"  {where}")
        title.append("  query ")
        title.append(self.tok(self.i), PINNED)
        title.append(" → key ")
        title.append(self.tok(self.j, self.key_labels), PINNED)
        self.query_one("#n-title", Static).update(title)
        dims = self.query_one("#n-dims-text", Static)
        side = self.query_one("#n-side-text", Static)
        if self.neuron is None:
            dims.update(
                Text(
                    "This trace has no query and key vectors for this head (needs Q and K, or X for X·Xᵀ)."
                )
            )
            side.update(Text(""))
            return
        dims.update(self.dims_text(self.neuron))
        side.update(self.side_text(self.neuron))

    def dims_text(self, nv: Neuron) -> Text:
        p = self.precision
        vals = [nv.q, nv.k, nv.product, np.cumsum(nv.product)]
        widths = [max(6, *(len(format_number(float(v), p)) for v in col)) for col in vals]
        heads = ["dim", "q", "k", "q⊙k", "Σ so far"]
        dim_w = max(3, len(str(nv.d_k - 1)) + 1)
        t = Text()
        t.append(heads[0].ljust(dim_w), LABEL)
        for h, w in zip(heads[1:], widths, strict=True):
            t.append(" " + h.rjust(w), LABEL)
        t.append("\n")
        scales = [Scale.for_kind("vectors", c) for c in vals[:3]]
        for d in range(nv.d_k):
            t.append(str(d).ljust(dim_w), DIM)
            for c, (col, w) in enumerate(zip(vals, widths, strict=True)):
                v = float(col[d])
                t.append(" ")
                style = scales[c].style(v) if c < 3 else None
                t.append(format_number(v, p).rjust(w), style)
            t.append("\n")
        t.append(f"Σ q⊙k over {nv.d_k} dimensions = ", LABEL)
        t.append(format_number(nv.total, p))
        return t

    def side_text(self, nv: Neuron) -> Text:
        t = Text()
        t.append(f"q: row {nv.i} of {nv.q_name} (", DIM)
        t.append(printable(self.labels[nv.i]))
        t.append(f")\nk: row {nv.j} of {nv.k_name} (", DIM)
        t.append(printable(self.key_labels[nv.j]))
        t.append(f")\nd_k = {nv.d_k}\n\n", DIM)
        f64 = np.dtype(np.float64)
        rows: list[tuple[str, str]] = [("Σ q⊙k = q·k", repr(nv.total))]
        if nv.raw is not None:
            ok = math.isclose(nv.raw.value, nv.total, rel_tol=1e-4, abs_tol=1e-5)
            rows.append(("W_raw cell " + ("✓" if ok else "≠ Σ"), exact(nv.raw.value, f64)))
        if nv.scaled is not None:
            if nv.scaled_from_trace:
                rows.append(("W_scaled cell", exact(nv.scaled, f64)))
            else:
                w_step = self.index.step_named(self.key, "W")
                unused = w_step is not None and "W_raw" in w_step.formula
                note = "not applied here" if unused else "computed"
                rows.append((f"W_raw/√{nv.d_k} ({note})", repr(nv.scaled)))
        for c in nv.scores:
            if c.name not in ("W_raw", "W_scaled"):
                rows.append((f"{printable(c.name)} cell", exact(c.value, f64)))
        if nv.weight is not None:
            rows.append(("W cell (softmax)", exact(nv.weight, f64)))
        name_w = max(len(r[0]) for r in rows)
        for name, value in rows:
            t.append(name.ljust(name_w + 1), LABEL)
            t.append(value + "\n")
        # The query's whole row: the softmax's inputs and outputs for every key.
        # W_raw and the softmax's input (the last score step), then W: the softmax's inputs and
        # outputs for every key of this query, in three columns that fit 80 columns.
        cols = nv.scores[:1] + nv.scores[-1:] if len(nv.scores) > 1 else nv.scores
        t.append("\nThis query over every key\n", "bold")
        keys = self.key_labels
        key_w = min(12, max(len(printable(lb)) for lb in keys)) + 1
        t.append("key".ljust(key_w), LABEL)
        for c in cols:
            t.append(c.name.rjust(9), LABEL)
        if nv.weights_row is not None:
            t.append("W".rjust(8), LABEL)
        t.append("\n")
        for j in range(len(keys)):
            mark = PINNED if j == nv.j else None
            t.append(fit(printable(keys[j]), key_w - 1).ljust(key_w), mark or LABEL)
            for c in cols:
                t.append(format_number(float(c.row[j]), 2).rjust(9), mark)
            if nv.weights_row is not None:
                t.append(format_number(float(nv.weights_row[j]), 3).rjust(8), mark)
            t.append("\n")
        return t

    def action_back(self) -> None:
        self.dismiss((self.i, self.j, self.key))

    def action_query(self, d: int) -> None:
        self.i = min(max(self.i + d, 0), self.index.n - 1)
        self.update_view()

    def action_key_token(self, d: int) -> None:
        self.j = min(max(self.j + d, 0), self.index.key_count(self.key) - 1)
        self.update_view()

    def action_head(self, d: int) -> None:
        self.key = self.index.move(self.key, 0, d)
        self.j = min(self.j, self.index.key_count(self.key) - 1)
        self.update_view()

    def action_layer(self, d: int) -> None:
        self.key = self.index.move(self.key, d, 0)
        self.j = min(self.j, self.index.key_count(self.key) - 1)
        self.update_view()


class MainScreen(Screen[None]):
    DEFAULT_CSS = """
    MainScreen { layout: vertical; }
    #title { height: 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #band { height: auto; }
    #grid-wrap { width: auto; height: auto; max-height: 45vh; scrollbar-size-vertical: 1; }
    ThumbGrid { width: auto; }
    #token { width: 1fr; height: auto; max-height: 45vh; padding-left: 2; }
    #lower { height: 1fr; }
    #main { width: 3fr; }
    GeometryView { width: 2fr; max-width: 48; height: 1fr; padding-left: 1; }
    PictureView { width: 2fr; max-width: 66; height: 1fr; padding-left: 1; }
    #tabs { height: auto; background: $panel; }
    #steptitle { height: 2; text-wrap: nowrap; text-overflow: ellipsis; }
    #value { height: 2; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    BINDINGS = [
        *HEAD_LAYER_BINDINGS,
        Binding("tab", "step(1)", "step"),
        Binding("shift+tab", "step(-1)", "step", show=False),
        Binding("left_square_bracket", "token(-1)", "token", show=False),
        Binding("right_square_bracket", "token(1)", "token", show=False),
        *KEY_TOKEN_BINDINGS,
        Binding("enter", "neuron", "neuron"),
        Binding("n", "numbers", "numbers", show=False),
        Binding("z", "zoom", "zoom", show=False),
        Binding("less_than_sign", "trace(-1)", "input", show=False),
        Binding("b", "block", "block", show=False),
        Binding("greater_than_sign", "trace(1)", "input", show=False),
        HELP_BINDING,
    ]

    def __init__(self, traces: list[Trace], precision: int = 2, top_k: int = 3) -> None:
        super().__init__()
        self.traces = traces
        self.precision, self.top_k = precision, top_k
        self.numbers: bool | None = None
        self.grid_hover: Key | None = None
        self._zoomed: set[int] = set()  # ids of the W_block steps the z key made
        self._load(0)

    # -- state ------------------------------------------------------------------------------

    def _load(self, t: int, block_i: int = 0) -> None:
        self.trace_i = t
        self.blocks = self.traces[t].blocks or [None]
        self.block_i = block_i
        self.index = TraceIndex(self.traces[t], self.blocks[block_i])
        self.labels = self.index.query_labels
        self.key: Key = self.index.first_key()
        self.step_i = self.index.default_step(self.key)
        self.qtok: int = 0
        m = self.index.maps.get(self.key)
        self.key_token: int = (
            int(np.argmax(m.data[0])) if m is not None and is_token_map(m, self.index.n) else 0
        )

    @property
    def steps(self) -> list[TraceStep]:
        return self.index.steps_at(self.key)

    @property
    def step(self) -> TraceStep:
        return self.steps[self.step_i]

    def _bins(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A long text's W_pooled map of bins wider than a token: where its row and column
        bins start (the cursor moves by bins there); None for any other step."""
        step, n = self.step, self.index.n
        if step.name != "W_pooled" or step.data.ndim != 2 or is_token_map(step, n):
            return None
        return edges(n, step.data.shape[0]), edges(n, step.data.shape[1])

    def _cell(self) -> tuple[int, int] | None:
        """The W_pooled cell (row bin, column bin) holding the cursor's query and key token."""
        bins = self._bins()
        if bins is None:
            return None
        rows, cols = bins
        return (
            int(np.searchsorted(rows, self.qtok, "right")) - 1,
            int(np.searchsorted(cols, self.key_token, "right")) - 1,
        )

    @property
    def weights(self) -> TraceStep | None:
        m = self.index.maps.get(self.key)
        return m if m is not None and is_token_map(m, self.index.n) else None

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="band"):
            with Scroll(id="grid-wrap"):
                yield ThumbGrid(id="grid")
            yield Static(id="token")
        with Horizontal(id="lower"):
            with Vertical(id="main"):
                yield Static(id="tabs")
                yield Static(id="steptitle")
                yield Heatmap(precision=self.precision, id="heatmap")
            yield GeometryView(id="geometry")
            yield PictureView(id="picture")
        yield Static(id="value")
        yield Footer()

    def on_mount(self) -> None:
        self.update_view()

    def update_view(self) -> None:
        self._update_title()
        grid = self.query_one(ThumbGrid)
        grid.set_index(self.index, self.key)
        # A deep model's grid scrolls: keep the selected layer's thumbnails in view.
        y, h = grid.selected_lines()
        self.query_one("#grid-wrap").scroll_to_region(
            Region(0, y, 1, h), animate=False, immediate=True
        )
        self._update_tabs()
        cell = self._cell()  # a pooled map's cursor is the cell of bins holding it
        self.query_one(Heatmap).show(
            self.step,
            self.index.n if cell is None else self.step.data.shape[0],
            self.qtok if cell is None else cell[0],
            self.key_token if cell is None else cell[1],
            self.numbers,
        )
        self._update_token()
        self._update_side()
        self._update_value()

    def _update_side(self) -> None:
        """The geometry picture, or for an image trace the picture with the selected token's
        attention over its patches."""
        info = self.index.trace.config.get("image")
        picture, geometry = self.query_one(PictureView), self.query_one(GeometryView)
        if isinstance(info, dict) and "grid" in info and "thumbnail" in info:
            w = self.weights
            picture.set_picture(info, None if w is None else w.data[self.qtok], self.qtok)
            picture.display, geometry.display = True, False
        else:
            picture.display, geometry.display = False, True
            geometry.set_geometry(geometry_at(self.index, self.key), self.qtok)

    def _update_title(self) -> None:
        trace = self.index.trace
        t = Text(" attn-cli browse  ", style="bold")
        t.append(fit(printable(" ".join(trace.text.split())), 60))
        if len(self.traces) > 1:
            t.append(f"   input {self.trace_i + 1}/{len(self.traces)}", DIM)
        if self.index.block is not None:
            t.append(f"   {printable(self.index.block)} attention", DIM)
        model = trace.config.get("model") or trace.config.get("pipeline")
        if model:
            t.append(f"   {printable(str(model))}", DIM)
        self.query_one("#title", Static).update(t)

    def _update_tabs(self) -> None:
        t = Text()
        for i, s in enumerate(self.steps):
            if i:
                t.append(" ")
            t.append(printable(s.name), PINNED if i == self.step_i else DIM)
        self.query_one("#tabs", Static).update(t)

    def _update_token(self) -> None:
        t = Text()
        q = self.qtok
        t.append("▸ token ", "bold")
        t.append(f"{q} ")
        t.append(printable(self.labels[q]), PINNED)
        t.append("\n")
        w = self.weights
        if w is None:
            t.append("no attention weights here", DIM)
            self.query_one("#token", Static).update(t)
            return
        info = token_info(w.data, q, self.top_k, w)
        t.append(f"top {self.top_k} attended ({w.name} row)\n", DIM)
        keys = w.cols
        label_w = min(14, max((len(printable(keys[j])) for j, _ in info.top), default=1) + 1)
        for j, v in info.top:
            t.append("  ")
            t.append(fit(printable(keys[j]), label_w - 1).ljust(label_w))
            t.append(format_number(v, 3))
            bar = int(round(min(abs(v), 1.0) * 10))
            t.append(" " + "█" * bar, Style(color="red" if v < 0 else "blue"))
            t.append("\n")
        t.append("entropy ", DIM)
        t.append(f"{format_number(info.entropy, 3)} nats")
        t.append(f" ({format_number(info.relative, 2)} of uniform)\n", DIM)
        if info.sink is not None:
            t.append("sink ", DIM)
            t.append(format_number(info.sink, 3))
            t.append(" (1 − row sum: went to a sink key not shown)\n", DIM)
        if info.received is not None:
            t.append("received ", DIM)
            t.append(format_number(info.received, 3))
            t.append(" (column sum)", DIM)
        elif w.kind != "mixing":
            t.append(f"keys: {w.col_axis or 'other'} tokens", DIM)
        if w.kind == "mixing":
            t.append("mixing weights: signed, not probabilities", DIM)
        self.query_one("#token", Static).update(t)

    def _update_value(self) -> None:
        step = self.step
        head = Text()
        head.append(printable(step.name), "bold")
        if step.formula:
            head.append(" = " + printable(step.formula))
        where = where_label((step.layer, step.head)) or where_label(self.key)
        shape = "×".join(str(x) for x in step.data.shape)
        head.append(f"   {where}  {step.kind} {shape}", DIM)
        head.append("\n")
        head.append(printable(step.description), DIM)
        title = self.query_one("#steptitle", Static)
        title.update(head)
        n = self.index.n
        heat = self.query_one(Heatmap)
        t = Text()
        cell = self._cell()
        if cell is not None:
            t.append("cursor ", DIM)
            t.append_text(self._cell_text(step, *cell))
            t.append("  z: the exact block", DIM)
        elif is_token_map(step, n):
            t.append("cursor ", DIM)
            t.append_text(self._cell_text(step, self.qtok, self.key_token))
        elif has_token_rows(step, n):
            t.append("token ", DIM)
            t.append(printable(self.labels[self.qtok]), PINNED)
            t.append(f"  row {self.qtok}", DIM)
        t.append("\n")
        if self.grid_hover is not None and self.grid_hover in self.index.maps:
            t.append("map    ", DIM)
            t.append_text(self._map_summary(self.grid_hover))
        elif heat.hover is not None:
            t.append("mouse  ", DIM)
            t.append_text(self._cell_text(step, *heat.hover))
        elif not heat.numbers:
            t.append("hover a cell for its value; n: numbers", DIM)
        self.query_one("#value", Static).update(t)

    def _map_summary(self, key: Key) -> Text:
        """One line about a map under the mouse in the grid: where, spread, named patterns."""
        step = self.index.maps[key]
        t = Text()
        t.append(where_label(key) or step.name, LABEL)
        if is_token_map(step, self.index.n) and step.kind in ("weights", "partial_weights"):
            w = step.data
            t.append(f"  entropy {format_number(float(entropy(w).mean()), 2)}")
            for name, v in map_patterns(self.index.trace, step).items():
                t.append(f"  {printable(name)} {format_number(v, 2)}", DIM)
        return t

    def _cell_text(self, step: TraceStep, i: int, j: int) -> Text:
        t = Text()
        t.append(fit(printable(step.rows[i]), 16), LABEL)
        t.append(" → " if is_token_map(step, self.index.n) else " · ")
        t.append(fit(printable(step.cols[j]), 16), LABEL)
        t.append(f"  {printable(step.name)} = ")
        t.append(exact(float(step.data[i, j]), step.data.dtype))
        return t

    # -- actions ----------------------------------------------------------------------------

    def _set_key(self, key: Key) -> None:
        if key == self.key:
            return
        name = self.step.name
        self.key = key
        names = [s.name for s in self.steps]
        self.step_i = names.index(name) if name in names else self.index.default_step(key)
        self.key_token = min(self.key_token, self.index.key_count(key) - 1)
        self.update_view()

    def action_head(self, d: int) -> None:
        self._set_key(self.index.move(self.key, 0, d))

    def action_layer(self, d: int) -> None:
        self._set_key(self.index.move(self.key, d, 0))

    def action_step(self, d: int) -> None:
        self.step_i = (self.step_i + d) % len(self.steps)
        self.update_view()

    def action_token(self, d: int) -> None:
        bins, cell = self._bins(), self._cell()
        if bins is not None and cell is not None:  # a pooled map: one bin of rows
            self.qtok = int(bins[0][min(max(cell[0] + d, 0), len(bins[0]) - 2)])
        else:
            self.qtok = min(max(self.qtok + d, 0), self.index.n - 1)
        self.update_view()

    def action_key_token(self, d: int) -> None:
        bins, cell = self._bins(), self._cell()
        if bins is not None and cell is not None:  # a pooled map: one bin of columns
            self.key_token = int(bins[1][min(max(cell[1] + d, 0), len(bins[1]) - 2)])
        else:
            self.key_token = min(max(self.key_token + d, 0), self.index.key_count(self.key) - 1)
        self.update_view()

    def action_zoom(self) -> None:
        """Recompute the exact weights under the cursor's W_pooled cell (its rows × columns of
        tokens) from the queries and keys a fresh long run keeps, and show them as W_block."""
        step, bins, cell = self.step, self._bins(), self._cell()
        if step.name != "W_pooled":
            self.notify("z zooms into a long text's W_pooled map (tab to it)", markup=False)
            return
        layer, head = step.layer, step.head
        trace = self.index.trace
        if not long.zoomable(trace, layer, head):
            self.notify(
                "zooming needs a fresh run (a saved trace holds no queries or keys): "
                "attn-cli explain --file … --model … --rows A:B --cols C:D",
                markup=False,
                severity="warning",
            )
            return
        if bins is None or cell is None:  # bins of one token: the cursor's cell is a token
            bins = edges(self.index.n, step.data.shape[0]), edges(self.index.n, step.data.shape[1])
            cell = self.qtok, self.key_token
        (r, c), (row_edges, col_edges) = cell, bins
        rows = int(row_edges[r]), int(row_edges[r + 1])
        cols = int(col_edges[c]), int(col_edges[c + 1])
        assert layer is not None and head is not None  # zoomable: a shown layer and head
        block = long.zoom(trace, layer, head, rows, cols)  # appended to the trace's steps
        # shown next to its W_pooled, in place of the block the z key made before for this head
        kept = [
            s
            for s in trace.steps[:-1]
            if not (id(s) in self._zoomed and (s.layer, s.head) == (layer, head))
        ]
        at = next(i for i, s in enumerate(kept) if s is step) + 1
        trace.steps[:] = [*kept[:at], block, *kept[at:]]
        self._zoomed = {id(s) for s in trace.steps if id(s) in self._zoomed} | {id(block)}
        self.index = TraceIndex(trace, self.index.block)
        self.step_i = next(i for i, s in enumerate(self.steps) if s is block)
        self.notify(
            f"W_block: exact weights of queries {rows[0]}–{rows[1] - 1} over keys "
            f"{cols[0]}–{cols[1] - 1}",
            markup=False,
        )
        self.update_view()

    def action_block(self) -> None:
        if len(self.blocks) > 1:
            self._load(self.trace_i, (self.block_i + 1) % len(self.blocks))
            self.update_view()

    def action_numbers(self) -> None:
        self.numbers = not self.query_one(Heatmap).numbers
        self.update_view()

    def action_trace(self, d: int) -> None:
        t = min(max(self.trace_i + d, 0), len(self.traces) - 1)
        if t != self.trace_i:
            self._load(t)
            self.update_view()

    def action_neuron(self) -> None:
        if neuron_at(self.index, self.key, self.qtok, self.key_token) is None:
            self.notify(
                "no neuron view here: this trace has no query/key vectors for this map",
                markup=False,
            )
            return
        self.app.push_screen(
            NeuronScreen(self.index, self.key, self.qtok, self.key_token), self._from_neuron
        )

    def _from_neuron(self, result: tuple[int, int, Key] | None) -> None:
        if result is not None:
            self.qtok, self.key_token, key = result
            if key != self.key:
                self._set_key(key)
        self.update_view()

    # -- messages ---------------------------------------------------------------------------

    def on_thumb_grid_picked(self, message: ThumbGrid.Picked) -> None:
        self._set_key(message.key)

    def on_picture_view_picked(self, message: PictureView.Picked) -> None:
        if message.token < len(self.labels):
            self.qtok = message.token
            self.update_view()

    def on_heatmap_hovered(self, message: Heatmap.Hovered) -> None:
        self._update_value()

    def on_thumb_grid_hovered(self, message: ThumbGrid.Hovered) -> None:
        self.grid_hover = message.key
        self._update_value()

    def on_heatmap_clicked(self, message: Heatmap.Clicked) -> None:
        heat = self.query_one(Heatmap)
        bins = self._bins()
        if bins is not None:  # a pooled map's cell: its first query and key token
            if message.col is not None and (message.row, message.col) == self._cell():
                self.action_zoom()
                return
            self.qtok = int(bins[0][message.row])
            if message.col is not None:
                self.key_token = int(bins[1][message.col])
            self.update_view()
            return
        if message.col is None:
            if heat.token_rows:
                self.qtok = message.row
                self.update_view()
            return
        if not heat.token_map:
            if heat.token_rows:
                self.qtok = message.row
                self.update_view()
            return
        if (message.row, message.col) == (self.qtok, self.key_token):
            self.action_neuron()
            return
        self.qtok, self.key_token = message.row, message.col
        self.update_view()


class BrowseApp(App[None]):
    """`attn-cli browse`: explore every layer, head, step and token of one or more traces."""

    TITLE = "attn-cli browse"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("q", "quit", "quit")]
    SCREENS = {"help": HelpScreen}

    def __init__(self, traces: list[Trace], precision: int = 2, top_k: int = 3) -> None:
        super().__init__()
        traces = [t for t in traces if t.steps and t.tokens]
        if not traces:
            raise ValueError("BrowseApp needs at least one trace with tokens and steps")
        self.traces = traces
        self.precision, self.top_k = precision, top_k

    def on_mount(self) -> None:
        self.push_screen(MainScreen(self.traces, self.precision, self.top_k))

    @property
    def main(self) -> MainScreen:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        raise LookupError("main screen not mounted")

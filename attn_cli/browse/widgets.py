"""The browser's widgets: the layer × head thumbnail grid, the labelled heatmap (a Line API
ScrollView, so a 512 × 512 map only draws what is on screen), the geometry picture, and the
picture an image trace was made from with attention laid over it.

Every piece of token text reaches the screen as a Rich Segment or Text built from
`printable(...)`: nothing is ever parsed as markup."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from attn_cli.browse.state import Geometry, Key, TraceIndex, is_token_map
from attn_cli.images import thumbnail_pixels
from attn_cli.render.common import Scale, clip, format_number, signed
from attn_cli.render.overlay import (
    half_blocks,
    overlay_pixels,
    patch_marks,
    patch_weights,
    prefix_line,
)
from attn_cli.render.pictures import half_block_style
from attn_cli.render.pooling import pool
from attn_cli.trace import TraceStep, printable

PINNED = Style(reverse=True, bold=True)
CURSOR = Style(reverse=True, bold=True, underline=True)
PIN_CELL = Style(bold=True, underline=True)  # cells of the selected token's row and column
LABEL = Style(bold=True)
DIM = Style(dim=True)
# Steps whose columns are dimensions (d0, d1 … or q0, q1 …), not tokens.
DIMENSION_KINDS = ("vectors", "parameters")


def fit(text: str, width: int, mark: str = "…") -> str:
    """Cut text to at most `width` terminal cells, marking the cut with '…'."""
    return clip(text, width, mark)


def exact(value: float, dtype: np.dtype) -> str:
    """A matrix value as stored: the shortest text that reads back as the same number."""
    if value == -np.inf:
        return "−∞ (masked)"
    return str(dtype.type(value)) if dtype.kind == "f" else repr(float(value))


def where_label(key: Key) -> str:
    layer, head = key
    parts = []
    if layer is not None:
        parts.append(f"L{layer}")
    if head is not None:
        parts.append(f"H{head}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------
# The layer × head grid of thumbnails


class ThumbGrid(Widget, can_focus=False):
    """BertViz's model view: one max-pooled thumbnail per layer × head; click one to open it."""

    DEFAULT_CSS = "ThumbGrid { height: auto; }"

    class Picked(Message):
        def __init__(self, key: Key) -> None:
            super().__init__()
            self.key = key

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.index: TraceIndex | None = None
        self.selected: Key = (None, None)
        self._cache: dict[tuple[Key, int], list[Text]] = {}

    def set_index(self, index: TraceIndex, selected: Key) -> None:
        if index is self.index and selected == self.selected:
            return  # a few hundred styled cells: redraw only when something changed
        if index is not self.index:
            self._cache.clear()
        self.index, self.selected = index, selected
        self.refresh(layout=True)

    def _geometry(self, width: int) -> tuple[int, int, int]:
        """(label width, thumbnail side in characters, gap between thumbnails) for a width."""
        assert self.index is not None
        layers = [x for x in self.index.layers if x is not None]
        label_w = len(f"L{max(layers)}") + 1 if layers else 0
        heads = len(self.index.heads)
        avail = max(1, width - label_w)
        side_max = max(2, min(self.index.span, 16)) if self.index.maps else 0
        for gap in (1, 0):
            side = min(side_max, avail // heads - gap)
            if side >= 2:
                return label_w, side, gap
        return label_w, max(1, min(side_max, avail // heads)), 0

    def best_width(self, width: int, height: int) -> int:
        """The widest grid that fits in about half the screen, with a gap between thumbnails."""
        if self.index is None or not self.index.maps:
            return min(width, 32)
        layers = [x for x in self.index.layers if x is not None]
        label_w = len(f"L{max(layers)}") + 1 if layers else 0
        heads, rows = len(self.index.heads), len(self.index.layers)
        side_max = max(2, min(self.index.span, 16))
        for side in range(side_max, 1, -1):
            w = label_w + heads * (side + 1)
            h = 1 + rows * math.ceil(side / 2)
            if w <= max(24, width * 0.55) and h <= max(7, height * 0.45):
                return w
        return min(label_w + heads * 3, max(24, int(width * 0.55)))

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self.best_width(viewport.width, viewport.height)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if self.index is None or not self.index.maps:
            return 1
        _, side, _ = self._geometry(width)
        return 1 + len(self.index.layers) * math.ceil(side / 2)

    def selected_lines(self) -> tuple[int, int]:
        """(first line, number of lines) of the selected layer's row of thumbnails."""
        if self.index is None or not self.index.maps or self.selected[0] not in self.index.layers:
            return 0, 1
        _, side, _ = self._geometry(self.size.width)
        per = math.ceil(side / 2)
        return 1 + self.index.layers.index(self.selected[0]) * per, per

    def _thumb(self, key: Key, side: int) -> list[Text]:
        assert self.index is not None
        if (key, side) not in self._cache:
            step = self.index.maps.get(key)
            lines_n = math.ceil(side / 2)
            if step is None:
                self._cache[(key, side)] = [Text(" " * side)] * lines_n
            else:
                pooled, _, _ = pool(step.data, side, side, "max", signed(step.kind))
                scale = (
                    Scale(False, 1.0)
                    if step.kind in ("weights", "partial_weights")
                    else Scale.for_kind(step.kind, pooled)
                )
                levels = scale.levels(pooled)
                lines = []
                for r in range(0, levels.shape[0], 2):
                    t = Text()
                    for c in range(levels.shape[1]):
                        below = int(levels[r + 1, c]) if r + 1 < levels.shape[0] else None
                        t.append("▀", half_block_style(scale.diverging, int(levels[r, c]), below))
                    t.append(" " * (side - levels.shape[1]))
                    lines.append(t)
                while len(lines) < lines_n:
                    lines.append(Text(" " * side))
                self._cache[(key, side)] = lines
        return self._cache[(key, side)]

    def render(self) -> Text:
        index = self.index
        if index is None:
            return Text("")
        if not index.maps:
            return Text("no attention maps in this trace", style="dim")
        label_w, side, gap = self._geometry(self.size.width)
        sel_layer, sel_head = self.selected
        header = Text(" " * label_w)
        last_end = -1
        col = 0
        for h in index.heads:
            label = "" if h is None else str(h)
            style = PINNED if h == sel_head and len(index.heads) > 1 else DIM
            if h == sel_head or col > last_end:
                header.append(label, style)
                last_end = col + len(label)
                header.append(" " * max(0, side + gap - len(label)))
            else:
                header.append(" " * (side + gap))
            col += side + gap
        out = Text("\n").join(
            [header]
            + [
                line
                for layer in index.layers
                for line in self._layer_lines(layer, label_w, side, gap, sel_layer, sel_head)
            ]
        )
        out.no_wrap = True
        return out

    def _layer_lines(
        self, layer, label_w: int, side: int, gap: int, sel_layer, sel_head
    ) -> list[Text]:
        assert self.index is not None
        lines = []
        thumbs = [self._thumb((layer, h), side) for h in self.index.heads]
        for li in range(math.ceil(side / 2)):
            label = f"L{layer}" if layer is not None and li == 0 else ""
            line = Text()
            line.append(label, PINNED if layer == sel_layer and label else LABEL)
            line.append(" " * (label_w - len(label)))
            for h, thumb in zip(self.index.heads, thumbs, strict=True):
                line.append_text(thumb[li])
                if gap:
                    mark = "◂" if (layer, h) == (sel_layer, sel_head) and li == 0 else " "
                    line.append(mark, LABEL)
            lines.append(line)
        return lines

    class Hovered(Message):
        def __init__(self, key: Key | None) -> None:
            super().__init__()
            self.key = key

    def key_at(self, x: int, y: int) -> Key | None:
        """The layer × head whose thumbnail is at (x, y), if any."""
        if self.index is None or not self.index.maps:
            return None
        label_w, side, gap = self._geometry(self.size.width)
        if y < 1 or x < label_w:
            return None
        li = (y - 1) // math.ceil(side / 2)
        hi = (x - label_w) // (side + gap)
        if li < len(self.index.layers) and hi < len(self.index.heads):
            key = (self.index.layers[li], self.index.heads[hi])
            return key if key in self.index.keys else None
        return None

    def on_click(self, event: events.Click) -> None:
        key = self.key_at(event.x, event.y)
        if key is not None:
            self.post_message(self.Picked(key))

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self.post_message(self.Hovered(self.key_at(event.x, event.y)))

    def on_leave(self, event: events.Leave) -> None:
        self.post_message(self.Hovered(None))


# ---------------------------------------------------------------------------------------------
# The selected step as a labelled heatmap


class Heatmap(ScrollView, can_focus=False):
    """One step's matrix: row labels on the left and column labels on top stay in place while
    the cells scroll. Cells show numbers when they fit, else colour only (`n` toggles)."""

    DEFAULT_CSS = "Heatmap { height: 1fr; scrollbar-size: 1 1; }"

    class Hovered(Message):
        def __init__(self, cell: tuple[int, int] | None) -> None:
            super().__init__()
            self.cell = cell

    class Clicked(Message):
        """A row label (col None) or a cell was clicked."""

        def __init__(self, row: int, col: int | None) -> None:
            super().__init__()
            self.row = row
            self.col = col

    def __init__(self, precision: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step: TraceStep | None = None
        self.n = 0
        self.qtok: int | None = None
        self.key_token: int | None = None
        self.numbers_wanted: bool | None = None  # None: numbers when they fit
        self.hover: tuple[int, int] | None = None
        self.precision = precision
        self.label_w = 0
        self.cell_w = 2
        self.numbers = False
        self._scale: Scale | None = None
        self._row_labels: list[str] = []
        self._col_labels: list[str] = []
        self._num_w = 4
        self._rows_cache: dict[tuple[int, bool, int], list[Segment]] = {}

    # -- state ------------------------------------------------------------------------------

    def show(
        self,
        step: TraceStep,
        n: int,
        query: int | None,
        key_token: int | None,
        numbers: bool | None,
    ) -> None:
        new_step = step is not self.step
        self.step, self.n = step, n
        self.qtok, self.key_token, self.numbers_wanted = query, key_token, numbers
        if new_step:
            data = step.data
            self._scale = Scale.for_kind(step.kind, data)
            self._row_labels = [printable(r) for r in step.rows]
            self._col_labels = [printable(c) for c in step.cols]
            finite = data[np.isfinite(data)]
            widest = max(
                (len(format_number(float(v), self.precision)) for v in (finite.min(), finite.max()))
                if finite.size
                else [2]
            )
            self._num_w = max(4, widest + 1)
            self.hover = None
            self._rows_cache.clear()
        self._layout()
        if new_step:
            self.scroll_to(0, 0, animate=False)
        self._keep_visible()
        self.refresh()

    @property
    def token_rows(self) -> bool:
        return self.step is not None and self.step.kind != "parameters" and self.rows == self.n

    @property
    def token_map(self) -> bool:
        return self.step is not None and is_token_map(self.step, self.n)

    @property
    def rows(self) -> int:
        return 0 if self.step is None else int(self.step.data.shape[0])

    @property
    def cols(self) -> int:
        return 0 if self.step is None else int(self.step.data.shape[1])

    def _layout(self) -> None:
        width = max(self.size.width, 20)
        longest = max((cell_len(s) for s in self._row_labels), default=1)
        # Room for the '▸' of the selected row, the label and one space.
        self.label_w = min(longest + 1, 12, max(4, width // 4)) + 1
        # Numbers when they fit, or when the map is small enough that a little sideways
        # scrolling is better than colour alone.
        fits = self.label_w + self.cols * self._num_w <= width or self.cols <= 12
        self.numbers = fits if self.numbers_wanted is None else self.numbers_wanted
        self.cell_w = self._num_w if self.numbers else 2
        self.virtual_size = Size(self.label_w + self.cols * self.cell_w, 1 + self.rows)

    def on_resize(self, event: events.Resize) -> None:
        if self.step is not None:
            self._layout()
            self._keep_visible()

    def _keep_visible(self) -> None:
        """Scroll so the selected query row and key column are on screen."""
        if self.step is None:
            return
        view_w = max(1, self.size.width - self.label_w)
        view_h = max(1, self.size.height - 1)
        x, y = self.scroll_x, self.scroll_y
        if self.qtok is not None and self.token_rows:
            if self.qtok < y:
                y = self.qtok
            elif self.qtok >= y + view_h:
                y = self.qtok - view_h + 1
        if self.key_token is not None and self.token_map:
            left = self.key_token * self.cell_w
            if left < x:
                x = left
            elif left + self.cell_w > x + view_w:
                x = left + self.cell_w - view_w
        if (x, y) != (self.scroll_x, self.scroll_y):
            self.scroll_to(x, y, animate=False, immediate=True)

    # -- drawing ----------------------------------------------------------------------------

    def cell_text(self, value: float) -> str:
        if self.numbers:
            s = "−∞" if value == -np.inf else format_number(value, self.precision)
            return s.rjust(self.cell_w - 1)[: self.cell_w - 1] + " "
        return "··" if value == -np.inf else "  "

    def _row_cells(self, i: int) -> list[Segment]:
        """Row i's coloured cells, cached per step and cell mode (drawing is per line)."""
        key = (i, self.numbers, self.cell_w)
        cells = self._rows_cache.get(key)
        if cells is None:
            assert self.step is not None and self._scale is not None
            row = self.step.data[i]
            cells = [
                Segment(self.cell_text(float(v)), st)
                for v, st in zip(row, self._scale.styles(row), strict=True)
            ]
            if len(self._rows_cache) > 4096:
                self._rows_cache.clear()
            self._rows_cache[key] = cells
        return cells

    def _spaced_labels(self) -> list[Segment]:
        """Dimension columns in colour mode (2 cells each): every k-th label whole (d0, d4,
        d8 …), not each one cut to its first 2 characters (d1d1d1 …)."""
        longest = max((cell_len(c) for c in self._col_labels), default=1)
        every = -(-(longest + 1) // self.cell_w)  # columns one label and a space need
        total = len(self._col_labels) * self.cell_w
        cells = []
        for j in range(0, len(self._col_labels), every):
            span = min(every * self.cell_w, total - j * self.cell_w)
            text = fit(self._col_labels[j], span, mark="")
            cells.append(Segment(text + " " * (span - cell_len(text)), LABEL))
        return cells

    def _label(self, text: str, style: Style) -> list[Segment]:
        body = fit(text, self.label_w - 1)
        return [Segment(body, style), Segment(" " * (self.label_w - cell_len(body)))]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self.step is None or self._scale is None:
            return Strip.blank(width)
        scroll_x, scroll_y = int(self.scroll_x), int(self.scroll_y)
        view = max(0, width - self.label_w)
        pin_rows = self.token_rows
        pin_cols = self.token_map
        if y == 0:
            cells: list[Segment] = []
            if not self.numbers and self.step is not None and self.step.kind in DIMENSION_KINDS:
                cells = self._spaced_labels()
            for j, label in enumerate([] if cells else self._col_labels):
                style = PINNED if pin_cols and j == self.key_token else LABEL
                if self.numbers:
                    text = fit(label, self.cell_w - 1).rjust(self.cell_w - 1) + " "
                    if cell_len(text) != self.cell_w:
                        text = fit(label, self.cell_w - 1)
                        text += " " * (self.cell_w - cell_len(text))
                elif pin_cols and j == self.key_token:
                    text = "▼ "
                else:
                    text = fit(label, 2, mark="")
                    text += " " * (2 - cell_len(text))
                cells.append(Segment(text, style))
            corner = "query↓ key→" if pin_cols else ""
            head = self._label(corner, DIM)
            return Strip(
                head + list(Strip(cells).crop(scroll_x, scroll_x + view))
            ).adjust_cell_length(width)
        i = y - 1 + scroll_y
        if i >= self.rows:
            return Strip.blank(width)
        pinned_row = pin_rows and i == self.qtok
        segs = list(self._row_cells(i))

        def mark(j: int, extra: Style) -> None:
            text, st, _ = segs[j]
            segs[j] = Segment(text, (st or Style()) + extra)

        if pinned_row:
            for j in range(len(segs)):
                mark(j, PIN_CELL)
        elif pin_cols and self.step.self_map and self.qtok is not None and self.qtok < len(segs):
            mark(self.qtok, PIN_CELL)  # the selected token as a key (self-attention only)
        if pin_cols and i == self.qtok and self.key_token is not None:
            mark(self.key_token, CURSOR)
        label = self._row_labels[i]
        left = self._label(("▸" if pinned_row else "") + label, PINNED if pinned_row else LABEL)
        return Strip(left + list(Strip(segs).crop(scroll_x, scroll_x + view))).adjust_cell_length(
            width
        )

    # -- mouse ------------------------------------------------------------------------------

    def cell_at(self, x: int, y: int) -> tuple[int, int | None] | None:
        """(row, col) under a point of the widget; col None on a row label; None elsewhere."""
        if self.step is None or y < 1:
            return None
        i = y - 1 + int(self.scroll_y)
        if i >= self.rows:
            return None
        if x < self.label_w:
            return (i, None)
        j = (x - self.label_w + int(self.scroll_x)) // self.cell_w
        return (i, j) if j < self.cols else None

    def on_mouse_move(self, event: events.MouseMove) -> None:
        cell = self.cell_at(event.x, event.y)
        hover = None if cell is None or cell[1] is None else (cell[0], cell[1])
        if hover != self.hover:
            self.hover = hover
            self.post_message(self.Hovered(hover))

    def on_leave(self, event: events.Leave) -> None:
        if self.hover is not None:
            self.hover = None
            self.post_message(self.Hovered(None))

    def on_click(self, event: events.Click) -> None:
        cell = self.cell_at(event.x, event.y)
        if cell is not None:
            self.post_message(self.Clicked(cell[0], cell[1]))


# ---------------------------------------------------------------------------------------------
# The geometry picture


class GeometryView(Widget, can_focus=False):
    """Seed 001's picture, small: the tokens before (○, X) and after (●, the head's output)
    attention on 2-D PCA, the selected token highlighted."""

    DEFAULT_CSS = "GeometryView { height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.geometry: Geometry | None = None
        self.selected: int | None = None
        self.canvas_h = 6

    def set_geometry(self, geometry: Geometry | None, selected: int | None) -> None:
        self.geometry, self.selected = geometry, selected
        self.refresh(layout=True)

    def _canvas(self, width: int, groups: list[tuple[np.ndarray, str, list[str]]]) -> list[Text]:
        h = self.canvas_h
        pts = np.vstack([g[0] for g in groups])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        grid: list[list[tuple[str, Style | None]]] = [[(" ", None)] * width for _ in range(h)]

        def place(p: np.ndarray) -> tuple[int, int]:
            c = int(round((p[0] - lo[0]) / span[0] * (width - 1)))
            r = int(round((hi[1] - p[1]) / span[1] * (h - 1)))
            return r, c

        def free(r: int, c: int, n: int) -> bool:
            return c >= 0 and c + n <= width and all(grid[r][c + k][0] == " " for k in range(n))

        sel = self.selected
        for pts_g, marker, _ in groups:
            for i, p in enumerate(pts_g):
                if i == sel:
                    continue
                r, c = place(p)
                if free(r, c, 1):
                    grid[r][c] = (marker, DIM if marker == "○" else None)
        if sel is not None:
            for pts_g, marker, labels in groups:
                r, c = place(pts_g[sel])
                grid[r][c] = (marker, Style(bold=True, color="yellow"))
                label = fit(labels[sel], 10)
                for start in (c + 1, c - cell_len(label)):
                    if free(r, start, cell_len(label)):
                        for k, ch in enumerate(label):
                            grid[r][start + k] = (ch, Style(color="yellow"))
                        break
        lines = []
        for r in range(h):
            t = Text("│", DIM)
            for ch, st in grid[r]:
                t.append(ch, st)
            lines.append(t)
        lines.append(Text("└" + "─" * width, DIM))
        return lines

    def render(self) -> Text:
        g = self.geometry
        self.canvas_h = max(3, min(16, self.size.height - 2))
        if g is None:
            return Text("no geometry: needs X and Y rows", style="dim")
        labels_x = [printable(r) for r in g.x.rows]
        labels_y = [printable(r) for r in g.y.rows]
        width = max(8, self.size.width - 1)  # the canvas plus its '│' axis
        if g.shared:
            title = Text(f"○ {g.x.name} before, ● {g.y.name} after (one PCA)", style="bold")
            body = self._canvas(width, [(g.px, "○", labels_x), (g.py, "●", labels_y)])
        else:
            half = max(4, (width - 2) // 2)  # two canvases, two axes and one space
            title = Text(f"○ {g.x.name} (PCA) │ ● {g.y.name} (own PCA)", style="bold")
            left = self._canvas(half, [(g.px, "○", labels_x)])
            right = self._canvas(half, [(g.py, "●", labels_y)])
            body = [a + Text(" ") + b for a, b in zip(left, right, strict=True)]
        title.truncate(self.size.width or 40, overflow="ellipsis")
        out = Text("\n").join([title, *body])
        out.no_wrap = True
        return out


# ---------------------------------------------------------------------------------------------
# The picture a vision model saw


PICTURE_MAX_PX = 12  # pixels per patch at most (a small grid is drawn larger)


class PictureView(Widget, can_focus=False):
    """The picture of an image trace with the selected token's row of the map laid over its
    patches (as --view overlay draws it); clicking a patch selects that patch's token."""

    DEFAULT_CSS = "PictureView { height: 1fr; }"

    class Picked(Message):
        def __init__(self, token: int) -> None:
            self.token = token
            super().__init__()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.info: dict[str, Any] | None = None
        self.thumb: np.ndarray | None = None
        self.row: np.ndarray | None = None  # the selected query's weights over every key
        self.selected = 0
        self.px = 1

    def set_picture(
        self, info: dict[str, Any] | None, row: np.ndarray | None, selected: int
    ) -> None:
        """`info`: the trace's config["image"] (None: not an image trace); `row`: the map's
        row of the selected token (None: no attention map here)."""
        if info is not self.info:
            self.thumb = None if info is None else thumbnail_pixels(info["thumbnail"])
        self.info, self.row, self.selected = info, row, selected
        self.refresh()

    @property
    def first(self) -> int:
        return len(self.info.get("prefix", [])) if self.info else 0

    def render(self) -> Text:
        if self.info is None or self.thumb is None:
            return Text("")
        rows, cols = (int(v) for v in self.info["grid"])
        prefix = list(self.info.get("prefix", []))
        who = printable(prefix[self.selected]) if self.selected < len(prefix) else None
        if who is None:
            r, c = divmod(self.selected - self.first, cols)
            who = f"patch {r},{c}"
        title = Text(f"{who} attends to (click a patch)", style="bold")
        title.truncate(max(8, self.size.width), overflow="ellipsis")
        if self.row is None or len(self.row) != self.first + rows * cols:
            return Text("\n").join([title, Text("no map over the patches here", style="dim")])
        height = max(2, self.size.height - 3)  # the title and the line under the picture
        self.px = max(1, min(PICTURE_MAX_PX, max(1, self.size.width) // cols, 2 * height // rows))
        weights = patch_weights(self.row[None, :], 0, self.first, [rows, cols])
        query = self.selected if self.selected >= self.first else None
        lines = half_blocks(
            overlay_pixels(self.thumb, weights, self.px), patch_marks(self.info, query, self.px)
        )
        under = [prefix_line(self.info, self.row, 3)] if self.first else []
        out = Text("\n").join([title, *lines, *under])
        out.no_wrap = True
        return out

    def token_at(self, x: int, y: int) -> int | None:
        """The token of the patch under the cell (x, y), or None (the title, off the picture)."""
        if self.info is None or y < 1:
            return None
        rows, cols = (int(v) for v in self.info["grid"])
        r, c = (2 * (y - 1)) // self.px, x // self.px
        if not (0 <= r < rows and 0 <= c < cols):
            return None
        return self.first + r * cols + c

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)  # inside the padding
        token = None if offset is None else self.token_at(offset.x, offset.y)
        if token is not None:
            self.post_message(self.Picked(token))

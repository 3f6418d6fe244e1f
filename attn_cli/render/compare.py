"""The `compare` view: two texts' attention side by side, then how each shared token's vector
differs between the two contexts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from attn_cli.render.common import RenderOptions, Scale, clip, colors_on, format_number
from attn_cli.render.step_tables import (
    COL_OVERHEAD,
    compact_table,
    trace_header,
    wrap_columns,
)
from attn_cli.trace import TraceStep, printable

if TYPE_CHECKING:
    from attn_cli.comparison import Comparison

LABEL_W = 10  # row label: position and token, cut to fit
GAP = 3  # columns between the two maps


def short(v: float, precision: int) -> str:
    """0.65 -> '.65' (weights are in [0, 1]): narrower cells, so two maps fit side by side."""
    s = format_number(v, precision)
    return s[1:] if s.startswith("0.") else s


def map_lines(
    step: TraceStep, opts: RenderOptions, color: bool, title: str, width: int
) -> list[Text]:
    """An attention map as lines of text: rows labelled 'i token', columns by position. Columns
    that do not fit `width` and rows beyond opts.max_rows are cut, and the cut is said."""
    w = step.data
    n_rows, n_cols = w.shape
    cells = [[short(float(v), opts.precision) for v in row] for row in w[: opts.max_rows]]
    cw = max([len(c) for row in cells for c in row] + [len(str(n_cols - 1))]) + 1
    k = n_cols
    if LABEL_W + cw * n_cols > width:  # leave room for " … 12 more"
        k = max(1, (width - LABEL_W - cell_len(f" … {n_cols} more")) // cw)
    scale = Scale.for_kind(step.kind, w) if color else None
    lines = [Text(title[: max(LABEL_W + cw * k, 1)], style="bold")]
    head = Text(" " * LABEL_W)
    for j in range(k):
        head.append(str(j).rjust(cw), style="dim")
    if k < n_cols:
        head.append(f" … {n_cols - k} more", style="dim")
    lines.append(head)
    for i, row in enumerate(cells):
        label = clip(f"{i} {printable(step.rows[i])}", LABEL_W - 1)
        line = Text(label + " " * (LABEL_W - cell_len(label)), style="bold")
        styles = scale.styles(w[i, :k]) if scale is not None else [None] * k
        for c, st in zip(row[:k], styles, strict=True):
            line.append(" " * (cw - len(c)))
            line.append(c, style=st)
        if k < n_cols:
            line.append(" …", style="dim")
        lines.append(line)
    if len(cells) < n_rows:
        lines.append(Text(f"… {n_rows - len(cells)} more rows", style="dim"))
    return lines


def render_maps(console: Console, c: Comparison, opts: RenderOptions) -> None:
    color = colors_on(console)
    wa, wb = c.attention("a"), c.attention("b")
    where = f"   {wa.where}" if wa.where else ""
    left = map_lines(wa, opts, color, f"A: W{where}", console.width)
    right = map_lines(wb, opts, color, f"B: W{where}", console.width)
    width_l = max(cell_len(t.plain) for t in left)
    width_r = max(cell_len(t.plain) for t in right)
    if width_l + GAP + width_r <= console.width:
        for i in range(max(len(left), len(right))):
            line = left[i].copy() if i < len(left) else Text("")
            line.append(" " * (width_l + GAP - cell_len(line.plain)))
            if i < len(right):
                line.append_text(right[i])
            console.print(line)
    else:  # too wide for one line: one map under the other
        for line in left + [Text("")] + right:
            console.print(line)
    console.print(
        Text(
            "Row i: where token i looks (weights sum to 1 across the row); columns are positions.",
            style="italic",
        )
    )
    console.print()


def render_shared(console: Console, c: Comparison, opts: RenderOptions) -> None:
    p = opts.precision
    if not c.shared:
        console.print(Text("The two texts share no token."))
        console.print()
        return
    sa, sb = c.attention("a"), c.attention("b")
    out = c.output_name
    console.print(Text("The same token in two contexts", style="bold"))
    table = compact_table()
    table.add_column(Text("token"), no_wrap=True, style="bold")
    table.add_column(Text(f"cos {c.input_name}"), justify="right", no_wrap=True)
    table.add_column(Text(f"cos {out}"), justify="right", no_wrap=True)
    table.add_column(Text("A: looks most at"), no_wrap=True)
    table.add_column(Text("B: looks most at"), no_wrap=True)
    for s in c.shared:
        table.add_row(
            Text(s.token),
            Text(format_number(s.cos_in, p)),
            Text(format_number(s.cos_out, p)),
            Text(_top(sa.data[s.a], sa.cols, p)),
            Text(_top(sb.data[s.b], sb.cols, p)),
        )
    console.print(table)
    if c.shared[0].cos_layers:
        console.print()
        render_layers(console, c, p)
    if out == "H":
        arch = c.a.config.get("architecture")
        if isinstance(arch, dict) and "rope" in arch:  # rotary: position enters Q and K only
            embeddings = "its token embeddings (no position is added: equal wherever it stands)"
        else:
            embeddings = "its embeddings (token + position: equal at the same position)"
        words = (
            f"cos X: {embeddings}; X1 … the input of each later layer; cos H: its final hidden "
            "states. Each layer mixes in what the token attended to, so the same word drifts "
            "apart in different contexts."
        )
    else:
        words = (
            f"cos X: its input vectors, equal for the same token; cos {out}: its outputs, which "
            "differ because it attended to different tokens in each context."
        )
    console.print(
        Text(
            "cos = cosine similarity of the token's vector in A and in B (1 = same direction). "
            + words,
            style="italic",
        )
    )
    for note in c.notes:
        console.print(Text("note: " + note, style="yellow"))
    console.print()


def render_layers(console: Console, c: Comparison, precision: int) -> None:
    """Each shared token's cosine at the input of every layer (X0 …) and of its final hidden
    states (H): tokens as rows when the layers fit the width; otherwise layers as rows and the
    tokens as columns, in as many blocks as the width needs, so no number is hidden."""
    stages = [f"X{i}" for i in range(len(c.shared[0].cos_layers) - 1)] + ["H"]
    tokens = [s.token for s in c.shared]
    cells = [[format_number(v, precision) for v in s.cos_layers] for s in c.shared]
    title = Text("Cosine of each shared token's vector, layer by layer", style="bold")
    if _table_width(tokens, stages, cells) <= console.width:
        console.print(title)
        console.print(_matrix_table("token", tokens, stages, cells))
        return
    title.append(" (rows: the input of each layer, then H; columns: the shared tokens)")
    console.print(title)
    by_stage = [list(col) for col in zip(*cells, strict=True)]
    blocks = wrap_columns(*_widths(stages, tokens, by_stage), console.width)
    for a, b in blocks:
        if len(blocks) > 1:
            console.print(Text(f"tokens {a + 1}–{b} of {len(tokens)}", style="dim"))
        console.print(_matrix_table("", stages, tokens[a:b], [row[a:b] for row in by_stage]))


def _matrix_table(corner: str, rows: list[str], cols: list[str], cells: list[list[str]]) -> Table:
    table = compact_table()
    table.add_column(Text(corner), no_wrap=True, style="bold")
    for name in cols:
        table.add_column(Text(name), justify="right", no_wrap=True)
    for label, row in zip(rows, cells, strict=True):
        table.add_row(Text(label), *(Text(v) for v in row))
    return table


def _widths(rows: list[str], cols: list[str], cells: list[list[str]]) -> tuple[int, list[int]]:
    """The label column's width and each column's (header or widest cell)."""
    label_w = max([cell_len(r) for r in rows] + [len("token")])
    widths = [max([cell_len(name)] + [len(row[j]) for row in cells]) for j, name in enumerate(cols)]
    return label_w, widths


def _table_width(rows: list[str], cols: list[str], cells: list[list[str]]) -> int:
    label_w, widths = _widths(rows, cols, cells)
    return label_w + sum(w + COL_OVERHEAD for w in widths)


def _top(row: np.ndarray, labels: list[str], precision: int, k: int = 2) -> str:
    order = np.argsort(-row, kind="stable")[:k]
    return "  ".join(
        f"{printable(labels[j])} {format_number(float(row[j]), precision)}" for j in order
    )


def render_comparison(console: Console, c: Comparison, opts: RenderOptions) -> None:
    console.print(trace_header(c.a, label="A"))
    console.print(trace_header(c.b, label="B", config=False))
    console.print()
    render_maps(console, c, opts)
    render_shared(console, c, opts)

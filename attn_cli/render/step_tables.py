"""The `steps` view: one coloured table per trace step, then a context summary."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.rule import Rule
from rich.style import Style
from rich.table import Table
from rich.text import Text

from attn_cli.render.common import (
    RenderOptions,
    Scale,
    colors_on,
    format_number,
    scale_legend,
)
from attn_cli.render.statistics import KIND_NOTES, row_shares, sink_mass
from attn_cli.trace import Trace, TraceStep, printable

COL_OVERHEAD = 3  # padding either side plus the column separator (box.SIMPLE_HEAD, no edges)
# What an axis's labels are called in the header ("source: 6 tokens").
AXIS_WORDS = {
    "text": ("token", "tokens"),
    "patches": ("patch", "patches"),
    "frames": ("frame", "frames"),
    "sink": ("sink key", "sink keys"),
}


def trace_header(trace: Trace, label: str | None = None, config: bool = True) -> Group:
    """A rule with the text (and a sentence pair's second sentence), the token count and the
    settings that shaped the numbers, then the trace's notes. `label` ('A') prefixes the text;
    config=False leaves the settings out (a second trace run the same way)."""
    cfg = trace.config
    n = len(trace.tokens)
    lines, tokens = cfg.get("lines"), cfg.get("tokens")
    if cfg.get("pipeline") == "heads" and isinstance(lines, int) and isinstance(tokens, int):
        n = tokens  # a corpus: its lines and tokens (the trace itself holds none)
        bits = [f"{lines:,} line{'s' if lines != 1 else ''}, {n:,} token{'s' if n != 1 else ''}"]
    else:
        bits = [f"{n} token{'s' if n != 1 else ''}"]
    for key in (
        "pipeline",
        "embeddings",
        "model",
        "dim",
        "heads",
        "d_k",
        "seed",
        "scale",
        "causal",
        "temperature",
    ):
        if key in cfg and cfg[key] not in (None, False):
            bits.append(f"{key}={cfg[key]}" if not isinstance(cfg[key], bool) else key)
    for name, axis in trace.axes.items():
        if name != "tokens":
            one, many = AXIS_WORDS.get(axis.kind, ("label", "labels"))
            m = len(axis.labels)
            bits.append(f"{name}: {m} {one if m == 1 else many}")
    if isinstance(cfg.get("pair"), str):
        types = cfg.get("token_type_ids") or []
        bits.append(f"pair: token_type_ids 0 × {types.count(0)}, 1 × {types.count(1)}")
    title = Text("attn-cli · " + (f"{label}: " if label else ""))
    text = " ".join(trace.text.split())  # a pasted file's newlines and indents, folded
    if isinstance(cfg.get("pair"), str):
        text += " ‖ " + " ".join(cfg["pair"].split())
    title.append(printable(text[:60]) + ("…" if len(text) > 60 else ""), style="bold")
    parts: list = [Rule(title, align="left"), Separated(bits if config else bits[:1], "dim")]
    parts += [Text("note: " + n, style="yellow") for n in trace.notes]
    said = spoken_words(cfg.get("words"))
    if said:
        parts.append(Separated(["words: " + said[0], *said[1:]]))
    return Group(*parts)


def spoken_words(words: object) -> list[str]:
    """A speech trace's words with their times ('hello 0.32–0.58 s'), from its config."""
    if not isinstance(words, list):
        return []

    def seconds(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, int | float) and not isinstance(v, bool) else "?"

    return [
        f"{printable(str(w.get('text', '')).strip())} {seconds(w.get('start'))}–"
        f"{seconds(w.get('end'))} s"
        for w in words
        if isinstance(w, dict)
    ]


class Separated:
    """Items joined by ' · ', wrapped only between items: no line ends with a dangling '·'
    and no item is split (unless it alone is wider than the line)."""

    def __init__(self, items: list[str], style: str = "") -> None:
        self.items, self.style = items, style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        lines: list[str] = []
        for item in self.items:
            if lines and cell_len(lines[-1]) + 3 + cell_len(item) <= width:
                lines[-1] += " · " + item
            else:
                lines.append(item)
        for line in lines:
            yield Text(line, style=self.style)


def compact_table() -> Table:
    """No outer edges, a rule under the header, one space either side of each column."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))


def _visible_cols(widths: list[int], label_w: int, width: int, total: int) -> int:
    """How many leading columns fit, leaving room for a '… k more' column when some are cut."""
    if len(widths) == total and label_w + sum(w + COL_OVERHEAD for w in widths) <= width:
        return total  # all of them: no '… k more' column to make room for
    used = label_w
    for k, w in enumerate(widths):
        more = 0 if k + 1 == total else cell_len(f"… {total - k - 1} more") + COL_OVERHEAD
        if used + w + COL_OVERHEAD + more > width:
            return max(k, 1)
        used += w + COL_OVERHEAD
    return len(widths)


class _Layout(NamedTuple):
    show_rows: int
    data: np.ndarray  # the rows shown
    cells: list[list[str]]  # formatted numbers of the columns that could fit
    col_labels: list[str]
    row_labels: list[str]
    widths: list[int]  # of those columns
    label_w: int
    k: int  # columns that do fit


def _layout(step: TraceStep, opts: RenderOptions, width: int) -> _Layout:
    """What a step table shows and how wide each column is (step_table and step_text share it)."""
    n_rows, n_cols = step.data.shape
    show_rows = min(n_rows, opts.max_rows)
    data = step.data[:show_rows]
    # Only format what could possibly fit: a column is at least 4 cells wide.
    cand_cols = min(n_cols, max(1, width // 4))
    cells = [[format_number(float(v), opts.precision) for v in row] for row in data[:, :cand_cols]]
    col_labels = [printable(c) for c in step.cols[:cand_cols]]
    row_labels = [printable(r) for r in step.rows[:show_rows]]
    widths = [
        max([cell_len(col_labels[j])] + [len(cells[i][j]) for i in range(show_rows)])
        for j in range(cand_cols)
    ]
    label_w = max([cell_len(r) for r in row_labels] + [1])
    k = _visible_cols(widths, label_w, width, n_cols)
    return _Layout(show_rows, data, cells, col_labels, row_labels, widths, label_w, k)


def step_table(step: TraceStep, opts: RenderOptions, width: int, scale: Scale | None) -> Table:
    """The step's matrix as a table fitted to `width`; cells coloured by `scale` (None: plain)."""
    n_cols = step.data.shape[1]
    show_rows, data, cells, col_labels, row_labels, widths, label_w, k = _layout(step, opts, width)

    table = compact_table()
    # Widths are already known exactly: giving them to Rich skips its per-cell measuring.
    table.add_column(Text(""), no_wrap=True, style="bold", width=label_w)
    for j in range(k):
        table.add_column(Text(col_labels[j]), justify="right", no_wrap=True, width=widths[j])
    if k < n_cols:
        more = f"… {n_cols - k} more"
        table.add_column(
            Text(more), justify="left", no_wrap=True, style="dim", width=cell_len(more)
        )
    for i in range(show_rows):
        row: list = [Text(row_labels[i])]
        styles = scale.styles(data[i, :k]) if scale is not None else [""] * k
        for j in range(k):
            row.append(Text(cells[i][j], style=styles[j]))
        if k < n_cols:
            row.append(Text("…"))
        table.add_row(*row)
    return table


BOLD, DIM = Style(bold=True), Style(dim=True)


def step_text(step: TraceStep, opts: RenderOptions, width: int, scale: Scale | None) -> Text | None:
    """The same table as `step_table`, laid out directly as lines of text: the same characters
    and styles (tests/test_render.py checks), without Rich's per-cell table machinery, which
    took most of the start-up's rendering time. None when it would not fit `width`: then
    step_table lets Rich shrink the columns."""
    n_cols = step.data.shape[1]
    show_rows, data, cells, col_labels, row_labels, widths, label_w, k = _layout(step, opts, width)
    more = f"… {n_cols - k} more" if k < n_cols else ""
    gap = " " * COL_OVERHEAD
    total = label_w + sum(w + COL_OVERHEAD for w in widths[:k])
    total += cell_len(more) + COL_OVERHEAD if more else 0
    if total > width:
        return None
    text = Text(" " * label_w, style=BOLD)
    for j in range(k):
        text.append(gap)
        text.append(" " * (widths[j] - cell_len(col_labels[j])) + col_labels[j], style=BOLD)
    if more:
        text.append(gap)
        text.append(more, style=BOLD)
    text.append("\n" + "─" * total)
    tail = "…" + " " * (cell_len(more) - 1)
    for i in range(show_rows):
        text.append("\n")
        text.append(row_labels[i] + " " * (label_w - cell_len(row_labels[i])), style=BOLD)
        styles = scale.styles(data[i, :k]) if scale is not None else [None] * k
        for j in range(k):
            text.append(gap)
            text.append(cells[i][j].rjust(widths[j]), style=styles[j])
        if more:
            text.append(gap)
            text.append(tail, style=DIM)
    return text


def more_rows_line(step: TraceStep, opts: RenderOptions) -> Text | None:
    """'… k more rows (L24 … L29; --max-rows 30 shows every row)' under a cut table (outside
    it, so it does not widen the label column): which rows are hidden, and the flag."""
    n_rows = step.data.shape[0]
    shown = min(n_rows, opts.max_rows)
    hidden = n_rows - shown
    if hidden <= 0:
        return None
    first, last = printable(step.rows[shown]), printable(step.rows[-1])
    which = first if hidden == 1 else f"{first} … {last}"
    rows = "row" if hidden == 1 else "rows"
    return Text(
        f"… {hidden} more {rows} ({which}; --max-rows {n_rows} shows every row)", style="dim"
    )


def column_blocks(step: TraceStep, opts: RenderOptions, width: int) -> list[TraceStep]:
    """A layers × heads grid (kind "heads") too wide for `width` as consecutive blocks of its
    columns that each fit, so every head is shown; any other step as it is (a token table cuts
    its columns, says how many, and --view heatmap shows the whole matrix)."""
    if step.kind != "heads":
        return [step]
    layout = _layout(step, opts, 1 << 30)
    blocks = wrap_columns(layout.label_w, layout.widths, width)
    if len(blocks) == 1:
        return [step]
    return [replace(step, data=step.data[:, a:b], cols=step.cols[a:b]) for a, b in blocks]


def wrap_columns(label_w: int, widths: list[int], width: int) -> list[tuple[int, int]]:
    """Column ranges [a, b) whose tables (the label column, then those columns) each fit
    `width`: as few as fit, of even sizes when they fit too (12 heads: 6 + 6, not 11 + 1);
    at least one column each."""
    cost = [w + COL_OVERHEAD for w in widths]
    starts, used = [0], label_w
    for j, c in enumerate(cost):
        if j > starts[-1] and used + c > width:
            starts.append(j)
            used = label_w
        used += c
    n = len(cost)
    if len(starts) > 1:
        per = -(-n // len(starts))
        even = list(range(0, n, per))
        if len(even) == len(starts) and all(
            label_w + sum(cost[a : a + per]) <= width for a in even
        ):
            starts = even
    return list(zip(starts, starts[1:] + [n], strict=True))


def step_title(step: TraceStep) -> Text:
    title = Text(step.name, style="bold")
    title.append(" = " + step.formula)
    if step.where:
        title.append(f"   {step.where}", style="dim")
    return title


def sink_line(step: TraceStep, opts: RenderOptions) -> Text | None:
    """Partial weights: each shown row's mass that went to the sink (1 − its row sum)."""
    sink = sink_mass(step)
    if sink is None:
        return None
    shown = min(len(sink), opts.max_rows)
    text = Text("sink (1 − row sum): ", style="bold")
    text.append(
        "  ".join(
            f"{printable(step.rows[i])} {format_number(sink[i], opts.precision)}"
            for i in range(shown)
        )
    )
    return text


def render_step(console: Console, step: TraceStep, opts: RenderOptions) -> None:
    scale = Scale.for_kind(step.kind, step.data, opts.color_scale) if colors_on(console) else None
    parts: list = [step_title(step)]
    blocks = column_blocks(step, opts, console.width)
    start = 0
    for block in blocks:
        if len(blocks) > 1:  # say which columns each block holds
            end = start + len(block.cols)
            parts.append(
                Text(
                    f"{printable(block.cols[0])} … {printable(block.cols[-1])} (columns "
                    f"{start + 1}–{end} of {len(step.cols)})",
                    style="dim",
                )
            )
            start = end
        fast = step_text(block, opts, console.width, scale)
        parts.append(fast if fast is not None else step_table(block, opts, console.width, scale))
    parts += [
        more_rows_line(step, opts),
        sink_line(step, opts),
        scale_legend(scale, opts) if scale is not None else None,
        Text(step.description, style="italic"),
        Text(KIND_NOTES[step.kind], style="italic") if step.kind in KIND_NOTES else None,
        Text(),
    ]
    # One print per step: each print has a fixed cost (measuring the terminal, the buffer).
    console.print(Group(*(p for p in parts if p is not None)))


def render_steps(console: Console, trace: Trace, opts: RenderOptions) -> None:
    n = len(trace.tokens)
    if n > opts.max_rows:
        console.print(
            Text(
                f"{n} tokens: each table shows its first {opts.max_rows} rows and the columns that fit. "
                "Use --view heatmap to see whole matrices, or --view top for every token's summary.",
                style="yellow",
            )
        )
    console.print()
    for step in trace.steps:
        render_step(console, step, opts)
    render_context(console, trace, opts)


def top_two(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: the column with the largest weight and the runner-up, as index arrays
    (-1 where a row has no runner-up with any weight, e.g. a masked first row)."""
    n_rows, n_cols = weights.shape
    top = np.argmax(weights, axis=1)  # the first of equal maxima, as a stable sort gives
    if n_cols < 2:
        return top, np.full(n_rows, -1)
    rest = weights.copy()
    rest[np.arange(n_rows), top] = -np.inf
    second = np.argmax(rest, axis=1)
    return top, np.where(weights[np.arange(n_rows), second] > 0, second, -1)


def render_context(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """For each token, the token it attends to most, and the runner-up."""
    for step in trace.steps_named("W"):
        shown = min(len(step.rows), opts.max_rows)
        # Only the rows shown: a 20,000-token W is never sorted whole. A mixing map ranks by
        # absolute share and shows its signed values.
        top, other = top_two(row_shares(step)[:shown])
        w = step.data[:shown]
        title = Text("Context", style="bold")
        title.append(" — who attends to whom most, from W")
        if step.where:
            title.append(f"   {step.where}", style="dim")
        table = compact_table()
        for name, right in (
            ("token", False),
            ("attends most to", False),
            ("weight", True),
            ("then", False),
            ("weight", True),
        ):
            table.add_column(Text(name), justify="right" if right else "left", no_wrap=True)
        for i in range(shown):
            j, o = int(top[i]), int(other[i])
            table.add_row(
                Text(printable(step.rows[i]), style="bold"),
                Text(printable(step.cols[j])),
                Text(format_number(w[i, j], opts.precision)),
                Text(printable(step.cols[o]) if o >= 0 else "—"),
                Text(format_number(w[i, o], opts.precision) if o >= 0 else ""),
            )
        if shown < len(step.rows):
            table.add_row(Text(f"… {len(step.rows) - shown} more rows", style="dim"))
        console.print(Group(title, table, Text()))

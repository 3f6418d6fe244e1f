"""Pictures of a trace: a pooled heatmap, a layer × head grid of thumbnails, and the
parameter-free article's geometric illustration (token vectors before and after attention, in 2-D)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rich.cells import cell_len
from rich.console import Console
from rich.style import Style
from rich.text import Text

from attn_cli.render.common import (
    LEVELS,
    RenderOptions,
    Scale,
    clip,
    colors_on,
    format_number,
    level_style,
    scale_legend,
    signed,
)
from attn_cli.render.overview import plural
from attn_cli.render.pooling import mean_pairwise_distance, pca_2d, pool
from attn_cli.render.statistics import KIND_NOTES, first_or_sink
from attn_cli.trace import Trace, TraceStep, printable

SHADES = " ░▒▓█"  # without colour, a cell's level is its shade
LABEL_W = 12


@lru_cache(maxsize=4096)
def half_block_style(diverging: bool, top: int, bottom: int | None) -> Style:
    """'▀' coloured by two levels: the top cell as foreground, the bottom one as background."""
    fg = level_style(diverging, top).bgcolor
    bg = None if bottom is None else level_style(diverging, bottom).bgcolor
    return Style(color=fg, bgcolor=bg)


def _rows_to_text(levels: np.ndarray, diverging: bool, color: bool) -> list[Text]:
    """Each pair of matrix rows becomes one line of '▀' (top row = foreground, bottom =
    background), so cells come out roughly square; without colour, one shade per cell."""
    lines = []
    if not color:
        for row in levels:
            lines.append(
                Text("".join(SHADES[int(v * (len(SHADES) - 1) / (LEVELS - 1) + 0.5)] for v in row))
            )
        return lines
    for i in range(0, len(levels), 2):
        top = levels[i]
        bottom = levels[i + 1] if i + 1 < len(levels) else None
        t = Text()
        for j, lv in enumerate(top):
            below = None if bottom is None else int(bottom[j])
            t.append("▀", style=half_block_style(diverging, int(lv), below))
        lines.append(t)
    return lines


def _zoom(step: TraceStep, opts: RenderOptions) -> tuple[np.ndarray, int, int]:
    r0, r1 = opts.rows or (0, step.data.shape[0])
    c0, c1 = opts.cols or (0, step.data.shape[1])
    r1, c1 = min(r1, step.data.shape[0]), min(c1, step.data.shape[1])
    return step.data[r0:r1, c0:c1], r0, c0


def short_share(value: float) -> str:
    """A share in [0, 1] in three characters: '.97', '1.0'."""
    return f"{value:.2f}".replace("0.", ".", 1).replace("1.00", "1.0")


def row_label(pos: int, pos_w: int, token: str) -> str:
    """'  7 river', the position right-aligned, the token cut with '…' to fit LABEL_W: every
    label is cut the same way, whatever the number of digits."""
    head = str(pos).rjust(pos_w) + " "
    text = printable(token)
    room = LABEL_W - cell_len(head)
    return head + clip(text, room)


def shade_legend(scale: Scale, opts: RenderOptions, color: bool, what: str = "") -> Text:
    """The legend under a heatmap or grid: colours (or shades) from one end to the other."""
    if color:
        text = scale_legend(scale, opts)
    else:
        lo, hi = scale.ends(opts.precision)
        text = Text(
            f"shades ' ░▒▓█': {lo} … {hi}" + (" (log scale)" if scale.log else ""), style="dim"
        )
    if what:
        text.append(what, style="dim")
    return text


def render_heatmap(console: Console, trace: Trace, opts: RenderOptions) -> None:
    color = colors_on(console)
    maps = [s for s in trace.steps if s.kind in ("weights", "partial_weights", "mixing")] or [
        s for s in trace.steps if s.kind == "scores"
    ]
    for step in maps:
        m, r0, c0 = _zoom(step, opts)
        if m.size == 0:
            console.print(Text(f"{step.name}: the --rows/--cols range is empty"))
            continue
        room = max(8, console.width - LABEL_W - 1)
        width = min(m.shape[1], room)
        # Colour packs two matrix rows into each line ('▀'), so as many rows as columns looks
        # square; shades use one line per row, so half as many.
        out_rows = min(m.shape[0], width if color else max(8, width // 2))
        pooled, rs, cs = pool(m, out_rows, width, opts.pool, signed(step.kind))
        scale = Scale.for_kind(step.kind, pooled, opts.color_scale)
        levels = scale.levels(pooled)
        # Small matrices get wider cells (up to 4 characters) so they stay readable.
        f = max(1, min(4, room // len(cs)))
        row_rep = f if color else max(1, f // 2)
        levels = np.repeat(np.repeat(levels, f, axis=1), row_rep, axis=0)
        title = Text(f"{step.name} heatmap", style="bold")
        if step.where:
            title.append(f"   {step.where}", style="dim")
        console.print(title)
        block_r, block_c = m.shape[0] / len(rs), m.shape[1] / len(cs)
        if block_r > 1 or block_c > 1:
            console.print(
                Text(
                    f"{m.shape[0]}×{m.shape[1]} cells shown as {len(rs)}×{len(cs)}: each character is the "
                    f"{opts.pool} of a ~{block_r:.0f}×{block_c:.0f} block",
                    style="dim",
                )
            )
        if not step.self_map:  # the keys are another sequence: say which token each column is
            keys = "  ".join(f"{c0 + int(c)} {printable(step.cols[c0 + int(c)])}" for c in cs[:60])
            more = " …" if len(cs) > 60 else ""
            console.print(Text(f"columns ({step.col_axis or 'keys'}): {keys}{more}", style="dim"))
        # Column ticks: the key token's position, every 10 characters.
        ticks = [" "] * (len(cs) * f)
        for j in range(0, len(cs), max(1, 10 // f)):
            for k, ch in enumerate(str(c0 + int(cs[j]))):
                if j * f + k < len(ticks):
                    ticks[j * f + k] = ch
        console.print(Text(" " * LABEL_W + " " + "".join(ticks), style="dim"))
        per_line = 2 if color else 1
        lines = _rows_to_text(levels, scale.diverging, color)
        last = -1
        pos_w = len(str(r0 + int(rs[-1])))
        for li, line in enumerate(lines):
            i = (li * per_line) // row_rep  # the pooled row this line starts with
            label = ""
            if i != last and i < len(rs):
                pos = r0 + int(rs[i])
                label = row_label(pos, pos_w, step.rows[pos])
                last = i
            console.print(Text(label + " " * (LABEL_W - cell_len(label)) + " ") + line)
        console.print(shade_legend(scale, opts, color))
        if step.kind in KIND_NOTES:
            console.print(Text(KIND_NOTES[step.kind], style="dim"))
        console.print()


def render_grid(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """BertViz's 'model view' in a terminal: a thumbnail heatmap per layer × head (one grid
    per attention block where a trace has several)."""
    if not trace.steps_named("W"):
        console.print(Text("no attention weights (W) in this trace"))
        return
    for block in trace.blocks:
        render_block_grid(console, trace, block, opts)
    color = colors_on(console)
    kinds = list(dict.fromkeys(s.kind for s in trace.steps_named("W")))
    diverging = any(Scale.for_kind(k, np.zeros(1)).diverging for k in kinds)
    log = any(Scale.for_kind(k, np.ones(1), opts.color_scale).log for k in kinds)
    low = "max/10^4" if log else "0"
    if color:
        legend = Text(f"colour  {low} ")
        for lv in range(0, LEVELS, 4):
            legend.append("  ", style=level_style(False, lv))
        legend.append(" each map's maximum")
    else:
        legend = Text(f"shades ' ░▒▓█': {low} … each map's maximum")
    if log:
        legend.append(", log scale")
        if len(kinds) > 1:
            legend.append(" for weight maps")
    legend.append(" (as --view heatmap shades that map)", style="dim")
    console.print(legend)
    if diverging:  # scores, mixing weights: their own scale, −max … 0 … +max
        if color:
            signed_legend = Text("signed maps  −m ")
            for lv in range(0, LEVELS, 4):
                signed_legend.append("  ", style=level_style(True, lv))
            signed_legend.append(" +m (m: each map's largest |value|; 0 in the middle)")
        else:
            signed_legend = Text(
                "signed maps: ' ' = −m, '▒' = 0, '█' = +m (m: each map's largest |value|)"
            )
        console.print(signed_legend)
    measures = (first_or_sink(s) for s in trace.steps_named("W"))
    figures = [
        f"{name[0]} = mean weight on the first token"
        if name == "first"
        else f"{name[0]} = mean mass to the sink (1 − row sum)"
        for name in dict.fromkeys(m[0] for m in measures if m is not None)
    ]
    if figures:
        console.print(Text("Under each map: " + "; ".join(figures), style="dim"))
    for kind in kinds:
        if kind in KIND_NOTES:
            console.print(Text(KIND_NOTES[kind], style="dim"))
    console.print()


def render_block_grid(
    console: Console, trace: Trace, block: str | None, opts: RenderOptions
) -> None:
    maps = {(s.layer or 0, s.head or 0): s for s in trace.steps_named("W") if s.block == block}
    layers = sorted({k[0] for k in maps})
    heads = sorted({k[1] for k in maps})
    color = colors_on(console)
    n_rows = max(s.data.shape[0] for s in maps.values())
    n_cols = max(s.data.shape[1] for s in maps.values())
    n = max(n_rows, n_cols)
    label_w = 4
    # Thumbnail side: as large as fits every head across the width, at most the token count;
    # a rectangular map keeps its shape inside that square.
    side = max(2, min(n, 16, (console.width - label_w) // len(heads) - 1))
    rows_w, cols_w = min(n_rows, side), min(n_cols, side)
    what = f"{side}×{side}" if (rows_w, cols_w) == (side, side) else f"{rows_w}×{cols_w}"
    console.print(
        Text(
            ("" if block is None else f"{block} attention: ")
            + f"{plural(len(layers), 'layer')} × {plural(len(heads), 'head')}, each map "
            + f"max-pooled to {what}"
            + ("" if n <= side else f" from {n_rows}×{n_cols}"),
            style="dim",
        )
    )
    header = Text(" " * label_w)
    for h in heads:
        header.append(f"h{h}".ljust(side + 1)[: side + 1], style="bold")
    console.print(header)
    for layer in layers:
        blocks = []
        for h in heads:
            step = maps.get((layer, h))
            if step is None:
                blocks.append([Text(" " * side)] * (side // 2 if color else side))
                continue
            pooled, _, _ = pool(step.data, side, side, "max", signed(step.kind))
            # as --view heatmap shades this map
            scale = Scale.for_kind(step.kind, pooled, opts.color_scale)
            levels = scale.levels(pooled)
            lines = _rows_to_text(levels, scale.diverging, color)
            blocks.append([line + Text(" " * (side - line.cell_len)) for line in lines])
        height = max(len(b) for b in blocks)
        for li in range(height):
            line = Text(f"L{layer}".ljust(label_w) if li == 0 else " " * label_w, style="bold")
            for b in blocks:
                line.append_text(b[li] if li < len(b) else Text(" " * side))
                line.append(" ")
            console.print(line)
        shares = [None if (s := maps.get((layer, h))) is None else first_or_sink(s) for h in heads]
        if any(f is not None for f in shares):
            figures = Text(" " * label_w)
            for f in shares:
                # 'f.97' / 's.40'; thumbnails narrower than that keep the number only
                shown = "" if f is None else f[0][0] * (side >= 4) + short_share(f[1])
                figures.append(clip(shown, side).ljust(side + 1), style="dim")
            console.print(figures)
        console.print()


def geometry_pair(trace: Trace) -> tuple[TraceStep, TraceStep] | None:
    """X and the first later step in the same space and over the same tokens (Y, then O,
    then H: an encoder–decoder's source X pairs with the encoder's H, not the decoder's)."""
    xs = trace.steps_named("X")
    if not xs:
        return None
    x = xs[0]
    for name in ("Y", "O", "H"):
        for s in trace.steps_named(name):
            if s.data.shape == x.data.shape and s.rows == x.rows:
                return x, s
    return None


def geometry_hint(trace: Trace) -> str:
    """Why a trace has no geometry picture, and what to pass to get one."""
    kept = [
        f"{name} ({steps[0].data.shape[1]}-d)"
        for name in ("X", "Y", "O", "H")
        if (steps := trace.steps_named(name)) and steps[0].data.ndim == 2
    ]
    have = f"this trace keeps {', '.join(kept)}" if kept else "this trace keeps no token vectors"
    pipeline = trace.config.get("pipeline")
    if pipeline == "model":
        fix = "pass --layer all to keep the model's final hidden states H"
    elif pipeline == "heads":
        fix = "a corpus's head statistics have no token vectors; run explain on one text"
    else:
        fix = "keep X and Y (or O) with --steps, e.g. --steps X,Y"
    return (
        "geometry needs X and an output (Y, O or H) of the same size, "
        f"to place both on one picture; {have}: {fix}"
    )


def render_geometry(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """The parameter-free article's picture: each token before (○, X) and after (●, Y) attention, projected to 2-D
    by one PCA fitted to both, with a measure of how much the points moved together."""
    pair = geometry_pair(trace)
    if pair is None:
        console.print(Text(geometry_hint(trace), style="yellow"))
        return
    x, y = pair
    n = x.data.shape[0]
    pts = pca_2d(np.vstack([x.data, y.data]))  # one shared projection: [2n, d] -> [2n, 2]
    width = max(20, min(console.width - 2, 78))
    height = max(8, min(18, width // 4))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    cols = np.rint((pts[:, 0] - lo[0]) / span[0] * (width - 1)).astype(int)
    rows = np.rint((hi[1] - pts[:, 1]) / span[1] * (height - 1)).astype(int)
    grid = [[(" ", "")] * width for _ in range(height)]
    color = colors_on(console)

    def free(r: int, c: int, length: int) -> bool:
        return (
            c >= 0 and c + length <= width and all(grid[r][c + k][0] == " " for k in range(length))
        )

    def put(r: int, c: int, s: str, style: str) -> None:
        for k, ch in enumerate(s):
            grid[r][c + k] = (ch, style)

    for i in range(2 * n):
        before = i < n
        if free(rows[i], cols[i], 1):
            put(rows[i], cols[i], "○" if before else "●", "dim" if before else "bold")
    # Labels whole or not at all: right of the marker, else left of it. "After" labels first.
    for i in list(range(n, 2 * n)) + list(range(n)):
        step_ = y if i >= n else x
        label = printable(step_.rows[i % n])[:10]
        style = ("bold cyan" if color else "") if i >= n else "dim"
        for c in (cols[i] + 1, cols[i] - cell_len(label)):
            if free(rows[i], c, cell_len(label)):
                put(rows[i], c, label, style)
                break
    console.print(
        Text(f"Geometry: {x.name} (○, before) and {y.name} (●, after) on one 2-D PCA", style="bold")
    )
    for r in range(height):
        line = Text("│")
        for ch, style in grid[r]:
            line.append(ch, style=style or None)
        console.print(line)
    console.print(Text("└" + "─" * width))
    before, after = mean_pairwise_distance(x.data), mean_pairwise_distance(y.data)
    change = (after - before) / before * 100 if before else 0.0
    console.print(
        Text(
            f"Mean pairwise distance: {format_number(before, opts.precision)} before → "
            f"{format_number(after, opts.precision)} after ({change:+.0f}%), in all {x.data.shape[1]} "
            "dimensions. "
            + (
                "The points moved closer together: each token now mixes in the others."
                if after < before
                else "The points did not move closer together."
            ),
            style="italic",
        )
    )
    console.print()

"""--view overlay: attention laid over the picture a vision model saw.

The picture is drawn from the trace's thumbnail (config["image"]) as half-block cells: each
terminal cell is '▀' with the upper pixel as foreground and the lower one as background, so
pixels come out square. One map is drawn large; several (every head of a layer, every layer …)
as a grid of small pictures. A map is one query's row over the patches: the class token's
(else, without one, the mean over every query), or the patch given by `position` (R, C); with
rollout in the trace, the last layer's rollout row.

Register tokens and other tokens that are not patches cannot be drawn on the picture: their
share of the row is listed under it. Patches whose output vector is an outlier in length (the
high-norm tokens of "Vision Transformers Need Registers") are marked '•', the query patch '+'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.columns import Columns
from rich.console import Console, Group
from rich.style import Style
from rich.text import Text

from attn_cli.errors import InputError, opt
from attn_cli.images import thumbnail_pixels
from attn_cli.render.common import RenderOptions, colors_on, format_number
from attn_cli.trace import Trace

SHADES = " ░▒▓█"
# How much of the picture shows where a patch gets no attention, and the heat colour blended
# in where it gets the map's largest weight.
DIM = 0.3
HEAT = np.array([255.0, 196.0, 0.0])
HEAT_MIX = 0.5
OUTLIER_MARK, QUERY_MARK = "•", "+"
LARGE_MAX_PX = 4  # pixels per patch of the one large picture, at most
SMALL_PX = 2  # … and of each picture of a grid


def image_info(trace: Trace) -> dict[str, Any]:
    info = trace.config.get("image")
    if not isinstance(info, dict) or "grid" not in info or "thumbnail" not in info:
        raise InputError(
            f"{opt('view', 'overlay')} draws on a picture: this trace was not made from an "
            "image (use a vision model: ViT, DeiT, DINOv2, CLIP, SigLIP)"
        )
    return info


def query_index(info: dict[str, Any], position: tuple[int, int] | None) -> int | None:
    """The token whose row is drawn: the patch at `position`, else the class token, else None
    (the mean of every row)."""
    rows, cols = info["grid"]
    prefix = list(info.get("prefix", []))
    if position is not None:
        if (
            not isinstance(position, tuple | list)
            or len(position) != 2
            or not all(isinstance(v, int | np.integer) for v in position)
        ):
            raise InputError(f"{opt('position', position)}: takes a patch's (row, column)")
        r, c = int(position[0]), int(position[1])
        if not (0 <= r < rows and 0 <= c < cols):
            raise InputError(
                f"{opt('position', f'{r},{c}')}: the patch grid is {rows} × {cols} (rows 0–"
                f"{rows - 1}, columns 0–{cols - 1})"
            )
        return len(prefix) + r * cols + c
    return 0 if prefix and prefix[0] == "[CLS]" else None


def patch_weights(data: np.ndarray, query: int | None, first: int, grid: list[int]) -> np.ndarray:
    """The query's row (or the mean row) over the patches, as a (rows, cols) grid."""
    row = data.mean(axis=0) if query is None else data[query]
    return np.asarray(row[first:], dtype=np.float64).reshape(grid[0], grid[1])


def overlay_pixels(thumb: np.ndarray, weights: np.ndarray, px: int) -> np.ndarray:
    """The picture at `px` pixels per patch, dimmed where a patch gets little attention and
    warmed where it gets the most: (rows·px, cols·px, 3) uint8. Weights are scaled by their
    maximum (a map with all its mass on one patch lights that patch fully)."""
    rows, cols = weights.shape
    h, w = rows * px, cols * px
    ys = ((np.arange(h) + 0.5) * thumb.shape[0] / h).astype(int)
    xs = ((np.arange(w) + 0.5) * thumb.shape[1] / w).astype(int)
    picture = thumb[ys][:, xs].astype(np.float64)
    top = float(weights.max())
    a = weights / top if top > 0 else np.zeros_like(weights)
    a = np.clip(np.repeat(np.repeat(a, px, axis=0), px, axis=1), 0.0, 1.0)[..., None]
    lit = picture * (DIM + (1 - DIM) * a)
    out = (1 - HEAT_MIX * a) * lit + HEAT_MIX * a * HEAT
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def half_blocks(pixels: np.ndarray, marks: dict[tuple[int, int], str] | None = None) -> list[Text]:
    """Two pixel rows per line of '▀' (upper pixel = foreground, lower = background); `marks`
    put a glyph on a cell (line, column) over its lower pixel's colour."""
    lines = []
    marks = marks or {}
    for y in range(0, pixels.shape[0], 2):
        line = Text()
        for x in range(pixels.shape[1]):
            top = tuple(int(v) for v in pixels[y, x])
            bottom = tuple(int(v) for v in pixels[y + 1, x]) if y + 1 < len(pixels) else None
            mark = marks.get((y // 2, x))
            if mark is not None:
                line.append(mark, Style(color="white", bgcolor=_rgb(bottom or top), bold=True))
            else:
                line.append("▀", Style(color=_rgb(top), bgcolor=_rgb(bottom) if bottom else None))
        lines.append(line)
    return lines


def _rgb(c: tuple[int, ...]) -> str:
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


def shade_lines(weights: np.ndarray, px: int) -> list[Text]:
    """Without colour: each patch as px characters of shade, one line per patch row."""
    top = float(weights.max())
    a = weights / top if top > 0 else np.zeros_like(weights)
    return [Text("".join(SHADES[int(v * (len(SHADES) - 1) + 0.5)] * px for v in row)) for row in a]


def patch_marks(info: dict[str, Any], query: int | None, px: int) -> dict[tuple[int, int], str]:
    """Glyphs on the cell at the top left of the outlier patches and the query patch."""
    first = len(info.get("prefix", []))
    cols = info["grid"][1]
    marks = {}
    for token, glyph in [(t, OUTLIER_MARK) for t in info.get("outliers", [])] + (
        [(query, QUERY_MARK)] if query is not None and query >= first else []
    ):
        r, c = divmod(int(token) - first, cols)
        marks[(r * px // 2, c * px)] = glyph
    return marks


def _picture(
    info: dict[str, Any],
    thumb: np.ndarray,
    weights: np.ndarray,
    query: int | None,
    px: int,
    color: bool,
) -> list[Text]:
    if not color:
        return shade_lines(weights, px)
    return half_blocks(overlay_pixels(thumb, weights, px), patch_marks(info, query, px))


def prefix_line(info: dict[str, Any], row: np.ndarray, precision: int) -> Text:
    """The share of the row that goes to tokens that are not patches ([CLS], registers …)."""
    registers = set(info.get("registers", []))
    line = Text("not on the picture: ", style="dim")
    for i, label in enumerate(info.get("prefix", [])):
        if i:
            line.append(" · ", style="dim")
        line.append(label, style="bold magenta" if i in registers else "bold")
        line.append(f" {format_number(float(row[i]), precision)}")
    return line


def _maps(trace: Trace, query: int | None) -> tuple[str, list[Any]]:
    """What to draw: the last rollout when the trace has one; else, for a model without a
    class token (SigLIP) and no query patch chosen, its pooling head's maps; else every W."""
    rollout = trace.steps_named("rollout")
    if rollout:
        return "rollout", [max(rollout, key=lambda s: s.layer or 0)]
    pool = trace.steps_named("W_pool")
    if query is None and pool:
        return "W_pool", pool
    return "W", trace.steps_named("W")


def render_overlay(console: Console, trace: Trace, opts: RenderOptions) -> None:

    info = image_info(trace)
    thumb = thumbnail_pixels(info["thumbnail"])
    grid = [int(v) for v in info["grid"]]
    first = len(info.get("prefix", []))
    query = query_index(info, opts.position)
    name, steps = _maps(trace, query)
    row_of = 0 if name == "W_pool" else query  # a pooling map is one row: the probe's
    if not steps:
        console.print(Text("no attention weights (W) in this trace"))
        return
    color = colors_on(console)
    who = (
        f"patch {opts.position[0]},{opts.position[1]}"
        if opts.position is not None
        else "the pooling head's probe"
        if name == "W_pool"
        else ("[CLS]" if query is not None else "every token (mean)")
    )
    what = "attention rollout" if name == "rollout" else "attention"
    console.print(Text(f"{what} from {who} over the {grid[0]} × {grid[1]} patches", style="bold"))
    if len(steps) == 1:
        step = steps[0]
        weights = patch_weights(step.data, row_of, first, grid)
        px = max(1, min(LARGE_MAX_PX, (console.width - 1) // grid[1]))
        console.print(Text(step.where or "", style="dim"))
        for line in _picture(info, thumb, weights, query, px, color):
            console.print(line)
        row = step.data.mean(axis=0) if row_of is None else step.data[row_of]
        if first:
            console.print(prefix_line(info, row, opts.precision))
    else:
        px = SMALL_PX if grid[1] * SMALL_PX + 2 <= console.width else 1
        cells = []
        for step in steps:
            weights = patch_weights(step.data, row_of, first, grid)
            where = "pool" if step.layer is None else f"L{step.layer}"
            title = Text(f"{where} H{step.head}", style="bold")
            cells.append(Group(title, *_picture(info, thumb, weights, query, px, color)))
        console.print(Columns(cells, padding=(0, 2)))
    _legend(console, info, color)


def _legend(console: Console, info: dict[str, Any], color: bool) -> None:
    most = "bright" if color else SHADES[-1]
    parts = [f"{most}: most attention (each picture scaled to its own largest weight)"]
    if color and info.get("outliers"):
        parts.append(f"{OUTLIER_MARK} high-norm outlier patch")
    if info.get("registers"):
        parts.append(f"{len(info['registers'])} register tokens")
    console.print(Text(" · ".join(parts), style="dim"))

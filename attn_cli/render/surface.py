"""The surface statistics of a corpus as Clark et al. (2019) draw them (their figures 2 and 4):
x = layer, one point per head, y = the statistic, a line through each layer's mean over heads.

Three panels: attention to special tokens (the first token / [CLS], [SEP], punctuation), to
positions (previous token, itself, next token), and the entropy of the attention rows. As SVG
(`surface_svg`, written as text: no plotting library) and in the terminal (`render_surface`,
the `surface` view). Both read only the Trace that `attn-cli heads` makes (steps to_first …
entropy, kind "heads", rows L0…, columns H0…).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
from rich.console import Console
from rich.text import Text

from attn_cli.render.common import RenderOptions, colors_on
from attn_cli.trace import Trace

# (statistic, legend label, colour: Okabe–Ito, readable for colour-blind readers)
SERIES = {
    "to_first": ("first token / [CLS]", "#0072B2"),
    "to_sep": ("[SEP] / end", "#D55E00"),
    "to_punct": ("punctuation", "#009E73"),
    "to_prev": ("previous token", "#CC79A7"),
    "to_self": ("same token", "#E69F00"),
    "to_next": ("next token", "#56B4E9"),
    "entropy": ("entropy (nats)", "#000000"),
}
PANELS = (
    ("Attention to special tokens", ("to_first", "to_sep", "to_punct")),
    ("Attention by position", ("to_prev", "to_self", "to_next")),
    ("Entropy of the attention rows", ("entropy",)),
)


@dataclass
class Series:
    name: str
    layers: list[int]  # the model's layer index of each row
    values: np.ndarray  # (layers, heads); NaN where nothing was counted

    def means(self) -> np.ndarray:
        """Each layer's mean over its heads (NaN heads left out)."""
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(self.values).sum(1)
            total = np.nansum(self.values, 1)
            return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def surface_series(trace: Trace) -> dict[str, Series]:
    """The trace's corpus statistics by name (those it has)."""
    out: dict[str, Series] = {}
    for name in SERIES:
        steps = [s for s in trace.steps_named(name) if s.kind == "heads"]
        if steps:
            s = steps[0]
            layers = [int(r.lstrip("L")) for r in s.rows]
            out[name] = Series(name, layers, np.asarray(s.data, dtype=np.float64))
    return out


def _top(panel: tuple[str, ...], series: dict[str, Series]) -> float:
    """The y axis' top: 1 for attention (a share), a round number above the entropy."""
    if panel != ("entropy",):
        return 1.0
    finite = [float(np.nanmax(series[n].values)) for n in panel if n in series]
    top = max([v for v in finite if math.isfinite(v)] or [1.0])
    return max(0.5, math.ceil(top * 2) / 2)


# --- SVG --------------------------------------------------------------------------------------

PANEL_W, PANEL_H = 300, 230
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 58, 34


def surface_svg(trace: Trace) -> str:
    """The figure as a standalone SVG document."""
    series = surface_series(trace)
    panels = [(t, [n for n in names if n in series]) for t, names in PANELS]
    panels = [(t, names) for t, names in panels if names]
    width = max(1, len(panels)) * PANEL_W
    height = PANEL_H + 22
    cfg = trace.config
    caption = (
        f"{cfg.get('model', '?')}: {cfg.get('lines', 0):,} lines, {cfg.get('tokens', 0):,} tokens "
        "· each point a head, each line the layer's mean over heads (Clark et al. 2019)"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f"<title>{escape(caption)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for i, (title, names) in enumerate(panels):
        out += _svg_panel(
            i * PANEL_W, title, [series[n] for n in names], _top(tuple(names), series)
        )
    out.append(f'<text x="8" y="{height - 8}" fill="#555555">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_panel(x0: float, title: str, group: list[Series], top: float) -> list[str]:
    layers = group[0].layers
    plot_w = PANEL_W - LEFT - RIGHT
    plot_h = PANEL_H - TOP - BOTTOM
    slot = plot_w / max(1, len(layers))

    def x_of(i: int, k: int) -> float:  # layer slot i, series k: side by side in the slot
        offset = (k - (len(group) - 1) / 2) * slot * 0.22
        return x0 + LEFT + slot * (i + 0.5) + offset

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - min(max(v / top, 0.0), 1.0))

    out = [
        '<g class="panel">',
        f'<text x="{x0 + LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for k, s in enumerate(group):  # legend
        label, colour = SERIES[s.name]
        lx = x0 + LEFT + (k % 2) * plot_w / 2
        ly = 32 + (k // 2) * 14
        out.append(f'<circle cx="{lx + 4:.1f}" cy="{ly - 4}" r="3.5" fill="{colour}"/>')
        out.append(f'<text x="{lx + 12:.1f}" y="{ly}">{escape(label)}</text>')
    # axes, grid and ticks
    x_axis, y_axis = x0 + LEFT, TOP + plot_h
    step = 0.25 if top <= 1 else 0.5 if top <= 3 else 1.0
    for t in range(round(top / step) + 1):
        v = t * step
        y = y_of(v)
        out.append(
            f'<line x1="{x_axis}" y1="{y:.1f}" x2="{x_axis + plot_w}" y2="{y:.1f}" '
            'stroke="#e6e6e6"/>'
        )
        out.append(f'<text x="{x_axis - 5}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(
        f'<path d="M{x_axis},{TOP} V{y_axis} H{x_axis + plot_w}" fill="none" stroke="#333333"/>'
    )
    every = max(1, math.ceil(len(layers) / 12))  # at most about 12 layer labels
    for i, layer in enumerate(layers):
        if i % every == 0:
            out.append(
                f'<text x="{x0 + LEFT + slot * (i + 0.5):.1f}" y="{y_axis + 14}" '
                f'text-anchor="middle">{layer}</text>'
            )
    out.append(
        f'<text x="{x_axis + plot_w / 2:.1f}" y="{y_axis + 28}" text-anchor="middle">layer</text>'
    )
    for k, s in enumerate(group):
        colour = SERIES[s.name][1]
        for i in range(len(layers)):
            for h, v in enumerate(s.values[i]):
                if math.isfinite(v):
                    out.append(
                        f'<circle class="head" data-layer="{layers[i]}" data-head="{h}" '
                        f'cx="{x_of(i, k):.1f}" cy="{y_of(float(v)):.1f}" r="2.3" '
                        f'fill="{colour}" fill-opacity="0.55"/>'
                    )
        points = [
            f"{x_of(i, k):.1f},{y_of(float(m)):.1f}"
            for i, m in enumerate(s.means())
            if math.isfinite(m)
        ]
        if points:
            out.append(
                f'<polyline class="mean" points="{" ".join(points)}" fill="none" '
                f'stroke="{colour}" stroke-width="1.8"/>'
            )
    out.append("</g>")
    return out


# --- terminal ---------------------------------------------------------------------------------

CHART_ROWS = 7


def render_surface(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """One small chart per statistic, side by side as the width allows: a column per layer,
    ● the layer's mean over heads, · one head, • several heads in that cell."""
    from rich.columns import Columns

    series = surface_series(trace)
    if not series:
        console.print(
            Text(
                "no corpus statistics (to_first … entropy) in this trace: attn-cli heads makes them"
            )
        )
        return
    color = colors_on(console)
    charts = []
    for _, names in PANELS:
        top = _top(tuple(names), series)
        charts += [_chart(series[n], top, color) for n in names if n in series]
    console.print(
        Text(
            "x = layer, y = the statistic: ● the layer's mean over heads, · one head, "
            "• several (Clark et al. 2019)",
            style="dim",
        )
    )
    console.print(Columns(charts, padding=(0, 3)))


def _chart(s: Series, top: float, color: bool) -> Text:
    label, colour = SERIES[s.name]
    style = colour if color and s.name != "entropy" else ""
    n = len(s.layers)

    def row_of(v: float) -> int:  # 0 = the top row
        return round((1 - min(max(v / top, 0.0), 1.0)) * (CHART_ROWS - 1))

    cells = [[" "] * n for _ in range(CHART_ROWS)]
    for i in range(n):
        rows = [row_of(float(v)) for v in s.values[i] if math.isfinite(v)]
        for r in set(rows):
            cells[r][i] = "·" if rows.count(r) == 1 else "•"
        mean = s.means()[i]
        if math.isfinite(mean):
            cells[row_of(float(mean))][i] = "●"
    text = Text(f"{s.name}: {label}\n", style="bold")
    for r, row in enumerate(cells):
        tick = f"{top:4.2f}" if r == 0 else (f"{0:4.2f}" if r == CHART_ROWS - 1 else "")
        text.append(f"{tick:>4} │", style="dim")
        text.append("".join(row), style=style)
        text.append("\n")
    text.append("     └" + "─" * n + "\n", style="dim")
    first, last = str(s.layers[0]), str(s.layers[-1])
    gap = max(1, n - len(first) - len(last))
    text.append("      " + (first + " " * gap + last if n > 1 else first) + " layer", style="dim")
    return text

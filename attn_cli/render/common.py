"""Console, colour scales and number formatting shared by every view."""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.cells import cell_len
from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from attn_cli.errors import InputError, opt
from attn_cli.trace import escaped

COLOR_SCALES = ("linear", "log")


def check_color_scale(value: object) -> None:
    if value not in COLOR_SCALES:
        raise InputError(f"{opt('color_scale')} takes linear or log, got {value!r}")


@dataclass
class RenderOptions:
    precision: int = 2
    max_rows: int = 24  # rows of a step table before "… k more rows"
    top_k: int = 3
    rows: tuple[int, int] | None = None  # heatmap zoom, half-open token ranges
    cols: tuple[int, int] | None = None
    pool: str = "max"  # heatmap block pooling: max or mean
    position: tuple[int, int] | None = None  # overlay: the query patch (row, col) of a picture
    color_scale: str = "linear"  # weight maps coloured by value or by log10 of it

    def __post_init__(self) -> None:
        """Bad values (Trace.show(precision=-1)) are InputErrors naming the parameter."""
        for name, least, most in (("precision", 0, 12), ("max_rows", 1, None), ("top_k", 1, None)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise InputError(f"{opt(name, value)}: must be an integer")
            value = int(value)
            setattr(self, name, value)
            if value < least or (most is not None and value > most):
                shown = f"{least} or more" if most is None else f"between {least} and {most}"
                raise InputError(f"{opt(name, value)}: must be {shown}")
        if self.pool not in ("max", "mean"):
            raise InputError(f"{opt('pool')} takes max or mean, got {self.pool!r}")
        check_color_scale(self.color_scale)


class TrimTrailingSpaces:
    """A text file that drops the spaces Rich pads a line's end with (table columns, wrapped
    paragraphs): piped output has no trailing whitespace. Spaces inside styled spans are
    followed by an escape code, not by the newline, so colours are untouched."""

    def __init__(self, file) -> None:
        self._file = file
        self._pending = ""  # spaces at the end of the last write: kept if more text follows

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        last = lines[-1].rstrip(" ")
        self._pending = lines[-1][len(last) :]
        self._file.write("\n".join([line.rstrip(" ") for line in lines[:-1]] + [last]))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


class DataConsole(Console):
    """A console for text that is data: whatever a view draws, a character that a terminal
    would interpret (ESC starting a clear-screen, an OSC 52 clipboard write or an OSC 8 link;
    bidi controls) reaches the terminal and the --svg/--html recordings as a visible escape.
    Strings from saved traces, model files and embedding tables go through here, whichever
    view prints them; the console's own control codes (Segment.control) are kept."""

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            text = segment.text
            if segment.control is None and not text.isprintable() and text != "\n":
                segment = Segment("\n".join(map(escaped, text.split("\n"))), segment.style)
            yield segment


def clip(text: str, width: int, mark: str = "…") -> str:
    """`text` cut to at most `width` terminal cells, the cut marked: the longest prefix that
    fits, found in a few measurements (a 300,000-character label costs no more than a short
    one)."""
    if cell_len(text) <= width:
        return text
    room = max(0, width - cell_len(mark))
    # A character takes at most 2 cells, so no longer prefix fits unless most of it is
    # zero-width (combining marks): then the cut comes a little early.
    text = text[: 2 * room + 8]
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cell_len(text[:mid]) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + mark if width > 0 else ""


# Rich's SVG template without its @font-face rules, which fetch Fira Code from a CDN when the
# picture is opened: an exported picture makes no network request, and uses the monospace
# fonts the viewer has.
SVG_FORMAT = """\
<svg class="rich-terminal" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">
    <!-- Generated with Rich https://www.textualize.io -->
    <style>
    .{unique_id}-matrix {{
        font-family: "Fira Code", "DejaVu Sans Mono", Menlo, Consolas, monospace;
        font-size: {char_height}px;
        line-height: {line_height}px;
        font-variant-east-asian: full-width;
    }}

    .{unique_id}-title {{
        font-size: 18px;
        font-weight: bold;
        font-family: arial;
    }}

    {styles}
    </style>

    <defs>
    <clipPath id="{unique_id}-clip-terminal">
      <rect x="0" y="0" width="{terminal_width}" height="{terminal_height}" />
    </clipPath>
    {lines}
    </defs>

    {chrome}
    <g transform="translate({terminal_x}, {terminal_y})" clip-path="url(#{unique_id}-clip-terminal)">
    {backgrounds}
    <g class="{unique_id}-matrix">
    {matrix}
    </g>
    </g>
</svg>
"""


def make_console(
    color: bool | None = None,
    width: int | None = None,
    file=None,
    record: bool = False,
    stderr: bool = False,
) -> Console:
    """color None: colours when writing to a terminal and NO_COLOR is unset; True: force them
    (e.g. for `| less -R` or SVG export); False: never. Markup, emoji codes and highlighting
    are off: token text is data and is never interpreted."""

    no_color = color is False or (color is None and "NO_COLOR" in os.environ)
    if not stderr:
        file = TrimTrailingSpaces(sys.stdout if file is None else file)
    return DataConsole(
        file=file,
        width=width,
        force_terminal=True if color else None,
        color_system="truecolor" if color else ("auto" if not no_color else None),
        no_color=no_color,
        markup=False,
        emoji=False,
        highlight=False,
        record=record,
        stderr=stderr,
        soft_wrap=False,
    )


def colors_on(console: Console) -> bool:
    return console.color_system is not None and not console.no_color


def format_number(v: float, precision: int) -> str:
    if v == -np.inf:
        return "−∞"
    if not np.isfinite(v):
        return "nan" if np.isnan(v) else "∞"
    if abs(v) >= 1e6:
        return f"{v:.{max(precision, 1)}e}"
    s = f"{v:.{precision}f}"
    if s.startswith("-") and s.strip("-0.") == "":
        s = s[1:]  # "-0.00" says nothing a reader needs
    return s


# coolwarm-like diverging scale and a sequential "Blues", as RGB anchor points.
_DIVERGING = np.array(
    [(59, 76, 192), (141, 176, 254), (242, 242, 242), (244, 154, 123), (180, 4, 38)], float
)
_SEQUENTIAL = np.array(
    [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)], float
)
LEVELS = 33  # quantisation of the colour scales: cached styles, and what a terminal can show


def _interp(anchors: np.ndarray, t: float) -> tuple[int, int, int]:
    x = t * (len(anchors) - 1)
    i = min(int(x), len(anchors) - 2)
    f = x - i
    rgb = anchors[i] * (1 - f) + anchors[i + 1] * f
    return int(round(rgb[0])), int(round(rgb[1])), int(round(rgb[2]))


@lru_cache(maxsize=256)
def level_style(diverging: bool, level: int) -> Style:
    """Background at `level` (0 … LEVELS-1) of a scale, with a readable foreground."""
    r, g, b = _interp(_DIVERGING if diverging else _SEQUENTIAL, level / (LEVELS - 1))
    fg = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
    return Style(color=fg, bgcolor=Color.from_rgb(r, g, b))


MASKED_STYLE = Style(color="grey62", bgcolor="grey23")


# Kinds whose values are never negative: a sequential scale (0 … max), not a diverging one.
NON_NEGATIVE_KINDS = ("weights", "partial_weights", "relevance", "prediction", "heads")


def signed(kind: str) -> bool:
    """A step kind whose values may be negative (scores, mixing weights, vectors …): shaded
    diverging around 0, pooled keeping each block's value of largest magnitude."""
    return kind not in NON_NEGATIVE_KINDS


# Kinds a log colour scale applies to: probabilities, where a sink or first token takes most
# of the weight and the rest differ by orders of magnitude too small for a linear scale.
LOG_KINDS = ("weights", "partial_weights")
LOG_DECADES = 4  # a log scale spans max/10^4 … max; anything smaller takes the lowest colour


@dataclass(frozen=True)
class Scale:
    """Maps values to colour levels: diverging around 0 (±vmax) or sequential (0 … vmax), or
    for weights on a log scale, sequential in log10 from vmax/10^LOG_DECADES to vmax."""

    diverging: bool
    vmax: float
    log: bool = False

    @classmethod
    def for_kind(cls, kind: str, data: np.ndarray, color_scale: str = "linear") -> Scale:
        # A block of rows at a time: a 20,000-token map is never copied whole (memory.py).
        vmax = 0.0
        rows = data.reshape(-1, data.shape[-1]) if data.ndim else data.reshape(1, 1)
        for start in range(0, rows.shape[0], 256):
            block = rows[start : start + 256]
            finite = np.abs(block[np.isfinite(block)])
            if finite.size:
                vmax = max(vmax, float(finite.max()))
        log = color_scale == "log" and kind in LOG_KINDS
        return cls(signed(kind), vmax if vmax > 0 else 1.0, log)

    @property
    def floor(self) -> float:
        """The lowest value the scale tells apart: 0, or vmax/10^LOG_DECADES on a log scale."""
        return self.vmax / 10**LOG_DECADES if self.log else 0.0

    def levels(self, values: np.ndarray) -> np.ndarray:
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.log10(np.maximum(values, self.floor) / self.floor) / LOG_DECADES
            t = np.clip(t, 0, 1)
        elif self.diverging:
            t = (np.clip(values / self.vmax, -1, 1) + 1) / 2
        else:
            t = np.clip(values / self.vmax, 0, 1)
        t = np.where(np.isfinite(values), t, 0.0)
        return np.rint(t * (LEVELS - 1)).astype(int)

    def style(self, value: float) -> Style:
        return self.styles(np.array([value]))[0]

    def styles(self, values: np.ndarray) -> list[Style]:
        """One style per value (a 1-D array): the cached level style, or masked for -inf."""
        return [
            MASKED_STYLE if v == -np.inf else level_style(self.diverging, int(lv))
            for v, lv in zip(values, self.levels(values), strict=True)
        ]

    def ends(self, precision: int) -> tuple[str, str]:
        """The scale's two ends as text, with enough decimals to tell them apart (a maximum of
        0.0038 reads '0.004', not '0.00')."""
        if self.log:  # the floor is 10^-4 of the maximum: two significant digits say it
            return f"{self.floor:.1e}".replace("e-0", "e-"), format_number(self.vmax, precision)
        lo = -self.vmax if self.diverging else 0.0
        p = precision
        while p < 12 and format_number(lo, p) == format_number(self.vmax, p):
            p += 1
        if self.vmax < 1e6:  # round up to the first digit shown, as much as the scale needs
            while p < 12 and abs(float(format_number(self.vmax, p)) - self.vmax) > self.vmax / 2:
                p += 1
        return format_number(lo, p), format_number(self.vmax, p)

    def legend(self, precision: int) -> Text:
        lo, hi = self.ends(precision)
        text = Text("colour  ")
        text.append(lo + " ")
        for lv in range(0, LEVELS, 4):
            text.append("  ", style=level_style(self.diverging, lv))
        text.append(" " + hi)
        if self.log:
            note = f"   (log scale: max/10^{LOG_DECADES} to table max)"
        else:
            note = "   (diverging around 0)" if self.diverging else "   (0 to table max)"
        text.append(note, style="dim")
        return text


def scale_legend(scale: Scale, opts: RenderOptions) -> Text:
    """A map's colour legend; when a log scale was asked for and this map's kind keeps its
    linear scale (scores, mixing weights, vectors), it says so."""
    text = scale.legend(opts.precision)
    if opts.color_scale == "log" and not scale.log:
        text.append("; kept linear", style="dim")
    return text

"""Console, colour scales and number formatting shared by every view."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text


@dataclass
class RenderOptions:
    precision: int = 2
    max_rows: int = 24  # rows of a step table before "… k more rows"
    top_k: int = 3
    rows: tuple[int, int] | None = None  # heatmap zoom, half-open token ranges
    cols: tuple[int, int] | None = None
    pool: str = "max"  # heatmap block pooling: max or mean
    position: tuple[int, int] | None = None  # overlay: the query patch (row, col) of a picture


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
    import sys

    no_color = color is False or (color is None and "NO_COLOR" in os.environ)
    if not stderr:
        file = TrimTrailingSpaces(sys.stdout if file is None else file)
    return Console(
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
NON_NEGATIVE_KINDS = ("weights", "relevance", "prediction", "heads")


@dataclass(frozen=True)
class Scale:
    """Maps values to colour levels: diverging around 0 (±vmax) or sequential (0 … vmax)."""

    diverging: bool
    vmax: float

    @classmethod
    def for_kind(cls, kind: str, data: np.ndarray) -> Scale:
        finite = data[np.isfinite(data)]
        vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
        return cls(kind not in NON_NEGATIVE_KINDS, vmax if vmax > 0 else 1.0)

    def levels(self, values: np.ndarray) -> np.ndarray:
        if self.diverging:
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
        text.append(
            "   (diverging around 0)" if self.diverging else "   (0 to table max)", style="dim"
        )
        return text

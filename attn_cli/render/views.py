"""Choosing and running views. Every view reads only a Trace."""

from __future__ import annotations

from importlib import import_module

from rich.console import Console

from attn_cli.errors import InputError, opt
from attn_cli.render.common import RenderOptions
from attn_cli.render.step_tables import trace_header
from attn_cli.trace import Trace

VIEWS = (
    "auto",
    "steps",
    "overview",
    "summary",
    "top",
    "heatmap",
    "geometry",
    "grid",
    "surface",
    "overlay",
)


def auto_view(trace: Trace) -> str:
    """Attention maps from several layers and several heads: the overview, not every table."""
    maps = trace.steps_named("W")
    several_layers = len({s.layer for s in maps}) > 1
    several_heads = len({s.head for s in maps}) > 1
    return "overview" if several_layers and several_heads else "steps"


# Views about the whole model: with --model and no --layer/--head they take every layer and head.
WHOLE_MODEL_VIEWS = ("grid", "overview", "summary")

RENDERERS = {
    "steps": ("step_tables", "render_steps"),
    "overview": ("overview", "render_overview"),
    "summary": ("top", "render_summary"),
    "top": ("top", "render_top"),
    "heatmap": ("pictures", "render_heatmap"),
    "geometry": ("pictures", "render_geometry"),
    "grid": ("pictures", "render_grid"),
    "surface": ("surface", "render_surface"),  # corpus statistics (attn-cli heads)
    "overlay": ("overlay", "render_overlay"),
}


def parse_views(values: list[str] | None) -> list[str]:
    """--view is repeatable and comma-separated."""
    views = [
        v.strip().lower() for value in (values or ["auto"]) for v in value.split(",") if v.strip()
    ]
    for v in views:
        if v not in VIEWS:
            raise InputError(f"{opt('view')} {v!r} is not a view (choose from {', '.join(VIEWS)})")
    return views or ["auto"]


def render(console: Console, trace: Trace, views: list[str], opts: RenderOptions) -> None:
    console.print(trace_header(trace))
    # A trace of a picture shows the picture (with attention over it) first.
    picture = ["overlay"] if "image" in trace.config and "overlay" not in views else []
    for view in views:
        names = [*picture, auto_view(trace)] if view == "auto" else [view]
        for name in names:
            module, function = RENDERERS[name]  # imported on first use: start-up stays light
            getattr(import_module(f"attn_cli.render.{module}"), function)(console, trace, opts)


def parse_range(value: str | None, flag: str) -> tuple[int, int] | None:
    """'A:B' (either side may be empty) -> half-open (A, B)."""
    if value is None:
        return None
    a, sep, b = value.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else 1 << 62
    except ValueError:
        lo = hi = -1
    if not sep or lo < 0 or hi <= lo:
        raise InputError(
            f"{flag} takes a range A:B of token positions with 0 <= A < B, got {value!r}"
        )
    return lo, hi

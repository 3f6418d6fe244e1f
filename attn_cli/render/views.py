"""Choosing and running views. Every view reads only a Trace."""

from __future__ import annotations

from rich.console import Console

from attn_cli.errors import InputError
from attn_cli.render.common import RenderOptions
from attn_cli.trace import Trace

VIEWS = ("auto", "steps", "overview")


def auto_view(trace: Trace) -> str:
    """Attention maps from several layers and several heads: the overview, not every table."""
    maps = trace.steps_named("W")
    several_layers = len({s.layer for s in maps}) > 1
    several_heads = len({s.head for s in maps}) > 1
    return "overview" if several_layers and several_heads else "steps"


def parse_views(values: list[str] | None) -> list[str]:
    """--view is repeatable and comma-separated."""
    views = [
        v.strip().lower() for value in (values or ["auto"]) for v in value.split(",") if v.strip()
    ]
    for v in views:
        if v not in VIEWS:
            raise InputError(f"--view {v!r} is not a view (choose from {', '.join(VIEWS)})")
    return views or ["auto"]


def render(console: Console, trace: Trace, views: list[str], opts: RenderOptions) -> None:
    from attn_cli.render.overview import render_overview
    from attn_cli.render.steps import render_steps

    for view in views:
        if view == "auto":
            view = auto_view(trace)
        if view == "steps":
            render_steps(console, trace, opts)
        elif view == "overview":
            render_overview(console, trace, opts)

"""The overview: one cell per layer × head, naming the pattern each attention map follows."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from attn_cli.render.common import RenderOptions, Scale, colors_on
from attn_cli.render.steps import compact_table, trace_header
from attn_cli.render.summary import dominant_pattern
from attn_cli.trace import Trace

SHORT = {"previous": "prev", "self": "self", "first": "first", "broad": "broad"}


def attention_maps(trace: Trace) -> dict[tuple[int, int], object]:
    """(layer, head) -> the W step; layer/head None count as 0."""
    return {(s.layer or 0, s.head or 0): s for s in trace.steps_named("W")}


def render_overview(console: Console, trace: Trace, opts: RenderOptions) -> None:
    console.print(trace_header(trace))
    maps = attention_maps(trace)
    layers = sorted({k[0] for k in maps})
    heads = sorted({k[1] for k in maps})
    console.print(
        Text(
            f"{len(maps)} attention maps ({len(layers)} layers × {len(heads)} heads): each cell names the "
            "pattern the head follows most and its mean weight (prev = previous token, self = itself, "
            "[CLS]/first = the first token, [SEP]; broad = no pattern ≥ 0.40, shown with its relative "
            "entropy). Pick one with --layer/--head for every step.",
            style="italic",
        )
    )
    color = colors_on(console)
    scale = Scale(False, 1.0)
    table = compact_table()
    table.add_column(Text("layer"), justify="right", no_wrap=True, style="bold")
    for h in heads:
        table.add_column(Text(f"h{h}"), justify="left", no_wrap=True)
    for layer in layers:
        row = [Text(str(layer))]
        for h in heads:
            step = maps.get((layer, h))
            if step is None:
                row.append(Text(""))
                continue
            name, score = dominant_pattern(step.data, trace.tokens)
            label = f"{SHORT.get(name, name)} {score:.2f}".replace("0.", ".", 1)
            row.append(
                Text(label, style=scale.style(score if name != "broad" else 0.0) if color else "")
            )
        table.add_row(*row)
    console.print(table)
    console.print()

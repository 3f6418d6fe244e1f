"""The overview: one cell per layer × head, naming the pattern each attention map follows."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attn_cli.render.common import RenderOptions, Scale, colors_on
from attn_cli.render.statistics import KIND_NOTES, dominant_pattern, special_names
from attn_cli.trace import MODEL, Trace, TraceStep

# One letter per pattern keeps a 12-head row inside 80 columns.
CODES = {"previous": "P", "self": "S", "[SEP]": "E", "broad": "~"}


def legend(tokens: list[str]) -> str:
    """What the codes mean, naming only the special tokens this text has."""
    first, seps = special_names(tokens)
    parts = [
        "P = previous token",
        "S = itself",
        "F = first token" + (f" ({first})" if first else ""),
    ]
    if seps:
        parts.append(f"E = {'/'.join(seps)} tokens")
    return ", ".join(parts) + ", ~ = broad (no pattern ≥ 0.40; the number is its relative entropy)"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def attention_maps(trace: Trace, block: str | None = None) -> dict[tuple[int, int], TraceStep]:
    """(layer, head) -> the W step of one attention block; layer/head None count as 0."""
    return {(s.layer or 0, s.head or 0): s for s in trace.steps_named("W") if s.block == block}


def block_title(block: str | None) -> str:
    """'cross attention: ' before a block's view when a trace has several blocks, or ''."""
    return "" if block is None else f"{block} attention: "


def cell(name: str, score: float) -> str:
    code = CODES.get(name, "F")  # any other name is the first-token pattern ([CLS], <s>, first)
    return f"{code}{score:.2f}".replace("0.", ".", 1).replace("1.00", "1.0")


def render_overview(console: Console, trace: Trace, opts: RenderOptions) -> None:
    for block in trace.blocks or [None]:
        render_block_overview(console, trace, block)


def render_block_overview(console: Console, trace: Trace, block: str | None) -> None:
    maps = attention_maps(trace, block)
    layers = sorted({k[0] for k in maps})
    heads = sorted({k[1] for k in maps})
    how = (
        "Pick one with --layer N --head N for every step."
        if trace.config.get("pipeline") == MODEL
        else "--view steps shows every step."
    )
    console.print(
        Text(
            f"{block_title(block)}{plural(len(maps), 'attention map')}, {plural(len(layers), 'layer')} × "
            f"{plural(len(heads), 'head')}: the pattern each map follows most, with its mean "
            f"weight. {how}",
            style="italic",
        )
    )
    console.print(Text(legend(trace.tokens), style="dim"))
    color = colors_on(console)
    scale = Scale(False, 1.0)
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 0), show_header=True)
    table.add_column(Text("layer"), justify="right", no_wrap=True, style="bold")
    for h in heads:
        table.add_column(Text(f" h{h}"), justify="right", no_wrap=True, min_width=5)
    for layer in layers:
        row = [Text(str(layer))]
        for h in heads:
            step = maps.get((layer, h))
            if step is None:
                row.append(Text(""))
                continue
            name, score = dominant_pattern(trace, step)
            style = scale.style(0.0 if name == "broad" else score) if color else ""
            row.append(Text(" ") + Text(cell(name, score), style=style))
        table.add_row(*row)
    console.print(table)
    for kind in dict.fromkeys(s.kind for s in maps.values()):
        if kind in KIND_NOTES:
            console.print(Text(KIND_NOTES[kind], style="dim"))
    console.print()

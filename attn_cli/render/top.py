"""The `top` and `summary` views: who attends to whom, how spread out, and which heads follow
well-known patterns."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.text import Text

from attn_cli.attention import entropy
from attn_cli.render.common import RenderOptions, format_number
from attn_cli.render.statistics import (
    KIND_NOTES,
    map_patterns,
    relative_entropy,
    row_shares,
    sink_mass,
    special_names,
    visible_counts,
)
from attn_cli.render.step_tables import compact_table
from attn_cli.trace import Trace, TraceStep, printable


def _title(what: str, step: TraceStep) -> Text:
    t = Text(what, style="bold")
    if step.where:
        t.append(f"   {step.where}", style="dim")
    return t


def top_indices(w: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's k largest entries, largest first, ties in column order (as a stable sort
    would give) — without sorting whole rows, so 20,000 × 20,000 stays quick and small."""
    out = []
    for start in range(0, w.shape[0], 512):
        block = w[start : start + 512]
        kth = -np.partition(-block, k - 1, axis=1)[:, k - 1]
        for row, t in zip(block, kth, strict=True):
            cand = np.flatnonzero(row >= t)
            out.append(cand[np.argsort(-row[cand], kind="stable")][:k])
    return out


def received(w: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k tokens that receive the most attention: column sums (how many rows' worth of
    weight lands on each token)."""
    col = w.sum(axis=0)
    order = np.argsort(-col, kind="stable")[:k]
    return [(int(j), float(col[j])) for j in order]


def block_counts(step: TraceStep) -> np.ndarray:
    """The keys each row of a zoomed block reads: its cells the mask leaves (weight > 0)."""
    return np.maximum((step.data > 0).sum(axis=1), 1)


def render_top(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """Every token's top-k attended tokens, its entropy, then the most-attended tokens.
    Partial weights add each row's sink mass; a mixing map ranks by absolute share."""
    p = opts.precision
    # W_block: a long text's exact block (long.py), its rows the tokens of the zoom
    for step in [*trace.steps_named("W"), *trace.steps_named("W_block")]:
        w = row_shares(step)
        sink = sink_mass(step)
        k = min(opts.top_k, w.shape[1])
        title = f"Top {k} attended tokens per token, from {step.name}"
        if not step.self_map and step.name == "W":
            title += f" ({step.col_axis or 'key'} tokens)"
        console.print(_title(title, step))
        table = compact_table()
        table.add_column(Text("token"), no_wrap=True, style="bold")
        table.add_column(Text(f"top {k} (weight)"), no_wrap=True)
        table.add_column(Text("entropy"), justify="right", no_wrap=True)
        table.add_column(Text("vs uniform"), justify="right", no_wrap=True)
        if sink is not None:
            table.add_column(Text("sink"), justify="right", no_wrap=True)
        order = top_indices(w, k)
        seen = visible_counts(trace, step) if step.name == "W" else block_counts(step)
        h, rel = entropy(w), relative_entropy(w, seen)
        for i in range(w.shape[0]):
            picks = "  ".join(
                f"{printable(step.cols[j])} {format_number(step.data[i, j], p)}"
                for j in order[i]
                if w[i, j] > 0
            )
            cells = [
                Text(printable(step.rows[i])),
                Text(picks),
                Text(format_number(h[i], p)),
                Text(format_number(rel[i], p)),
            ]
            if sink is not None:
                cells.append(Text(format_number(sink[i], p)))
            table.add_row(*cells)
        console.print(table)
        most = ", ".join(
            f"{printable(step.cols[j])} {format_number(v, p)}" for j, v in received(w, k)
        )
        console.print(Text(f"Most attention received (column sums, out of {w.shape[0]}): {most}"))
        console.print(
            Text(
                "Entropy is in nats; 'vs uniform' divides it by log of the number of tokens the "
                "row may see (all n, or fewer under a causal mask): 1 = spread evenly over them, "
                "0 = all on one token.",
                style="italic",
            )
        )
        if step.kind in KIND_NOTES:
            console.print(Text(KIND_NOTES[step.kind], style="italic"))
        console.print()


def map_name(step: TraceStep) -> str:
    """'L2 H5', 'H0', or 'W' for a trace's only map: short, so every column fits 80; a
    block's name first where the trace has several ('cross L2 H5')."""
    parts = [] if step.block is None else [step.block]
    if step.layer is not None:
        parts.append(f"L{step.layer}")
    if step.head is not None:
        parts.append(f"H{step.head}")
    return " ".join(parts) or "W"


SHORT = {"previous": "prev"}


def render_summary(console: Console, trace: Trace, opts: RenderOptions) -> None:
    """One row per attention map: spread, most-attended tokens, and named pattern scores."""
    maps = trace.steps_named("W")
    if not maps:
        console.print(Text("no attention weights (W) in this trace"))
        return
    p = opts.precision
    patterns = [map_patterns(trace, s) for s in maps]
    sinks = [sink_mass(s) for s in maps]
    names = list(dict.fromkeys(n for pat in patterns for n in pat))
    console.print(Text("Summary of every attention map", style="bold"))
    table = compact_table()
    table.add_column(Text("map"), no_wrap=True, style="bold")
    table.add_column(Text("entropy"), justify="right", no_wrap=True)
    table.add_column(Text("rel."), justify="right", no_wrap=True)
    # The one column that may wrap, so the numbers are never cut at 80 columns.
    table.add_column(Text(f"most received (top {opts.top_k})"), ratio=1, overflow="fold")
    if any(sink is not None for sink in sinks):
        table.add_column(Text("sink"), justify="right", no_wrap=True)
    for n in names:
        table.add_column(Text(SHORT.get(n, n)), justify="right", no_wrap=True)
    for s, pat, sink in zip(maps, patterns, sinks, strict=True):
        w = row_shares(s)
        most = " ".join(printable(s.cols[j]) for j, _ in received(w, opts.top_k))
        mean_sink = [] if sink is None else [Text(format_number(float(sink.mean()), p))]
        if sink is None and any(x is not None for x in sinks):
            mean_sink = [Text("")]
        table.add_row(
            Text(map_name(s)),
            Text(format_number(float(entropy(w).mean()), p)),
            Text(format_number(float(relative_entropy(w, visible_counts(trace, s)).mean()), p)),
            Text(most),
            *mean_sink,
            *[Text(format_number(pat[n], p) if n in pat else "") for n in names],
        )
    console.print(table)
    for kind in dict.fromkeys(s.kind for s in maps):
        if kind in KIND_NOTES:
            console.print(Text(KIND_NOTES[kind], style="italic"))
    first, seps = special_names(trace.tokens)
    words = f"{first or 'first'} = on the first token"
    if seps:
        words += f", [SEP] = on {'/'.join(seps)} tokens"
    console.print(
        Text(
            "L = layer, H = head. Entropy: mean over rows, in nats; rel.: divided by log of the "
            "tokens each row may see (1 = spread evenly). Pattern scores are mean weights: prev "
            f"= on the token just before, self = on itself, {words}.",
            style="italic",
        )
    )
    console.print()

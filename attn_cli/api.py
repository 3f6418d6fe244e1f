"""The public API: text in, Trace out. The CLI is a thin layer over these functions.

    t = attn_cli.explain("hi how are you")                         # parameter-free attention
    t = attn_cli.explain("the cat sat", qkv=True, heads=2, causal=True)
    m = attn_cli.load_model("minilm")
    t = m.trace("the bank of the river", layers="all", heads="all")

Every option is checked when the call is made; a mistake raises InputError naming the
parameter (`layer=9: minilm has 6 layers (0–5) or 'all'`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from attn_cli.errors import InputError
from attn_cli.export import loads_traces, read_bytes
from attn_cli.inputs import read_file
from attn_cli.options import Options
from attn_cli.pipelines import Pipeline
from attn_cli.trace import Trace

__all__ = ["Options", "explain", "explain_all", "load", "load_all"]


def explain(text: str | None = None, *, file: str | Path | None = None, **options: Any) -> Trace:
    """One text through the parameter-free pipeline (default), `qkv=True`, or `model=...`.
    Takes the options of `Options` as keywords; returns the Trace. `file`: a UTF-8 text file
    read whole as the one text. With `model`, `rows`/`cols` ('A:B' or (A, B)) add the exact
    block of weights W[rows, cols] and `long` chooses the blockwise path (Model.traces)."""
    if file is not None:
        if text is not None:
            raise InputError("explain(): give text or file=, not both")
        text = read_file(file)
    if text is None:
        raise InputError("explain(): give a text, or file=PATH")
    return next(iter(explain_all([text], **options)))


def explain_all(texts: Iterable[str], **options: Any) -> Iterator[Trace]:
    """One trace per text, computed as it is consumed (memory does not grow with the number of
    texts). The options are checked now, before the first text."""
    long = {k: options.pop(k) for k in ("rows", "cols", "long") if k in options}
    opts = Options.checked(options, "explain")
    if long and opts.model is None:
        raise InputError(f"{', '.join(long)}: apply with model= (a real checkpoint)")
    if opts.model is not None:
        from attn_cli.pretrained import load_model

        model = load_model(opts.model)
        layers, heads = model.select(opts.layer, opts.head, ("layer", "head"))
        return model.traces(
            texts, layers=layers, heads=heads, steps=opts.steps, pair=opts.pair, **long
        )
    return Pipeline(opts).traces(texts)


def load(path: str | Path) -> Trace:
    """A trace saved with `Trace.save` or `--json` (one trace; see `load_all` for JSON Lines)."""
    traces = load_all(path)
    if len(traces) != 1:
        raise InputError(f"{path} holds {len(traces)} traces: use attn_cli.load_all")
    return traces[0]


def load_all(path: str | Path) -> list[Trace]:
    """Every trace in a JSON or JSON Lines file written by attn-cli."""

    return loads_traces(read_bytes(path), str(path))

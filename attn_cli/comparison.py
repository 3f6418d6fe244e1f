"""Two texts side by side: the same token in two contexts.

Attention is what makes a token's vector context-aware. `compare` runs two texts through the
same pipeline (parameter-free, Q/K/V or a real checkpoint) and, for every token the two share
(matched by token id, the k-th occurrence in one with the k-th in the other), measures how far
apart its vectors are: the cosine similarity of its input vectors (X: equal for the same token
without position embeddings) and of its output vectors (Y, O or a model's final hidden states
H), and, for a model, of its hidden state at every layer.

    from attn_cli.comparison import compare
    c = compare("the bank of the river", "the bank approved the loan")
    c.shared[1].token, c.shared[1].cos_out       # ('bank', 0.94…)
    c.show(); c.save("bank.json"); load_comparison("bank.json")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from attn_cli.api import Options, explain_all
from attn_cli.errors import InputError, opt
from attn_cli.export import (
    COMPARISON_FORMAT,
    COMPARISON_VERSION,
    atomic_write,
    check_version,
    checked_notes,
    json_chunks,
    need,
    only_steps,
    parse_documents,
    read_bytes,
    trace_from_document,
)
from attn_cli.narrate import PARAMETER_STEPS
from attn_cli.options import parse_selection
from attn_cli.trace import Trace, TraceStep, token_labels

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Shared:
    """One token present in both texts."""

    token: str  # its printable text
    a: int  # position in text A
    b: int  # position in text B
    cos_in: float  # cosine of the input vectors (X)
    cos_out: float  # cosine of the output vectors (Y, O or H)
    cos_layers: list[float] = field(default_factory=list)  # models: X of each layer, then H


@dataclass
class Comparison:
    a: Trace
    b: Trace
    input_name: str  # "X"
    output_name: str  # "Y", "O", "Y_concat" or "H"
    shared: list[Shared]
    layer: int | None = None  # the attention map shown (models)
    head: int | None = None
    notes: list[str] = field(default_factory=list)

    def attention(self, which: str) -> TraceStep:
        """The attention map (W) shown for text 'a' or 'b'."""
        trace = self.a if which == "a" else self.b
        return trace.find("W", self.layer, self.head)

    def __repr__(self) -> str:
        return (
            f"<Comparison {len(self.a.tokens)} vs {len(self.b.tokens)} tokens · "
            f"{len(self.shared)} shared · {self.a.text!r} / {self.b.text!r}>"
        )

    def show(
        self, console: Console | None = None, width: int | None = None, precision: int = 2
    ) -> None:
        """Print it as `attn-cli compare` does."""
        from attn_cli.render.common import RenderOptions, make_console
        from attn_cli.render.compare import render_comparison

        render_comparison(
            console or make_console(width=width), self, RenderOptions(precision=precision)
        )

    def save(self, path: str | Path) -> None:
        """Write it as JSON (atomically): both traces and every shared token's cosines.
        `attn-cli show PATH` prints it again; `load_comparison(PATH)` reads it back."""

        atomic_write(path, comparison_chunks(self))


def comparison_chunks(c: Comparison) -> Iterator[bytes]:
    """The comparison as one JSON document: what compare measured, then the two traces
    (streamed as `--json` streams a trace; without the parameter matrices W_q … W_o, as
    explain's export by default: they are the same for both texts and compare shows none)."""

    head = {
        "format": COMPARISON_FORMAT,
        "version": COMPARISON_VERSION,
        "input": c.input_name,
        "output": c.output_name,
        "layer": c.layer,
        "head": c.head,
        "notes": c.notes,
        "shared": [vars(s) for s in c.shared],
    }
    yield orjson.dumps(head)[:-1]
    for key, trace in (("a", c.a), ("b", c.b)):
        yield f',"{key}":'.encode()
        kept = [n for n in trace.step_names if n not in PARAMETER_STEPS]
        for chunk in json_chunks([only_steps(trace, kept)]):
            yield chunk.removesuffix(b"\n")
    yield b"}\n"


def load_comparison(path: str | Path) -> Comparison:
    """A comparison saved with `Comparison.save` or `attn-cli compare --json`."""

    docs = parse_documents(read_bytes(path), str(path))
    if len(docs) != 1:
        raise InputError(f"{path}: not an attn-cli comparison (it holds {len(docs)} documents)")
    return comparison_from_document(docs[0], str(path))


def comparison_from_document(doc: Any, where: str) -> Comparison:
    """Check an untrusted comparison document field by field, then build it."""
    need(isinstance(doc, dict), where, "not an attn-cli comparison (expected a JSON object)")
    need(
        doc.get("format") == COMPARISON_FORMAT,
        where,
        f"not an attn-cli comparison (format is not {COMPARISON_FORMAT!r})",
    )
    check_version(doc, where, "comparison", COMPARISON_VERSION)
    a = trace_from_document(doc.get("a"), f"{where} trace a")
    b = trace_from_document(doc.get("b"), f"{where} trace b")
    names = {doc.get("input"), doc.get("output")}
    need(
        all(isinstance(n, str) and a.steps_named(n) and b.steps_named(n) for n in names),
        where,
        "'input' and 'output' must name steps both traces hold",
    )
    layer, head = doc.get("layer"), doc.get("head")
    need(
        all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (layer, head)),
        where,
        "'layer' and 'head' must be integers or null",
    )
    try:
        for t in (a, b):
            t.find("W", layer, head)
    except KeyError:
        raise InputError(
            f"{where}: the traces have no attention map W for 'layer'/'head'"
        ) from None
    notes = checked_notes(doc, where)
    entries = doc.get("shared")
    need(isinstance(entries, list), where, "'shared' must be a list")
    shared = []
    for i, e in enumerate(entries):
        at = f"{where} shared {i}"
        need(isinstance(e, dict) and isinstance(e.get("token"), str), at, "needs a 'token' string")
        for key, count in (("a", len(a.tokens)), ("b", len(b.tokens))):
            v = e.get(key)
            need(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count,
                at,
                f"'{key}' must be a token position of trace {key} (0–{count - 1})",
            )
        layers = e.get("cos_layers", [])
        need(isinstance(layers, list), at, "'cos_layers' must be a list")
        numbers = [e.get("cos_in"), e.get("cos_out"), *layers]
        need(
            all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers),
            at,
            "cosines must be numbers",
        )
        shared.append(
            Shared(
                e["token"], e["a"], e["b"], e["cos_in"], e["cos_out"], [float(v) for v in layers]
            )
        )
    lengths = {len(s.cos_layers) for s in shared}
    need(len(lengths) <= 1, where, "every shared token needs the same number of 'cos_layers'")
    return Comparison(a, b, doc["input"], doc["output"], shared, layer, head, notes)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """u·v / (‖u‖‖v‖) in float64; 0 when either vector is zero."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0


def shared_positions(ids_a: list[int], ids_b: list[int]) -> list[tuple[int, int]]:
    """Pairs (i, j) with ids_a[i] == ids_b[j]: the k-th occurrence of a token in A with its k-th
    occurrence in B, in A's order."""
    where_b: dict[int, list[int]] = {}
    for j, t in enumerate(ids_b):
        where_b.setdefault(t, []).append(j)
    seen: dict[int, int] = {}
    pairs = []
    for i, t in enumerate(ids_a):
        k = seen.get(t, 0)
        seen[t] = k + 1
        if k < len(where_b.get(t, [])):
            pairs.append((i, where_b[t][k]))
    return pairs


def output_step_name(trace: Trace) -> str:
    for name in ("H", "O", "Y_concat", "Y"):
        if trace.steps_named(name):
            return name
    raise InputError("the traces have no output vectors (Y, O or H) to compare")


def compare(text_a: str, text_b: str, **options: Any) -> Comparison:
    """Both texts through the same pipeline (the options of `attn_cli.explain`); for a model,
    `layer` and `head` choose the attention map shown (default: the middle layer, head 0)."""
    from attn_cli.pretrained import load_model

    if options.get("steps") is not None:
        raise InputError(f"{opt('steps')}: compare keeps the steps it needs")
    opts = Options.checked(options, "compare")
    if opts.pair is not None:
        raise InputError(f"{opt('pair')}: compare takes two texts; give the pair to explain")
    layer = head = None
    if opts.model is None:
        traces = list(explain_all([text_a, text_b], **vars(opts)))
    else:
        model = load_model(opts.model)
        if model.family.seq2seq is not None:
            raise InputError(
                f"{model.name} is an encoder–decoder model ({model.family.name}): compare takes "
                "a model that reads one text (explain --target shows its encoder, decoder and "
                "cross-attention)"
            )
        d = model.dims
        layer = _one(opts.layer, d.layers // 2, d.layers, "layer", model.name)
        head = _one(opts.head, 0, d.heads, "head", model.name)
        traces = [
            model.trace(t, layers="all", heads=[head], steps=["X", "W", "H"])
            for t in (text_a, text_b)
        ]
    a, b = traces
    if opts.model is None and opts.qkv and opts.heads > 1:
        head = 0
    out = output_step_name(a)
    first = lambda t, name: t.steps_named(name)[0].data  # noqa: E731
    xa, xb, ya, yb = first(a, "X"), first(b, "X"), first(a, out), first(b, out)
    labels = token_labels(a.tokens)
    shared = []
    for i, j in shared_positions(a.token_ids, b.token_ids):
        s = Shared(labels[i], i, j, cosine(xa[i], xb[j]), cosine(ya[i], yb[j]))
        if opts.model is not None:
            xs_a, xs_b = a.steps_named("X"), b.steps_named("X")
            s.cos_layers = [
                cosine(sa.data[i], sb.data[j]) for sa, sb in zip(xs_a, xs_b, strict=True)
            ] + [s.cos_out]
        shared.append(s)
    notes = []
    if head is not None and opts.model is None:
        notes.append(f"attention shown for head 0 of {opts.heads}; the outputs combine every head")
    return Comparison(a, b, "X", out, shared, layer, head, notes)


def _one(value: Any, default: int, count: int, name: str, model: str) -> int:
    if value is None:
        return default
    chosen = parse_selection(value, count, name, f"--{name}", f"{model} has {count} {name}s")
    if len(chosen) != 1:
        raise InputError(f"{opt(name, value)}: compare shows one attention map; give one number")
    return chosen[0]

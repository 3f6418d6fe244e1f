"""The one data model: a Trace is everything a run computed, in order.

Renderers and exporters read a Trace and nothing else, so a saved trace renders exactly as the
run that produced it.
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from attn_cli.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

# What a step's matrix holds; decides its colour scale and how its axes are labelled.
KINDS = (
    "vectors",  # tokens × dimensions (X, Q, K, V, Y …): signed, diverging colours
    "scores",  # queries × keys, unnormalised (W_raw, W_scaled, W_masked): diverging
    "weights",  # queries × keys, rows sum to 1 (W): sequential
    # queries × keys, rows are probabilities that sum to less than 1: the rest of each row's
    # mass went elsewhere (a sink key that is not shown as a column): sequential
    "partial_weights",
    # queries × keys, an unnormalised mixing matrix: output row i = Σ_j A[i, j]·v_j, signed,
    # rows need not sum to 1 (linear attention): diverging
    "mixing",
    "parameters",  # dimensions × dimensions (W_q, W_k, W_v, W_o): diverging
    "relevance",  # tokens × tokens, non-negative contributions (norms, ALTI, rollout): sequential
    "prediction",  # candidate tokens × one column of probabilities (next token, logit lens)
    "heads",  # layers × heads, one number per head (detector scores, corpus statistics)
)


# What made a trace, its config's "pipeline" (the trace schema's enum lists the same names).
TOY = "toy"  # the parameter-free pipeline
QKV = "qkv"  # the Q/K/V pipeline
MODEL = "model"  # a real checkpoint
ATTENTIONS = "attentions"  # Trace.from_attentions: any model's weights
HEADS = "heads"  # attn-cli heads: per-head statistics over a corpus
PIPELINES = (TOY, QKV, MODEL, ATTENTIONS, HEADS)

# Map kinds: a step of one of these kinds is a queries × keys attention map.
MAP_KINDS = ("scores", "weights", "partial_weights", "mixing")

# What the labels of a token axis stand for.
AXIS_KINDS = (
    "text",  # tokens of a text
    "patches",  # image patches; coords are (row, column) in the patch grid
    "frames",  # audio frames; coords are (start time in seconds,)
    "sink",  # virtual keys that take attention mass but hold no token (attention sinks)
)


@dataclass(frozen=True)
class Axis:
    """A sequence attention runs over: its labels, what they are, and where each sits.

    A trace has one axis named "tokens" (the query sequence, `Trace.tokens`); an
    encoder–decoder or cross-attention trace adds "source" for the keys of its cross maps.
    """

    name: str  # the key in Trace.axes: "tokens", "source" …
    kind: str  # one of AXIS_KINDS
    labels: list[str]
    coords: list[tuple[float, ...]] | None = None  # patches: (row, col); frames: (seconds,)


class Generated(NamedTuple):
    """The tokens a model generated (Model.generate): their ids, tokens as shown, and the text."""

    ids: list[int]
    tokens: list[str]
    text: str


@dataclass
class TraceStep:
    name: str
    formula: str
    description: str
    data: np.ndarray
    rows: list[str]
    cols: list[str]
    kind: str
    layer: int | None = None
    head: int | None = None
    # The attention block of the layer the step belongs to: None for a model's only one;
    # "encoder", "decoder", "cross" … where a layer has several, or a model several stacks.
    block: str | None = None
    # Which of the trace's axes (Trace.axes) the rows and columns run over; None: labels of
    # their own (dimensions, candidates, experts, layers …).
    row_axis: str | None = None
    col_axis: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def self_map(self) -> bool:
        """Rows and columns run over the same sequence (self-attention): the diagonal is each
        token itself, and 'previous token' means something. False for cross maps."""
        return self.row_axis == self.col_axis and self.rows == self.cols

    @property
    def where(self) -> str:
        """'layer 2 · head 5', 'head 0', or '' for steps outside any layer/head; the block first
        where there are several ('cross · layer 2 · head 5')."""
        parts = [] if self.block is None else [self.block]
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        if self.head is not None:
            parts.append(f"head {self.head}")
        return " · ".join(parts)


@dataclass
class Trace:
    """Everything one run computed: the tokens, how they were made (config), and every step.

    >>> t = attn_cli.explain("hi how are you")
    >>> t.attention().shape            # (layers, heads, n, n)
    (1, 1, 4, 4)
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    config: dict[str, Any]
    steps: list[TraceStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The tokenizer's own pieces ("Ġthe") where `tokens` shows them as readable text (" the").
    raw_tokens: list[str] | None = None
    # Token axes beyond "tokens" (the query sequence): e.g. "source" for cross-attention keys.
    # "tokens" itself is implied by `tokens` when absent.
    axes: dict[str, Axis] = field(default_factory=dict)

    @property
    def generated(self) -> Generated | None:
        """The new tokens of a generation trace (Model.generate); None for any other trace."""
        g = self.config.get("generation")
        if not isinstance(g, dict):
            return None
        n = int(g.get("prompt_tokens", 0))
        return Generated(self.token_ids[n:], self.tokens[n:], str(g.get("answer", "")))

    def tokens_of(self, axis: str | None) -> list[str]:
        """The token texts an axis of a step stands for (for pattern names such as [CLS] or
        [SEP]): the trace's tokens unless the axis is another one of `axes` (the source)."""
        if axis is not None and axis in self.axes:
            return self.axes[axis].labels
        return self.tokens

    def find(self, name: str, layer: int | None = None, head: int | None = None) -> TraceStep:
        for step in self.steps:
            if step.name == name and step.layer == layer and step.head == head:
                return step
        raise KeyError((name, layer, head))

    def steps_named(self, name: str) -> list[TraceStep]:
        return [s for s in self.steps if s.name == name]

    # --- the public face -----------------------------------------------------------------

    @property
    def layers(self) -> list[int | None]:
        """The layers this trace holds attention maps for, in order (None: no layer)."""
        return sorted({s.layer for s in self.steps_named("W")}, key=_order)

    @property
    def heads(self) -> list[int | None]:
        return sorted({s.head for s in self.steps_named("W")}, key=_order)

    @property
    def blocks(self) -> list[str | None]:
        """The attention blocks this trace holds maps (W) for, in order: [None] for a model
        with one kind of attention; e.g. ["encoder", "decoder", "cross"] for an encoder–decoder."""
        return list(dict.fromkeys(s.block for s in self.steps_named("W")))

    @property
    def step_names(self) -> list[str]:
        """Names of the steps present, in the order they first appear."""
        return list(dict.fromkeys(s.name for s in self.steps))

    def step(
        self,
        name: str,
        layer: int | None = None,
        head: int | None = None,
        block: str | None = None,
    ) -> TraceStep:
        """One step by name, layer and head (and attention block, where the trace has several:
        "encoder", "decoder", "cross" …); with one layer (head, block) present, it is the
        default."""

        matching = self.steps_named(name)
        if not matching:
            raise InputError(
                f"name={name!r}: this trace has no such step (it has {', '.join(self.step_names)})"
            )
        blocks = list(dict.fromkeys(s.block for s in matching))
        if block is not None or len(blocks) > 1:
            if block not in blocks:
                shown = ", ".join(repr(b) for b in blocks)
                raise InputError(f"block={block!r}: step {name} is present for blocks {shown}")
            matching = [s for s in matching if s.block == block]
        for key, value in (("layer", layer), ("head", head)):
            present = sorted({getattr(s, key) for s in matching}, key=_order)
            if value is None and len(present) == 1:
                continue
            if value not in present:
                shown = ", ".join("none" if p is None else str(p) for p in present)
                raise InputError(f"{key}={value!r}: step {name} is present for {key}s {shown}")
            matching = [s for s in matching if getattr(s, key) == value]
        return matching[0]

    def attention(self, name: str = "W", block: str | None = None) -> np.ndarray:
        """Every attention map of step `name` as one array (layers, heads, n_query, n_key),
        ordered by layer and head; rectangular when the keys are another sequence (cross
        attention). `block` picks "encoder", "decoder", "cross" … where the trace has several.
        The toy pipeline gives (1, 1, n, n)."""

        maps = self.steps_named(name)
        if not maps:
            raise InputError(f"name={name!r}: this trace has no {name} step")
        blocks = list(dict.fromkeys(s.block for s in maps))
        if block is not None and block not in blocks:
            shown = ", ".join(repr(b) for b in blocks)
            raise InputError(f"block={block!r}: step {name} is present for blocks {shown}")
        if block is None and len(blocks) > 1:
            shown = ", ".join(repr(b) for b in blocks)
            raise InputError(f"block=None: step {name} is present for blocks {shown}: pick one")
        chosen = blocks[0] if block is None else block
        maps = [s for s in maps if s.block == chosen]
        shapes = {s.data.shape for s in maps}
        if len(shapes) > 1:
            raise InputError(
                f"name={name!r}: its maps differ in shape ({', '.join(map(str, sorted(shapes)))})"
            )
        layers = sorted({s.layer for s in maps}, key=_order)
        heads = sorted({s.head for s in maps}, key=_order)
        n_q, n_k = maps[0].data.shape
        out = np.full((len(layers), len(heads), n_q, n_k), np.nan)
        li = {v: i for i, v in enumerate(layers)}
        hi = {v: i for i, v in enumerate(heads)}
        for s in maps:
            out[li[s.layer], hi[s.head]] = s.data
        return out

    def save(self, path: str | Path) -> None:
        """Write the trace as JSON (atomically); `attn_cli.load(path)` reads it back."""
        from attn_cli.export import atomic_write, json_chunks

        atomic_write(path, json_chunks([self]))

    def show(
        self,
        view: str | Sequence[str] = "auto",
        console: Console | None = None,
        width: int | None = None,
        **display: Any,
    ) -> None:
        """Render views (steps, overview, summary, top, heatmap, geometry, grid) to the console."""
        from attn_cli.render.common import RenderOptions, make_console
        from attn_cli.render.views import parse_views, render

        views = parse_views([view] if isinstance(view, str) else list(view))
        render(console or make_console(width=width), self, views, RenderOptions(**display))

    @classmethod
    def from_attentions(
        cls,
        tokens: Sequence[str],
        attentions: Any,
        key_tokens: Sequence[str] | None = None,
        text: str | None = None,
        model: str | None = None,
        kind: str = "weights",
        block: str | None = None,
    ) -> Trace:
        """A trace from any model's attention maps: (layers, heads, n_query, n_key) — an array,
        or a sequence of per-layer arrays such as transformers' `output_attentions` or
        `cross_attentions` (a batch axis of size 1 is dropped; torch tensors are converted
        with .numpy()).

        key_tokens: the keys when they are another sequence than `tokens` (cross attention:
        `tokens` are the decoder's, `key_tokens` the encoder's); they become the trace's
        "source" axis and the block defaults to "cross". kind: "weights" (rows sum to 1),
        "partial_weights" (rows sum to at most 1; the rest went to a sink not shown) or
        "mixing" (signed, unnormalised: linear attention)."""

        kinds = ("weights", "partial_weights", "mixing")
        if kind not in kinds:
            raise InputError(f"kind={kind!r}: choose from {', '.join(kinds)}")
        tokens = _token_texts(tokens, "tokens")
        keys = tokens if key_tokens is None else _token_texts(key_tokens, "key_tokens")
        arr = _attention_array(attentions)
        if arr.ndim == 5 and arr.shape[1] == 1:
            arr = arr[:, 0]  # (layers, batch=1, heads, n_q, n_k)
        n, m = len(tokens), len(keys)
        if arr.ndim != 4 or arr.shape[2:] != (n, m) or 0 in arr.shape[:2]:
            raise InputError(
                f"attentions has shape {arr.shape}: expected (layers, heads, {n}, {m}) for "
                f"{n} query tokens and {m} key tokens"
            )
        _check_map_values(arr, kind)
        labels = token_labels(tokens)
        key_labels = labels if key_tokens is None else token_labels(keys)
        col_axis = "tokens" if key_tokens is None else "source"
        if key_tokens is not None and block is None:
            block = "cross"
        what = "mixing weights" if kind == "mixing" else "attention weights"
        looks = "where token i looks" if key_tokens is None else "where token i looks in the source"
        steps = [
            TraceStep(
                "W",
                what,
                f"{what[0].upper() + what[1:]} of layer {i}, head {h}, as the model computed "
                f"them: row i is {looks}.",
                np.asarray(arr[i, h], dtype=np.float64),
                labels,
                key_labels,
                kind,
                i,
                h,
                block=block,
                row_axis="tokens",
                col_axis=col_axis,
            )
            for i in range(arr.shape[0])
            for h in range(arr.shape[1])
        ]
        config: dict[str, Any] = {
            "pipeline": ATTENTIONS,
            "layers": arr.shape[0],
            "heads": arr.shape[1],
            "layer": "all",
            "head": "all",
        }
        if model is not None:
            config["model"] = model
        axes = {} if key_tokens is None else {"source": Axis("source", "text", keys)}
        trace_text = text if text is not None else " ".join(tokens)
        return cls(trace_text, tokens, [-1] * n, config, steps, axes=axes)

    def __repr__(self) -> str:
        maps = len(self.steps_named("W"))
        what = self.config.get("model") or self.config.get("pipeline", "?")
        text = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return (
            f"<Trace {what} · {len(self.tokens)} tokens · {len(self.steps)} steps · "
            f"{maps} attention map{'s' if maps != 1 else ''} · {text!r}>"
        )

    def browse(self) -> None:
        """Explore the trace full-screen in the terminal (Textual); returns when you press q."""
        from attn_cli.browse import require_browser, run_browser

        require_browser()
        run_browser([self])

    def _repr_html_(self) -> str:
        """In Jupyter: the interactive page, inline (no network)."""
        from attn_cli.render.interactive import trace_repr_html

        return trace_repr_html(self)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """In Jupyter (and anywhere Rich prints a Trace) it displays its views."""

        from rich.text import Text

        from attn_cli.render.common import RenderOptions, make_console
        from attn_cli.render.views import render

        inner = make_console(color=True, width=options.max_width, file=io.StringIO(), record=True)
        render(inner, self, ["auto"], RenderOptions())
        yield Text.from_ansi(inner.export_text(styles=True))


def _order(v: int | None) -> int:
    return -1 if v is None else v


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor: converted without importing torch
        a = a.detach().cpu().float().numpy()
    return np.asarray(a, dtype=np.float64)


def _token_texts(tokens: Any, param: str) -> list[str]:

    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise InputError(f"{param} must be a list of token strings, got {type(tokens).__name__}")
    if not tokens:
        raise InputError(f"{param} is empty")
    return [str(t) for t in tokens]


def _attention_array(attentions: Any) -> np.ndarray:
    """(layers, [batch,] heads, n_q, n_k) as float64, from an array or per-layer arrays."""

    try:
        if isinstance(attentions, list | tuple):
            layers = [_to_numpy(a) for a in attentions]
            shapes = {a.shape for a in layers}
            if len(shapes) > 1:
                shown = ", ".join(str(x) for x in dict.fromkeys(a.shape for a in layers))
                raise InputError(f"attentions: the layers differ in shape ({shown})")
            return np.stack(layers) if layers else np.zeros((0,))
        return _to_numpy(attentions)
    except (TypeError, ValueError):
        raise InputError(
            "attentions must be an array of numbers (layers, heads, n_query, n_key) or a "
            "sequence of per-layer arrays"
        ) from None


# How far a row of "weights" may sum from 1: float16/bfloat16 softmax outputs are ~1e-3 off.
ROW_SUM_TOLERANCE = 1e-2


def _check_map_values(arr: np.ndarray, kind: str) -> None:
    """Refuse maps whose numbers cannot be what `kind` says, naming the first bad place."""

    bad = ~np.isfinite(arr)
    if bad.any():
        layer, head, i, j = (int(x) for x in np.argwhere(bad)[0])
        raise InputError(
            f"attentions holds {arr[layer, head, i, j]} at layer {layer}, head {head}, "
            f"row {i}, column {j}: every value must be finite"
        )
    if kind == "mixing":
        return
    if (arr < 0).any():
        layer, head, i, j = (int(x) for x in np.argwhere(arr < 0)[0])
        raise InputError(
            f"attentions holds {arr[layer, head, i, j]:.6g} at layer {layer}, head {head}, "
            f"row {i}, column {j}: {kind} are probabilities, never negative "
            "(use kind='mixing' for signed maps)"
        )
    sums = arr.sum(axis=-1)
    off = sums > 1 + ROW_SUM_TOLERANCE
    if kind == "weights":
        off |= sums < 1 - ROW_SUM_TOLERANCE
    if off.any():
        layer, head, i = (int(x) for x in np.argwhere(off)[0])
        want = "1" if kind == "weights" else "at most 1"
        hint = " (use kind='partial_weights' when mass goes to a sink)" if kind == "weights" else ""
        raise InputError(
            f"attentions row {i} of layer {layer}, head {head} sums to "
            f"{sums[layer, head, i]:.6g}: rows of {kind} sum to {want}{hint}"
        )


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def printable(text: str) -> str:
    """Token text made safe for a terminal: control, format (zero-width, bidi) and separator
    characters become visible escapes, so nothing is interpreted and columns stay aligned."""
    return escaped(text) or "∅"


def escaped(text: str) -> str:
    """`printable` without the mark for an empty string: any text from a file or a user, safe
    to print (str.isprintable is false exactly for the characters escaped here)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (cat == "Zs" and ch != " "):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def token_labels(tokens: list[str]) -> list[str]:
    """Printable, unique labels: a token that occurs more than once gets its occurrence number
    as a subscript ("the₁ … the₂"), so repeated tokens stay distinguishable in tables."""
    shown = [printable(t) for t in tokens]
    totals: dict[str, int] = {}
    for s in shown:
        totals[s] = totals.get(s, 0) + 1
    seen: dict[str, int] = {}
    labels = []
    for s in shown:
        if totals[s] == 1:
            labels.append(s)
        else:
            seen[s] = seen.get(s, 0) + 1
            labels.append(f"{s}{str(seen[s]).translate(_SUBSCRIPT)}")
    # A label can still collide with another token's literal text ("a₂" next to "a", "a");
    # fall back to the position, which is always unique.
    if len(set(labels)) != len(labels):
        labels = [f"{s}@{i}" for i, s in enumerate(shown)]
    return labels


def dim_labels(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]

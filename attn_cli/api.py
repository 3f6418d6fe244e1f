"""The public API: text in, Trace out. The CLI is a thin layer over these functions.

    t = attn_cli.explain("hi how are you")                         # parameter-free attention
    t = attn_cli.explain("the cat sat", qkv=True, heads=2, causal=True)
    m = attn_cli.load_model("minilm")
    t = m.trace("the bank of the river", layers="all", heads="all")

Every option is checked when the call is made; a mistake raises InputError naming the
parameter (`layer=9: minilm has 6 layers (0–5) or 'all'`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli import memory, narrate
from attn_cli.errors import InputError, opt
from attn_cli.trace import Trace, token_labels

if TYPE_CHECKING:
    from attn_cli.progress import Progress
    from attn_cli.projections import Projections

# A layer or head selection: one index, several, "all", or None (all).
Selection = int | Sequence[int] | str | None


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def parse_selection(value: Selection, count: int, param: str, flag: str, what: str) -> list[int]:
    """An index, a list of indices or 'all' -> the sorted indices, checked against `count`."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return list(range(count))
    if isinstance(value, str):
        try:
            items: list[Any] = [int(v) for v in value.split(",")]
        except ValueError:
            raise InputError(
                f"{opt(param, value, flag)}: takes a number, a list or 'all'"
            ) from None
    elif _is_int(value):
        items = [value]
    elif isinstance(value, Sequence) and value and all(_is_int(v) for v in value):
        items = list(value)
    else:
        raise InputError(f"{opt(param, value, flag)}: takes a number, a list of numbers or 'all'")
    for v in items:
        if not 0 <= v < count:
            raise InputError(f"{opt(param, v, flag)}: {what} (0–{count - 1}) or 'all'")
    return sorted({int(v) for v in items})


def parse_steps(value: str | Sequence[str] | None, param: str = "steps") -> list[str] | None:
    """'W,Y' / ['W', 'Y'] -> the names; None or 'all' -> None (every step)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if names == ["all"]:
        return None
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{opt(param, value)}: give step names such as 'W' or 'W,Y', or 'all'")
    for n in names:
        if n not in narrate.STEP_NAMES:
            raise InputError(
                f"{opt(param, value)}: {n!r} is not a step (steps: {', '.join(narrate.STEP_NAMES)})"
            )
    return names


def step_filter(names: list[str] | None) -> narrate.StepFilter:
    if names is None:
        return narrate.keep_all
    wanted = set(names)
    return lambda name: name in wanted


@dataclass
class Options:
    """What `explain` runs. Natural Python types: layer=2, layer=[0, 2], layer="all"."""

    tokenizer: str | Path | None = None
    special: bool = False
    embeddings: str | Path = "minilm"
    dim: int | None = None
    seed: int = 0
    scale: bool = False
    # The Q/K/V pipeline:
    qkv: bool = False
    norm: bool = True  # X_norm = LayerNorm(X) before the projections (Q/K/V only)
    heads: int = 1
    d_k: int | None = None
    causal: bool = False
    temperature: float = 1.0
    weights: str | Path | None = None
    # A real checkpoint:
    model: str | Path | None = None
    layer: Selection = None
    head: Selection = None
    pair: str | None = None  # a second sentence (BERT-family models: token_type_ids 1)
    # What the trace keeps (None: every step):
    steps: str | Sequence[str] | None = None

    @classmethod
    def checked(cls, options: dict[str, Any], caller: str) -> Options:
        """Options from a call's keywords, checked now: an unknown keyword or a bad value is
        one InputError naming `caller`."""
        try:
            opts = cls(**options)
        except TypeError as exc:
            raise InputError(str(exc).replace("Options.__init__()", f"{caller}()")) from None
        opts.check()
        return opts

    def check(self) -> None:
        """Options that cannot go together are errors, never silent overrides."""
        for name in ("special", "scale", "qkv", "norm", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{opt(name, getattr(self, name))}: must be True or False")
        for name in ("heads", "seed"):
            if not _is_int(getattr(self, name)):
                raise InputError(f"{opt(name, getattr(self, name))}: must be an integer")
        for name in ("dim", "d_k"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise InputError(f"{opt(name, value)}: must be an integer")
        parse_steps(self.steps)
        if self.model is not None:
            own = [
                name
                for name, on in (
                    ("qkv", self.qkv),
                    ("norm", not self.norm),
                    ("weights", self.weights is not None),
                    ("embeddings", str(self.embeddings) != "minilm"),
                    ("dim", self.dim is not None),
                    ("tokenizer", self.tokenizer is not None),
                    ("scale", self.scale),
                    ("heads", self.heads != 1),
                    ("d_k", self.d_k is not None),
                    ("causal", self.causal),
                    ("temperature", self.temperature != 1.0),
                )
                if on
            ]
            if own:
                raise InputError(
                    f"{opt(own[0])} does not apply with {opt('model')}: a checkpoint brings its own "
                    "tokenizer, embeddings, projections and mask"
                )
            return
        if self.pair is not None:
            raise InputError(
                f"{opt('pair')} applies to {opt('model')} (a BERT-family checkpoint, which was "
                "trained on sentence pairs)"
            )
        if self.layer is not None or self.head is not None:
            raise InputError(
                f"{opt('layer') if self.layer is not None else opt('head')} applies to {opt('model')}"
            )
        if not self.qkv:
            given = [
                name
                for name, on in (
                    ("heads", self.heads != 1),
                    ("d_k", self.d_k is not None),
                    ("causal", self.causal),
                    ("temperature", self.temperature != 1.0),
                    ("weights", self.weights is not None),
                    ("norm", not self.norm),
                )
                if on
            ]
            if given:
                raise InputError(
                    f"{opt(given[0])} applies to the Q/K/V pipeline: add {opt('qkv', True)}"
                )
        elif self.scale:
            raise InputError(
                f"{opt('qkv')} always scales by √d_k (the W_scaled step): drop {opt('scale')}"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (np.isfinite(t) and t > 0):
            shown = f"{t:g}" if isinstance(t, int | float) else repr(t)
            raise InputError(f"{opt('temperature')} must be a positive number, got {shown}")


def explain(text: str, **options: Any) -> Trace:
    """One text through the parameter-free pipeline (default), `qkv=True`, or `model=...`.
    Takes the options of `Options` as keywords; returns the Trace."""
    return next(iter(explain_all([text], **options)))


def explain_all(texts: Iterable[str], **options: Any) -> Iterator[Trace]:
    """One trace per text, computed as it is consumed (memory does not grow with the number of
    texts). The options are checked now, before the first text."""
    opts = Options.checked(options, "explain")
    if opts.model is not None:
        from attn_cli.pretrained import load_model

        model = load_model(opts.model)
        return model.traces(
            texts, layers=opts.layer, heads=opts.head, steps=opts.steps, pair=opts.pair
        )
    return _pipeline_traces(texts, opts)


def _pipeline_traces(texts: Iterable[str], opts: Options) -> Iterator[Trace]:
    from attn_cli.progress import Progress
    from attn_cli.tokenizer import load_tokenizer

    tok = load_tokenizer(opts.tokenizer)
    keep = step_filter(parse_steps(opts.steps))
    projections: dict[int, Projections] = {}  # by embedding width
    total = len(texts) if isinstance(texts, Sized) else None
    bar = Progress("explain", total)
    try:
        for text in texts:
            bar.phase("tokenizing")
            trace = _pipeline_trace(text, opts, tok, keep, projections, bar)
            with bar.paused():
                yield trace
            bar.advance()
    finally:
        bar.close()


# From this many tokens the parameter-free pipeline computes in float32: its n × n matrices
# take half the memory (20,000 tokens: 1.6 GB each instead of 3.2 GB), and every weight stays
# within a few float32 roundings of the float64 result (tests/test_long_inputs.py).
FLOAT32_FROM = 4096


def _pipeline_trace(
    text: str,
    opts: Options,
    tok: Any,
    keep: narrate.StepFilter,
    projections: dict,
    bar: Progress,
) -> Trace:
    from attn_cli.embeddings import embed
    from attn_cli.tokenizer import tokenize, tokenizer_name

    tokens, ids = tokenize(tok, text, opts.special)
    n = len(ids)
    single = not opts.qkv and n >= FLOAT32_FROM
    emb = embed(tokens, ids, str(opts.embeddings), opts.dim, opts.seed)
    size = f"the text is {n:,} tokens"
    if not opts.qkv:
        need = memory.toy_bytes(n, emb.X.shape[1], 4 if single else 8, opts.scale)
        memory.check_fits(need, size, "use a shorter text")
    config: dict[str, Any] = {
        "pipeline": "qkv" if opts.qkv else "toy",
        "tokenizer": tokenizer_name(opts.tokenizer),
        "special_tokens": opts.special,
        **emb.config,
    }
    trace = Trace(text=text, tokens=tokens, token_ids=ids, config=config, notes=list(emb.notes))
    labels = token_labels(tokens)
    bar.phase(f"{n:,} tokens: attention")
    with np.errstate(over="ignore", invalid="ignore"):
        if not opts.qkv:
            config["scale"] = opts.scale
            config["dtype"] = "float32" if single else "float64"
            config["float32_from_tokens"] = FLOAT32_FROM
            if single:
                trace.notes.append(
                    f"{n:,} tokens: computed in float32 (from {FLOAT32_FROM:,} tokens on), about "
                    "7 significant digits, to halve the memory of the n × n matrices"
                )
            x = emb.X.astype(np.float32) if single else emb.X
            steps = narrate.toy_steps(x, labels, att.toy_self_attention(x, scale=opts.scale))
        else:
            from attn_cli.projections import NORM_EPS, layer_norm, smaller

            d = emb.X.shape[1]
            if d not in projections:
                projections[d] = _projections(opts, d)
            proj = projections[d]
            need = memory.qkv_bytes(
                n,
                d,
                proj.heads,
                proj.d_k,
                proj.d_v,
                d if proj.W_o is None else proj.W_o.shape[1],
                opts.causal,
                opts.temperature,
            )
            memory.check_fits(need, f"{size} with {proj.heads} heads of d_k {proj.d_k}", smaller())
            config.update(
                {
                    "heads": proj.heads,
                    "d_k": proj.d_k,
                    "d_v": proj.d_v,
                    "causal": opts.causal,
                    "temperature": opts.temperature,
                }
            )
            config.update(proj.config)
            if opts.weights is None:
                config["seed"] = opts.seed  # the projections' seed, even with other embeddings
            trace.notes += proj.notes
            x_norm = layer_norm(emb.X) if opts.norm else None
            config["norm"] = f"layernorm (eps {NORM_EPS:g})" if opts.norm else False
            mask = att.causal_mask(len(ids)) if opts.causal else None
            x_in = emb.X if x_norm is None else x_norm
            m = att.multi_head_attention(x_in, proj.params, mask, temperature=opts.temperature)
            origin = "seeded" if opts.weights is None else Path(opts.weights).name
            steps = narrate.qkv_steps(emb.X, labels, m, opts.temperature, x_norm, NORM_EPS, origin)
    trace.steps = [s for s in steps if keep(s.name)]
    bar.phase(f"{n:,} tokens: checking the numbers")
    check_finite(trace)
    return trace


def _projections(opts: Options, d: int):
    from attn_cli.projections import load_projections, seeded_projections

    if opts.weights is not None:
        return load_projections(Path(opts.weights).expanduser(), d, opts.heads, opts.d_k)
    return seeded_projections(d, opts.heads, opts.d_k, opts.seed)


def check_finite(trace: Trace) -> None:
    """Huge vectors can overflow float64 in X·Xᵀ; say so rather than show inf or NaN. Masked
    cells (-inf in W_masked) are the only non-finite numbers a trace may hold."""
    for step in trace.steps:
        data = step.data
        if np.isfinite(data).all():
            continue  # the usual case, checked in one pass
        bad = np.isnan(data) | np.isposinf(data)
        if step.name != "W_masked":
            bad |= np.isneginf(data)
        if bad.any():
            raise InputError(
                f"the scores overflowed ({step.name} holds ±inf): the vectors are too large; scale them down"
            )


def load(path: str | Path) -> Trace:
    """A trace saved with `Trace.save` or `--json` (one trace; see `load_all` for JSON Lines)."""
    traces = load_all(path)
    if len(traces) != 1:
        raise InputError(f"{path} holds {len(traces)} traces: use attn_cli.load_all")
    return traces[0]


def load_all(path: str | Path) -> list[Trace]:
    """Every trace in a JSON or JSON Lines file written by attn-cli."""
    from attn_cli.export import loads_traces, read_bytes

    return loads_traces(read_bytes(path), str(path))

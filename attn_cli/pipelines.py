"""The parameter-free (toy) and Q/K/V pipelines: texts in, Traces out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli import attention as att
from attn_cli import memory, narrate, records
from attn_cli.embeddings import embed
from attn_cli.errors import InputError
from attn_cli.options import Options, parse_steps, step_filter
from attn_cli.progress import Progress, stream
from attn_cli.projections import (
    NORM_EPS,
    layer_norm,
    load_projections,
    seeded_projections,
    smaller,
)
from attn_cli.tokenizer import load_tokenizer, tokenize, tokenizer_name
from attn_cli.trace import QKV, TOY, Trace, token_labels

if TYPE_CHECKING:
    from attn_cli.projections import Projections


class Pipeline:
    """The parameter-free pipeline, or the Q/K/V one (`qkv=True`), with checked `Options`:
    `.traces(texts)` as a loaded model's (attn_cli.pretrained.Model)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.name = QKV if opts.qkv else TOY
        self.tokenizer = load_tokenizer(opts.tokenizer)
        self._projections: dict[int, Projections] = {}  # by embedding width

    def traces(
        self, texts: Iterable[str], steps: str | Sequence[str] | None = None
    ) -> Iterator[Trace]:
        """One trace per text, computed as consumed; `steps` (default: the options') checked
        now."""
        keep = step_filter(parse_steps(self.opts.steps if steps is None else steps))
        return stream(
            "explain",
            texts,
            lambda text, bar: _pipeline_trace(
                text, self.opts, self.tokenizer, keep, self._projections, bar
            ),
        )


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
    tokens, ids = tokenize(tok, text, opts.special)
    n = len(ids)
    single = not opts.qkv and n >= FLOAT32_FROM
    emb = embed(tokens, ids, str(opts.embeddings), opts.dim, opts.seed)
    size = f"the text is {n:,} tokens"
    if not opts.qkv:
        need = memory.toy_bytes(n, emb.X.shape[1], 4 if single else 8, opts.scale)
        memory.check_fits(need, size, "use a shorter text")
    config: dict[str, Any] = {
        "pipeline": QKV if opts.qkv else TOY,
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
            steps = narrate.toy_steps(records.toy_attention(x, scale=opts.scale), labels)
        else:
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
            inputs: tuple[records.Stage, ...] = (records.Stage("X", emb.X),)
            if x_norm is not None:
                inputs += (records.Stage("X_norm", x_norm),)
            record = records.multi_head_attention(
                inputs[-1].data,
                proj.params,
                mask,
                temperature=opts.temperature,
                inputs=inputs,
                parameters=True,
            )
            record.facts["origin"] = "seeded" if opts.weights is None else Path(opts.weights).name
            record.facts["norm_eps"] = NORM_EPS
            steps = narrate.qkv_steps(record, labels)
    trace.steps = [s for s in steps if keep(s.name)]
    bar.phase(f"{n:,} tokens: checking the numbers")
    check_finite(trace)
    return trace


def _projections(opts: Options, d: int):
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

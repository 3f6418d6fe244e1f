"""Text -> Trace: tokenize, embed, run the attention steps, and describe each one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli import attention as att
from attn_cli.embeddings import BUNDLED, embed
from attn_cli.tokenizer import load_tokenizer, tokenize, tokenizer_name
from attn_cli.trace import Trace, TraceStep, dim_labels, token_labels


@dataclass
class ToyOptions:
    tokenizer: str | None = None
    special: bool = False
    embeddings: str = BUNDLED
    dim: int | None = None
    seed: int = 0
    scale: bool = False


def explain_texts(texts: Iterable[str], opts: ToyOptions) -> Iterator[Trace]:
    """One trace per text, sharing one tokenizer."""
    tok = load_tokenizer(opts.tokenizer)
    for text in texts:
        tokens, ids = tokenize(tok, text, opts.special)
        yield toy_trace(text, tokens, ids, opts)


def toy_trace(text: str, tokens: list[str], ids: list[int], opts: ToyOptions) -> Trace:
    emb = embed(tokens, ids, opts.embeddings, opts.dim, opts.seed)
    config = {
        "pipeline": "toy",
        "tokenizer": tokenizer_name(opts.tokenizer),
        "special_tokens": opts.special,
        **emb.config,
        "scale": opts.scale,
    }
    trace = Trace(text=text, tokens=tokens, token_ids=ids, config=config, notes=list(emb.notes))
    trace.steps = toy_steps(emb.X, token_labels(tokens), opts.scale)
    return trace


def toy_steps(X: np.ndarray, labels: list[str], scale: bool) -> list[TraceStep]:
    """Seed 001's pipeline as described trace steps: X, W_raw, (W_scaled), W, Y."""
    n, d = X.shape
    s = att.toy_self_attention(X, scale=scale)
    dims = dim_labels(d)
    steps = [
        TraceStep(
            "X",
            "embed(tokens)",
            f"Each of the {n} tokens becomes a row vector of {d} numbers; so far every vector "
            "is independent of the others.",
            X,
            labels,
            dims,
            "vectors",
        ),
        TraceStep(
            "W_raw",
            "X·Xᵀ",
            "Cell (i, j) is the dot product of token i and token j: large when they point the "
            "same way. Not normalised: values can exceed 1, and the matrix is symmetric.",
            s.W_raw,
            labels,
            labels,
            "scores",
        ),
    ]
    if s.W_scaled is not None:
        steps.append(
            TraceStep(
                "W_scaled",
                "W_raw/√d",
                f"Divided by √d = {np.sqrt(d):.3g}: dot products grow with the dimension, and large "
                "scores would push the softmax into saturation (one weight near 1, the rest near 0).",
                s.W_scaled,
                labels,
                labels,
                "scores",
            )
        )
    steps += [
        TraceStep(
            "W",
            "softmax(W_scaled) per row" if scale else "softmax(W_raw) per row",
            "Each row is normalised with a softmax (row max subtracted first, for stability): "
            "all weights are now between 0 and 1 and every row sums to 1 — how much each token "
            "attends to every token.",
            s.W,
            labels,
            labels,
            "weights",
        ),
        TraceStep(
            "Y",
            "W·X",
            "Each output row is a weighted mix of all token vectors, weighted by that token's row "
            "of W: every token now carries context from the others. (The seed writes Y = Xᵀ·W with "
            "tokens as columns; with tokens as rows it is Y = W·X.)",
            s.Y,
            labels,
            dims,
            "vectors",
        ),
    ]
    return steps

"""Numbers that summarise attention maps: entropy, top-k, named head patterns."""

from __future__ import annotations

import numpy as np

from attn_cli.attention import entropy
from attn_cli.trace import Trace, TraceStep

SEP_TOKENS = ("[SEP]", "</s>", "<|endoftext|>")
FIRST_NAMES = {"[CLS]": "[CLS]", "<s>": "<s>", "<|endoftext|>": "<|endoftext|>"}


def head_patterns(w: np.ndarray, tokens: list[str]) -> dict[str, float]:
    """How strongly an attention map follows a few well-known patterns, each in [0, 1]:
    mean weight on the previous token, on itself, on the first token ([CLS]), and on [SEP]."""
    n = w.shape[0]
    first = FIRST_NAMES.get(tokens[0], "first") if tokens else "first"
    scores = {
        "previous": float(np.mean(w[np.arange(1, n), np.arange(n - 1)])) if n > 1 else 0.0,
        "self": float(np.mean(np.diag(w))),
        first: float(np.mean(w[:, 0])),
    }
    seps = [i for i, t in enumerate(tokens) if t in SEP_TOKENS and i != 0]
    if seps:
        scores["[SEP]"] = float(np.mean(w[:, seps].sum(axis=1)))
    return scores


def special_names(tokens: list[str]) -> tuple[str | None, list[str]]:
    """The first token's special name ([CLS], <s> …; None for an ordinary token) and the
    separator / end-of-text tokens after it, as the trace has them: legends name only these
    (a decoder's text has no [CLS] or [SEP])."""
    first = FIRST_NAMES.get(tokens[0]) if tokens else None
    return first, sorted({t for t in tokens[1:] if t in SEP_TOKENS})


def relative_entropy(w: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Row entropy over the entropy of a uniform row over the tokens the row may see,
    log(visible): 1 = spread evenly over every visible token, 0 = all weight on one token.
    visible None: every token (no mask). A row that sees one token scores 0."""
    n = w.shape[1]
    seen = np.full(w.shape[0], n) if visible is None else np.asarray(visible)
    top = np.log(np.maximum(seen, 1).astype(np.float64))
    h = entropy(w)
    return np.divide(h, top, out=np.zeros_like(h, dtype=np.float64), where=seen > 1)


def visible_counts(trace: Trace, step: TraceStep) -> np.ndarray:
    """How many tokens each row of an attention map may attend to: the finite cells of the
    matching W_masked step, else i + 1 under a causal mask (config causal), else every token."""
    n_rows, n_cols = step.data.shape
    for s in trace.steps_named("W_masked"):
        if s.layer == step.layer and s.head == step.head and s.data.shape == step.data.shape:
            return np.isfinite(s.data).sum(axis=1)
    if trace.config.get("causal"):
        return np.minimum(np.arange(1, n_rows + 1), n_cols)
    return np.full(n_rows, n_cols)


def dominant_pattern(
    w: np.ndarray, tokens: list[str], visible: np.ndarray | None = None
) -> tuple[str, float]:
    """The strongest named pattern, or 'broad' (with its mean relative entropy) if none
    takes at least 40% of the weight."""
    scores = head_patterns(w, tokens)
    name = max(scores, key=lambda k: scores[k])
    if scores[name] >= 0.4:
        return name, scores[name]
    return "broad", float(np.mean(relative_entropy(w, visible)))

"""Numbers that summarise attention maps: entropy, top-k, named head patterns."""

from __future__ import annotations

import numpy as np

from attn_cli.attention import entropy
from attn_cli.trace import Trace, TraceStep

SEP_TOKENS = ("[SEP]", "</s>", "<|endoftext|>")
FIRST_NAMES = {"[CLS]": "[CLS]", "<s>": "<s>", "<|endoftext|>": "<|endoftext|>"}


def head_patterns(
    w: np.ndarray, tokens: list[str], keys: list[str] | None = None
) -> dict[str, float]:
    """How strongly an attention map follows a few well-known patterns, each in [0, 1]:
    mean weight on the previous token, on itself, on the first token ([CLS]), and on [SEP].
    keys: the key tokens of a cross map (its columns are another sequence): then only the
    patterns about keys (first, [SEP]) mean something."""
    n = w.shape[0]
    cols = tokens if keys is None else keys
    first = FIRST_NAMES.get(cols[0], "first") if cols else "first"
    scores: dict[str, float] = {}
    if keys is None:
        scores["previous"] = float(np.mean(w[np.arange(1, n), np.arange(n - 1)])) if n > 1 else 0.0
        scores["self"] = float(np.mean(np.diag(w)))
    scores[first] = float(np.mean(w[:, 0]))
    seps = [i for i, t in enumerate(cols) if t in SEP_TOKENS and i != 0]
    if seps:
        scores["[SEP]"] = float(np.mean(w[:, seps].sum(axis=1)))
    return scores


def map_patterns(trace: Trace, step: TraceStep) -> dict[str, float]:
    """head_patterns of a map step: over its own key tokens when it is a cross map."""
    keys = None if step.self_map else trace.tokens_of(step.col_axis)
    return head_patterns(row_shares(step), trace.tokens_of(step.row_axis), keys)


def row_shares(step: TraceStep) -> np.ndarray:
    """A map's rows as shares of attention, for entropy, top-k and patterns: the weights
    themselves (partial weights: what is left after the sink), or for a signed mixing map
    each value's share of its row's absolute total (a mixing map holds no probabilities)."""
    if step.kind != "mixing":
        return step.data
    a = np.abs(step.data)
    total = a.sum(axis=1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a, dtype=np.float64), where=total > 0)


def sink_mass(step: TraceStep) -> np.ndarray | None:
    """Each row's attention that went to a sink not shown (1 − row sum) for partial weights."""
    if step.kind != "partial_weights":
        return None
    return np.clip(1.0 - np.where(np.isfinite(step.data), step.data, 0.0).sum(axis=1), 0.0, 1.0)


# One line under a map, saying what its numbers are when they are not plain weights.
KIND_NOTES = {
    "partial_weights": "Partial weights: each row sums to less than 1; the rest of its "
    "attention went to a sink key that is not shown (the 'sink' numbers).",
    "mixing": "Mixing weights (linear attention): signed and unnormalised, not probabilities; "
    "rows need not sum to 1. Entropy, top-k and patterns use each value's share of its row's "
    "absolute total.",
}


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
    matching W_masked step, else (generated rows) the prompt and the new tokens before, else
    i + 1 under a causal mask (config causal: the text's own self-attention, not an encoder's
    over the source nor a cross map), else every token."""
    n_rows, n_cols = step.data.shape
    for s in trace.steps_named("W_masked"):
        if (s.layer, s.head, s.block) == (step.layer, step.head, step.block) and (
            s.data.shape == step.data.shape
        ):
            return np.isfinite(s.data).sum(axis=1)
    generation = trace.config.get("generation")
    if isinstance(generation, dict) and step.row_axis != step.col_axis:
        # Model.generate's rows: the pass that chose new token i saw the prompt and i new ones
        return np.minimum(np.arange(n_rows) + int(generation.get("prompt_tokens", 1)), n_cols)
    if trace.config.get("causal") and step.self_map and step.row_axis != "source":
        return np.minimum(np.arange(1, n_rows + 1), n_cols)
    return np.full(n_rows, n_cols)


def dominant_pattern(trace: Trace, step: TraceStep) -> tuple[str, float]:
    """The strongest named pattern of a map, or 'broad' (with its mean relative entropy) if
    none takes at least 40% of the weight."""
    scores = map_patterns(trace, step)
    name = max(scores, key=lambda k: scores[k])
    if scores[name] >= 0.4:
        return name, scores[name]
    return "broad", float(np.mean(relative_entropy(row_shares(step), visible_counts(trace, step))))


def first_or_sink(step: TraceStep) -> tuple[str, float] | None:
    """Where a decoder parks attention: for weights the mean over rows of the weight on the
    first key ("first"), for partial weights the mean mass to the sink ("sink", 1 − row
    sum); None for other kinds (signed mixing weights, scores)."""
    sink = sink_mass(step)
    if sink is not None:
        return "sink", float(sink.mean())
    if step.kind == "weights" and step.data.size:
        return "first", float(np.mean(np.where(np.isfinite(step.data[:, 0]), step.data[:, 0], 0.0)))
    return None

"""Numbers that summarise attention maps: entropy, top-k, named head patterns."""

from __future__ import annotations

import numpy as np

from attn_cli.attention import entropy

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


def relative_entropy(w: np.ndarray) -> np.ndarray:
    """Row entropy over the entropy of a uniform row, log(n): 1 = spread evenly over every
    token, 0 = all weight on one token."""
    n = w.shape[1]
    return entropy(w) / np.log(n) if n > 1 else np.zeros(w.shape[0])


def dominant_pattern(w: np.ndarray, tokens: list[str]) -> tuple[str, float]:
    """The strongest named pattern, or 'broad' (with its mean relative entropy) if none
    takes at least 40% of the weight."""
    scores = head_patterns(w, tokens)
    name = max(scores, key=lambda k: scores[k])
    if scores[name] >= 0.4:
        return name, scores[name]
    return "broad", float(np.mean(relative_entropy(w)))

"""Logit lens (nostalgebraist 2020): read every layer's residual stream as if it were the last.

h⁽ˡ⁾ (the residual stream leaving layer l) goes through the model's final norm and its
unembedding (LM head): p⁽ˡ⁾ = softmax(unembed(final_norm(h⁽ˡ⁾))). At the last layer this is the
model's own next-token prediction. Only the asked positions are unembedded (the last one by
default): the vocabulary is the expensive axis, (positions × vocab) per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from attn_cli.attention import row_softmax
from attn_cli.errors import InputError
from attn_cli.narrate import method_text as text
from attn_cli.trace import TraceStep, printable

Array = np.ndarray


class LensResult(NamedTuple):
    positions: list[int]
    ids: np.ndarray  # (L, P, k) top-k token ids per layer and position, most likely first
    probs: np.ndarray  # (L, P, k) their probabilities


def top_k(probs: Array, k: int) -> tuple[Array, Array]:
    """The k largest entries of each row, largest first (ties: lower id first): (ids, values)."""
    k = min(k, probs.shape[-1])
    part = np.argpartition(-probs, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(probs, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)
    ids = np.take_along_axis(part, order, axis=-1)
    return ids, np.take_along_axis(probs, ids, axis=-1)


def next_token_probs(
    hidden: Array, final: Callable[[Array], Array], unembed: Callable[[Array], Array]
) -> Array:
    """softmax(unembed(final(h))) for the rows of h: (P, vocab)."""
    logits = unembed(final(hidden)).astype(np.float64)
    return row_softmax(logits)


def logit_lens(
    hiddens: Sequence[Array],
    final: Callable[[Array], Array],
    unembed: Callable[[Array], Array],
    positions: Sequence[int] | None = None,
    k: int = 5,
) -> LensResult:
    """Top-k next tokens of every layer's residual stream (hiddens: (n, d) each, in order) at
    `positions` (default: the last). final/unembed: the family's final norm and LM head."""
    n = hiddens[0].shape[0]
    if positions is not None and any(not -n <= p < n for p in positions):
        bad = next(p for p in positions if not -n <= p < n)
        raise InputError(
            f"position {bad}: the input has {n} tokens (0 … {n - 1}, or −1 for the last)"
        )
    pos = [n - 1] if positions is None else [p % n for p in positions]
    ids, probs = [], []
    for h in hiddens:
        i, p = top_k(next_token_probs(h[pos], final, unembed), k)
        ids.append(i)
        probs.append(p)
    return LensResult(pos, np.stack(ids), np.stack(probs))


def candidate_labels(ids: Sequence[int], decode: Callable[[int], str]) -> list[str]:
    """Readable, escaped, unique row labels for candidate tokens: the decoded text in quotes
    (so a leading space shows), with the id when two candidates read the same."""
    shown = [f"“{printable(decode(int(i)))}”" for i in ids]
    if len(set(shown)) != len(shown):
        shown = [f"{s} #{int(i)}" for s, i in zip(shown, ids, strict=True)]
    return shown


def lens_steps(
    result: LensResult,
    labels: Sequence[str],
    decode: Callable[[int], str],
    layers: Sequence[int] | None = None,
    prediction: bool = True,
) -> list[TraceStep]:
    """ "lens" steps (kind "prediction": rows = candidates, one column "p") per layer and
    position, and the model's "prediction" (the last layer's lens) per position. A position
    other than the last is named "lens@i" / "prediction@i"."""
    n_layers, _, k = result.ids.shape
    last = len(labels) - 1
    steps = []
    for pi, pos in enumerate(result.positions):
        suffix = "" if pos == last else f"@{pos}"
        fields = {"position": pos, "token": labels[pos], "k": k}
        for l in range(n_layers) if layers is None else layers:
            formula, description = text("lens", layer=l, **fields)
            steps.append(
                TraceStep(
                    "lens" + suffix,
                    formula,
                    description,
                    result.probs[l, pi][:, None].astype(np.float32),
                    candidate_labels(result.ids[l, pi], decode),
                    ["p"],
                    "prediction",
                    layer=l,
                )
            )
        if prediction:
            formula, description = text("prediction", **fields)
            steps.append(
                TraceStep(
                    "prediction" + suffix,
                    formula,
                    description,
                    result.probs[-1, pi][:, None].astype(np.float32),
                    candidate_labels(result.ids[-1, pi], decode),
                    ["p"],
                    "prediction",
                )
            )
    return steps

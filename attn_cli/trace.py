"""The one data model: a Trace is everything a run computed, in order.

Renderers and exporters read a Trace and nothing else, so a saved trace renders exactly as the
run that produced it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# What a step's matrix holds; decides its colour scale and how its axes are labelled.
KINDS = (
    "vectors",  # tokens × dimensions (X, Q, K, V, Y …): signed, diverging colours
    "scores",  # tokens × tokens, unnormalised (W_raw, W_scaled, W_masked): diverging
    "weights",  # tokens × tokens, rows sum to 1 (W): sequential
    "parameters",  # dimensions × dimensions (W_q, W_k, W_v, W_o): diverging
)


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

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def where(self) -> str:
        """'layer 2 · head 5', 'head 0', or '' for steps outside any layer/head."""
        parts = []
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        if self.head is not None:
            parts.append(f"head {self.head}")
        return " · ".join(parts)


@dataclass
class Trace:
    text: str
    tokens: list[str]
    token_ids: list[int]
    config: dict[str, Any]
    steps: list[TraceStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, name: str, layer: int | None = None, head: int | None = None) -> TraceStep:
        for step in self.steps:
            if step.name == name and step.layer == layer and step.head == head:
                return step
        raise KeyError((name, layer, head))

    def steps_named(self, name: str) -> list[TraceStep]:
        return [s for s in self.steps if s.name == name]


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def printable(text: str) -> str:
    """Token text made safe for a terminal: control, format (zero-width, bidi) and separator
    characters become visible escapes, so nothing is interpreted and columns stay aligned."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (cat == "Zs" and ch != " "):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


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

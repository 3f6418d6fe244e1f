"""Attribution and analysis methods that go beyond one layer's raw attention weights.

Each module is pure numpy (arrays in, arrays out) plus a builder that turns its results into
`TraceStep`s; the words for every step live in `narrate.py`'s catalogue (`method_step`).

- rollout.py    attention rollout (Abnar & Zuidema 2020)
- flow.py       attention flow, max-flow through the layers (optional: needs scipy)
- norms.py      attention norms ‖α·f(x)‖ (Kobayashi et al. 2020)
- alti.py       ALTI token contributions and their rollout (Ferrando et al. 2022)
- lens.py       logit lens: every layer's residual stream through the LM head
- detectors.py  previous-token, duplicate-token and induction head scores (TransformerLens)
- corpus.py     per layer × head attention statistics over a file (Clark et al. 2019)
- registry.py   runs them: method names + a model run -> TraceSteps, each refused where
                what it needs is missing

This module is the catalogue, light enough for the CLI's start-up (no numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

# What a method may need, and how a refusal says it is missing (registry.py checks them).
NEEDS = {
    "model": "a model",
    "lm_head": "a language-model head",
    "linear_values": "a linear value path (x·W_v + b_v)·W_o",
    "post_norm": "the post-attention norm of a post-norm family (attn_out_norm)",
    "scipy": "scipy (pip install 'attn-cli[flow]')",
    "text": "text input (the detectors score token patterns; a vision model reads pictures)",
}


@dataclass(frozen=True)
class Method:
    """One method: everything the API, the CLI and the exports know about it."""

    name: str
    steps: tuple[str, ...]  # the step names it adds to a trace, in order
    hint: str = ""  # after its name in --method's help
    needs: tuple[str, ...] = ()  # keys of NEEDS
    # "all" includes it; False for a method too slow to run unasked (with the reason)
    in_all: bool = True
    not_in_all: str = ""


# Every method, in the order their steps appear in a trace.
CATALOGUE = (
    Method("rollout", ("rollout",)),
    Method(
        "flow",
        ("flow",),
        "≤ 32 tokens; pip install 'attn-cli[flow]'",
        needs=("scipy",),
        in_all=False,
        not_in_all="n² max-flow problems: ask for it by name",
    ),
    Method("norms", ("norms", "norms_sum"), needs=("linear_values",)),
    Method("alti", ("alti", "alti_rollout"), needs=("model", "linear_values", "post_norm")),
    Method(
        "lens",
        ("lens", "prediction"),
        "models with an LM head; --top-k candidates",
        needs=("model", "lm_head"),
    ),
    Method("detectors", ("prev_token", "duplicate_token", "induction"), needs=("model", "text")),
)

BY_NAME = {m.name: m for m in CATALOGUE}
# Method names that `Model.trace(methods=…)` / `--method` accept, in the order their steps appear.
METHODS = tuple(BY_NAME)

__all__ = ["BY_NAME", "CATALOGUE", "METHODS", "NEEDS", "Method"]

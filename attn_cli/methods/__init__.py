"""Attribution and analysis methods that go beyond one layer's raw attention weights.

Each module is pure numpy (arrays in, arrays out) plus a builder that turns its results into
`TraceStep`s; the words for every step live in `texts.py`.

- rollout.py    attention rollout (Abnar & Zuidema 2020)
- flow.py       attention flow, max-flow through the layers (optional: needs scipy)
- norms.py      attention norms ‖α·f(x)‖ (Kobayashi et al. 2020)
- alti.py       ALTI token contributions and their rollout (Ferrando et al. 2022)
- lens.py       logit lens: every layer's residual stream through the LM head
- detectors.py  previous-token, duplicate-token and induction head scores (TransformerLens)
- corpus.py     per layer × head attention statistics over a file (Clark et al. 2019)
- steps.py      one entry point: method names -> TraceSteps for a model run
"""

from __future__ import annotations

# Methods that `Model.trace(methods=…)` / `--method` accept, in the order their steps appear.
METHODS = ("rollout", "flow", "norms", "alti", "lens", "detectors")

__all__ = ["METHODS"]

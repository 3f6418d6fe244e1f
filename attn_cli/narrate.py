"""The step catalogue: intermediates in, described TraceSteps out.

Every step a trace can hold is written here once — its formula and its plain-words line — and
used by the parameter-free pipeline, the Q/K/V pipeline and every model family. A family adds
only its own words (registry.Wording: how its X is made, what its mask means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import (
    AttentionParams,
    AttentionSteps,
    MultiHeadSteps,
    ToySteps,
    kv_group,
    kv_head_of,
)
from attn_cli.trace import TraceStep, dim_labels

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
ROLE = {
    "q": "its query: what the token is looking for",
    "k": "its key: what the token offers to be matched against",
    "v": "its value: what the token passes on when it is attended to",
}
PLURAL = {"Q": "Queries", "K": "Keys", "V": "Values"}

StepFilter = Callable[[str], bool]

# Parameter matrices (dimensions × dimensions): the same for every input.
PARAMETER_STEPS = ("W_q", "W_k", "W_v", "W_o")


def each_token(n: int) -> str:
    return "The one token" if n == 1 else f"Each of the {n} tokens"


def keep_all(name: str) -> bool:
    return True


def superscript(h: int) -> str:
    return f"⁽{h}⁾".translate(_SUPERSCRIPT)


def fmt(v: float) -> str:
    return f"{v:.3g}"


@dataclass(frozen=True)
class Voice:
    """Who the steps are written for. The Q/K/V pipeline teaches (it spells out why each step
    exists); a model's steps are shorter, since they repeat for every layer and head."""

    teaching: bool
    mask: str = "A token may not look at later tokens, so their scores are −∞."


TEACHING = Voice(teaching=True)


# --- the parameter-free pipeline ------------------------------------------------------------


def toy_steps(X: np.ndarray, labels: list[str], s: ToySteps) -> list[TraceStep]:
    """X, W_raw = X·Xᵀ, (W_scaled), W = row softmax, Y = W·X."""
    n, d = X.shape
    dims = dim_labels(d)
    steps = [
        TraceStep(
            "X",
            "embed(tokens)",
            f"{each_token(n)} becomes a row vector of {d} numbers; so far every vector "
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
            "softmax(W_scaled) per row" if s.W_scaled is not None else "softmax(W_raw) per row",
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
            "of W: every token now carries context from the others. (Texts that keep tokens as "
            "columns write it with transposes; with tokens as rows it is Y = W·X.)",
            s.Y,
            labels,
            dims,
            "vectors",
        ),
    ]
    return steps


# --- one attention layer: Q/K/V pipeline and model layers share these -------------------------


def input_step(
    X: np.ndarray, labels: list[str], formula: str, description: str, layer: int | None = None
) -> TraceStep:
    return TraceStep(
        "X", formula, description, X, labels, dim_labels(X.shape[1]), "vectors", layer=layer
    )


def projection_steps(
    p: AttentionParams, h: int, head: int | None, origin: str = "learned"
) -> list[TraceStep]:
    """W_q, W_k, W_v of one head (the Q/K/V pipeline shows its parameters). `origin` says where
    the numbers come from: "learned", "seeded" (random, untrained) or a file name."""
    d = p.w_q.shape[0]
    of = f" of head {h}" if head is not None else ""
    sup = superscript(h) if head is not None else ""
    g = kv_head_of(h, p.heads, p.kv)
    steps = []
    for letter, w, width, owner in (
        ("q", p.w_q, p.d_k, h),
        ("k", p.w_k, p.d_k, g),
        ("v", p.w_v, p.d_v, g),
    ):
        block = w[:, owner * width : (owner + 1) * width]
        shape = f"{d}×{block.shape[1]}"
        role = f"a token's vector times this matrix gives {ROLE[letter]}."
        if origin == "seeded":
            formula = f"random {shape} matrix{sup}"
            description = (
                f"The {letter.upper()} projection{of}: {role} In a trained model it is learned; "
                "here it is seeded random numbers (untrained), so what it picks out is arbitrary."
            )
        elif origin == "learned":
            formula = f"learned {shape} matrix{sup}"
            description = f"The learned {letter.upper()} projection{of}: {role}"
        else:
            formula = f"{shape} matrix{sup} from {origin}"
            description = f"The {letter.upper()} projection{of}, from {origin}: {role}"
        steps.append(
            TraceStep(
                f"W_{letter}",
                formula,
                description,
                block,
                dim_labels(d),
                dim_labels(width, letter),
                "parameters",
                head=head,
            )
        )
    return steps


def _sharing(h: int, p: AttentionParams) -> str:
    """' They belong to key/value head 1, shared by query heads 4–7.' under grouped-query
    attention; nothing when every query head has its own."""
    if p.kv == p.heads:
        return ""
    group = kv_group(p.heads, p.kv)
    g = kv_head_of(h, p.heads, p.kv)
    return (
        f" They belong to key/value head {g}, shared by query heads "
        f"{g * group}–{(g + 1) * group - 1}."
    )


def qkv_vector_steps(
    m: MultiHeadSteps, h: int, head: int | None, labels: list[str], voice: Voice, layer: int | None
) -> list[TraceStep]:
    """Q, K, V of one head, then what the hook did to q and k (norms, rotary positions)."""
    p = m.params
    g = kv_head_of(h, p.heads, p.kv)
    sup = superscript(h) if voice.teaching and head is not None else ""
    of = f" of head {h}" if head is not None else ""
    steps = []
    for letter, mat, width in (
        ("Q", m.Q[h], p.d_k),
        ("K", m.K[g], p.d_k),
        ("V", m.V[g], p.d_v),
    ):
        lo = letter.lower()
        bias = {"Q": p.b_q, "K": p.b_k, "V": p.b_v}[letter]
        formula = f"X·W_{lo}{sup}" + (f" + b_{lo}" if bias is not None else "")
        if voice.teaching:
            description = (
                f"{PLURAL[letter]}{of}: one row per token, each token's vector sent through "
                f"W_{lo} into {width} numbers."
            )
        else:
            description = {
                "Q": f"Queries of head {h}: what each token looks for, in {width} numbers.",
                "K": f"Keys of head {h}: what each token offers to be matched against.",
                "V": f"Values of head {h}: what each token passes on when attended to.",
            }[letter]
            if letter != "Q":
                description += _sharing(h, p)
        steps.append(
            TraceStep(
                letter,
                formula,
                description,
                mat,
                labels,
                dim_labels(width, lo),
                "vectors",
                layer,
                head,
            )
        )
    prev = "Q", "K"
    for stage, q_s, k_s in m.stages:
        for letter, mat, before in (("Q", q_s[h], prev[0]), ("K", k_s[g], prev[1])):
            name = f"{letter}_{stage}"
            formula, description = STAGE_TEXT[stage](letter, before)
            steps.append(
                TraceStep(
                    name,
                    formula,
                    description,
                    mat,
                    labels,
                    dim_labels(mat.shape[-1], letter.lower()),
                    "vectors",
                    layer,
                    head,
                )
            )
        prev = f"Q_{stage}", f"K_{stage}"
    return steps


STAGE_TEXT: dict[str, Callable[[str, str], tuple[str, str]]] = {
    "norm": lambda letter, before: (
        f"RMSNorm({before})",
        f"Each {'query' if letter == 'Q' else 'key'} is normalised to a fixed size (RMSNorm with "
        "its own learned scale) before positions are added, so no single dimension can blow up "
        "the scores.",
    ),
    "rot": lambda letter, before: (
        f"RoPE({before}, position)",
        f"Rotary position embedding: pairs of dimensions of each {'query' if letter == 'Q' else 'key'} "
        "are rotated by an angle that grows with the token's position. This is where position "
        "enters: the score of two tokens now depends on how far apart they are.",
    ),
}


def score_steps(
    a: AttentionSteps,
    h: int,
    head: int | None,
    labels: list[str],
    voice: Voice,
    layer: int | None,
    d_k: int,
    scale: float | None,
    temperature: float = 1.0,
    rotated: str = "",
    cap: float | None = None,
) -> list[TraceStep]:
    """W_raw, W_scaled, (W_capped), (W_masked), W and Y of one head."""

    def step(
        name: str, formula: str, description: str, data: np.ndarray, cols: list[str], kind: str
    ):
        return TraceStep(name, formula, description, data, labels, cols, kind, layer, head)

    q_name, k_name = ("Q", "K") if not rotated else (f"Q_{rotated}", f"K_{rotated}")
    match = "Query i · key j: how well what token i looks for matches what token j offers."
    if voice.teaching:
        match += " Unlike X·Xᵀ it need not be symmetric, because queries and keys come from different maps."
    steps = [step("W_raw", f"{q_name}·{k_name}ᵀ", match, a.W_raw[h], labels, "scores")]
    if scale is None or np.isclose(scale, 1.0 / np.sqrt(d_k)):
        scaled_formula = "W_raw/√d_k"
        why = (
            f"Divided by √d_k = {fmt(np.sqrt(d_k))}: dot products grow with d_k, and large scores "
            "would push the softmax into saturation (one weight near 1, tiny gradients for the rest)."
            if voice.teaching
            else f"Divided by √d_k = {np.sqrt(d_k):.3g} so the softmax does not saturate."
        )
    else:
        scaled_formula = f"W_raw·{fmt(scale)}"
        why = (
            f"Multiplied by {fmt(scale)} (this model's own scale, 1/√{fmt(1 / scale**2)}, instead "
            f"of 1/√d_k) so the softmax does not saturate."
        )
    steps.append(step("W_scaled", scaled_formula, why, a.W_scaled[h], labels, "scores"))
    logits = "W_scaled"
    if a.W_capped is not None and cap is not None:
        steps.append(
            step(
                "W_capped",
                f"{fmt(cap)}·tanh(W_scaled/{fmt(cap)})",
                f"Soft-capping: scores are squashed smoothly into (−{fmt(cap)}, {fmt(cap)}), so no "
                "single score can dominate the softmax; small scores barely change.",
                a.W_capped[h],
                labels,
                "scores",
            )
        )
        logits = "W_capped"
    if a.W_masked is not None:
        window = _window(a.W_masked[h])
        if window is None:
            formula = f"{logits}, −∞ above the diagonal"
            description = (
                "Causal mask: a token may not look at later tokens, so every future position is "
                "set to −∞ before the softmax and gets a weight of exactly 0."
                if voice.teaching
                else voice.mask
            )
        else:
            formula = f"{logits}, −∞ above the diagonal and {window}+ tokens back"
            description = (
                f"Sliding-window causal mask: a token sees only itself and the {window - 1} tokens "
                "before it; later tokens and tokens further back are −∞ and get weight 0."
            )
        steps.append(step("W_masked", formula, description, a.W_masked[h], labels, "scores"))
        logits = "W_masked"
    t = fmt(temperature)
    if temperature == 1.0:
        formula, temp_note = f"softmax({logits}) per row", ""
    else:
        formula = f"softmax({logits}/{t}) per row"
        temp_note = (
            f" Temperature T = {t} < 1 sharpens each row towards its best match."
            if temperature < 1
            else f" Temperature T = {t} > 1 flattens each row towards uniform."
        )
    weights_text = (
        "Each row is now a probability distribution (weights between 0 and 1, summing to 1) "
        "over the tokens this token may attend to." + temp_note
        if voice.teaching
        else "Attention weights: each row sums to 1 — where each token looks."
    )
    steps.append(step("W", formula, weights_text, a.W[h], labels, "weights"))
    d_v = a.Y.shape[-1]
    of = f" of head {h}" if head is not None else ""
    y_text = (
        f"Each token's output{of} is the weighted sum of the value vectors, weighted by its row of W."
        if voice.teaching
        else f"Head {h}'s output: each token's weighted mix of the values."
    )
    steps.append(step("Y", "W·V", y_text, a.Y[h], dim_labels(d_v, "v"), "vectors"))
    return steps


def _window(masked: np.ndarray) -> int | None:
    """The sliding window a mask implies, or None for a plain causal mask."""
    visible = np.isfinite(masked)
    below = np.tril(~visible, -1)
    if not below.any():
        return None
    return int(visible.sum(axis=1).max())


def head_steps(
    m: MultiHeadSteps,
    h: int,
    head: int | None,
    labels: list[str],
    voice: Voice,
    layer: int | None = None,
    temperature: float = 1.0,
) -> list[TraceStep]:
    """Every step of one head, in the order it is computed."""
    rotated = m.stages[-1][0] if m.stages else ""
    return qkv_vector_steps(m, h, head, labels, voice, layer) + score_steps(
        m.attn, h, head, labels, voice, layer, m.params.d_k, m.scale, temperature, rotated, m.cap
    )


def combine_steps(
    m: MultiHeadSteps, labels: list[str], layer: int | None = None, origin: str = "learned"
) -> list[TraceStep]:
    """Y_concat (several heads) and O = Y_concat·W_o (with an output projection)."""
    p, H = m.params, m.params.heads
    d_v = m.attn.Y.shape[-1]
    concat_cols = [f"h{h}.v{j}" for h in range(H) for j in range(d_v)]
    steps = []
    if H > 1:
        steps.append(
            TraceStep(
                "Y_concat",
                f"[Y{superscript(0)} … Y{superscript(H - 1)}]",
                f"The {H} heads' outputs side by side. Each head attended with its own W_q, W_k and "
                "W_v, so each can pick up a different relation between the tokens.",
                m.Y_concat,
                labels,
                concat_cols,
                "vectors",
                layer,
            )
        )
    if m.O is not None and p.w_o is not None:
        out_cols = dim_labels(p.w_o.shape[1])
        steps.append(
            TraceStep(
                "W_o",
                {"learned": "learned", "seeded": "random"}.get(origin, f"from {origin}")
                + f", {p.w_o.shape[0]}×{p.w_o.shape[1]}",
                "The output projection: mixes what the heads found back into one vector per token.",
                p.w_o,
                concat_cols if H > 1 else dim_labels(d_v, "v"),
                out_cols,
                "parameters",
                layer,
            )
        )
        steps.append(
            TraceStep(
                "O",
                ("Y_concat·W_o" if H > 1 else "Y·W_o") + (" + b_o" if p.b_o is not None else ""),
                "The layer's output: one vector per token, combining every head's view of its context.",
                m.O,
                labels,
                out_cols,
                "vectors",
                layer,
            )
        )
    return steps


def norm_step(X_norm: np.ndarray, labels: list[str], eps: float) -> TraceStep:
    """X_norm = LayerNorm(X): the Q/K/V pipeline's input, as a transformer normalises it."""
    d = X_norm.shape[1]
    return TraceStep(
        "X_norm",
        "LayerNorm(X)",
        f"Each token's vector is centred and scaled to mean 0 and variance 1 over its {d} numbers "
        f"((x − mean)/√(variance + {eps:g})), as transformers normalise a layer's input before "
        "the projections. Without it, small embeddings give near-zero scores and every row of W "
        "comes out almost uniform.",
        X_norm,
        labels,
        dim_labels(d),
        "vectors",
    )


def qkv_steps(
    X: np.ndarray,
    labels: list[str],
    m: MultiHeadSteps,
    temperature: float,
    X_norm: np.ndarray | None = None,
    eps: float = 1e-5,
    origin: str = "learned",
) -> list[TraceStep]:
    """The Q/K/V pipeline as described steps: X, (X_norm), then each head's W_q/W_k/W_v, Q/K/V
    and attention steps, then Y_concat and O."""
    n, d = X.shape
    H = m.params.heads
    into = "the input to the projections"
    if X_norm is not None:
        into = "normalised, then sent through the projections"
    steps = [
        input_step(
            X,
            labels,
            "embed(tokens)",
            f"{each_token(n)} becomes a row vector of {d} numbers: {into}.",
        )
    ]
    if X_norm is not None:
        steps.append(norm_step(X_norm, labels, eps))
    for h in range(H):
        head = h if H > 1 else None
        steps += projection_steps(m.params, h, head, origin)
        for step in head_steps(m, h, head, labels, TEACHING, temperature=temperature):
            if X_norm is not None and step.name in ("Q", "K", "V"):
                step.formula = step.formula.replace("X·", "X_norm·", 1)  # what was projected
            steps.append(step)
    return steps + combine_steps(m, labels, origin=origin)


def model_layer_steps(
    X: np.ndarray,
    m: MultiHeadSteps,
    i: int,
    heads: Iterable[int],
    labels: list[str],
    x_formula: str,
    x_description: str,
    voice: Voice,
    keep: StepFilter = keep_all,
) -> list[TraceStep]:
    """One model layer: its X, then every step of each selected head."""
    steps = [input_step(X, labels, x_formula, x_description, layer=i)]
    for h in heads:
        steps += head_steps(m, h, h, labels, voice, layer=i)
    return [s for s in steps if keep(s.name)]


# --- methods beyond raw weights (attn_cli/methods) ----------------------------------------
# Descriptions are str.format templates; method_text() fills the fields they use: layer, head,
# last (the last layer index), position, token, k, scale.
# step name -> (formula, description template)
METHOD_TEXTS: dict[str, tuple[str, str]] = {
    # --- attention rollout (Abnar & Zuidema 2020) -------------------------------------------
    "rollout": (
        "Â⁽ˡ⁾ = ½·mean_h W⁽ˡ'ʰ⁾ + ½·I;  R⁽ˡ⁾ = Â⁽ˡ⁾·Â⁽ˡ⁻¹⁾ ··· Â⁽⁰⁾",
        "Attention rollout after layers 0–{layer}: how much each token (row) has drawn, "
        "through every layer so far, on each input token (column). Each layer's heads are "
        "averaged and the residual connection counts as half, then the layers are multiplied. "
        "Rows sum to 1.",
    ),
    # --- attention flow ------------------------------------------------------------------------
    "flow": (
        "F_ij = max-flow(token i after layer {layer} → input token j), capacities Â⁽ˡ⁾",
        "Attention flow: the layers as a network whose pipes are the rollout matrices Â; the "
        "number is how much can flow from token i (row) at the top down to input token j "
        "(column) at once. Unlike rollout it counts only the best paths, never one edge twice. "
        "Capacities are rounded to multiples of 2⁻{scale} (absolute error below "
        "edges × 2⁻{scale_1}).",
    ),
    # --- attention norms (Kobayashi et al. 2020) -----------------------------------------------
    "norms": (
        "‖α_ij · f(x_j)‖,  f(x) = (x·W_V + b_V)·W_O⁽ʰ⁾",
        "How much token j (column) actually moves token i (row) through this head: the "
        "attention weight times the length of the vector j sends, after the value and output "
        "projections. A large weight on a near-zero vector shows up small here.",
    ),
    "norms_sum": (
        "‖Σ_h α_ij⁽ʰ⁾ · f_h(x_j)‖",
        "All heads of layer {layer} together: the length of everything token j (column) sends "
        "to token i (row), summed over heads before measuring (heads can cancel out).",
    ),
    # --- ALTI (Ferrando et al. 2022) ----------------------------------------------------------
    "alti": (
        "c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁) / Σ_k (…)",
        "ALTI, layer {layer}: the attention block's output y_i (with the residual connection "
        "and its layer norm) is split into one piece T_i(x_j) per input token; a piece close to "
        "the whole output contributes much. Row i shows the share of each token j; rows sum "
        "to 1.",
    ),
    "alti_rollout": (
        "C⁽ˡ⁾ · C⁽ˡ⁻¹⁾ ··· C⁽⁰⁾",
        "ALTI rolled out through layers 0–{layer}: the share of each input token (column) in "
        "each token's representation (row) after layer {layer}. Rows sum to 1.",
    ),
    # --- logit lens ------------------------------------------------------------------------------
    "lens": (
        "softmax(unembed(final_norm(h⁽ˡ⁾)))[{position}], top {k}",
        "Logit lens: the residual stream after layer {layer}, at {token} (position {position}), "
        "read as if it were the last layer: the {k} most likely next tokens and their "
        "probabilities.",
    ),
    "prediction": (
        "softmax(logits)[{position}], top {k}",
        "The model's prediction for the token after {token} (position {position}): the {k} "
        "most likely next tokens and their probabilities.",
    ),
    # --- head detectors (TransformerLens) ------------------------------------------------------
    "prev_token": (
        "Σ_ij W_ij·P_ij / Σ_ij W_ij,  P_ij = [j = i − 1]",
        "Previous-token score of every head: the share of its attention that goes to the token "
        "just before (1 = it always looks one token back).",
    ),
    "duplicate_token": (
        "Σ_ij W_ij·P_ij / Σ_ij W_ij,  P_ij = [j < i, t_j = t_i]",
        "Duplicate-token score of every head: the share of its attention that goes to earlier "
        "copies of the same token.",
    ),
    "induction": (
        "Σ_ij W_ij·P_ij / Σ_ij W_ij,  P_ij = [1 ≤ j ≤ i, t_(j−1) = t_i]",
        "Induction score of every head, measured on a random token sequence repeated twice: the "
        "share of its attention that goes to the token that followed an earlier copy of the "
        "current token (what lets a model continue a pattern it has seen).",
    ),
    # --- corpus statistics (Clark et al. 2019) ---------------------------------------------------
    "to_first": (
        "mean_i W_i,0",
        "Mean attention every head pays to the first token ([CLS] in BERT), over every token "
        "of every line.",
    ),
    "to_sep": (
        "mean_i Σ_(j special, j > 0) W_ij",
        "Mean attention to special tokens after the first ([SEP], end-of-text).",
    ),
    "to_punct": (
        "mean_i Σ_(j punctuation) W_ij",
        "Mean attention to punctuation tokens (. , ! ? …).",
    ),
    "to_prev": ("mean_(i>0) W_i,i−1", "Mean attention to the previous token."),
    "to_next": ("mean_(i<n−1) W_i,i+1", "Mean attention to the next token."),
    "to_self": ("mean_i W_ii", "Mean attention of a token to itself."),
    "entropy": (
        "mean_i −Σ_j W_ij·ln W_ij",
        "Mean entropy (nats) of each head's attention rows: low = focused on few tokens, "
        "high = spread out (ln n is uniform over n tokens).",
    ),
}


def method_text(name: str, **fields: object) -> tuple[str, str]:
    """The formula and description of step `name`, with its template fields filled."""
    formula, description = METHOD_TEXTS[name]
    return formula.format(**fields), description.format(**fields)


def method_step(
    name: str,
    matrix: np.ndarray,
    labels: Sequence[str],
    kind: str,
    layer: int,
    head: int | None = None,
    **fields: object,
) -> TraceStep:
    """A method's token × token step (rollout, ALTI, norms, flow) at `layer` (and `head`), in
    float32, described from the catalogue; `fields` fill its text beyond layer and head."""
    formula, description = method_text(name, layer=layer, head=head, **fields)
    data = np.asarray(matrix, dtype=np.float32)
    return TraceStep(
        name, formula, description, data, list(labels), list(labels), kind, layer=layer, head=head
    )


# Every step name a trace can hold, in pipeline order (for `steps=` / `--steps`).
STEP_NAMES = (
    "X",
    "X_norm",
    "W_q",
    "W_k",
    "W_v",
    "Q",
    "K",
    "V",
    "Q_norm",
    "K_norm",
    "Q_rot",
    "K_rot",
    "W_raw",
    "W_scaled",
    "W_capped",
    "W_masked",
    "W",
    "Y",
    "Y_concat",
    "W_o",
    "O",
    "H",
    *METHOD_TEXTS,
)

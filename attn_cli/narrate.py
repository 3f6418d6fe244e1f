"""The step catalogue: attention records in, described TraceSteps out.

Every stage a record can hold is described here once, by name — its formula and its
plain-words line (STAGE_TEXTS) — and used by the parameter-free pipeline, the Q/K/V pipeline
and every model family. A family adds the words of its own stages next to its code
(`Family.stage_texts`, consulted before this catalogue) and its wording (how its X is made,
what its mask means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from attn_cli.attention import kv_group, kv_head_of
from attn_cli.records import (
    QUERY,
    QUERY_HEADS,
    TOKENS,
    AttentionRecord,
    Dims,
    LayerRecord,
    Side,
    Stage,
)
from attn_cli.trace import Axis, TraceStep, dim_labels

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


@dataclass(frozen=True)
class StageContext:
    """What the words of one stage may depend on: the record, the stage, this head's slice of
    its data, and the stages computed before it (whose names its formula refers to)."""

    record: AttentionRecord
    stage: Stage
    data: np.ndarray  # the stage's data for this head (the whole stage if not per head)
    h: int  # the query head (0 for a stage over the whole block)
    head: int | None  # the head as the step shows it: None for a pipeline's only head
    layer: int | None
    voice: Voice
    earlier: tuple[Stage, ...]  # the record's stages before this one, in order

    @property
    def of(self) -> str:
        return f" of head {self.h}" if self.head is not None else ""

    def latest(self, letter: str) -> str:
        """The newest stage of per-head vectors `letter` (Q -> Q, Q_norm, Q_rot …) so far."""
        names = [
            s.name
            for s in self.earlier
            if s.heads is not None and (s.name == letter or s.name.startswith(letter + "_"))
        ]
        return names[-1] if names else letter

    def logits(self) -> str:
        """The newest score stage so far: what the softmax (or the mask) takes; the one the
        softmax took when the scores were not recorded (records.maps_only)."""
        names = [s.name for s in self.earlier if s.kind == "scores"]
        return names[-1] if names else self.record.facts["softmax_of"]

    def input(self, letter: str = "Q") -> str:
        """The newest stage of the whole block's vectors so far: what the projections multiply
        (X, or X_norm when the Q/K/V pipeline normalises it); in a cross-attention block the
        keys and values are made from X_source (the encoder's output) instead."""
        if letter != "Q" and any(s.name == "X_source" for s in self.earlier):
            return "X_source"
        names = [s.name for s in self.earlier if s.heads is None and s.kind == "vectors"]
        return [n for n in names if n != "X_source"][-1]


# A stage's words: its formula and its plain-words description.
StageText = Callable[[StageContext], tuple[str, str]]


# --- the catalogue: one entry per stage name ---------------------------------------------------


def _embedded(c: StageContext) -> tuple[str, str]:
    n, d = c.data.shape
    into = "the input to the projections"
    if "X_norm" in c.record:
        into = "normalised, then sent through the projections"
    return "embed(tokens)", f"{each_token(n)} becomes a row vector of {d} numbers: {into}."


def _source(c: StageContext) -> tuple[str, str]:
    n, d = c.data.shape
    return "encoder output", (
        f"The encoder's output, one {d}-number vector per source position ({n}): the keys and "
        "values of this cross-attention are made from it, the queries from the target tokens."
    )


def _biased_scores(c: StageContext) -> tuple[str, str]:
    return f"{c.logits()} + B", (
        "Plus the position bias B: a learned number per head for each distance between query "
        "and key (bucketed), so the scores depend on where the tokens sit, not only on what "
        "they hold."
    )


def _normalised(c: StageContext) -> tuple[str, str]:
    """X_norm = LayerNorm(X): the Q/K/V pipeline's input, as a transformer normalises it."""
    d, eps = c.data.shape[1], c.record.facts["norm_eps"]
    return (
        "LayerNorm(X)",
        f"Each token's vector is centred and scaled to mean 0 and variance 1 over its {d} numbers "
        f"((x − mean)/√(variance + {eps:g})), as transformers normalise a layer's input before "
        "the projections. Without it, small embeddings give near-zero scores and every row of W "
        "comes out almost uniform.",
    )


def _projection(c: StageContext) -> tuple[str, str]:
    """W_q, W_k, W_v of one head (the Q/K/V pipeline shows its parameters). The record's
    `origin` says where the numbers come from: "learned", "seeded" (random, untrained) or a
    file name."""
    letter = c.stage.name[-1]
    origin = c.record.facts.get("origin", "learned")
    sup = superscript(c.h) if c.head is not None else ""
    shape = f"{c.data.shape[0]}×{c.data.shape[1]}"
    role = f"a token's vector times this matrix gives {ROLE[letter]}."
    if origin == "seeded":
        return f"random {shape} matrix{sup}", (
            f"The {letter.upper()} projection{c.of}: {role} In a trained model it is learned; "
            "here it is seeded random numbers (untrained), so what it picks out is arbitrary."
        )
    if origin == "learned":
        return (
            f"learned {shape} matrix{sup}",
            f"The learned {letter.upper()} projection{c.of}: {role}",
        )
    return (
        f"{shape} matrix{sup} from {origin}",
        f"The {letter.upper()} projection{c.of}, from {origin}: {role}",
    )


def _sharing(c: StageContext) -> str:
    """' They belong to key/value head 1, shared by query heads 4–7.' under grouped-query
    attention; nothing when every query head has its own."""
    r = c.record
    if r.kv == r.heads:
        return ""
    group = kv_group(r.heads, r.kv)
    g = kv_head_of(c.h, r.heads, r.kv)
    return (
        f" They belong to key/value head {g}, shared by query heads "
        f"{g * group}–{(g + 1) * group - 1}."
    )


def _projected(c: StageContext) -> tuple[str, str]:
    """Q, K or V of one head: the block's input times its projection."""
    letter = c.stage.name
    lo = letter.lower()
    p = c.record.params
    bias = p is not None and getattr(p, f"b_{lo}") is not None
    sup = superscript(c.h) if c.voice.teaching and c.head is not None else ""
    width = c.data.shape[-1]
    formula = f"{c.input(letter)}·W_{lo}{sup}" + (f" + b_{lo}" if bias else "")
    if c.voice.teaching:
        return formula, (
            f"{PLURAL[letter]}{c.of}: one row per token, each token's vector sent through "
            f"W_{lo} into {width} numbers."
        )
    description = {
        "Q": f"Queries of head {c.h}: what each token looks for, in {width} numbers.",
        "K": f"Keys of head {c.h}: what each token offers to be matched against.",
        "V": f"Values of head {c.h}: what each token passes on when attended to.",
    }[letter]
    return formula, description + ("" if letter == "Q" else _sharing(c))


def _qk_norm(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    return (
        f"RMSNorm({c.latest(letter)})",
        f"Each {'query' if letter == 'Q' else 'key'} is normalised to a fixed size (RMSNorm with "
        "its own learned scale) before positions are added, so no single dimension can blow up "
        "the scores.",
    )


def _rotated(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    return (
        f"RoPE({c.latest(letter)}, position)",
        f"Rotary position embedding: pairs of dimensions of each {'query' if letter == 'Q' else 'key'} "
        "are rotated by an angle that grows with the token's position. This is where position "
        "enters: the score of two tokens now depends on how far apart they are.",
    )


def _raw_scores(c: StageContext) -> tuple[str, str]:
    match = "Query i · key j: how well what token i looks for matches what token j offers."
    if c.voice.teaching:
        match += " Unlike X·Xᵀ it need not be symmetric, because queries and keys come from different maps."
    return f"{c.latest('Q')}·{c.latest('K')}ᵀ", match


def _scaled_scores(c: StageContext) -> tuple[str, str]:
    scale, d_k = c.record.facts["scale"], c.record.facts["d_k"]
    if np.isclose(scale, 1.0 / np.sqrt(d_k)):
        return "W_raw/√d_k", (
            f"Divided by √d_k = {fmt(np.sqrt(d_k))}: dot products grow with d_k, and large scores "
            "would push the softmax into saturation (one weight near 1, tiny gradients for the rest)."
            if c.voice.teaching
            else f"Divided by √d_k = {np.sqrt(d_k):.3g} so the softmax does not saturate."
        )
    return f"W_raw·{fmt(scale)}", (
        f"Multiplied by {fmt(scale)} (this model's own scale, 1/√{fmt(1 / scale**2)}, instead "
        f"of 1/√d_k) so the softmax does not saturate."
    )


def _masked_scores(c: StageContext) -> tuple[str, str]:
    logits = c.logits()
    window = _window(c.data)
    if window is None:
        return f"{logits}, −∞ above the diagonal", (
            "Causal mask: a token may not look at later tokens, so every future position is "
            "set to −∞ before the softmax and gets a weight of exactly 0."
            if c.voice.teaching
            else c.voice.mask
        )
    return f"{logits}, −∞ above the diagonal and {window}+ tokens back", (
        f"Sliding-window causal mask: a token sees only itself and the {window - 1} tokens "
        "before it; later tokens and tokens further back are −∞ and get weight 0."
    )


def _window(masked: np.ndarray) -> int | None:
    """The sliding window a mask implies, or None for a plain causal mask."""
    visible = np.isfinite(masked)
    below = np.tril(~visible, -1)
    if not below.any():
        return None
    return int(visible.sum(axis=1).max())


def _weights(c: StageContext) -> tuple[str, str]:
    logits, temperature = c.logits(), c.record.facts.get("temperature", 1.0)
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
    return formula, (
        "Each row is now a probability distribution (weights between 0 and 1, summing to 1) "
        "over the tokens this token may attend to." + temp_note
        if c.voice.teaching
        else "Attention weights: each row sums to 1 — where each token looks"
        + (" in the source." if c.record.kind == "cross" else ".")
    )


def _mixed_values(c: StageContext) -> tuple[str, str]:
    return "W·V", (
        f"Each token's output{c.of} is the weighted sum of the value vectors, weighted by its row of W."
        if c.voice.teaching
        else f"Head {c.h}'s output: each token's weighted mix of the values."
    )


def _concatenated(c: StageContext) -> tuple[str, str]:
    H = c.record.heads
    return (
        f"[Y{superscript(0)} … Y{superscript(H - 1)}]",
        f"The {H} heads' outputs side by side. Each head attended with its own W_q, W_k and "
        "W_v, so each can pick up a different relation between the tokens.",
    )


def _output_projection(c: StageContext) -> tuple[str, str]:
    origin = c.record.facts.get("origin", "learned")
    return (
        {"learned": "learned", "seeded": "random"}.get(origin, f"from {origin}")
        + f", {c.data.shape[0]}×{c.data.shape[1]}",
        "The output projection: mixes what the heads found back into one vector per token.",
    )


def _output(c: StageContext) -> tuple[str, str]:
    p = c.record.params
    formula = "Y_concat·W_o" if c.record.heads > 1 else "Y·W_o"
    return formula + (" + b_o" if p is not None and p.b_o is not None else ""), (
        "The layer's output: one vector per token, combining every head's view of its context."
    )


# Stage name -> its words. A family's own stages (Family.stage_texts) are looked up first.
STAGE_TEXTS: dict[str, StageText] = {
    "X": _embedded,
    "X_norm": _normalised,
    "X_source": _source,
    "W_q": _projection,
    "W_k": _projection,
    "W_v": _projection,
    "Q": _projected,
    "K": _projected,
    "V": _projected,
    "Q_norm": _qk_norm,
    "K_norm": _qk_norm,
    "Q_rot": _rotated,
    "K_rot": _rotated,
    "W_raw": _raw_scores,
    "W_scaled": _scaled_scores,
    "W_biased": _biased_scores,
    "W_masked": _masked_scores,
    "W": _weights,
    "Y": _mixed_values,
    "Y_concat": _concatenated,
    "W_o": _output_projection,
    "O": _output,
}


# --- the parameter-free pipeline: its stages in its own words ----------------------------------


def _toy_scaled(c: StageContext) -> tuple[str, str]:
    d = c.record["X"].shape[1]
    return "W_raw/√d", (
        f"Divided by √d = {np.sqrt(d):.3g}: dot products grow with the dimension, and large "
        "scores would push the softmax into saturation (one weight near 1, the rest near 0)."
    )


TOY_TEXTS: dict[str, StageText] = {
    "X": lambda c: (
        "embed(tokens)",
        f"{each_token(c.data.shape[0])} becomes a row vector of {c.data.shape[1]} numbers; so "
        "far every vector is independent of the others.",
    ),
    "W_raw": lambda c: (
        "X·Xᵀ",
        "Cell (i, j) is the dot product of token i and token j: large when they point the "
        "same way. Not normalised: values can exceed 1, and the matrix is symmetric.",
    ),
    "W_scaled": _toy_scaled,
    "W": lambda c: (
        f"softmax({c.logits()}) per row",
        "Each row is normalised with a softmax (row max subtracted first, for stability): "
        "all weights are now between 0 and 1 and every row sums to 1 — how much each token "
        "attends to every token.",
    ),
    "Y": lambda c: (
        "W·X",
        "Each output row is a weighted mix of all token vectors, weighted by that token's row "
        "of W: every token now carries context from the others. (Texts that keep tokens as "
        "columns write it with transposes; with tokens as rows it is Y = W·X.)",
    ),
}


# --- records -> steps --------------------------------------------------------------------------


def token_axes(labels: list[str]) -> dict[str, Axis]:
    """The axes of a text-only trace: its tokens."""
    return {TOKENS: Axis(TOKENS, "text", labels)}


def layer_input(x_formula: str, x_description: Callable[[int], str]) -> StageText:
    """The words of a model layer's X: the family's formula, and how layer i's input was made."""

    def text(c: StageContext) -> tuple[str, str]:
        return x_formula, (
            f"Layer {c.layer}'s input: one {c.data.shape[1]}-number vector per token"
            + x_description(c.layer if c.layer is not None else 0)
        )

    return text


def _side(
    side: Side, record: AttentionRecord, axes: Mapping[str, Axis], n: int
) -> tuple[list[str], str | None]:
    """The labels of a stage's rows (columns), and the trace axis they run over (None: none)."""
    if isinstance(side, Dims):
        return dim_labels(n, side.prefix), None
    if isinstance(side, tuple):
        return list(side), None
    name = record.query if side == QUERY else record.key
    return axes[name].labels, name


def record_steps(
    record: AttentionRecord,
    axes: Mapping[str, Axis],
    voice: Voice,
    layer: int | None = None,
    heads: Iterable[int] | None = None,
    texts: Mapping[str, StageText] | None = None,
    numbered: bool = True,
    keep: StepFilter = keep_all,
) -> list[TraceStep]:
    """One attention block's stages as described steps: the stages over the whole block that
    come before the first per-head stage, then every per-head stage of each head in `heads`
    (default: all), then the rest. `texts` (a family's own words) are consulted before the
    catalogue; `numbered` False shows a one-head pipeline's steps without a head number; only
    the stages `keep` names become steps (their words are not written for nothing)."""
    own = texts or {}
    first = next((i for i, s in enumerate(record.stages) if s.heads is not None), None)
    indexed = [(i, s) for i, s in enumerate(record.stages) if keep(s.name)]
    leading = [(i, s) for i, s in indexed if first is None or i < first]
    per_head = [(i, s) for i, s in indexed if s.heads is not None]
    trailing = [(i, s) for i, s in indexed if first is not None and i > first and s.heads is None]

    def step(i: int, stage: Stage, h: int, head: int | None) -> TraceStep:
        data = stage.data
        if stage.heads is not None:
            data = data[h if stage.heads == QUERY_HEADS else kv_head_of(h, record.heads, record.kv)]
        text = own.get(stage.name) or STAGE_TEXTS.get(stage.name)
        if text is None:
            raise KeyError(
                f"stage {stage.name!r} has no words: give them in the family's stage_texts"
            )
        context = StageContext(record, stage, data, h, head, layer, voice, tuple(record.stages[:i]))
        formula, description = text(context)
        rows, row_axis = _side(stage.rows, record, axes, data.shape[0])
        cols, col_axis = _side(stage.cols, record, axes, data.shape[1])
        return TraceStep(
            stage.name,
            formula,
            description,
            data,
            rows,
            cols,
            stage.kind,
            layer,
            head,
            record.block,
            row_axis,
            col_axis,
        )

    steps = [step(i, s, 0, None) for i, s in leading]
    # a model whose layers differ in head count (Qwen3-Next's linear and softmax layers) shows
    # each layer the chosen heads it has
    for h in range(record.heads) if heads is None else [h for h in heads if h < record.heads]:
        steps += [step(i, s, h, h if numbered else None) for i, s in per_head]
    return steps + [step(i, s, 0, None) for i, s in trailing]


def toy_steps(record: AttentionRecord, labels: list[str]) -> list[TraceStep]:
    """The parameter-free pipeline: X, W_raw = X·Xᵀ, (W_scaled), W = row softmax, Y = W·X."""
    return record_steps(record, token_axes(labels), TEACHING, texts=TOY_TEXTS)


def qkv_steps(record: AttentionRecord, labels: list[str]) -> list[TraceStep]:
    """The Q/K/V pipeline as described steps: X, (X_norm), then each head's W_q/W_k/W_v, Q/K/V
    and attention steps, then Y_concat and O."""
    return record_steps(record, token_axes(labels), TEACHING, numbered=record.heads > 1)


def final_step(out: np.ndarray, labels: list[str], description: str) -> TraceStep:
    """H: the model's output after every layer (and its final norm), one vector per token."""
    return TraceStep(
        "H",
        "final hidden states",
        description,
        out,
        labels,
        dim_labels(out.shape[1]),
        "vectors",
        row_axis=TOKENS,
    )


def model_layer_steps(
    layer: LayerRecord,
    i: int,
    heads: Iterable[int],
    axes: Mapping[str, Axis],
    voice: Voice,
    texts: Mapping[str, StageText] | None = None,
    keep: StepFilter = keep_all,
) -> list[TraceStep]:
    """One model layer: each attention block's X, then every stage of each selected head."""
    steps, chosen = [], list(heads)
    for record in layer.blocks:
        steps += record_steps(record, axes, voice, i, chosen, texts, keep=keep)
    return steps


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
        name,
        formula,
        description,
        data,
        list(labels),
        list(labels),
        kind,
        layer=layer,
        head=head,
        row_axis=TOKENS,
        col_axis=TOKENS,
    )


# Every step name a trace can hold, in pipeline order (for `steps=` / `--steps`).
STEP_NAMES = (
    "X",
    "X_norm",
    "W_q",
    "W_k",
    "W_v",
    "c_q",  # DeepSeek's latent attention: the query latent,
    "c_kv",  # the key/value latent shared by all heads,
    "k_pe",  # and the one rotary key shared by all heads
    "Q",
    "K",
    "V",
    "Q_conv",  # Qwen3-Next's linear layers: after the causal convolution
    "K_conv",
    "V_conv",
    "Q_norm",
    "K_norm",
    "Q_rot",
    "K_rot",
    "Q_temp",  # Llama 4's NoPE layers: queries scaled by position (attention temperature tuning)
    "K_temp",
    "gates",  # linear layers: each token's decay and write strength
    "W_raw",
    "W_scaled",
    "W_capped",
    "W_masked",
    "W",
    "sink",  # gpt-oss: each row's mass to the attention sink
    "Y",
    "gate",  # Qwen3-Next: the output gate, and the heads' outputs through it
    "Y_gated",
    "Y_concat",
    "W_o",
    "O",
    "router",  # mixture-of-experts layers: each token's weight on each expert
    "H",
    "W_pool",
    "pooled",
    *METHOD_TEXTS,
)

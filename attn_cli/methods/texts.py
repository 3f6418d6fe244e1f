"""Formula and plain-words description of every step the methods produce: ONE dict, merged
into the project's step catalogue (narrate.py). Descriptions are `str.format` templates; the
fields they use are filled by `text()`: layer, head, last (the last layer index), position,
token, k, scale."""

from __future__ import annotations

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


def text(name: str, **fields: object) -> tuple[str, str]:
    """The formula and description of step `name`, with its template fields filled."""
    formula, description = METHOD_TEXTS[name]
    return formula.format(**fields), description.format(**fields)

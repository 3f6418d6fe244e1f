"""Gemma, Gemma 2 and Gemma 3 (text): Llama-style decoders with Gemma's quirks.

- RMSNorm multiplies by (1 + w); the embeddings are scaled by √hidden_size; GeGLU MLP (tanh GELU).
- Gemma 2/3: extra RMSNorms after attention and around the MLP; scores scaled by
  query_pre_attn_scalar^-½ instead of head_dim^-½; sliding-window layers alternating with global
  ones (Gemma 2: every other layer; Gemma 3: five local layers, then one global, whose rotary
  bases differ: rope_local_base_freq for local layers).
- Gemma 2: attention scores soft-capped, cap·tanh(s / cap) (attn_logit_softcapping), and the
  final logits too (final_logit_softcapping).
- Gemma 3: RMSNorm on each head's queries and keys before the rotary embedding; its
  attention is not soft-capped (transformers ignores attn_logit_softcapping there) but its
  final logits are when final_logit_softcapping is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attn_cli.errors import InputError
from attn_cli.models._decoder import FULL, SLIDING, Spec, config_window, decoder_family
from attn_cli.models.registry import Config, WeightSource

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext


def _alternating(default_pattern: int):
    """Layer i slides unless (i + 1) is a multiple of the pattern (transformers' default)."""

    def layer_types(cfg: Config) -> list[str]:
        if cfg.get("layer_types"):
            return [str(t) for t in cfg["layer_types"]]
        pattern = int(cfg.get("sliding_window_pattern", default_pattern))
        return [
            SLIDING if (i + 1) % pattern else FULL for i in range(int(cfg["num_hidden_layers"]))
        ]

    return layer_types


GEMMA = dict(norm_offset=1.0, embed_scale=True, tie_default=True, default_act="gelu_pytorch_tanh")
SPECS = {
    # transformers 5 runs Gemma 1 with hidden_act, a legacy "gelu" meaning the tanh GELU
    "gemma": Spec(**GEMMA, act_keys=("hidden_act",), gelu_means_tanh=True),  # type: ignore[arg-type]
    "gemma2": Spec(
        **GEMMA,  # type: ignore[arg-type]
        act_keys=("hidden_activation",),
        sandwich=True,
        scale_key="query_pre_attn_scalar",
        attn_softcap=True,
        final_softcap=True,
        layer_types=_alternating(2),
        window=config_window("sliding_window", 4096),
    ),
    "gemma3_text": Spec(
        **GEMMA,  # type: ignore[arg-type]
        act_keys=("hidden_activation",),
        sandwich=True,
        qk_norm=True,
        scale_key="query_pre_attn_scalar",
        final_softcap=True,  # attn_logit_softcapping is ignored by Gemma 3 (as in transformers)
        layer_types=_alternating(6),
        window=config_window("sliding_window", 4096),
        default_theta=1_000_000.0,
        local_theta_key="rope_local_base_freq",
    ),
}


# transformers' Gemma3TextConfig defaults: hub config.json files leave out values equal to them
# (the text_config of the multimodal Gemma 3 checkpoints lists only a few keys).
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "sliding_window_pattern": 6,
}


def gemma3_text(cfg: Config) -> Config:
    """A gemma3_text config with transformers' defaults filled in; for the multimodal Gemma 3
    (model_type gemma3: 4B, 12B, 27B) its text_config, whose language model this runs."""
    text = cfg.get("text_config") if cfg.get("model_type") == "gemma3" else cfg
    if not isinstance(text, Mapping):
        raise InputError("config.json: a gemma3 checkpoint needs a text_config object")
    out = {**GEMMA3_TEXT_DEFAULTS, **text}
    if "sliding_window_pattern" not in text and "_sliding_window_pattern" in text:
        out["sliding_window_pattern"] = text["_sliding_window_pattern"]
    if cfg.get("model_type") == "gemma3":
        # transformers' Gemma3ForConditionalGeneration never soft-caps its logits (Gemma 3
        # checkpoints set final_logit_softcapping to null anyway)
        out["final_logit_softcapping"] = None
    out["model_type"] = "gemma3_text"
    return out


def attn_out_norm(w: WeightSource, i: int, cfg: Config) -> tuple | None:
    """Gemma 2/3 normalise the attention output before the residual, h = x + RMSNorm(O)·(1 + w):
    (γ, β, ε, rms, applies_to) for ALTI. Gemma 1 has no such norm."""
    if cfg.get("model_type") == "gemma":  # Gemma 1: no norm after attention
        return None
    g = w[f"layers.{i}.post_attention_layernorm.weight"]
    return 1.0 + g, None, float(cfg.get("rms_norm_eps", 1e-6)), True, "attn"


def _capped(c: StageContext) -> tuple[str, str]:
    cap = f"{c.record.facts['cap']:.3g}"
    return f"{cap}·tanh(W_scaled/{cap})", (
        f"Soft-capping: scores are squashed smoothly into (−{cap}, {cap}), so no single score "
        "can dominate the softmax; small scores barely change."
    )


# The words of Gemma's own stages (the step catalogue in narrate.py has the shared ones):
# Gemma 2 soft-caps its scores, cap·tanh(s / cap), before the mask.
STAGE_TEXTS = {"W_capped": _capped}


FAMILY = decoder_family(
    "gemma",
    SPECS,
    model_types=(*SPECS, "gemma3"),
    norm="RMSNorm (input_layernorm, which multiplies by 1 + w)",
    norm_placement="pre- and post-RMSNorm (1 + w)",
    adapt={"gemma3_text": gemma3_text, "gemma3": gemma3_text},
    attn_out_norm=attn_out_norm,
    stage_texts=STAGE_TEXTS,
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞; in sliding-window (local) layers, neither at tokens more than sliding_window back."
    ),
)

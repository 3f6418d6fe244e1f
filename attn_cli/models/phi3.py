"""Phi-3 / Phi-3.5 / Phi-4-mini: a Llama-style decoder whose q, k, v projections are one fused
matrix (qkv_proj: queries, then keys, then values) and whose MLP gate and up projections are
one (gate_up_proj: gate, then up); partial rotary embeddings (partial_rotary_factor), LongRoPE
scaling (Phi-3.5, Phi-4-mini, the 128k Phi-3s) and a sliding window on every layer when
sliding_window is set."""

from __future__ import annotations

from collections.abc import Mapping

from attn_cli.models._decoder import (
    SLIDING,
    Config,
    Spec,
    all_layers,
    config_window,
    decoder_family,
)

SPECS = {"phi3": Spec(fused=True, layer_types=all_layers(SLIDING), window=config_window())}

# transformers' Phi3Config: the pretraining length when config.json leaves it out, and the
# older names of LongRoPE ('su' in the first 128k Phi-3 checkpoints).
ORIGINAL_MAX_POSITION_EMBEDDINGS = 4096
LONGROPE_ALIASES = ("su", "yarn")


def phi3_config(cfg: Config) -> Config:
    """A phi3 config as transformers' Phi3Config reads it."""
    out = dict(cfg)
    out.setdefault("original_max_position_embeddings", ORIGINAL_MAX_POSITION_EMBEDDINGS)
    for key in ("rope_scaling", "rope_parameters"):
        scaling = out.get(key)
        if isinstance(scaling, Mapping):
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind in LONGROPE_ALIASES:
                out[key] = {**scaling, "rope_type": "longrope"}
                out[key].pop("type", None)
    return out


FAMILY = decoder_family(
    "phi3",
    SPECS,
    multiplies="the fused qkv_proj",
    adapt={"phi3": phi3_config},
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞, nor (with a sliding window) at tokens more than sliding_window back."
    ),
)

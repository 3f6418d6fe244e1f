"""Phi-3 / Phi-3.5 / Phi-4-mini: a Llama-style decoder whose q, k, v projections are one fused
matrix (qkv_proj: queries, then keys, then values) and whose MLP gate and up projections are
one (gate_up_proj: gate, then up); partial rotary embeddings (partial_rotary_factor), LongRoPE
scaling (Phi-3.5, Phi-4-mini, the 128k Phi-3s) and a sliding window on every layer when
sliding_window is set.

In GGUF (llama.cpp's "phi3" architecture) q, k, v may be separate tensors and the MLP's gate
and up one ffn_up or two; LongRoPE's factors are tensors (rope_factors_long/short)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attn_cli.models._decoder import (
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    SLIDING,
    Config,
    DecoderArgs,
    Spec,
    all_layers,
    config_window,
    decoder_family,
)
from attn_cli.models.args import POSITIVE_INT, arg
from attn_cli.models.registry import ABSENT, GGUFTable


@dataclass(frozen=True, kw_only=True)
class Phi3Args(DecoderArgs):
    """transformers' Phi3Config defaults where they differ from Llama's."""

    # the pretraining length when config.json leaves it out
    original_max_position_embeddings: int | None = arg(POSITIVE_INT, 4096, nullable=True)


SPECS = {
    "phi3": Spec(args=Phi3Args, fused=True, layer_types=all_layers(SLIDING), window=config_window)
}

# The older names of LongRoPE ('su' in the first 128k Phi-3 checkpoints).
LONGROPE_ALIASES = ("su", "yarn")


def phi3_config(cfg: Config) -> Config:
    """A phi3 config as transformers' Phi3Config reads it: LongRoPE under its older names."""
    out = dict(cfg)
    for key in ("rope_scaling", "rope_parameters"):
        scaling = out.get(key)
        if isinstance(scaling, Mapping):
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind in LONGROPE_ALIASES:
                out[key] = {**scaling, "rope_type": "longrope"}
                out[key].pop("type", None)
    return out


def gguf_config(meta: Any, cfg: dict[str, Any]) -> None:
    """LongRoPE's per-frequency factors are tensors, not metadata."""
    if meta.has_tensor("rope_factors_long.weight") and meta.has_tensor("rope_factors_short.weight"):
        cfg["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": [float(x) for x in meta.read_small("rope_factors_long.weight")],
            "short_factor": [float(x) for x in meta.read_small("rope_factors_short.weight")],
        }


GGUF = GGUFTable(
    arch="phi3",
    model_type="phi3",
    hf_class="Phi3ForCausalLM",
    args=Phi3Args,
    layer_tensors={
        **{
            k: v
            for k, v in GGUF_LAYER_TENSORS.items()
            if k not in ("mlp.gate_proj.weight", "mlp.up_proj.weight")
        },
        "mlp.gate_up_proj.weight": (("ffn_gate.weight", "ffn_up.weight"), ("ffn_up.weight",)),
    },
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    metadata={
        "rope.scaling.original_context_length": ("original_max_position_embeddings", ABSENT),
        "attention.sliding_window": ("sliding_window", None),
    },
    config={"hidden_act": "silu"},
    fused_qkv=True,
    adapt=gguf_config,
)


FAMILY = decoder_family(
    "phi3",
    SPECS,
    multiplies="the fused qkv_proj",
    adapt={"phi3": phi3_config},
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞, nor (with a sliding window) at tokens more than sliding_window back."
    ),
    gguf=(GGUF,),
)

"""Phi-3 / Phi-3.5 / Phi-4-mini: a Llama-style decoder whose q, k, v projections are one fused
matrix (qkv_proj: queries, then keys, then values) and whose MLP gate and up projections are
one (gate_up_proj: gate, then up); partial rotary embeddings (partial_rotary_factor) and a
sliding window on every layer when sliding_window is set. longrope checkpoints are refused."""

from __future__ import annotations

from attn_cli.models._decoder import SLIDING, Spec, all_layers, config_window, decoder_family

SPECS = {"phi3": Spec(fused=True, layer_types=all_layers(SLIDING), window=config_window())}


FAMILY = decoder_family(
    "phi3",
    SPECS,
    multiplies="the fused qkv_proj",
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞, nor (with a sliding window) at tokens more than sliding_window back."
    ),
)

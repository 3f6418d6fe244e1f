"""Phi-3 / Phi-3.5 / Phi-4-mini: a Llama-style decoder whose q, k, v projections are one fused
matrix (qkv_proj: queries, then keys, then values) and whose MLP gate and up projections are
one (gate_up_proj: gate, then up); partial rotary embeddings (partial_rotary_factor) and a
sliding window on every layer when sliding_window is set. longrope checkpoints are refused."""

from __future__ import annotations

from attn_cli.models._decoder import ANCHOR, SLIDING, Spec, all_layers, bind, config_window
from attn_cli.models.registry import Family, Wording

SPECS = {"phi3": Spec(fused=True, layer_types=all_layers(SLIDING), window=config_window())}


def _x_description(i: int) -> str:
    """Completes "Layer i's input: one d-number vector per token…"."""
    source = "the token embeddings" if i == 0 else f"layer {i - 1}'s output"
    return f" ({source}) after the layer's RMSNorm (input_layernorm): what the fused qkv_proj multiplies."


FAMILY = Family(
    name="phi3",
    model_types=tuple(SPECS),
    anchor=ANCHOR,
    causal=True,
    norm="pre-RMSNorm",
    **bind(SPECS),
    wording=Wording(
        x_formula="input_layernorm(hidden states)",
        x_description=_x_description,
        mask=(
            "The model reads left to right: a token may not look at later tokens, so their scores "
            "are −∞, nor (with a sliding window) at tokens more than sliding_window back."
        ),
        final="The model's output: one vector per token after every layer and the final RMSNorm.",
    ),
)

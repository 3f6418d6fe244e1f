"""Llama: a pre-RMSNorm decoder with rotary embeddings, grouped-query attention and a SwiGLU
MLP (Llama 2/3, SmolLM, TinyLlama …). The shared forward pass is in _decoder.py; this file says
how Llama checkpoints use it."""

from __future__ import annotations

from attn_cli.models._decoder import ANCHOR, Spec, bind
from attn_cli.models.registry import Family, Wording

SPECS = {"llama": Spec(mlp_bias_key="mlp_bias")}


def _x_description(i: int) -> str:
    """Completes "Layer i's input: one d-number vector per token…"."""
    source = "the token embeddings" if i == 0 else f"layer {i - 1}'s output"
    return (
        f" ({source}) after the layer's RMSNorm (input_layernorm): what W_q, W_k and W_v multiply."
    )


FAMILY = Family(
    name="llama",
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
            "are −∞."
        ),
        final="The model's output: one vector per token after every layer and the final RMSNorm.",
    ),
)

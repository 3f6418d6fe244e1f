"""Mistral: a Llama-style decoder whose every layer attends through a sliding window of the last
sliding_window tokens (Mistral 7B v0.1; later versions set sliding_window to null: plain causal
attention). The shared forward pass is in _decoder.py."""

from __future__ import annotations

from attn_cli.models._decoder import ANCHOR, SLIDING, Spec, all_layers, bind, config_window
from attn_cli.models.registry import Family, Wording

SPECS = {"mistral": Spec(layer_types=all_layers(SLIDING), window=config_window())}


def _x_description(i: int) -> str:
    """Completes "Layer i's input: one d-number vector per token…"."""
    source = "the token embeddings" if i == 0 else f"layer {i - 1}'s output"
    return (
        f" ({source}) after the layer's RMSNorm (input_layernorm): what W_q, W_k and W_v multiply."
    )


FAMILY = Family(
    name="mistral",
    model_types=tuple(SPECS),
    anchor=ANCHOR,
    causal=True,
    norm="pre-RMSNorm",
    **bind(SPECS),
    wording=Wording(
        x_formula="input_layernorm(hidden states)",
        x_description=_x_description,
        mask=(
            "The model reads left to right: a token may not look at later tokens, nor at tokens "
            "more than sliding_window back (its sliding window), so their scores are −∞."
        ),
        final="The model's output: one vector per token after every layer and the final RMSNorm.",
    ),
)

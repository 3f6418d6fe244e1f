"""Qwen2 / Qwen2.5 and Qwen3: Llama-style decoders. Qwen2 adds biases to q, k and v; Qwen3
normalises each head's queries and keys (RMSNorm) before the rotary embedding. Both can slide
a window over the layers from max_window_layers on (use_sliding_window)."""

from __future__ import annotations

from attn_cli.models._decoder import FULL, SLIDING, Spec, decoder_family
from attn_cli.models.registry import Config


def _window(cfg: Config) -> int | None:
    return cfg.get("sliding_window") if cfg.get("use_sliding_window") else None


def _layer_types(cfg: Config) -> list[str]:
    if cfg.get("layer_types"):
        return [str(t) for t in cfg["layer_types"]]
    first = int(cfg.get("max_window_layers", 28))
    return [SLIDING if i >= first else FULL for i in range(int(cfg["num_hidden_layers"]))]


SPECS = {
    "qwen2": Spec(qkv_bias=True, o_bias=False, layer_types=_layer_types, window=_window),
    "qwen3": Spec(qk_norm=True, layer_types=_layer_types, window=_window),
}


FAMILY = decoder_family(
    "qwen",
    SPECS,
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞ (in sliding-window layers, also tokens more than sliding_window back)."
    ),
)

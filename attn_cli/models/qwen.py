"""Qwen2 / Qwen2.5 and Qwen3: Llama-style decoders. Qwen2 adds biases to q, k and v; Qwen3
normalises each head's queries and keys (RMSNorm) before the rotary embedding. Both can slide
a window over the layers from max_window_layers on (use_sliding_window). In GGUF (llama.cpp's
"qwen2" and "qwen3" architectures) the tensors keep HF's row order."""

from __future__ import annotations

from attn_cli.models._decoder import (
    FULL,
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    GGUF_QK_NORMS,
    SLIDING,
    SlidingArgs,
    Spec,
    decoder_family,
)
from attn_cli.models.registry import GGUFTable


def _window(args: SlidingArgs) -> int | None:
    return args.sliding_window if args.use_sliding_window else None


def _layer_types(args: SlidingArgs) -> list[str]:
    if args.layer_types:
        return list(args.layer_types)
    first = args.max_window_layers
    return [SLIDING if i >= first else FULL for i in range(args.num_hidden_layers)]


SPECS = {
    "qwen2": Spec(
        args=SlidingArgs,
        qkv_bias=True,
        o_bias=False,
        layer_types=_layer_types,
        window=_window,
    ),
    "qwen3": Spec(args=SlidingArgs, qk_norm=True, layer_types=_layer_types, window=_window),
}

GGUF = tuple(
    GGUFTable(
        arch=arch,
        model_type=arch,
        hf_class=hf_class,
        args=SlidingArgs,
        layer_tensors={**GGUF_LAYER_TENSORS, **extra},
        optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
        config={"hidden_act": "silu"},
    )
    for arch, hf_class, extra in (
        ("qwen2", "Qwen2ForCausalLM", {}),
        ("qwen3", "Qwen3ForCausalLM", GGUF_QK_NORMS),
    )
)


FAMILY = decoder_family(
    "qwen",
    SPECS,
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞ (in sliding-window layers, also tokens more than sliding_window back)."
    ),
    gguf=GGUF,
)

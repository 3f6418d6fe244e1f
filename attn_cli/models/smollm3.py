"""SmolLM3: a Llama-style decoder in which some layers have no rotary embedding (NoPE).

no_rope_layers lists one 0 or 1 per layer (1: the layer rotates its queries and keys); when it
is not given, every no_rope_layer_interval-th layer is NoPE (transformers' SmolLM3Config: layer
i uses rope unless (i + 1) is a multiple of the interval). A NoPE layer's scores see no
position at all: only the causal mask orders the tokens. With use_sliding_window, the NoPE
layers slide a window and the rotary ones do not (as SmolLM3Config derives layer_types).
llama.cpp's "smollm3" architecture stores q and k rows permuted as for "llama" and fixes the
interval at 4 (no GGUF key carries it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attn_cli import narrate
from attn_cli.errors import InputError
from attn_cli.models._decoder import (
    FULL,
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    SLIDING,
    DecoderArgs,
    Spec,
    decoder_family,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, Kind, arg
from attn_cli.models.registry import GGUFTable

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext

ROPE_FLAGS = Kind(
    "a list of 0 or 1 per layer",
    lambda v: isinstance(v, list) and all(x in (0, 1) and not isinstance(x, float) for x in v),
)


@dataclass(frozen=True, kw_only=True)
class SmolLM3Args(DecoderArgs):
    """transformers' SmolLM3Config defaults."""

    vocab_size: int = arg(POSITIVE_INT, 128_256)
    hidden_size: int = arg(POSITIVE_INT, 2048)
    intermediate_size: int = arg(POSITIVE_INT, 11_008)
    num_hidden_layers: int = arg(POSITIVE_INT, 36)
    num_attention_heads: int = arg(POSITIVE_INT, 16)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 4, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 32_768, nullable=True)
    rope_theta: float | None = arg(POSITIVE, 2_000_000.0, nullable=True)
    tie_word_embeddings: bool | None = arg(FLAG, True, nullable=True)
    use_sliding_window: bool | None = arg(FLAG, False, nullable=True)
    no_rope_layers: list[int] | None = arg(ROPE_FLAGS, None)
    no_rope_layer_interval: int = arg(POSITIVE_INT, 4)

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.no_rope_layers is not None and len(self.no_rope_layers) < self.num_hidden_layers:
            raise InputError(
                f"{source}: no_rope_layers lists {len(self.no_rope_layers)} layers, "
                f"num_hidden_layers is {self.num_hidden_layers}"
            )


def uses_rope(args: SmolLM3Args) -> list[bool]:
    """Per layer, whether it applies the rotary embedding."""
    n = args.num_hidden_layers
    if args.no_rope_layers is not None:
        return [bool(x) for x in args.no_rope_layers[:n]]
    return [(i + 1) % args.no_rope_layer_interval != 0 for i in range(n)]


def _layer_types(args: SmolLM3Args) -> list[str]:
    if args.layer_types:
        return list(args.layer_types)
    return [FULL if rope else SLIDING for rope in uses_rope(args)]


def _window(args: SmolLM3Args) -> int | None:
    return args.sliding_window if args.use_sliding_window else None


SPECS = {
    "smollm3": Spec(
        args=SmolLM3Args,
        mlp_bias=True,
        rope_layers=uses_rope,  # type: ignore[arg-type]
        layer_types=_layer_types,
        window=_window,
    )
}

GGUF = GGUFTable(
    arch="smollm3",
    model_type="smollm3",
    hf_class="SmolLM3ForCausalLM",
    args=SmolLM3Args,
    layer_tensors=GGUF_LAYER_TENSORS,
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    config={"hidden_act": "silu", "no_rope_layer_interval": 4},
    permute_qk=True,
)

NOPE = (
    " No positional encoding in this layer (NoPE): its queries and keys are not rotated, so "
    "a score depends only on what the two tokens hold, not on how far apart they are; the "
    "causal mask is the only order it sees."
)


def _masked(c: StageContext) -> tuple[str, str]:
    formula, description = narrate.STAGE_TEXTS["W_masked"](c)
    return formula, description + ("" if c.record.facts.get("rope", True) else NOPE)


def _raw(c: StageContext) -> tuple[str, str]:
    formula, description = narrate.STAGE_TEXTS["W_raw"](c)
    if c.record.facts.get("rope", True):
        return formula, description
    return formula, description + " (NoPE layer: Q and K carry no position.)"


STAGE_TEXTS: dict[str, Any] = {"W_masked": _masked, "W_raw": _raw}


FAMILY = decoder_family(
    "smollm3",
    SPECS,
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞."
    ),
    stage_texts=STAGE_TEXTS,
    gguf=(GGUF,),
)

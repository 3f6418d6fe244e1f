"""OLMo 2: a Llama-style decoder normalised after each sublayer instead of before it.

Each layer has no input norm: W_q, W_k and W_v multiply the residual stream itself, and
  h = x + post_attention_layernorm(attention(x));  out = h + post_feedforward_layernorm(MLP(h))
Queries and keys are RMS-normalised over the whole projection (all heads of a token at once,
q_norm and k_norm of width heads·head_dim) before they are split into heads and rotated.
llama.cpp's "olmo2" architecture keeps HF's q/k row order (NeoX-style rotary)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attn_cli.models._decoder import (
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    GGUF_QK_NORMS,
    DecoderArgs,
    Spec,
    decoder_family,
    parsed,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, arg
from attn_cli.models.registry import Config, GGUFTable, WeightSource

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext


@dataclass(frozen=True, kw_only=True)
class Olmo2Args(DecoderArgs):
    """transformers' Olmo2Config defaults."""

    vocab_size: int = arg(POSITIVE_INT, 50_304)
    hidden_size: int = arg(POSITIVE_INT, 4096)
    intermediate_size: int = arg(POSITIVE_INT, 11_008)
    num_hidden_layers: int = arg(POSITIVE_INT, 32)
    num_attention_heads: int = arg(POSITIVE_INT, 32)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 2048, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-5)
    tie_word_embeddings: bool | None = arg(FLAG, False, nullable=True)


SPECS = {"olmo2": Spec(args=Olmo2Args, post_norm=True, qk_norm=True, qk_norm_full=True)}

GGUF = GGUFTable(
    arch="olmo2",
    model_type="olmo2",
    hf_class="Olmo2ForCausalLM",
    args=Olmo2Args,
    layer_tensors={
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        **{
            k: v
            for k, v in GGUF_LAYER_TENSORS.items()
            if k not in ("input_layernorm.weight", "post_attention_layernorm.weight")
        },
        **GGUF_QK_NORMS,
    },
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    config={"hidden_act": "silu"},
    qk_norm_full=True,
)


def attn_out_norm(w: WeightSource, i: int, cfg: Config) -> tuple:
    """OLMo 2 normalises the attention output before the residual, h = x + RMSNorm(O)·w:
    (γ, β, ε, rms, applies_to) for ALTI."""
    _, args, _ = parsed(SPECS, cfg)
    g = w[f"layers.{i}.post_attention_layernorm.weight"]
    return g, None, float(args.rms_norm_eps), True, "attn"


def _qk_norm(c: StageContext) -> tuple[str, str]:
    letter = c.stage.name[0]
    what = "queries" if letter == "Q" else "keys"
    return f"RMSNorm({c.latest(letter)} of every head)", (
        f"A token's {what} of all heads are normalised together, as one vector (RMSNorm over "
        f"the whole {letter.lower()}_proj output, with its own learned scale), then split into "
        "heads again and rotated: the heads share one size, not one each."
    )


FAMILY = decoder_family(
    "olmo2",
    SPECS,
    mask="The model reads left to right: a token may not look at later tokens, so their scores are −∞.",
    norm=None,
    attn_out_norm=attn_out_norm,
    stage_texts={"Q_norm": _qk_norm, "K_norm": _qk_norm},
    gguf=(GGUF,),
)

"""Mixtral: a Mistral-style decoder whose MLP is a mixture of experts.

Each layer is Mistral's (pre-norm RMSNorm, grouped key/value heads, rotary embedding, a sliding
window over every layer when sliding_window is set), and its MLP is
  p = softmax(x·W_gateᵀ) over num_local_experts experts; the top num_experts_per_tok of p,
  divided by their sum (transformers' MixtralTopKRouter: the same as a softmax over the chosen
  experts' logits), weight the outputs of those experts, each a SwiGLU down(silu(w1·x) ⊙ w3·x)
  with w2 as down. The `router` step shows these weights (tokens × experts).
Checkpoints as the hub and transformers' save_pretrained write them: block_sparse_moe.gate and
block_sparse_moe.experts.{e}.w1/w2/w3. llama.cpp stores Mixtral as its "llama" architecture with
{arch}.expert_count set, q/k rows permuted as for Llama, and each layer's experts stacked
(ffn_gate_exps, ffn_up_exps, ffn_down_exps: [experts, out, in]); the llama files with experts
are read by this family's table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attn_cli.models import _moe
from attn_cli.models._decoder import (
    GGUF_OPTIONAL_TENSORS,
    SLIDING,
    DecoderArgs,
    Spec,
    all_layers,
    config_window,
    decoder_family,
    describe,
    parsed,
)
from attn_cli.models.args import POSITIVE, POSITIVE_INT, arg
from attn_cli.models.registry import Config, GGUFTable

NAMES = _moe.Experts(
    router="block_sparse_moe.gate.weight",
    gate="block_sparse_moe.experts.{e}.w1.weight",
    up="block_sparse_moe.experts.{e}.w3.weight",
    down="block_sparse_moe.experts.{e}.w2.weight",
)


@dataclass(frozen=True, kw_only=True)
class MixtralArgs(DecoderArgs):
    """transformers' MixtralConfig defaults."""

    vocab_size: int = arg(POSITIVE_INT, 32_000)
    hidden_size: int = arg(POSITIVE_INT, 4096)
    intermediate_size: int = arg(POSITIVE_INT, 14_336)
    num_hidden_layers: int = arg(POSITIVE_INT, 32)
    num_attention_heads: int = arg(POSITIVE_INT, 32)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 8, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 131_072, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-5)
    rope_theta: float | None = arg(POSITIVE, 1_000_000.0, nullable=True)
    num_local_experts: int = arg(POSITIVE_INT, 8)
    num_experts_per_tok: int = arg(POSITIVE_INT, 2)

    def validate(self, source: str) -> None:
        super().validate(source)
        _moe.check_top_k(
            source, self.num_experts_per_tok, self.num_local_experts, "num_local_experts"
        )


def moe_of(args: MixtralArgs) -> _moe.MoE:
    return _moe.MoE(
        experts=args.num_local_experts,
        top_k=args.num_experts_per_tok,
        inter=args.intermediate_size,
        normalize=True,
        act=str(args.hidden_act or "silu"),
    )


MLP, MLP_CHECK = _moe.decoder_mlp(moe_of, NAMES)


SPECS = {
    "mixtral": Spec(
        args=MixtralArgs,
        layer_types=all_layers(SLIDING),
        window=config_window,
        mlp=MLP,
        mlp_check=MLP_CHECK,
    )
}


GGUF = GGUFTable(
    arch="llama",
    model_type="mixtral",
    hf_class="MixtralForCausalLM",
    args=MixtralArgs,
    layer_tensors=_moe.gguf_layer_tensors(NAMES),
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    metadata=_moe.gguf_metadata("num_local_experts"),
    config={"hidden_act": "silu"},
    permute_qk=True,
    experts=_moe.gguf_experts(NAMES),
    with_experts=True,
)


def describe_mixtral(cfg: Config) -> dict[str, Any]:
    args = parsed(SPECS, cfg)[1]
    assert isinstance(args, MixtralArgs)
    return {**describe(cfg), "mlp": _moe.describe_moe(moe_of(args))}


FAMILY = dataclasses.replace(
    decoder_family(
        "mixtral",
        SPECS,
        mask=(
            "The model reads left to right: a token may not look at later tokens (nor, when "
            "sliding_window is set, at tokens more than sliding_window back), so their scores "
            "are −∞."
        ),
        stage_texts={"router": _moe.router_text},
        gguf=(GGUF,),
    ),
    describe=describe_mixtral,
)

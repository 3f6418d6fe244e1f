"""Qwen3-MoE: Qwen3's attention (RMSNorm on each head's queries and keys before the rotary
embedding) with a mixture-of-experts MLP.

  p = softmax(x·W_gateᵀ) over num_experts experts; the top num_experts_per_tok of p (divided by
  their sum when norm_topk_prob) weight the outputs of those experts, each a SwiGLU MLP of width
  moe_intermediate_size.
Layers listed in mlp_only_layers, and those whose number + 1 is not a multiple of
decoder_sparse_step, have a dense SwiGLU MLP of width intermediate_size instead. With
use_sliding_window, every layer slides a window of sliding_window tokens (as transformers'
Qwen3MoeModel masks). The `router` step shows each MoE layer's weights (tokens × experts).
llama.cpp's "qwen3moe" architecture stacks the experts (ffn_gate_exps, ffn_up_exps,
ffn_down_exps: one [experts, out, in] tensor each) and keeps HF's q/k row order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.models import _moe
from attn_cli.models._decoder import (
    GGUF_OPTIONAL_TENSORS,
    GGUF_QK_NORMS,
    SLIDING,
    Spec,
    all_layers,
    decoder_family,
    describe,
    parsed,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, Kind, arg
from attn_cli.models.registry import ABSENT, Config, GGUFTable, WeightSource
from attn_cli.records import AttentionRecord

NAMES = _moe.MLP_EXPERTS
LAYER_LIST = Kind(
    "a list of layer numbers",
    lambda v: (
        isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ),
)


@dataclass(frozen=True, kw_only=True)
class Qwen3MoeArgs(_moe.SoftmaxExpertsArgs):
    """transformers' Qwen3MoeConfig defaults."""

    vocab_size: int = arg(POSITIVE_INT, 151_936)
    hidden_size: int = arg(POSITIVE_INT, 2048)
    intermediate_size: int = arg(POSITIVE_INT, 6144)
    num_hidden_layers: int = arg(POSITIVE_INT, 24)
    num_attention_heads: int = arg(POSITIVE_INT, 32)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 4, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 32_768, nullable=True)
    use_sliding_window: bool | None = arg(FLAG, False, nullable=True)
    sliding_window: int | None = arg(POSITIVE_INT, 4096, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-6)
    decoder_sparse_step: int = arg(POSITIVE_INT, 1)
    moe_intermediate_size: int = arg(POSITIVE_INT, 768)
    num_experts: int = arg(POSITIVE_INT, 128)
    mlp_only_layers: list[int] | None = arg(LAYER_LIST, None, nullable=True)


def sparse(args: Qwen3MoeArgs, i: int) -> bool:
    """Whether layer i has the mixture of experts (Qwen3MoeDecoderLayer's condition)."""
    return i not in (args.mlp_only_layers or []) and (i + 1) % args.decoder_sparse_step == 0


def moe_of(args: Qwen3MoeArgs) -> _moe.MoE:
    return args.moe(args.moe_intermediate_size)


def _mlp(
    w: WeightSource, i: int, x: np.ndarray, args: Qwen3MoeArgs, record: AttentionRecord
) -> np.ndarray:
    if not sparse(args, i):
        return _moe.dense_mlp(w, f"layers.{i}.mlp.", x, str(args.hidden_act or "silu"))
    return _moe.layer_mlp(w, i, x, moe_of(args), NAMES, record)


def _mlp_check(w: WeightSource, i: int, args: Qwen3MoeArgs) -> None:
    if sparse(args, i):
        _moe.check_experts(w, f"layers.{i}.", args.hidden_size, moe_of(args), NAMES)
    else:
        _moe.check_dense(w, f"layers.{i}.mlp.", args.hidden_size, args.intermediate_size)


def _window(args: Qwen3MoeArgs) -> int | None:
    return args.sliding_window if args.use_sliding_window else None


SPECS = {
    "qwen3_moe": Spec(
        args=Qwen3MoeArgs,
        qk_norm=True,
        layer_types=all_layers(SLIDING),
        window=_window,
        mlp=_mlp,
        mlp_check=_mlp_check,  # type: ignore[arg-type]
    )
}

GGUF = GGUFTable(
    arch="qwen3moe",
    model_type="qwen3_moe",
    hf_class="Qwen3MoeForCausalLM",
    args=Qwen3MoeArgs,
    layer_tensors=_moe.gguf_layer_tensors(NAMES, GGUF_QK_NORMS),
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    metadata={
        **_moe.gguf_metadata("num_experts"),
        "expert_feed_forward_length": ("moe_intermediate_size", ABSENT),
    },
    config={"hidden_act": "silu", "norm_topk_prob": True},
    experts=_moe.gguf_experts(NAMES),
)


def describe_qwen3_moe(cfg: Config) -> dict[str, Any]:
    args = parsed(SPECS, cfg)[1]
    assert isinstance(args, Qwen3MoeArgs)
    dense = [i for i in range(args.num_hidden_layers) if not sparse(args, i)]
    return {**describe(cfg), "mlp": _moe.describe_moe(moe_of(args), dense)}


FAMILY = dataclasses.replace(
    decoder_family(
        "qwen3_moe",
        SPECS,
        mask=(
            "The model reads left to right: a token may not look at later tokens (nor, with "
            "use_sliding_window, at tokens more than sliding_window back), so their scores "
            "are −∞."
        ),
        stage_texts={"router": _moe.router_text},
        gguf=(GGUF,),
    ),
    describe=describe_qwen3_moe,
)

"""OLMoE: a pre-norm Llama-style decoder with queries and keys RMS-normalised over the whole
projection (all heads of a token at once, as OLMo 2) and a mixture-of-experts MLP.

  Q = q_norm(X·W_q), K = k_norm(X·W_k)   (q_norm over heads·head_dim numbers, k_norm over
                                          kv_heads·head_dim), then split into heads and rotated
  p = softmax(x·W_gateᵀ) over num_experts experts; the top num_experts_per_tok of p (divided by
  their sum only when norm_topk_prob; OLMoE-1B-7B does not) weight those experts' SwiGLU
  outputs, each of width intermediate_size.
The `router` step shows each layer's weights (tokens × experts). clip_qkv is refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attn_cli.errors import InputError
from attn_cli.models import _moe
from attn_cli.models._decoder import Spec, decoder_family, describe, parsed
from attn_cli.models.args import POSITIVE, POSITIVE_INT, arg
from attn_cli.models.olmo2 import _qk_norm
from attn_cli.models.registry import Config

NAMES = _moe.MLP_EXPERTS


@dataclass(frozen=True, kw_only=True)
class OlmoeArgs(_moe.SoftmaxExpertsArgs):
    """transformers' OlmoeConfig defaults."""

    vocab_size: int = arg(POSITIVE_INT, 50_304)
    hidden_size: int = arg(POSITIVE_INT, 2048)
    intermediate_size: int = arg(POSITIVE_INT, 2048)
    num_hidden_layers: int = arg(POSITIVE_INT, 16)
    num_attention_heads: int = arg(POSITIVE_INT, 16)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 4096, nullable=True)
    rms_norm_eps: float = arg(POSITIVE, 1e-5)
    clip_qkv: float | None = arg(POSITIVE, None, nullable=True)

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.clip_qkv is not None:
            raise InputError(f"{source}: clip_qkv is not supported (OLMoE-1B-7B leaves it null)")
        if self.head_size * self.num_attention_heads != self.hidden_size:
            raise InputError(
                f"{source}: head_dim × num_attention_heads must equal hidden_size for OLMoE's "
                "q_norm (it is hidden_size wide)"
            )


def moe_of(args: OlmoeArgs) -> _moe.MoE:
    return args.moe(args.intermediate_size)


MLP, MLP_CHECK = _moe.decoder_mlp(moe_of, NAMES)


SPECS = {
    "olmoe": Spec(
        args=OlmoeArgs,
        qk_norm=True,
        qk_norm_full=True,
        mlp=MLP,
        mlp_check=MLP_CHECK,
    )
}


def describe_olmoe(cfg: Config) -> dict[str, Any]:
    args = parsed(SPECS, cfg)[1]
    assert isinstance(args, OlmoeArgs)
    return {**describe(cfg), "mlp": _moe.describe_moe(moe_of(args))}


FAMILY = dataclasses.replace(
    decoder_family(
        "olmoe",
        SPECS,
        mask="The model reads left to right: a token may not look at later tokens, so their scores are −∞.",
        stage_texts={"router": _moe.router_text, "Q_norm": _qk_norm, "K_norm": _qk_norm},
    ),
    describe=describe_olmoe,
)

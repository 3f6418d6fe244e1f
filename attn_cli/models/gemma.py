"""Gemma, Gemma 2 and Gemma 3 (text): Llama-style decoders with Gemma's quirks.

- RMSNorm multiplies by (1 + w); the embeddings are scaled by √hidden_size; GeGLU MLP (tanh GELU).
- Gemma 2/3: extra RMSNorms after attention and around the MLP; scores scaled by
  query_pre_attn_scalar^-½ instead of head_dim^-½; sliding-window layers alternating with global
  ones (Gemma 2: every other layer; Gemma 3: five local layers, then one global, whose rotary
  bases differ: rope_local_base_freq for local layers).
- Gemma 2: attention scores soft-capped, cap·tanh(s / cap) (attn_logit_softcapping), and the
  final logits too (final_logit_softcapping).
- Gemma 3: RMSNorm on each head's queries and keys before the rotary embedding; its
  attention is not soft-capped (transformers ignores attn_logit_softcapping there) but its
  final logits are when final_logit_softcapping is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.models._decoder import (
    FULL,
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    GGUF_QK_NORMS,
    SLIDING,
    DecoderArgs,
    Spec,
    config_window,
    decoder_family,
    parsed,
)
from attn_cli.models.args import COUNT, FLAG, POSITIVE, POSITIVE_INT, TEXT, Kind, arg, check
from attn_cli.models.registry import Config, GGUFTable, WeightSource

if TYPE_CHECKING:
    from attn_cli.narrate import StageContext


@dataclass(frozen=True, kw_only=True)
class GemmaArgs(DecoderArgs):
    """transformers' GemmaConfig defaults where they differ from Llama's."""

    hidden_act: str | None = arg(TEXT, "gelu_pytorch_tanh", nullable=True)
    tie_word_embeddings: bool | None = arg(FLAG, True, nullable=True)


@dataclass(frozen=True, kw_only=True)
class Gemma2Args(GemmaArgs):
    """transformers' Gemma2Config defaults."""

    hidden_activation: str | None = arg(TEXT, "gelu_pytorch_tanh", nullable=True)
    query_pre_attn_scalar: float | None = arg(POSITIVE, 256, nullable=True)
    attn_logit_softcapping: float | None = arg(POSITIVE, 50.0, nullable=True)
    final_logit_softcapping: float | None = arg(POSITIVE, 30.0, nullable=True)
    sliding_window: int | None = arg(POSITIVE_INT, 4096, nullable=True)
    # layer i slides unless (i + 1) is a multiple of it (when layer_types is not given)
    sliding_window_pattern: int = arg(POSITIVE_INT, 2)


@dataclass(frozen=True, kw_only=True)
class Gemma3TextArgs(Gemma2Args):
    """transformers' Gemma3TextConfig defaults: hub config.json files leave out values equal to
    them (the text_config of the multimodal Gemma 3 checkpoints lists only a few keys)."""

    vocab_size: int = arg(POSITIVE_INT, 262_208)
    hidden_size: int = arg(POSITIVE_INT, 2304)
    intermediate_size: int = arg(POSITIVE_INT, 9216)
    num_hidden_layers: int = arg(POSITIVE_INT, 26)
    num_attention_heads: int = arg(POSITIVE_INT, 8)
    num_key_value_heads: int | None = arg(POSITIVE_INT, 4, nullable=True)
    head_dim: int | None = arg(POSITIVE_INT, 256, nullable=True)
    max_position_embeddings: int | None = arg(POSITIVE_INT, 131_072, nullable=True)
    final_logit_softcapping: float | None = arg(POSITIVE, None)
    attn_logit_softcapping: float | None = arg(POSITIVE, None)
    rope_theta: float | None = arg(POSITIVE, 1_000_000.0, nullable=True)
    rope_local_base_freq: float = arg(POSITIVE, 10_000.0)
    sliding_window_pattern: int = arg(POSITIVE_INT, 6)


def _alternating(args: Gemma2Args) -> list[str]:
    """Layer i slides unless (i + 1) is a multiple of the pattern (transformers' default)."""
    if args.layer_types:
        return list(args.layer_types)
    pattern = args.sliding_window_pattern
    return [SLIDING if (i + 1) % pattern else FULL for i in range(args.num_hidden_layers)]


GEMMA = dict(norm_offset=1.0, embed_scale=True, default_act="gelu_pytorch_tanh")
SPECS = {
    # transformers 5 runs Gemma 1 with hidden_act, a legacy "gelu" meaning the tanh GELU
    "gemma": Spec(args=GemmaArgs, **GEMMA, act_keys=("hidden_act",), gelu_means_tanh=True),  # type: ignore[arg-type]
    "gemma2": Spec(
        args=Gemma2Args,
        **GEMMA,  # type: ignore[arg-type]
        act_keys=("hidden_activation",),
        sandwich=True,
        scale_key="query_pre_attn_scalar",
        attn_softcap=True,
        final_softcap=True,
        layer_types=_alternating,
        window=config_window,
    ),
    "gemma3_text": Spec(
        args=Gemma3TextArgs,
        **GEMMA,  # type: ignore[arg-type]
        act_keys=("hidden_activation",),
        sandwich=True,
        qk_norm=True,
        scale_key="query_pre_attn_scalar",
        final_softcap=True,  # attn_logit_softcapping is ignored by Gemma 3 (as in transformers)
        layer_types=_alternating,
        window=config_window,
        local_theta_key="rope_local_base_freq",
    ),
}


def gemma3_text(cfg: Config) -> Config:
    """A gemma3_text config; for the multimodal Gemma 3 (model_type gemma3: 4B, 12B, 27B) its
    text_config, whose language model this runs (Gemma3TextArgs fills in what it leaves out)."""
    text = cfg.get("text_config") if cfg.get("model_type") == "gemma3" else cfg
    if not isinstance(text, Mapping):
        raise InputError("config.json: a gemma3 checkpoint needs a text_config object")
    out = dict(text)
    if "sliding_window_pattern" not in text and "_sliding_window_pattern" in text:
        out["sliding_window_pattern"] = text["_sliding_window_pattern"]
    if cfg.get("model_type") == "gemma3":
        # transformers' Gemma3ForConditionalGeneration never soft-caps its logits (Gemma 3
        # checkpoints set final_logit_softcapping to null anyway)
        out["final_logit_softcapping"] = None
    out["model_type"] = "gemma3_text"
    return out


# -- GGUF: llama.cpp's gemma, gemma2 and gemma3 architectures -----------------------------------
# Every *norm.weight is stored as 1 + w (the converter's data_torch + 1); gemma3's embedding
# rows beyond the tokenizer's vocabulary are dropped (vocab_size is the rows the file has).
SANDWICH: dict[str, Any] = {
    **GGUF_LAYER_TENSORS,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
TANH_GELU = {"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"}
FLAGS = Kind(
    "one true or false per layer",
    lambda v: all(isinstance(x, bool | np.bool_) for x in v),
)


def gguf_layout(big_layers: int, default_pattern: int) -> Callable[[Any, dict[str, Any]], None]:
    """llama.cpp's rules for Gemma 2/3: the 27B-class model (`big_layers` layers) scales scores
    by hidden/heads, the others by head_dim; attention.sliding_window_pattern is a period (every
    p-th layer global) or one flag per layer."""

    def adapt(meta: Any, cfg: dict[str, Any]) -> None:
        n_layer = cfg["num_hidden_layers"]
        big = n_layer == big_layers
        cfg["query_pre_attn_scalar"] = (
            cfg["hidden_size"] // cfg["num_attention_heads"] if big else cfg["head_dim"]
        )
        key = "attention.sliding_window_pattern"
        pattern = meta.raw(key, default_pattern)
        if not cfg["sliding_window"]:
            cfg["layer_types"] = [FULL] * n_layer
            return
        if isinstance(pattern, np.ndarray | list):
            check(FLAGS, pattern, meta.label(key))
            swa = [bool(x) for x in pattern][:n_layer]
            if len(swa) != n_layer:
                raise InputError(f"{meta.fname}: sliding_window_pattern has the wrong length")
        else:
            p = check(COUNT, pattern, meta.label(key))
            swa = [p == 0 or (i % p) < p - 1 for i in range(n_layer)]
        cfg["layer_types"] = [SLIDING if s else FULL for s in swa]

    return adapt


GGUF = (
    GGUFTable(
        arch="gemma",
        model_type="gemma",
        hf_class="GemmaForCausalLM",
        args=GemmaArgs,
        layer_tensors=GGUF_LAYER_TENSORS,
        optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
        # Gemma 1 checkpoints say gelu; transformers runs tanh-gelu
        config={"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"},
        norm_shift=1.0,
    ),
    GGUFTable(
        arch="gemma2",
        model_type="gemma2",
        hf_class="Gemma2ForCausalLM",
        args=Gemma2Args,
        layer_tensors=SANDWICH,
        optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
        metadata={
            "attention.sliding_window": ("sliding_window", 4096),
            "attn_logit_softcapping": ("attn_logit_softcapping", 50.0),
            "final_logit_softcapping": ("final_logit_softcapping", 30.0),
        },
        config=TANH_GELU,
        norm_shift=1.0,
        adapt=gguf_layout(big_layers=46, default_pattern=2),
    ),
    GGUFTable(
        arch="gemma3",
        model_type="gemma3_text",
        hf_class="Gemma3ForCausalLM",
        args=Gemma3TextArgs,
        layer_tensors={**SANDWICH, **GGUF_QK_NORMS},
        optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
        metadata={
            "attention.sliding_window": ("sliding_window", None),
            "final_logit_softcapping": ("final_logit_softcapping", None),
            "rope.freq_base_swa": ("rope_local_base_freq", 10_000.0),
        },
        config={**TANH_GELU, "attn_logit_softcapping": None},
        norm_shift=1.0,
        adapt=gguf_layout(big_layers=62, default_pattern=6),
    ),
)


def attn_out_norm(w: WeightSource, i: int, cfg: Config) -> tuple | None:
    """Gemma 2/3 normalise the attention output before the residual, h = x + RMSNorm(O)·(1 + w):
    (γ, β, ε, rms, applies_to) for ALTI. Gemma 1 has no such norm."""
    spec, args, _ = parsed(SPECS, cfg)
    if not spec.sandwich:  # Gemma 1: no norm after attention
        return None
    g = w[f"layers.{i}.post_attention_layernorm.weight"]
    return 1.0 + g, None, float(args.rms_norm_eps), True, "attn"


def _capped(c: StageContext) -> tuple[str, str]:
    cap = f"{c.record.facts['cap']:.3g}"
    return f"{cap}·tanh(W_scaled/{cap})", (
        f"Soft-capping: scores are squashed smoothly into (−{cap}, {cap}), so no single score "
        "can dominate the softmax; small scores barely change."
    )


# The words of Gemma's own stages (the step catalogue in narrate.py has the shared ones):
# Gemma 2 soft-caps its scores, cap·tanh(s / cap), before the mask.
STAGE_TEXTS = {"W_capped": _capped}


FAMILY = decoder_family(
    "gemma",
    SPECS,
    model_types=(*SPECS, "gemma3"),
    norm="RMSNorm (input_layernorm, which multiplies by 1 + w)",
    adapt={"gemma3_text": gemma3_text, "gemma3": gemma3_text},
    attn_out_norm=attn_out_norm,
    stage_texts=STAGE_TEXTS,
    gguf=GGUF,
    mask=(
        "The model reads left to right: a token may not look at later tokens, so their scores "
        "are −∞; in sliding-window (local) layers, neither at tokens more than sliding_window back."
    ),
)

"""Llama: a pre-RMSNorm decoder with rotary embeddings, grouped-query attention and a SwiGLU
MLP (Llama 2/3, SmolLM, TinyLlama …). The shared forward pass is in _decoder.py; this file says
how Llama checkpoints use it, and how llama.cpp's converter stored them in GGUF (the "llama"
architecture, also used for Mistral checkpoints): q and k rows permuted for ggml's rotary
layout (LlamaModel.permute), which gguf/to_hf.py undoes."""

from __future__ import annotations

from attn_cli.models._decoder import (
    GGUF_LAYER_TENSORS,
    GGUF_OPTIONAL_TENSORS,
    DecoderArgs,
    Spec,
    decoder_family,
)
from attn_cli.models.registry import GGUFTable

SPECS = {"llama": Spec(args=DecoderArgs, mlp_bias=True)}

GGUF = GGUFTable(
    arch="llama",
    model_type="llama",
    hf_class="LlamaForCausalLM",
    args=DecoderArgs,
    layer_tensors=GGUF_LAYER_TENSORS,
    optional_layer_tensors=GGUF_OPTIONAL_TENSORS,
    config={"hidden_act": "silu"},
    permute_qk=True,
)


FAMILY = decoder_family(
    "llama",
    SPECS,
    mask="The model reads left to right: a token may not look at later tokens, so their scores are −∞.",
    gguf=(GGUF,),
)

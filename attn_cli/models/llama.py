"""Llama: a pre-RMSNorm decoder with rotary embeddings, grouped-query attention and a SwiGLU
MLP (Llama 2/3, SmolLM, TinyLlama …). The shared forward pass is in _decoder.py; this file says
how Llama checkpoints use it."""

from __future__ import annotations

from attn_cli.models._decoder import Spec, decoder_family

SPECS = {"llama": Spec(mlp_bias_key="mlp_bias")}


FAMILY = decoder_family(
    "llama",
    SPECS,
    mask="The model reads left to right: a token may not look at later tokens, so their scores are −∞.",
)

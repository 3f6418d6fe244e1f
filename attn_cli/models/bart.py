"""BART (facebook/bart-base, bart-large, bart-large-cnn …): a post-LayerNorm encoder–decoder
with learned positions (offset 2) and a LayerNorm on the embeddings (models/_bart.py runs it)."""

from __future__ import annotations

from attn_cli.models._bart import BartArgs, Spec, family

SPEC = Spec(BartArgs, pre_norm=False, sinusoidal=False, layernorm_embedding=True)
FAMILY = family("bart", ("bart",), SPEC)

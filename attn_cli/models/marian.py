"""Marian (Helsinki-NLP/opus-mt-*): a post-LayerNorm encoder–decoder with fixed sinusoidal
positions, no LayerNorm on the embeddings, usually √d_model-scaled embeddings and the pad token
as the decoder's start (models/_bart.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass

from attn_cli.models._bart import BartArgs, Spec, family
from attn_cli.models.args import FLAG, POSITIVE_INT, TEXT, arg


@dataclass(frozen=True, kw_only=True)
class MarianArgs(BartArgs):
    """transformers' MarianConfig defaults where they differ from BART's."""

    vocab_size: int = arg(POSITIVE_INT, 58101)
    activation_function: str = arg(TEXT, "gelu")
    scale_embedding: bool = arg(FLAG, False)


SPEC = Spec(MarianArgs, pre_norm=False, sinusoidal=True, layernorm_embedding=False)
FAMILY = family("marian", ("marian",), SPEC)

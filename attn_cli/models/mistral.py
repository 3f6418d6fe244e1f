"""Mistral: a Llama-style decoder whose every layer attends through a sliding window of the last
sliding_window tokens (Mistral 7B v0.1; later versions set sliding_window to null: plain causal
attention). The shared forward pass is in _decoder.py. llama.cpp converts Mistral checkpoints
to its "llama" architecture (llama.py reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from attn_cli.models._decoder import (
    SLIDING,
    DecoderArgs,
    Spec,
    all_layers,
    config_window,
    decoder_family,
)
from attn_cli.models.args import POSITIVE_INT, arg


@dataclass(frozen=True, kw_only=True)
class MistralArgs(DecoderArgs):
    """transformers' MistralConfig defaults where they differ from Llama's."""

    sliding_window: int | None = arg(POSITIVE_INT, 4096, nullable=True)


SPECS = {"mistral": Spec(args=MistralArgs, layer_types=all_layers(SLIDING), window=config_window)}


FAMILY = decoder_family(
    "mistral",
    SPECS,
    mask=(
        "The model reads left to right: a token may not look at later tokens, nor at tokens "
        "more than sliding_window back (its sliding window), so their scores are −∞."
    ),
)

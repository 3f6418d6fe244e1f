"""DeiT (facebook/deit-*): ViT with a second learned token, the distillation token, after the
class token; the layers, final LayerNorm and pooler are ViT's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli.models import vit
from attn_cli.models.registry import Config, Family, Vision, WeightSource
from attn_cli.records import LayerRecord

TOKENS = ["cls_token", "distillation_token"]
LABELS = ["[CLS]", "[DIST]"]


@dataclass(frozen=True, kw_only=True)
class DeiTArgs(vit.ViTArgs):
    """What this file reads of a DeiT config.json: transformers' DeiTConfig defaults are
    ViTConfig's, so ViT's args read it."""


def check(w: WeightSource, cfg: Config) -> None:
    vit.check_common(w, DeiTArgs.parse(cfg), len(TOKENS))


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    return vit.embed_tokens(w, pixels, DeiTArgs.parse(cfg), TOKENS)


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    return vit.run_layers(w, x, DeiTArgs.parse(cfg))


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return vit.final_norm(w, h, DeiTArgs.parse(cfg))


FAMILY = Family(
    name="deit",
    model_types=("deit",),
    anchor=vit.ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=DeiTArgs.dims_of,
    check=check,
    embed=vit.FAMILY.embed,
    layers=layers,
    final=final,
    rename=vit.FAMILY.rename,
    wording=vit.WORDING,
    vision=Vision(
        "DeiTImageProcessor",
        DeiTArgs.image_of,
        DeiTArgs.patch_of,
        lambda cfg: list(LABELS),
        embed,
        vit.pooled,
    ),
)

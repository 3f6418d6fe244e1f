"""DeiT (facebook/deit-*): ViT with a second learned token, the distillation token, after the
class token; the layers, final LayerNorm and pooler are ViT's."""

from __future__ import annotations

import numpy as np

from attn_cli.models import vit
from attn_cli.models.registry import Config, Family, Vision, WeightSource

TOKENS = ["cls_token", "distillation_token"]
LABELS = ["[CLS]", "[DIST]"]


def check(w: WeightSource, cfg: Config) -> None:
    vit.check_common(w, cfg, len(TOKENS))


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    return vit.embed_tokens(w, pixels, cfg, TOKENS)


FAMILY = Family(
    name="deit",
    model_types=("deit",),
    anchor=vit.ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=vit.dims,
    check=check,
    embed=vit.FAMILY.embed,
    layers=vit.layers,
    final=vit.final,
    rename=vit.FAMILY.rename,
    wording=vit.WORDING,
    vision=Vision(
        "DeiTImageProcessor",
        vit.image_size,
        vit.patch_size,
        lambda cfg: list(LABELS),
        embed,
        vit.pooled,
    ),
)

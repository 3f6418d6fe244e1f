"""CLIP's vision tower (openai/clip-vit-*), from a vision-only checkpoint (CLIPVisionModel,
model_type clip_vision_model) or a full CLIP one (model_type clip: the settings are its
vision_config, the weights those under `vision_model.`; the text tower is not read). A class
token first, then the patches (a convolution without bias); a LayerNorm before the first layer
("pre_layrnorm", spelled as the checkpoints spell it); pre-LayerNorm layers with quick GELU; the
pooled output is the class token through post_layernorm."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli.models._vision import (
    SQUARE,
    LayerNames,
    VisionArgs,
    check_layers,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
)
from attn_cli.models.args import POSITIVE, POSITIVE_INT, TEXT, arg
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.class_embedding"
# CLIP's and SigLIP's encoder layers (SigLIP reuses these names).
NAMES = LayerNames(
    prefix="encoder.layers.{}.",
    norm1="layer_norm1",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    norm2="layer_norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)


@dataclass(frozen=True, kw_only=True)
class CLIPVisionArgs(VisionArgs):
    """What this file reads of a CLIP vision config (transformers' CLIPVisionConfig defaults):
    the config.json of a vision-only checkpoint, or a full one's vision_config."""

    hidden_size: int = arg(POSITIVE_INT, 768)
    intermediate_size: int = arg(POSITIVE_INT, 3072)
    num_hidden_layers: int = arg(POSITIVE_INT, 12)
    num_attention_heads: int = arg(POSITIVE_INT, 12)
    num_channels: int = arg(POSITIVE_INT, 3)
    image_size: int | list[int] = arg(SQUARE, 224)
    patch_size: int | list[int] = arg(SQUARE, 32)
    hidden_act: str = arg(TEXT, "quick_gelu")
    layer_norm_eps: float = arg(POSITIVE, 1e-5)

    @classmethod
    def read(cls, cfg: Config) -> CLIPVisionArgs:
        return cls.of_tower(cfg)


def check(w: WeightSource, cfg: Config) -> None:
    a = CLIPVisionArgs.read(cfg)
    d, p, grid = a.hidden_size, a.patch, a.grid
    expect_shape(w, ANCHOR, (d,))
    expect_shape(w, "embeddings.patch_embedding.weight", (d, a.num_channels, p, p))
    expect_shape(w, "embeddings.position_embedding.weight", (1 + grid * grid, d))
    check_layers(w, NAMES, a.num_hidden_layers, d, a.intermediate_size)


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """pre_layrnorm([class, patches] + positions), the patch positions resized to the grid."""
    a = CLIPVisionArgs.read(cfg)
    patches, grid = patch_embed(w, "embeddings.patch_embedding", pixels, a.patch, bias=False)
    table = w["embeddings.position_embedding.weight"]
    positions = np.concatenate([table[:1], resize_positions(table[1:], *grid)])
    x = np.concatenate([w[ANCHOR].reshape(1, -1), patches]) + positions
    eps = a.layer_norm_eps
    return layer_norm(x, w["pre_layrnorm.weight"], w["pre_layrnorm.bias"], eps), grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    a = CLIPVisionArgs.read(cfg)
    return prenorm_layers(
        w, x, NAMES, a.num_hidden_layers, a.num_attention_heads, a.layer_norm_eps, a.hidden_act
    )


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return h  # CLIP's last hidden state is the last layer's output (post_layernorm pools)


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    eps = CLIPVisionArgs.read(cfg).layer_norm_eps
    return layer_norm(out[0], w["post_layernorm.weight"], w["post_layernorm.bias"], eps)


def _x_description(i: int) -> str:
    return (
        " (the class token and patch embeddings with their positions, through pre_layrnorm, "
        "then LayerNorm)."
        if i == 0
        else f" (layer {i - 1}'s output, after LayerNorm)."
    )


FAMILY = Family(
    name="clip",
    model_types=("clip_vision_model", "clip"),
    anchor=ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=CLIPVisionArgs.dims_of,
    check=check,
    embed=no_text,
    layers=layers,
    final=final,
    wording=Wording(
        x_formula="LayerNorm(hidden states)",
        x_description=_x_description,
        final="The vision tower's output: one vector per token after every layer.",
    ),
    vision=Vision(
        "CLIPImageProcessor",
        CLIPVisionArgs.image_of,
        CLIPVisionArgs.patch_of,
        lambda cfg: ["[CLS]"],
        embed,
        pooled,
    ),
)

"""CLIP's vision tower (openai/clip-vit-*), from a vision-only checkpoint (CLIPVisionModel,
model_type clip_vision_model) or a full CLIP one (model_type clip: the settings are its
vision_config, the weights those under `vision_model.`; the text tower is not read). A class
token first, then the patches (a convolution without bias); a LayerNorm before the first layer
("pre_layrnorm", spelled as the checkpoints spell it); pre-LayerNorm layers with quick GELU; the
pooled output is the class token through post_layernorm."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attn_cli.errors import InputError
from attn_cli.models._vision import (
    LayerNames,
    check_layers,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
    setting,
    square,
    vision_config,
)
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Dims, Family, Vision, WeightSource, Wording
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


def hidden(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "hidden_size", 768))


def heads(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "num_attention_heads", 12))


def layer_count(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "num_hidden_layers", 12))


def eps(cfg: Config) -> float:
    return float(setting(vision_config(cfg), "layer_norm_eps", 1e-5))


def patch_size(cfg: Config) -> int:
    return square(setting(vision_config(cfg), "patch_size", 32), "patch_size")


def image_size(cfg: Config) -> int:
    return square(setting(vision_config(cfg), "image_size", 224), "image_size")


def dims(cfg: Config) -> Dims:
    d, h = hidden(cfg), heads(cfg)
    return Dims(layer_count(cfg), h, h, d, d // h, 0, None)


def check(w: WeightSource, cfg: Config) -> None:
    d, h = hidden(cfg), heads(cfg)
    if d % h:
        raise InputError(f"config.json: hidden_size {d} is not divisible by num_attention_heads")
    p, grid = patch_size(cfg), image_size(cfg) // patch_size(cfg)
    channels = int(setting(vision_config(cfg), "num_channels", 3))
    expect_shape(w, ANCHOR, (d,))
    expect_shape(w, "embeddings.patch_embedding.weight", (d, channels, p, p))
    expect_shape(w, "embeddings.position_embedding.weight", (1 + grid * grid, d))
    inter = int(setting(vision_config(cfg), "intermediate_size", 3072))
    check_layers(w, NAMES, layer_count(cfg), d, inter)


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """pre_layrnorm([class, patches] + positions), the patch positions resized to the grid."""
    patches, grid = patch_embed(
        w, "embeddings.patch_embedding", pixels, patch_size(cfg), bias=False
    )
    table = w["embeddings.position_embedding.weight"]
    positions = np.concatenate([table[:1], resize_positions(table[1:], *grid)])
    x = np.concatenate([w[ANCHOR].reshape(1, -1), patches]) + positions
    return layer_norm(x, w["pre_layrnorm.weight"], w["pre_layrnorm.bias"], eps(cfg)), grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    act = str(setting(vision_config(cfg), "hidden_act", "quick_gelu"))
    return prenorm_layers(w, x, NAMES, layer_count(cfg), heads(cfg), eps(cfg), act)


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return h  # CLIP's last hidden state is the last layer's output (post_layernorm pools)


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    return layer_norm(out[0], w["post_layernorm.weight"], w["post_layernorm.bias"], eps(cfg))


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
    dims=dims,
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
        "CLIPImageProcessor", image_size, patch_size, lambda cfg: ["[CLS]"], embed, pooled
    ),
)

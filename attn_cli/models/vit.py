"""ViT (google/vit-*): a class token, then the picture's patches; pre-LayerNorm encoder layers
with exact GELU; a final LayerNorm, and a tanh pooler on the class token when the checkpoint
has one (ViTModel; ViTForImageClassification drops it)."""

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
    vit_names,
)
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Dims, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.patch_embeddings.projection.weight"
PATCHES = "embeddings.patch_embeddings.projection"
NAMES = LayerNames(
    prefix="encoder.layer.{}.",
    norm1="layernorm_before",
    q="attention.attention.query",
    k="attention.attention.key",
    v="attention.attention.value",
    o="attention.output.dense",
    norm2="layernorm_after",
    fc1="intermediate.dense",
    fc2="output.dense",
)


def hidden(cfg: Config) -> int:
    return int(setting(cfg, "hidden_size", 768))


def heads(cfg: Config) -> int:
    return int(setting(cfg, "num_attention_heads", 12))


def layer_count(cfg: Config) -> int:
    return int(setting(cfg, "num_hidden_layers", 12))


def eps(cfg: Config) -> float:
    return float(setting(cfg, "layer_norm_eps", 1e-12))


def patch_size(cfg: Config) -> int:
    return square(setting(cfg, "patch_size", 16), "patch_size")


def image_size(cfg: Config) -> int:
    return square(setting(cfg, "image_size", 224), "image_size")


def dims(cfg: Config) -> Dims:
    d, h = hidden(cfg), heads(cfg)
    return Dims(layer_count(cfg), h, h, d, d // h, 0, None)


def check_common(w: WeightSource, cfg: Config, prefix_tokens: int) -> None:
    """What ViT and DeiT share: the patch convolution, the position table, the layers."""
    d, h = hidden(cfg), heads(cfg)
    if d % h:
        raise InputError(f"config.json: hidden_size {d} is not divisible by num_attention_heads")
    p, grid = patch_size(cfg), image_size(cfg) // patch_size(cfg)
    expect = (d, int(setting(cfg, "num_channels", 3)), p, p)
    expect_shape(w, ANCHOR, expect)
    expect_shape(w, "embeddings.position_embeddings", (1, prefix_tokens + grid * grid, d))
    inter = int(setting(cfg, "intermediate_size", 4 * d))
    check_layers(w, NAMES, layer_count(cfg), d, inter, bool(setting(cfg, "qkv_bias", True)))


def check(w: WeightSource, cfg: Config) -> None:
    check_common(w, cfg, 1)


def embed_tokens(
    w: WeightSource, pixels: np.ndarray, cfg: Config, tokens: list[str]
) -> tuple[np.ndarray, tuple[int, int]]:
    """[tokens…, patches] + position embeddings (the patch part resized to this picture's grid
    as interpolate_pos_encoding does: bicubic, no antialiasing)."""
    patches, grid = patch_embed(w, PATCHES, pixels, patch_size(cfg))
    table = w["embeddings.position_embeddings"][0]
    k = len(tokens)
    positions = np.concatenate([table[:k], resize_positions(table[k:], *grid)])
    first = np.stack([w[f"embeddings.{t}"].reshape(-1) for t in tokens])
    return np.concatenate([first, patches]) + positions, grid


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    return embed_tokens(w, pixels, cfg, ["cls_token"])


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    return prenorm_layers(
        w,
        x,
        NAMES,
        layer_count(cfg),
        heads(cfg),
        eps(cfg),
        str(setting(cfg, "hidden_act", "gelu")),
        bool(setting(cfg, "qkv_bias", True)),
    )


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return layer_norm(h, w["layernorm.weight"], w["layernorm.bias"], eps(cfg))


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    """The pooler: tanh(dense(class token)); the class token itself without one."""
    if "pooler.dense.weight" not in w:
        return out[0]
    return np.tanh(out[0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])


def _x_description(i: int) -> str:
    return (
        " (the patch embeddings with the class token, plus position embeddings, after LayerNorm)."
        if i == 0
        else f" (layer {i - 1}'s output, after LayerNorm)."
    )


WORDING = Wording(
    x_formula="LayerNorm(hidden states)",
    x_description=_x_description,
    final="The model's output: one vector per token (class token and patches), after the final "
    "LayerNorm.",
)

FAMILY = Family(
    name="vit",
    model_types=("vit",),
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
    rename=vit_names,
    wording=WORDING,
    vision=Vision(
        "ViTImageProcessor", image_size, patch_size, lambda cfg: ["[CLS]"], embed, pooled
    ),
)

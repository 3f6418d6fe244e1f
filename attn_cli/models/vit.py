"""ViT (google/vit-*): a class token, then the picture's patches; pre-LayerNorm encoder layers
with exact GELU; a final LayerNorm, and a tanh pooler on the class token when the checkpoint
has one (ViTModel; ViTForImageClassification drops it)."""

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
    vit_names,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, TEXT, arg
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Family, Vision, WeightSource, Wording
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


@dataclass(frozen=True, kw_only=True)
class ViTArgs(VisionArgs):
    """What this file reads of a ViT config.json (transformers' ViTConfig defaults)."""

    hidden_size: int = arg(POSITIVE_INT, 768)
    num_hidden_layers: int = arg(POSITIVE_INT, 12)
    num_attention_heads: int = arg(POSITIVE_INT, 12)
    intermediate_size: int = arg(POSITIVE_INT, 3072)
    hidden_act: str = arg(TEXT, "gelu")
    layer_norm_eps: float = arg(POSITIVE, 1e-12)
    image_size: int | list[int] = arg(SQUARE, 224)
    patch_size: int | list[int] = arg(SQUARE, 16)
    num_channels: int = arg(POSITIVE_INT, 3)
    qkv_bias: bool = arg(FLAG, True)


def check_common(w: WeightSource, args: ViTArgs, prefix_tokens: int) -> None:
    """What ViT and DeiT share: the patch convolution, the position table, the layers."""
    d, p, grid = args.hidden_size, args.patch, args.grid
    expect_shape(w, ANCHOR, (d, args.num_channels, p, p))
    expect_shape(w, "embeddings.position_embeddings", (1, prefix_tokens + grid * grid, d))
    check_layers(w, NAMES, args.num_hidden_layers, d, args.intermediate_size, args.qkv_bias)


def check(w: WeightSource, cfg: Config) -> None:
    check_common(w, ViTArgs.parse(cfg), 1)


def embed_tokens(
    w: WeightSource, pixels: np.ndarray, args: ViTArgs, tokens: list[str]
) -> tuple[np.ndarray, tuple[int, int]]:
    """[tokens…, patches] + position embeddings (the patch part resized to this picture's grid
    as interpolate_pos_encoding does: bicubic, no antialiasing)."""
    patches, grid = patch_embed(w, PATCHES, pixels, args.patch)
    table = w["embeddings.position_embeddings"][0]
    k = len(tokens)
    positions = np.concatenate([table[:k], resize_positions(table[k:], *grid)])
    first = np.stack([w[f"embeddings.{t}"].reshape(-1) for t in tokens])
    return np.concatenate([first, patches]) + positions, grid


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    return embed_tokens(w, pixels, ViTArgs.parse(cfg), ["cls_token"])


def run_layers(w: WeightSource, x: np.ndarray, args: ViTArgs) -> Iterator[LayerRecord]:
    return prenorm_layers(
        w,
        x,
        NAMES,
        args.num_hidden_layers,
        args.num_attention_heads,
        args.layer_norm_eps,
        args.hidden_act,
        args.qkv_bias,
    )


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    return run_layers(w, x, ViTArgs.parse(cfg))


def final_norm(w: WeightSource, h: np.ndarray, args: ViTArgs) -> np.ndarray:
    return layer_norm(h, w["layernorm.weight"], w["layernorm.bias"], args.layer_norm_eps)


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return final_norm(w, h, ViTArgs.parse(cfg))


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
    dims=ViTArgs.dims_of,
    check=check,
    embed=no_text,
    layers=layers,
    final=final,
    rename=vit_names,
    wording=WORDING,
    vision=Vision(
        "ViTImageProcessor",
        ViTArgs.image_of,
        ViTArgs.patch_of,
        lambda cfg: ["[CLS]"],
        embed,
        pooled,
    ),
)

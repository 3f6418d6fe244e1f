"""DINOv2 (facebook/dinov2-*), with and without registers: a class token, (register tokens,)
then the patches; pre-LayerNorm layers whose two branches are each scaled per dimension (layer
scale γ), an exact-GELU or SwiGLU feed-forward; a final LayerNorm, the class token as the pooled
output. The position table (trained at 518 pixels) is resized to the picture's grid by bicubic
interpolation, antialiased for the registers variant (as transformers' two implementations
differ); the registers get no position."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from attn_cli.models._vision import (
    SQUARE,
    LayerNames,
    VisionArgs,
    check_layers,
    dinov2_names,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
    side,
)
from attn_cli.models.args import COUNT, FLAG, POSITIVE, POSITIVE_INT, TEXT, arg
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Dims, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.patch_embeddings.projection.weight"
PATCHES = "embeddings.patch_embeddings.projection"


@dataclass(frozen=True, kw_only=True)
class Dinov2Args(VisionArgs):
    """What this file reads of a DINOv2 config.json (transformers' Dinov2Config defaults)."""

    hidden_size: int = arg(POSITIVE_INT, 768)
    num_hidden_layers: int = arg(POSITIVE_INT, 12)
    num_attention_heads: int = arg(POSITIVE_INT, 12)
    mlp_ratio: float = arg(POSITIVE, 4)
    hidden_act: str = arg(TEXT, "gelu")
    layer_norm_eps: float = arg(POSITIVE, 1e-6)
    image_size: int | list[int] = arg(SQUARE, 224)
    patch_size: int | list[int] = arg(SQUARE, 14)
    num_channels: int = arg(POSITIVE_INT, 3)
    qkv_bias: bool = arg(FLAG, True)
    use_swiglu_ffn: bool = arg(FLAG, False)

    # transformers' DINOv2 resizes the position table without antialiasing; with registers, with
    antialias: ClassVar[bool] = False

    @property
    def register_count(self) -> int:
        return 0


@dataclass(frozen=True, kw_only=True)
class Dinov2WithRegistersArgs(Dinov2Args):
    """A DINOv2-with-registers config.json (transformers' Dinov2WithRegistersConfig defaults)."""

    patch_size: int | list[int] = arg(SQUARE, 16)
    num_register_tokens: int = arg(COUNT, 4)

    antialias: ClassVar[bool] = True

    @property
    def register_count(self) -> int:
        return self.num_register_tokens


def args(cfg: Config) -> Dinov2Args:
    if cfg.get("model_type") == "dinov2_with_registers":
        return Dinov2WithRegistersArgs.parse(cfg)
    return Dinov2Args.parse(cfg)


def names(a: Dinov2Args) -> LayerNames:
    swiglu = a.use_swiglu_ffn
    return LayerNames(
        prefix="encoder.layer.{}.",
        norm1="norm1",
        q="attention.attention.query",
        k="attention.attention.key",
        v="attention.attention.value",
        o="attention.output.dense",
        norm2="norm2",
        fc1="mlp.weights_in" if swiglu else "mlp.fc1",
        fc2="mlp.weights_out" if swiglu else "mlp.fc2",
        scale1="layer_scale1.lambda1",
        scale2="layer_scale2.lambda1",
        swiglu=swiglu,
    )


def dims(cfg: Config) -> Dims:
    return args(cfg).dims()


def patch_size(cfg: Config) -> int:
    return args(cfg).patch


def image_size(cfg: Config) -> int:
    return side(args(cfg).image_size)


def check(w: WeightSource, cfg: Config) -> None:
    a = args(cfg)
    d, p, grid = a.hidden_size, a.patch, a.grid
    expect_shape(w, ANCHOR, (d, a.num_channels, p, p))
    expect_shape(w, "embeddings.position_embeddings", (1, 1 + grid * grid, d))
    if a.register_count:
        expect_shape(w, "embeddings.register_tokens", (1, a.register_count, d))
    n = names(a)
    inter = None if n.swiglu else int(d * float(a.mlp_ratio))
    check_layers(w, n, a.num_hidden_layers, d, inter, a.qkv_bias)


def prefix(cfg: Config) -> list[str]:
    return ["[CLS]"] + [f"reg{i}" for i in range(args(cfg).register_count)]


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """[CLS, patches] + positions (resized by bicubic interpolation), then the registers."""
    a = args(cfg)
    patches, grid = patch_embed(w, PATCHES, pixels, a.patch)
    table = w["embeddings.position_embeddings"][0]
    positions = np.concatenate([table[:1], resize_positions(table[1:], *grid, a.antialias)])
    x = np.concatenate([w["embeddings.cls_token"].reshape(1, -1), patches]) + positions
    if a.register_count:
        regs = w["embeddings.register_tokens"][0]
        x = np.concatenate([x[:1], regs, x[1:]])
    return x.astype(np.float32, copy=False), grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    a = args(cfg)
    return prenorm_layers(
        w,
        x,
        names(a),
        a.num_hidden_layers,
        a.num_attention_heads,
        a.layer_norm_eps,
        a.hidden_act,
        a.qkv_bias,
    )


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    eps = args(cfg).layer_norm_eps
    return layer_norm(h, w["layernorm.weight"], w["layernorm.bias"], eps)


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    return out[0]  # the class token after the final LayerNorm


def _x_description(i: int) -> str:
    return (
        " (the class token, register tokens and patch embeddings with their positions, after "
        "LayerNorm)."
        if i == 0
        else f" (layer {i - 1}'s output, after LayerNorm)."
    )


FAMILY = Family(
    name="dinov2",
    model_types=("dinov2", "dinov2_with_registers"),
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
    rename=dinov2_names,
    wording=Wording(
        x_formula="LayerNorm(hidden states)",
        x_description=_x_description,
        final="The model's output: one vector per token after the final LayerNorm.",
    ),
    vision=Vision("BitImageProcessor", image_size, patch_size, prefix, embed, pooled),
)

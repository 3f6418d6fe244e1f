"""DINOv2 (facebook/dinov2-*), with and without registers: a class token, (register tokens,)
then the patches; pre-LayerNorm layers whose two branches are each scaled per dimension (layer
scale γ), an exact-GELU or SwiGLU feed-forward; a final LayerNorm, the class token as the pooled
output. The position table (trained at 518 pixels) is resized to the picture's grid by bicubic
interpolation, antialiased for the registers variant (as transformers' two implementations
differ); the registers get no position."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attn_cli.errors import InputError
from attn_cli.models._vision import (
    LayerNames,
    check_layers,
    dinov2_names,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
    setting,
    square,
)
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Dims, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.patch_embeddings.projection.weight"
PATCHES = "embeddings.patch_embeddings.projection"


def names(cfg: Config) -> LayerNames:
    swiglu = bool(setting(cfg, "use_swiglu_ffn", False))
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


def hidden(cfg: Config) -> int:
    return int(setting(cfg, "hidden_size", 768))


def heads(cfg: Config) -> int:
    return int(setting(cfg, "num_attention_heads", 12))


def layer_count(cfg: Config) -> int:
    return int(setting(cfg, "num_hidden_layers", 12))


def registers(cfg: Config) -> int:
    if cfg.get("model_type") != "dinov2_with_registers":
        return 0
    return int(setting(cfg, "num_register_tokens", 4, allow_zero=True))


def patch_size(cfg: Config) -> int:
    return square(setting(cfg, "patch_size", 14), "patch_size")


def image_size(cfg: Config) -> int:
    return square(setting(cfg, "image_size", 518), "image_size")


def dims(cfg: Config) -> Dims:
    d, h = hidden(cfg), heads(cfg)
    return Dims(layer_count(cfg), h, h, d, d // h, 0, None)


def check(w: WeightSource, cfg: Config) -> None:
    d, h = hidden(cfg), heads(cfg)
    if d % h:
        raise InputError(f"config.json: hidden_size {d} is not divisible by num_attention_heads")
    p, grid = patch_size(cfg), image_size(cfg) // patch_size(cfg)
    expect_shape(w, ANCHOR, (d, int(setting(cfg, "num_channels", 3)), p, p))
    expect_shape(w, "embeddings.position_embeddings", (1, 1 + grid * grid, d))
    if registers(cfg):
        expect_shape(w, "embeddings.register_tokens", (1, registers(cfg), d))
    n = names(cfg)
    inter = None if n.swiglu else int(d * float(setting(cfg, "mlp_ratio", 4)))
    check_layers(w, n, layer_count(cfg), d, inter, bool(setting(cfg, "qkv_bias", True)))


def prefix(cfg: Config) -> list[str]:
    return ["[CLS]"] + [f"reg{i}" for i in range(registers(cfg))]


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """[CLS, patches] + positions (resized by bicubic interpolation), then the registers."""
    patches, grid = patch_embed(w, PATCHES, pixels, patch_size(cfg))
    table = w["embeddings.position_embeddings"][0]
    antialias = cfg.get("model_type") == "dinov2_with_registers"
    positions = np.concatenate([table[:1], resize_positions(table[1:], *grid, antialias)])
    x = np.concatenate([w["embeddings.cls_token"].reshape(1, -1), patches]) + positions
    if registers(cfg):
        regs = w["embeddings.register_tokens"][0]
        x = np.concatenate([x[:1], regs, x[1:]])
    return x.astype(np.float32, copy=False), grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    return prenorm_layers(
        w,
        x,
        names(cfg),
        layer_count(cfg),
        heads(cfg),
        float(setting(cfg, "layer_norm_eps", 1e-6)),
        str(setting(cfg, "hidden_act", "gelu")),
        bool(setting(cfg, "qkv_bias", True)),
    )


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    eps = float(setting(cfg, "layer_norm_eps", 1e-6))
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

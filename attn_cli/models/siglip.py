"""SigLIP's vision tower (google/siglip-*), from a vision-only checkpoint (model_type
siglip_vision_model) or a full SigLIP one (model_type siglip: its vision_config, the weights
under `vision_model.`). No class token: the patches only (a convolution with bias) plus their
positions; CLIP's layer layout with tanh GELU; post_layernorm on the last hidden state; the
pooled output comes from an attention-pooling head: a learned probe attends over every patch
(torch MultiheadAttention), then a residual MLP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from attn_cli import attention as att
from attn_cli.models._vision import (
    SQUARE,
    VisionArgs,
    act,
    check_layers,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
)
from attn_cli.models.args import FLAG, POSITIVE, POSITIVE_INT, TEXT, arg
from attn_cli.models.clip import NAMES
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.patch_embedding.weight"


@dataclass(frozen=True, kw_only=True)
class SiglipVisionArgs(VisionArgs):
    """What this file reads of a SigLIP vision config (transformers' SiglipVisionConfig
    defaults): the config.json of a vision-only checkpoint, or a full one's vision_config."""

    hidden_size: int = arg(POSITIVE_INT, 768)
    intermediate_size: int = arg(POSITIVE_INT, 3072)
    num_hidden_layers: int = arg(POSITIVE_INT, 12)
    num_attention_heads: int = arg(POSITIVE_INT, 12)
    num_channels: int = arg(POSITIVE_INT, 3)
    image_size: int | list[int] = arg(SQUARE, 224)
    patch_size: int | list[int] = arg(SQUARE, 16)
    hidden_act: str = arg(TEXT, "gelu_pytorch_tanh")
    layer_norm_eps: float = arg(POSITIVE, 1e-6)
    vision_use_head: bool = arg(FLAG, True)

    @classmethod
    def read(cls, cfg: Config) -> SiglipVisionArgs:
        return cls.of_tower(cfg)


def check(w: WeightSource, cfg: Config) -> None:
    a = SiglipVisionArgs.read(cfg)
    d, p, grid = a.hidden_size, a.patch, a.grid
    expect_shape(w, ANCHOR, (d, a.num_channels, p, p))
    expect_shape(w, "embeddings.position_embedding.weight", (grid * grid, d))
    check_layers(w, NAMES, a.num_hidden_layers, d, a.intermediate_size)
    if a.vision_use_head:
        expect_shape(w, "head.probe", (1, 1, d))
        expect_shape(w, "head.attention.in_proj_weight", (3 * d, d))


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    patch = SiglipVisionArgs.read(cfg).patch
    patches, grid = patch_embed(w, "embeddings.patch_embedding", pixels, patch)
    positions = resize_positions(w["embeddings.position_embedding.weight"], *grid)
    return patches + positions, grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    a = SiglipVisionArgs.read(cfg)
    return prenorm_layers(
        w, x, NAMES, a.num_hidden_layers, a.num_attention_heads, a.layer_norm_eps, a.hidden_act
    )


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    eps = SiglipVisionArgs.read(cfg).layer_norm_eps
    return layer_norm(h, w["post_layernorm.weight"], w["post_layernorm.bias"], eps)


def pool_attention(w: WeightSource, out: np.ndarray, cfg: Config) -> att.AttentionSteps:
    """The head's probe attending over every patch: (heads, 1, patches) weights."""
    a = SiglipVisionArgs.read(cfg)
    d, h = a.hidden_size, a.num_attention_heads
    wi, bi = w["head.attention.in_proj_weight"], w["head.attention.in_proj_bias"]
    probe = w["head.probe"].reshape(1, d)
    q = probe @ wi[:d].T + bi[:d]  # [1, d]
    k = out @ wi[d : 2 * d].T + bi[d : 2 * d]  # [n, d]
    v = out @ wi[2 * d :].T + bi[2 * d :]
    split = [x.reshape(x.shape[0], h, d // h).transpose(1, 0, 2) for x in (q, k, v)]
    return att.attend(*split)


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    """The attention-pooling head; without one (vision_use_head false), the patches' mean."""
    a = SiglipVisionArgs.read(cfg)
    if not a.vision_use_head:
        return out.mean(axis=0)
    pool = pool_attention(w, out, cfg)
    y = att.merge_heads(pool.Y) @ w["head.attention.out_proj.weight"].T
    y = y + w["head.attention.out_proj.bias"]  # [1, d]
    h = layer_norm(y, w["head.layernorm.weight"], w["head.layernorm.bias"], a.layer_norm_eps)
    f = act(a.hidden_act)
    mlp = f(h @ w["head.mlp.fc1.weight"].T + w["head.mlp.fc1.bias"])
    return (y + mlp @ w["head.mlp.fc2.weight"].T + w["head.mlp.fc2.bias"])[0]


def pool_map(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray | None:
    if not SiglipVisionArgs.read(cfg).vision_use_head:
        return None
    return pool_attention(w, out, cfg).W


def _x_description(i: int) -> str:
    return (
        " (the patch embeddings with their positions, after LayerNorm; SigLIP has no class token)."
        if i == 0
        else f" (layer {i - 1}'s output, after LayerNorm)."
    )


FAMILY = Family(
    name="siglip",
    model_types=("siglip_vision_model", "siglip"),
    anchor=ANCHOR,
    causal=False,
    norm="pre",
    linear_values=True,
    sentence_pairs=False,
    dims=SiglipVisionArgs.dims_of,
    check=check,
    embed=no_text,
    layers=layers,
    final=final,
    wording=Wording(
        x_formula="LayerNorm(hidden states)",
        x_description=_x_description,
        final="The vision tower's output: one vector per patch after post_layernorm.",
    ),
    vision=Vision(
        "SiglipImageProcessor",
        SiglipVisionArgs.image_of,
        SiglipVisionArgs.patch_of,
        lambda cfg: [],
        embed,
        pooled,
        pool_map,
    ),
)

"""SigLIP's vision tower (google/siglip-*), from a vision-only checkpoint (model_type
siglip_vision_model) or a full SigLIP one (model_type siglip: its vision_config, the weights
under `vision_model.`). No class token: the patches only (a convolution with bias) plus their
positions; CLIP's layer layout with tanh GELU; post_layernorm on the last hidden state; the
pooled output comes from an attention-pooling head: a learned probe attends over every patch
(torch MultiheadAttention), then a residual MLP."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attn_cli import attention as att
from attn_cli.errors import InputError
from attn_cli.models._vision import (
    act,
    check_layers,
    no_text,
    patch_embed,
    prenorm_layers,
    resize_positions,
    setting,
    square,
    vision_config,
)
from attn_cli.models.clip import NAMES
from attn_cli.models.layers import layer_norm
from attn_cli.models.registry import Config, Dims, Family, Vision, WeightSource, Wording
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord

ANCHOR = "embeddings.patch_embedding.weight"


def hidden(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "hidden_size", 768))


def heads(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "num_attention_heads", 12))


def layer_count(cfg: Config) -> int:
    return int(setting(vision_config(cfg), "num_hidden_layers", 12))


def eps(cfg: Config) -> float:
    return float(setting(vision_config(cfg), "layer_norm_eps", 1e-6))


def hidden_act(cfg: Config) -> str:
    return str(setting(vision_config(cfg), "hidden_act", "gelu_pytorch_tanh"))


def patch_size(cfg: Config) -> int:
    return square(setting(vision_config(cfg), "patch_size", 16), "patch_size")


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
    expect_shape(w, ANCHOR, (d, channels, p, p))
    expect_shape(w, "embeddings.position_embedding.weight", (grid * grid, d))
    inter = int(setting(vision_config(cfg), "intermediate_size", 3072))
    check_layers(w, NAMES, layer_count(cfg), d, inter)
    if setting(vision_config(cfg), "vision_use_head", True):
        expect_shape(w, "head.probe", (1, 1, d))
        expect_shape(w, "head.attention.in_proj_weight", (3 * d, d))


def embed(w: WeightSource, pixels: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    patches, grid = patch_embed(w, "embeddings.patch_embedding", pixels, patch_size(cfg))
    positions = resize_positions(w["embeddings.position_embedding.weight"], *grid)
    return patches + positions, grid


def layers(w: WeightSource, x: np.ndarray, cfg: Config) -> Iterator[LayerRecord]:
    return prenorm_layers(w, x, NAMES, layer_count(cfg), heads(cfg), eps(cfg), hidden_act(cfg))


def final(w: WeightSource, h: np.ndarray, cfg: Config) -> np.ndarray:
    return layer_norm(h, w["post_layernorm.weight"], w["post_layernorm.bias"], eps(cfg))


def pool_attention(w: WeightSource, out: np.ndarray, cfg: Config) -> att.AttentionSteps:
    """The head's probe attending over every patch: (heads, 1, patches) weights."""
    d = hidden(cfg)
    wi, bi = w["head.attention.in_proj_weight"], w["head.attention.in_proj_bias"]
    probe = w["head.probe"].reshape(1, d)
    q = probe @ wi[:d].T + bi[:d]  # [1, d]
    k = out @ wi[d : 2 * d].T + bi[d : 2 * d]  # [n, d]
    v = out @ wi[2 * d :].T + bi[2 * d :]
    h = heads(cfg)
    split = [x.reshape(x.shape[0], h, d // h).transpose(1, 0, 2) for x in (q, k, v)]
    return att.attend(*split)


def pooled(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray:
    """The attention-pooling head; without one (vision_use_head false), the patches' mean."""
    if not setting(vision_config(cfg), "vision_use_head", True):
        return out.mean(axis=0)
    a = pool_attention(w, out, cfg)
    y = att.merge_heads(a.Y) @ w["head.attention.out_proj.weight"].T
    y = y + w["head.attention.out_proj.bias"]  # [1, d]
    h = layer_norm(y, w["head.layernorm.weight"], w["head.layernorm.bias"], eps(cfg))
    f = act(hidden_act(cfg))
    mlp = f(h @ w["head.mlp.fc1.weight"].T + w["head.mlp.fc1.bias"])
    return (y + mlp @ w["head.mlp.fc2.weight"].T + w["head.mlp.fc2.bias"])[0]


def pool_map(w: WeightSource, out: np.ndarray, cfg: Config) -> np.ndarray | None:
    if not setting(vision_config(cfg), "vision_use_head", True):
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
    dims=dims,
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
        "SiglipImageProcessor", image_size, patch_size, lambda cfg: [], embed, pooled, pool_map
    ),
)

"""What the vision transformers share: patches from pixels, position tables resized to other
grids as torch's bicubic interpolation does, the patch token labels, and the pre-LayerNorm
encoder layer (ViT, DeiT, DINOv2, CLIP and SigLIP differ only in names and layer scale), and
the args every vision family's config dataclass starts from (`VisionArgs`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from attn_cli.attention import AttentionParams
from attn_cli.errors import InputError
from attn_cli.models.args import POSITIVE, POSITIVE_INT, TEXT, Args, Kind, arg, show, source_of
from attn_cli.models.layers import activation, layer_norm
from attn_cli.models.registry import Config, Dims, WeightSource
from attn_cli.models.weights import expect_shape
from attn_cli.records import LayerRecord, multi_head_attention


def _square(value: Any) -> bool:
    """A positive integer, or [n, n] (the only non-int sizes these models train)."""
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return POSITIVE_INT.test(value)


SQUARE = Kind("a positive integer or a square [n, n]", _square)


def side(value: int | list[int]) -> int:
    """An image_size / patch_size already checked as SQUARE: its side."""
    return int(value[0] if isinstance(value, list | tuple) else value)


V = TypeVar("V", bound="VisionArgs")


@dataclass(frozen=True, kw_only=True)
class VisionArgs(Args):
    """What every vision tower reads of its config; a family's subclass gives its config class's
    defaults (and the keys only it reads)."""

    hidden_size: int = arg(POSITIVE_INT)
    num_hidden_layers: int = arg(POSITIVE_INT)
    num_attention_heads: int = arg(POSITIVE_INT)
    num_channels: int = arg(POSITIVE_INT)
    hidden_act: str = arg(TEXT)
    layer_norm_eps: float = arg(POSITIVE)
    image_size: int | list[int] = arg(SQUARE)
    patch_size: int | list[int] = arg(SQUARE)

    @classmethod
    def read(cls: type[V], cfg: Config) -> V:
        """The args of a checkpoint's config.json (a full CLIP/SigLIP one: of its vision_config)."""
        return cls.parse(cfg)

    @classmethod
    def of_tower(cls: type[V], cfg: Config) -> V:
        """A full CLIP/SigLIP config's vision_config, else the config itself (vision-only)."""
        sub = cfg.get("vision_config")
        if sub is None:
            return cls.parse(cfg)
        where = source_of(cfg)
        if not isinstance(sub, Mapping):
            raise InputError(f"{where}: vision_config must be a JSON object, got {show(sub)}")
        return cls.parse(sub, f"{where}: vision_config")

    @classmethod
    def dims_of(cls, cfg: Config) -> Dims:
        return cls.read(cfg).dims()

    @classmethod
    def image_of(cls, cfg: Config) -> int:
        return side(cls.read(cfg).image_size)

    @classmethod
    def patch_of(cls, cfg: Config) -> int:
        return cls.read(cfg).patch

    def dims(self) -> Dims:
        d, h = self.hidden_size, self.num_attention_heads
        return Dims(self.num_hidden_layers, h, h, d, d // h, 0, None)

    @property
    def patch(self) -> int:
        return side(self.patch_size)

    @property
    def grid(self) -> int:
        """Patches per side of the pictures the position table was trained on."""
        return side(self.image_size) // self.patch

    def validate(self, source: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """CLIP's GELU approximation: x · σ(1.702 x)."""
    return x / (1.0 + np.exp(np.float32(-1.702) * x))


def act(name: str) -> Callable[[np.ndarray], np.ndarray]:
    return quick_gelu if name == "quick_gelu" else activation(name)


def patchify(pixels: np.ndarray, patch: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, H, W) -> (rows·cols, 3·p·p): each patch's pixels in the order a Conv2d kernel
    (out, 3, p, p) flattens, patches row by row; what does not fill a patch is dropped, as the
    strided convolution drops it."""
    c, h, w = pixels.shape
    rows, cols = h // patch, w // patch
    if rows < 1 or cols < 1:
        raise InputError(f"the picture is {w} × {h} pixels, smaller than one {patch}-pixel patch")
    x = pixels[:, : rows * patch, : cols * patch].reshape(c, rows, patch, cols, patch)
    return x.transpose(1, 3, 0, 2, 4).reshape(rows * cols, c * patch * patch), (rows, cols)


def patch_embed(
    w: WeightSource, name: str, pixels: np.ndarray, patch: int, bias: bool = True
) -> tuple[np.ndarray, tuple[int, int]]:
    """The patch embedding convolution (stride = kernel = p) as one matmul over the unfolded
    patches: [P, 3·p·p] @ [3·p·p, d] (+ b) -> [P, d]. Returns it and the (rows, cols) grid."""
    flat, grid = patchify(pixels, patch)
    kernel = w[name + ".weight"]  # [d, 3, p, p]
    out = flat @ kernel.reshape(kernel.shape[0], -1).T
    if bias:
        out = out + w[name + ".bias"]
    return out.astype(np.float32, copy=False), grid


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a (torch: -0.75; antialiased: -0.5)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of torch's 1-D bicubic resize, align_corners=False, size given
    (scale = n_in / n_out). Without antialias: upsample_bicubic2d (a = -0.75, the four nearest
    inputs, indices clamped at the edges); with it: the separable antialiased filter (a = -0.5,
    support widened by the scale when shrinking, weights normalised), which DINOv2 uses."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        if not antialias:
            real = scale * (i + 0.5) - 0.5
            x0 = math.floor(real)
            t = real - x0
            coeffs = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k, c in enumerate(coeffs):
                m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += c
            continue
        support = 2.0 * scale if scale >= 1 else 2.0
        invscale = 1.0 / scale if scale >= 1 else 1.0
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        ws = _cubic((np.arange(lo, hi) - center + 0.5) * invscale, -0.5)
        total = ws.sum()
        m[i, lo:hi] = ws / total if total != 0 else ws
    return m


def resize_positions(
    table: np.ndarray, rows: int, cols: int, antialias: bool = False
) -> np.ndarray:
    """A square grid of position embeddings (g·g, d) resized to (rows·cols, d) as transformers'
    interpolate_pos_encoding does (torch bicubic, align_corners=False); unchanged when it fits."""
    g = math.isqrt(table.shape[0])
    if g * g != table.shape[0]:
        raise InputError(f"{table.shape[0]} patch position embeddings are not a square grid")
    if (g, g) == (rows, cols):
        return table
    grid = table.reshape(g, g, -1).astype(np.float64)
    out = np.einsum(
        "ai,ijd,bj->abd",
        bicubic_matrix(g, rows, antialias),
        grid,
        bicubic_matrix(g, cols, antialias),
    )
    return out.reshape(rows * cols, -1).astype(np.float32)


def patch_labels(grid: tuple[int, int]) -> tuple[list[str], list[tuple[float, ...]]]:
    """'p(r,c)' labels and (row, col) coordinates, row by row."""
    rows, cols = grid
    coords: list[tuple[float, ...]] = [
        (float(r), float(c)) for r in range(rows) for c in range(cols)
    ]
    return [f"p({r},{c})" for r in range(rows) for c in range(cols)], coords


@dataclass(frozen=True)
class LayerNames:
    """Where a pre-LN encoder layer's tensors live, relative to `prefix.format(i)`."""

    prefix: str  # "encoder.layer.{}." / "encoder.layers.{}."
    norm1: str
    q: str
    k: str
    v: str
    o: str
    norm2: str
    fc1: str
    fc2: str
    scale1: str | None = None  # DINOv2's layer scale: a per-dimension γ on each branch
    scale2: str | None = None
    swiglu: bool = False  # DINOv2's SwiGLU feed-forward (fc1 = weights_in, fc2 = weights_out)


def _linear(w: WeightSource, name: str, bias: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    return w[name + ".weight"].T, (w[name + ".bias"] if bias else None)


def check_layers(
    w: WeightSource,
    names: LayerNames,
    layers: int,
    d: int,
    inter: int | None,
    qkv_bias: bool = True,
) -> None:
    for i in range(layers):
        p = names.prefix.format(i)
        for n in (names.q, names.k, names.v, names.o):
            expect_shape(w, p + n + ".weight", (d, d))
        if qkv_bias:
            for n in (names.q, names.k, names.v):
                expect_shape(w, p + n + ".bias", (d,))
        for n in (names.norm1, names.norm2):
            expect_shape(w, p + n + ".weight", (d,))
        if inter is not None:
            expect_shape(w, p + names.fc1 + ".weight", (inter, d))
            expect_shape(w, p + names.fc2 + ".weight", (d, inter))


def prenorm_layers(
    w: WeightSource,
    x: np.ndarray,
    names: LayerNames,
    layers: int,
    heads: int,
    eps: float,
    hidden_act: str,
    qkv_bias: bool = True,
) -> Iterator[LayerRecord]:
    """x + attn(LN1(x)) (· γ1), then + mlp(LN2(·)) (· γ2), layer by layer; the attention recorded
    stage by stage (its X is LN1's output, its residual x)."""
    f = act(hidden_act)
    for i in range(layers):
        p = names.prefix.format(i)
        h = layer_norm(x, w[p + names.norm1 + ".weight"], w[p + names.norm1 + ".bias"], eps)
        (wq, bq), (wk, bk), (wv, bv) = (
            _linear(w, p + n, qkv_bias) for n in (names.q, names.k, names.v)
        )
        wo, bo = _linear(w, p + names.o)
        if names.scale1 is not None:  # DINOv2's layer scale γ1, folded into the output projection
            gamma = w[p + names.scale1]  # (O·W_o + b_o)·γ = O·(W_o·diag γ) + b_o·γ
            wo, bo = wo * gamma, (None if bo is None else bo * gamma)
        params = AttentionParams(wq, wk, wv, heads, b_q=bq, b_k=bk, b_v=bv, w_o=wo, b_o=bo)
        a = multi_head_attention(h, params, resid=x)  # every patch sees every patch: no mask
        assert a.output is not None
        o = a.output
        mid = x + o
        h2 = layer_norm(mid, w[p + names.norm2 + ".weight"], w[p + names.norm2 + ".bias"], eps)
        w1, b1 = _linear(w, p + names.fc1)
        w2, b2 = _linear(w, p + names.fc2)
        up = h2 @ w1 + b1  # [n, d] -> [n, inter] (SwiGLU: [n, 2·inter])
        if names.swiglu:
            gate, value = np.split(up, 2, axis=-1)
            hidden = gate / (1.0 + np.exp(-gate)) * value  # SiLU(x1) · x2
        else:
            hidden = f(up)
        ff = hidden @ w2 + b2
        if names.scale2 is not None:
            ff = ff * w[p + names.scale2]
        out = (mid + ff).astype(np.float32, copy=False)
        yield LayerRecord([a], out)
        x = out


def no_text(w: WeightSource, ids: list[int], cfg: Config) -> np.ndarray:
    """A vision family's text embedding: there is none."""
    raise InputError("this is a vision model: it reads a picture (an image file), not text")


# transformers 5 names ViT's and DINOv2's layers as it names the text models' (its model's
# state_dict; save_pretrained converts back): these are the 4.x names the families read.
_V5_LAYER = re.compile(r"^layers\.(\d+)\.")
_V5_ATTENTION = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
}
_V5_VIT_MLP = {".mlp.fc1.": ".intermediate.dense.", ".mlp.fc2.": ".output.dense."}


def vit_names(name: str) -> str:
    """A ViT/DeiT tensor name as transformers 4.x writes it (`layers.3.attention.q_proj.weight`
    -> `encoder.layer.3.attention.attention.query.weight`)."""
    if not _V5_LAYER.match(name):
        return name
    name = _V5_LAYER.sub(r"encoder.layer.\1.", name)
    for new, old in (_V5_ATTENTION | _V5_VIT_MLP).items():
        name = name.replace(new, old)
    return name


def dinov2_names(name: str) -> str:
    """A DINOv2 tensor name as transformers 4.x writes it (its MLP keeps `mlp.fc1`)."""
    for new, old in _V5_ATTENTION.items():
        name = name.replace(new, old)
    return name

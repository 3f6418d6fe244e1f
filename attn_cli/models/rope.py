"""Rotary position embeddings (RoPE), as HuggingFace transformers computes them.

Position enters a rotary model only here: each query and key vector is rotated by an angle
that grows with its token's position, pair of dimensions by pair of dimensions, so the score
q·k depends on how far apart the two tokens are. The layout is transformers' "rotate half":
dimension i is paired with dimension i + r/2 (r = the rotated width), not with i + 1.

  inv_freq[j] = 1 / θ^(2j / r)                 j = 0 … r/2 − 1 (θ = rope_theta)
  angle[p, j] = p · inv_freq[j]                 position p = 0, 1, …
  x_rot = x·cos(angle ⧺ angle) + rotate_half(x)·sin(angle ⧺ angle),  rotate_half(a ⧺ b) = −b ⧺ a

Supported rope types: default, linear (positions divided by `factor`) and llama3 (long
wavelengths divided by `factor`, a smooth ramp between); `partial_rotary_factor` < 1 rotates the
first r = head_dim·factor dimensions and passes the rest through. Other types are refused by name.

Config keys are read as hub checkpoints write them (`rope_theta`, `rope_scaling`,
`partial_rotary_factor`) and as transformers 5 writes them (`rope_parameters`, possibly one dict
per layer type: {"full_attention": {…}, "sliding_attention": {…}}).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_cli.errors import InputError

SUPPORTED = ("default", "linear", "llama3")
DEFAULT_THETA = 10_000.0


def rope_parameters(
    cfg: Mapping[str, Any],
    layer_type: str | None = None,
    default_theta: float = DEFAULT_THETA,
    local_theta_key: str | None = None,
) -> dict[str, Any]:
    """One layer type's rope settings, normalised to transformers 5's flat dict:
    {"rope_type", "rope_theta", "factor"…, "partial_rotary_factor"?}.

    `local_theta_key` (Gemma 3: "rope_local_base_freq") names the hub-style key holding the
    base of the sliding-window layers, whose rotary embedding is never scaled."""
    nested = cfg.get("rope_parameters")
    params: dict[str, Any]
    if isinstance(nested, Mapping) and nested:
        per_type = {k: v for k, v in nested.items() if isinstance(v, Mapping)}
        if per_type:
            key = layer_type if layer_type in per_type else "full_attention"
            if key not in per_type:
                key = next(iter(per_type))
            params = dict(per_type[key])
        else:
            params = dict(nested)
    elif local_theta_key is not None and layer_type == "sliding_attention":
        params = {"rope_type": "default", "rope_theta": cfg.get(local_theta_key, DEFAULT_THETA)}
    else:
        scaling = cfg.get("rope_scaling")
        params = dict(scaling) if isinstance(scaling, Mapping) else {}
    params.setdefault("rope_type", params.get("type", "default"))
    params.pop("type", None)
    if params.get("rope_theta") is None:
        params["rope_theta"] = cfg.get("rope_theta") or default_theta
    if "partial_rotary_factor" not in params and cfg.get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    if params["rope_type"] == "llama3":
        # transformers: a top-level original_max_position_embeddings wins (Phi-3 writes it there)
        if cfg.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        params.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    return params


def check(params: Mapping[str, Any]) -> None:
    """Refuse rope types this module does not compute, by name."""
    kind = params.get("rope_type", "default")
    if kind not in SUPPORTED:
        raise InputError(
            f"config.json: rope type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
    for key in need.get(str(kind), ()):
        if params.get(key) is None:
            raise InputError(f"config.json: rope type {kind!r} needs {key!r}")
    if kind == "llama3" and not params.get("original_max_position_embeddings"):
        raise InputError("config.json: rope type 'llama3' needs original_max_position_embeddings")
    factor = params.get("partial_rotary_factor", 1.0)
    if not (isinstance(factor, int | float) and 0 < factor <= 1):
        raise InputError(f"config.json: partial_rotary_factor {factor!r} is not in (0, 1]")


def inverse_frequencies(params: Mapping[str, Any], head_dim: int) -> np.ndarray:
    """inv_freq (r/2,) in float32, computed in float32 like transformers."""
    check(params)
    dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
    base = np.float32(params["rope_theta"])
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (base**exponents)).astype(np.float32)
    kind = params.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / np.float32(params["factor"])
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, params)
    return inv_freq.astype(np.float32)


def _llama3(inv_freq: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling (transformers' _compute_llama3_parameters)."""
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (np.float32(old) / wavelen - np.float32(low)) / np.float32(high - low)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@dataclass(frozen=True)
class Rotary:
    """One layer type's rotary embedding: cos and sin for positions 0 … n − 1."""

    inv_freq: np.ndarray  # (r/2,) float32
    head_dim: int
    params: Mapping[str, Any]

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.shape[0]

    def cos_sin(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, r) cos and sin tables, float32 (angle ⧺ angle, as transformers lays them out)."""
        freqs = np.arange(n, dtype=np.float32)[:, None] * self.inv_freq[None, :]  # [n, r/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, r]
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def apply(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotate (…, n, head_dim) by position: the first r dimensions, the rest pass through."""
        r = self.rotary_dim
        rot = x[..., :r]
        half = r // 2
        rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)  # rotate_half
        out = rot * cos + rotated * sin
        if r == x.shape[-1]:
            return out
        return np.concatenate([out, x[..., r:]], axis=-1)


def rotary(
    cfg: Mapping[str, Any],
    head_dim: int,
    layer_type: str | None = None,
    default_theta: float = DEFAULT_THETA,
    local_theta_key: str | None = None,
) -> Rotary:
    params = rope_parameters(cfg, layer_type, default_theta, local_theta_key)
    return Rotary(inverse_frequencies(params, head_dim), head_dim, params)

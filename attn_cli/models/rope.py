"""Rotary position embeddings (RoPE), as HuggingFace transformers computes them.

Position enters a rotary model only here: each query and key vector is rotated by an angle
that grows with its token's position, pair of dimensions by pair of dimensions, so the score
q·k depends on how far apart the two tokens are. The layout is transformers' "rotate half":
dimension i is paired with dimension i + r/2 (r = the rotated width), not with i + 1.

  inv_freq[j] = 1 / θ^(2j / r)                 j = 0 … r/2 − 1 (θ = rope_theta)
  angle[p, j] = p · inv_freq[j]                 position p = 0, 1, …
  x_rot = x·cos(angle ⧺ angle) + rotate_half(x)·sin(angle ⧺ angle),  rotate_half(a ⧺ b) = −b ⧺ a

Supported rope types, each computed as transformers computes it for a forward pass from the
first token:
- default;
- linear: every frequency divided by `factor` (positions stretched);
- llama3: long wavelengths divided by `factor`, short ones kept, a smooth ramp between;
- dynamic (NTK): unchanged up to max_position_embeddings tokens; beyond, θ grows with the
  length n: θ·(factor·n/max − (factor − 1))^(r/(r−2));
- yarn: a per-frequency ramp between the interpolated (÷ factor) and the original frequencies,
  and cos/sin multiplied by an attention factor (0.1·ln(factor) + 1 unless the config says);
- longrope (Phi-3.5, Phi-4-mini): each frequency divided by its own factor, `short_factor` up to
  original_max_position_embeddings tokens and `long_factor` beyond, cos/sin multiplied by
  √(1 + ln(max/original) / ln(original)).
`partial_rotary_factor` < 1 rotates the first r = head_dim·factor dimensions and passes the rest
through. Other types are refused by name.

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
from attn_cli.models.args import (
    FLAG,
    FRACTION,
    NUMBER,
    POSITIVE,
    POSITIVE_INT,
    TEXT,
    Kind,
    show,
)
from attn_cli.models.args import check as check_value

SUPPORTED = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")
# Types whose scaling is set by the length the model was pretrained at.
WITH_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")
DEFAULT_THETA = 10_000.0
# What each rope setting must be (null: left out); anything else in the dict is not read.
KINDS: dict[str, Kind] = {
    "rope_type": TEXT,
    "type": TEXT,
    "rope_theta": POSITIVE,
    "factor": POSITIVE,
    "low_freq_factor": POSITIVE,
    "high_freq_factor": POSITIVE,
    "original_max_position_embeddings": POSITIVE_INT,
    "max_position_embeddings": POSITIVE_INT,
    "beta_fast": POSITIVE,
    "beta_slow": POSITIVE,
    "attention_factor": POSITIVE,
    "mscale": NUMBER,
    "mscale_all_dim": NUMBER,
    "partial_rotary_factor": FRACTION,
    "truncate": FLAG,
}


def _checked(params: Mapping[str, Any], prefix: str) -> None:
    for key, kind in KINDS.items():
        if key in params:
            check_value(kind, params[key], prefix + key, nullable=True)


def rope_parameters(
    cfg: Mapping[str, Any],
    layer_type: str | None = None,
    default_theta: float = DEFAULT_THETA,
    local_theta_key: str | None = None,
    source: str = "config.json",
) -> dict[str, Any]:
    """One layer type's rope settings, normalised to transformers 5's flat dict:
    {"rope_type", "rope_theta", "factor"…, "partial_rotary_factor"?}; each value checked
    (messages name `source` and the key it was read from).

    `local_theta_key` (Gemma 3: "rope_local_base_freq") names the hub-style key holding the
    base of the sliding-window layers, whose rotary embedding is never scaled."""
    nested = cfg.get("rope_parameters")
    params: dict[str, Any]
    per_type: dict[str, Any] = {}
    if isinstance(nested, Mapping) and nested:
        per_type = {k: v for k, v in nested.items() if isinstance(v, Mapping)}
        if per_type:
            key = layer_type if layer_type in per_type else "full_attention"
            if key not in per_type:
                key = next(iter(per_type))
            params = dict(per_type[key])
            _checked(params, f"{source}: rope_parameters.{key}.")
        else:
            params = dict(nested)
            _checked(params, f"{source}: rope_parameters.")
    elif local_theta_key is not None and layer_type == "sliding_attention":
        theta = cfg.get(local_theta_key, DEFAULT_THETA)
        check_value(POSITIVE, theta, f"{source}: {local_theta_key}")
        params = {"rope_type": "default", "rope_theta": theta}
    else:
        scaling = cfg.get("rope_scaling")
        params = dict(scaling) if isinstance(scaling, Mapping) else {}
        _checked(params, f"{source}: rope_scaling.")
    params.setdefault("rope_type", params.get("type", "default"))
    params.pop("type", None)
    if params.get("rope_theta") is None:
        params["rope_theta"] = cfg.get("rope_theta") or default_theta
    if "partial_rotary_factor" not in params and cfg.get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    if params["rope_type"] in WITH_ORIGINAL_LENGTH:
        # transformers: a top-level original_max_position_embeddings wins (Phi-3 writes it there),
        # except in per-layer-type parameters
        if not per_type and cfg.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        params.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    # dynamic scales past it; yarn and longrope derive their default factor from it
    params["max_position_embeddings"] = cfg.get("max_position_embeddings")
    # the keys taken from the top level are checked under their own names
    _checked({k: cfg.get(k) for k in KINDS if k in cfg}, f"{source}: ")
    return params


def check(params: Mapping[str, Any], head_dim: int, source: str = "config.json") -> None:
    """Refuse rope types this module does not compute, by name, incomplete settings, and a
    rotated width that is odd (dimensions rotate in pairs)."""
    kind = params.get("rope_type", "default")
    if kind not in SUPPORTED:
        raise InputError(
            f"{source}: rope type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    need = {
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
        "dynamic": ("factor", "max_position_embeddings"),
        "longrope": ("long_factor", "short_factor"),
    }
    for key in need.get(str(kind), ()):
        if params.get(key) is None:
            raise InputError(f"{source}: rope type {kind!r} needs {key!r}")
    if kind in WITH_ORIGINAL_LENGTH and not params.get("original_max_position_embeddings"):
        raise InputError(f"{source}: rope type {kind!r} needs original_max_position_embeddings")
    if (
        kind in ("yarn", "longrope")
        and params.get("factor") is None
        and not params.get("max_position_embeddings")
    ):
        raise InputError(f"{source}: rope type {kind!r} needs 'factor'")
    factor = params.get("partial_rotary_factor", 1.0)
    check_value(FRACTION, factor, f"{source}: partial_rotary_factor")
    dim = int(head_dim * float(factor))
    if dim % 2 or dim < 2:
        raise InputError(
            f"{source}: the rotated width head_dim × partial_rotary_factor = {head_dim} × "
            f"{factor} = {dim} must be even and at least 2 (dimensions rotate in pairs)"
        )
    if kind == "dynamic" and dim < 4:
        raise InputError(f"{source}: rope type 'dynamic' needs a rotated width of at least 4")
    # equal factors (Llama 4 Scout: 1 and 1): a hard cut between kept and divided frequencies
    if kind == "llama3" and not params["high_freq_factor"] >= params["low_freq_factor"]:
        raise InputError(
            f"{source}: rope high_freq_factor {params['high_freq_factor']} must be at least "
            f"low_freq_factor {params['low_freq_factor']}"
        )
    if kind == "longrope":
        half = dim // 2  # one per frequency
        for key in ("long_factor", "short_factor"):
            values = params[key]
            if not (
                isinstance(values, list)
                and len(values) == half
                and all(POSITIVE.test(v) for v in values)
            ):
                raise InputError(
                    f"{source}: rope {key} must be {half} positive numbers, one per frequency, "
                    f"got {show(values)}"
                )


def inverse_frequencies(
    params: Mapping[str, Any], head_dim: int, n: int | None = None
) -> tuple[np.ndarray, float]:
    """inv_freq (r/2,) in float32, computed in float32 like transformers, and the factor cos and
    sin are multiplied by, for a pass over n tokens (None: the type's short-input setting)."""
    check(params, head_dim)
    dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
    base = float(params["rope_theta"])
    kind = params.get("rope_type", "default")
    if kind == "dynamic" and n is not None and n > int(params["max_position_embeddings"]):
        factor, longest = float(params["factor"]), float(params["max_position_embeddings"])
        base = base * ((factor * n / longest) - (factor - 1)) ** (dim / (dim - 2))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    powers = np.float32(base) ** exponents  # θ^(2j/r)
    inv_freq = (np.float32(1.0) / powers).astype(np.float32)
    scaling = 1.0
    if kind == "linear":
        inv_freq = inv_freq / np.float32(params["factor"])
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, params)
    elif kind == "yarn":
        inv_freq, scaling = _yarn(powers, dim, base, params)
    elif kind == "longrope":
        inv_freq, scaling = _longrope(powers, params, n)
    return inv_freq.astype(np.float32), scaling


def _default_factor(p: Mapping[str, Any]) -> float:
    """A yarn/longrope factor left out: how far max_position_embeddings stretches the original."""
    if p.get("factor") is not None:
        return float(p["factor"])
    return float(p["max_position_embeddings"]) / float(p["original_max_position_embeddings"])


def _yarn(
    powers: np.ndarray, dim: int, base: float, p: Mapping[str, Any]
) -> tuple[np.ndarray, float]:
    """YaRN (transformers' _compute_yarn_parameters): frequencies that turn fewer than
    beta_slow times over the original length are interpolated (÷ factor), those turning more
    than beta_fast times are kept, with a linear ramp between."""
    factor = _default_factor(p)
    original = float(p["original_max_position_embeddings"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # 1: extrapolate (the original frequency)
    extrapolated = np.float32(1.0) / powers
    interpolated = np.float32(1.0) / (np.float32(factor) * powers)
    return (interpolated * (1 - keep) + extrapolated * keep).astype(np.float32), float(attention)


def _longrope(powers: np.ndarray, p: Mapping[str, Any], n: int | None) -> tuple[np.ndarray, float]:
    """LongRoPE (transformers' _compute_longrope_parameters and its length switch)."""
    original = int(p["original_max_position_embeddings"])
    factor = _default_factor(p)
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    long = n is not None and n > original
    ext = np.asarray(p["long_factor" if long else "short_factor"], dtype=np.float32)
    return (np.float32(1.0) / (ext * powers)).astype(np.float32), float(attention)


def _llama3(inv_freq: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling (transformers' _compute_llama3_parameters)."""
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
    with np.errstate(divide="ignore", invalid="ignore"):  # high = low: no ramp to smooth
        smooth = (np.float32(old) / wavelen - np.float32(low)) / np.float32(high - low)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@dataclass(frozen=True)
class Rotary:
    """One layer type's rotary embedding: cos and sin for positions 0 … n − 1."""

    params: Mapping[str, Any]
    head_dim: int

    @property
    def rotary_dim(self) -> int:
        dim = int(self.head_dim * float(self.params.get("partial_rotary_factor", 1.0)))
        return 2 * len(range(0, dim, 2))  # two dimensions per frequency

    def cos_sin(self, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(n − start, r) cos and sin tables, float32 (angle ⧺ angle, as transformers lays them
        out), of positions start … n − 1 in a pass over n tokens: dynamic and longrope scaling
        depend on n. (A key/value cache asks for its new positions only: each row is the same
        as in the whole table.)"""
        inv_freq, scaling = inverse_frequencies(self.params, self.head_dim, n)
        positions = np.arange(start, n, dtype=np.float32)
        freqs = positions[:, None] * inv_freq[None, :]  # [n − start, r/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, r]
        cos, sin = np.cos(emb), np.sin(emb)
        if scaling != 1.0:  # yarn, longrope: transformers' attention_scaling
            cos, sin = cos * np.float32(scaling), sin * np.float32(scaling)
        return cos.astype(np.float32), sin.astype(np.float32)

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
    source: str = "config.json",
) -> Rotary:
    params = rope_parameters(cfg, layer_type, default_theta, local_theta_key, source)
    check(params, head_dim, source)
    return Rotary(params, head_dim)

"""Projection weights for the Q/K/V pipeline: seeded (same numbers on every machine) or a
user's .npz with W_q, W_k, W_v and optional W_o, b_q, b_k, b_v, b_o (weights stored [in, out],
so Q = X·W_q)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attn_cli import memory
from attn_cli.attention import AttentionParams
from attn_cli.embeddings import load_npz, seeded_uniform, sha256_file
from attn_cli.errors import InputError, opt

KEYS = ("W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o")
INIT = "uniform(-sqrt(3/fan_in), sqrt(3/fan_in)) (variance 1/fan_in), no biases"
NORM_EPS = 1e-5


def layer_norm(X: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """Each row centred and scaled to mean 0, variance 1: (x − mean)/√(var + eps), no learned
    scale or shift (they would be 1 and 0 at initialisation)."""
    mean = X.mean(axis=-1, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=-1, keepdims=True)
    return (X - mean) / np.sqrt(var + eps)


@dataclass
class Projections:
    W_q: np.ndarray  # (d, H·d_k)
    W_k: np.ndarray  # (d, H·d_k)
    W_v: np.ndarray  # (d, H·d_v)
    heads: int
    W_o: np.ndarray | None = None  # (H·d_v, d_o)
    b_q: np.ndarray | None = None
    b_k: np.ndarray | None = None
    b_v: np.ndarray | None = None
    b_o: np.ndarray | None = None
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def d_k(self) -> int:
        return self.W_q.shape[1] // self.heads

    @property
    def params(self) -> AttentionParams:
        return AttentionParams(
            self.W_q,
            self.W_k,
            self.W_v,
            self.heads,
            b_q=self.b_q,
            b_k=self.b_k,
            b_v=self.b_v,
            w_o=self.W_o,
            b_o=self.b_o,
        )

    @property
    def d_v(self) -> int:
        return self.W_v.shape[1] // self.heads


def smaller() -> str:
    """What keeps the Q/K/V pipeline small, for a refusal that names the size."""
    return f"use fewer heads or a smaller d_k ({opt('heads')}, {opt('d_k')}) or a shorter text"


def check_heads(heads: int) -> None:
    if not 1 <= heads <= 1024:
        raise InputError(f"{opt('heads')} must be between 1 and 1024, got {heads}")


def seeded_projections(d: int, heads: int, d_k: int | None, seed: int) -> Projections:
    """W_q, W_k, W_v ~ U(±√(3/d)) and, with several heads, W_o ~ U(±√(3/(H·d_k))), drawn
    exactly as the random embeddings are (stream 1).

    Variance 1/fan_in (LeCun's init) keeps the variance of a vector through a projection: with
    X_norm's unit-variance entries, q and k entries have variance 1, so q·k has variance d_k
    and q·k/√d_k variance 1 — the assumption under which "Attention Is All You Need" (§3.2.1)
    motivates the √d_k. Scores of that size give rows of W that visibly differ."""
    check_heads(heads)
    if d_k is None:
        if d % heads:
            raise InputError(f"{opt('heads', heads)} does not divide d = {d}: give {opt('d_k')}")
        d_k = d // heads
    if not 1 <= d_k <= 65536:
        raise InputError(f"{opt('d_k')} must be between 1 and 65536, got {d_k}")
    need = memory.projection_bytes(d, heads, d_k)
    memory.check_fits(need, f"{heads} heads of d_k {d_k} over d = {d}", smaller())

    def uniform(key: int, rows: int, cols: int) -> np.ndarray:
        bound = np.sqrt(3.0 / rows)
        u = seeded_uniform(seed, 1, key, rows * cols).reshape(rows, cols)
        return (2.0 * u - 1.0) * bound

    hd = heads * d_k
    w_o = uniform(3, hd, d) if heads > 1 else None
    return Projections(
        uniform(0, d, hd),
        uniform(1, d, hd),
        uniform(2, d, hd),
        heads,
        W_o=w_o,
        config={"weights": "seeded", "init": INIT, "seed": seed},
    )


def load_projections(path: Path, d: int, heads: int, d_k: int | None) -> Projections:
    check_heads(heads)
    name = path.name
    if not path.is_file():
        raise InputError(f"{opt('weights')}: {path} does not exist")
    arrays = load_npz(path)
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise InputError(f"{name}: unknown key {unknown[0]!r} (expected {', '.join(KEYS)})")
    for key in ("W_q", "W_k", "W_v"):
        if key not in arrays:
            raise InputError(
                f"{name}: missing {key} (needs W_q, W_k, W_v; optional W_o and biases)"
            )
    for key, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise InputError(f"{name}: {key} has dtype {a.dtype}, expected real numbers")
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}: {key} contains NaN or inf")
        arrays[key] = a.astype(np.float64)

    def expect(key: str, shape: tuple[int, ...], meaning: str) -> None:
        a = arrays.get(key)
        if a is not None and a.shape != shape:
            raise InputError(f"{name}: {key} has shape {a.shape}, expected {shape} ({meaning})")

    w_q = arrays["W_q"]
    if w_q.ndim != 2 or w_q.shape[0] != d:
        raise InputError(
            f"{name}: W_q has shape {w_q.shape}, expected ({d}, heads·d_k) (d = {d} from the embeddings)"
        )
    if w_q.shape[1] % heads:
        raise InputError(
            f"{name}: W_q has {w_q.shape[1]} columns, not divisible by {opt('heads', heads)}"
        )
    file_d_k = w_q.shape[1] // heads
    if d_k is not None and d_k != file_d_k:
        raise InputError(
            f"{opt('d_k', d_k)} conflicts with {name}: its W_q gives d_k = {file_d_k} for {heads} head(s)"
        )
    hd = w_q.shape[1]
    expect("W_k", (d, hd), "d × heads·d_k, like W_q")
    w_v = arrays["W_v"]
    if w_v.ndim != 2 or w_v.shape[0] != d or w_v.shape[1] % heads:
        raise InputError(f"{name}: W_v has shape {w_v.shape}, expected ({d}, heads·d_v)")
    hv = w_v.shape[1]
    expect("b_q", (hd,), "one bias per column of W_q")
    expect("b_k", (hd,), "one bias per column of W_k")
    expect("b_v", (hv,), "one bias per column of W_v")
    if "W_o" in arrays:
        w_o = arrays["W_o"]
        if w_o.ndim != 2 or w_o.shape[0] != hv:
            raise InputError(
                f"{name}: W_o has shape {w_o.shape}, expected ({hv}, d_out) (heads·d_v × d_out)"
            )
        expect("b_o", (w_o.shape[1],), "one bias per column of W_o")
    elif "b_o" in arrays:
        raise InputError(f"{name}: b_o given without W_o")
    proj = Projections(
        arrays["W_q"],
        arrays["W_k"],
        arrays["W_v"],
        heads,
        W_o=arrays.get("W_o"),
        b_q=arrays.get("b_q"),
        b_k=arrays.get("b_k"),
        b_v=arrays.get("b_v"),
        b_o=arrays.get("b_o"),
        config={"weights": str(path), "weights_sha256": sha256_file(path)},
    )
    if heads > 1 and proj.W_o is None:
        proj.notes.append(
            f"{name} has no W_o: the heads are concatenated (Y_concat) but not projected (no O)"
        )
    return proj

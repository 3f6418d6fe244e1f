"""Transformer building blocks in numpy (float32, like the checkpoints)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attn_cli.errors import InputError


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * g + b


# erf's polynomial in t, highest power first (Numerical Recipes' erfc fit), and its block size:
# evaluated a block at a time, the float64 temporaries stay in cache (18× faster on a
# 1500 × 2048 activation than whole-array temporaries, with the same operations in the same
# order, so bit for bit the same result; 16k values a block measured faster than 32k or 8k).
ERF_POLY = (
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
    -1.26551223,
)
ERF_BLOCK = 1 << 14


def erf(x: np.ndarray) -> np.ndarray:
    """erf without scipy: erfc(z) = t·exp(−z² + P(t)), t = 1/(1 + z/2), relative error < 1.2e-7
    (Numerical Recipes' Chebyshev fit), evaluated in float64, a block of values at a time;
    erf(x) = sign(x)·(1 − erfc(|x|)) (erf is odd)."""
    arr = np.asarray(x)
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, dtype=arr.dtype)
    for a in range(0, flat.size, ERF_BLOCK):
        x64 = flat[a : a + ERF_BLOCK].astype(np.float64)
        z = np.abs(x64)
        t = 0.5 * z
        t += 1.0
        np.divide(1.0, t, out=t)
        poly = t * ERF_POLY[0]
        poly += ERF_POLY[1]
        for c in ERF_POLY[2:]:  # Horner: P(t) = ((c0·t + c1)·t + …)·t + c9
            poly *= t
            poly += c
        z *= z
        poly -= z
        np.exp(poly, out=poly)
        poly *= t  # erfc(|x|)
        np.subtract(1.0, poly, out=poly)
        out[a : a + ERF_BLOCK] = np.copysign(poly, x64, out=poly)
    return out.reshape(arr.shape)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """BERT's GELU: x·Φ(x) = x/2 · (1 + erf(x/√2))."""
    phi2 = erf(x / np.float32(np.sqrt(2.0)))  # then 1 + erf and the product, in place
    phi2 += 1.0
    phi2 *= 0.5 * x
    return phi2


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU ('gelu_new'): x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    if x.dtype != np.float32:
        return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x**3)))
    # float32 in place, x·x·x instead of x**3 (numpy's float32 power is ~100× slower than two
    # products: it dominated a long text's MLP); the same sums in the same order
    t = x * x
    t *= x
    t *= np.float32(0.044715)
    t += x
    t *= c
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= x
    t *= np.float32(0.5)
    return t


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float, offset: float = 0.0) -> np.ndarray:
    """x / √(mean(x²) + eps) · (offset + g): Llama's RMSNorm (Gemma's uses offset 1, i.e. 1 + w).
    Computed in float32 like the reference implementations."""
    x32 = x.astype(np.float32, copy=False)
    # mean(x²) as a float32 sum over the count: np.mean's number bit for bit (it divides in
    # float64 and rounds to float32, which for a quotient is the same), without its overhead
    ms = (x32 * x32).sum(axis=-1, keepdims=True) / np.float32(x32.shape[-1])
    return x32 / np.sqrt(ms + np.float32(eps)) * (np.float32(offset) + g)


def silu(x: np.ndarray) -> np.ndarray:
    # exp(−x) overflows to inf below x ≈ −88 (float32): x / inf = −0, the right limit
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "swish": silu,
}


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name not in ACTIVATIONS:
        raise InputError(
            f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]

"""ggml's block quantisations in plain numpy, bit-identical to ggml's C code.

Each block of 32 values is a float16 scale d (Q4_1: and an offset m) followed by the packed
quants; y = d·q (Q8_0: q int8), d·(q − 8) (Q4_0: q a 4-bit nibble), d·q + m (Q4_1). A nibble
block holds elements 0..15 in the low nibbles of its 16 bytes and 16..31 in the high ones.
The products are exact in float32 (11-bit scales times 4- or 8-bit quants), so the one
rounding is Q4_1's addition, as in ggml.

MXFP4 (gpt-oss's experts, OCP microscaling): a block is one E8M0 exponent byte e and 16 bytes
of 4-bit E2M1 codes; y = KVALUES[code] · 2^(e − 128), KVALUES the E2M1 values doubled (ggml's
kvalues_mxfp4, whence the halved scale). The hub's safetensors store the same codes with the
exponents apart (`*_blocks` [..., G, 16], `*_scales` [..., G]) and the two codes of a byte
as neighbours (element 2j low, 2j + 1 high): `mxfp4_pairs` reads that layout with the same
values (transformers' convert_moe_packed_tensors gives −0.0 for code 8, ggml +0.0).

A tensor is dequantised into one new float32 array, a chunk of blocks at a time: every step
then runs over contiguous memory that stays in the CPU cache, with no temporary the size of
the tensor (a tensor-sized temporary costs a pass of page faults, more than the arithmetic).
The blocks are read through a structured dtype, so scales and packed quants are each one
long strided column rather than millions of 16-byte rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

QK = 32  # values per block
CHUNK = 4096  # blocks per step: 128k float32 values, 512 KiB
_LOW = np.uint64(0x0F0F0F0F0F0F0F0F)  # the low nibble of each of 8 bytes
_FOUR = np.uint64(4)

Q8_0 = np.dtype([("d", "<f2"), ("qs", "V32")])
Q4_0 = np.dtype([("d", "<f2"), ("qs", "V16")])
Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "V16")])
MXFP4 = np.dtype([("e", "u1"), ("qs", "V16")])
# ggml's kvalues_mxfp4: the E2M1 code's value, doubled
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def _blocks(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Raw bytes [rows, row_bytes] as a 1-D array of blocks."""
    return np.ascontiguousarray(raw).reshape(-1).view(dtype)


def _chunks(n_blocks: int, out: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(blocks start:stop, their float32 values in `out`) for each chunk."""
    for start in range(0, n_blocks, CHUNK):
        stop = min(n_blocks, start + CHUNK)
        yield slice(start, stop), out[start * QK : stop * QK]


def _values(raw: np.ndarray, blk: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Where rows of raw bytes [rows, row_bytes], read as the blocks `blk`, are dequantised to:
    `out` (float32, C-contiguous, [rows, values per row]) or a new array."""
    if out is not None:
        return out
    return np.empty((raw.shape[0], blk.size // max(1, raw.shape[0]) * QK), dtype=np.float32)


def _per_value(scale: np.ndarray) -> np.ndarray:
    """Each block's float16 scale as float32, repeated for its 32 values."""
    return np.repeat(scale.astype(np.float32), QK)


class _Nibbles:
    """Unpacks 16-byte nibble blocks into bytes 0..15, low nibbles first, in a reused buffer."""

    def __init__(self) -> None:
        self.pairs = np.empty((CHUNK, 2), dtype="V16")  # per block: low half, high half
        self.values = self.pairs.view(np.uint8).reshape(-1)

    def __call__(self, qs: np.ndarray) -> np.ndarray:
        k = qs.shape[0]
        words = np.ascontiguousarray(qs).view("<u8")  # 8 packed bytes at a time
        self.pairs[:k, 0] = (words & _LOW).view("V16")
        words >>= _FOUR
        words &= _LOW
        self.pairs[:k, 1] = words.view("V16")
        return self.values[: k * QK]


def q8_0(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    blk = _blocks(raw, Q8_0)
    out = _values(raw, blk, out)
    for s, o in _chunks(blk.size, out.reshape(-1)):
        o[...] = np.ascontiguousarray(blk["qs"][s]).view(np.int8)
        o *= _per_value(blk["d"][s])
    return out


def q4_0(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    blk = _blocks(raw, Q4_0)
    out = _values(raw, blk, out)
    nibbles = _Nibbles()
    for s, o in _chunks(blk.size, out.reshape(-1)):
        o[...] = nibbles(blk["qs"][s])
        o -= 8
        o *= _per_value(blk["d"][s])
    return out


def q4_1(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    blk = _blocks(raw, Q4_1)
    out = _values(raw, blk, out)
    nibbles = _Nibbles()
    for s, o in _chunks(blk.size, out.reshape(-1)):
        o[...] = nibbles(blk["qs"][s])
        o *= _per_value(blk["d"][s])
        o += _per_value(blk["m"][s])
    return out


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """2^(e − 128) as float32 for E8M0 exponent bytes (ggml's GGML_E8M0_TO_FP32_HALF): built
    from its bits, subnormal for e < 2."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - 1) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def mxfp4(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    blk = _blocks(raw, MXFP4)
    out = _values(raw, blk, out)
    nibbles = _Nibbles()
    for s, o in _chunks(blk.size, out.reshape(-1)):
        KVALUES.take(nibbles(blk["qs"][s]), out=o)
        o *= np.repeat(e8m0_half(blk["e"][s]), QK)
    return out


def mxfp4_pairs(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The hub's MXFP4 layout: codes [..., G, 16] uint8 (two per byte, element 2j in the low
    nibble) and exponents [..., G] uint8 -> float32 [..., G·32], each row's values in order."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != QK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not fit scales {scales.shape}")
    out = np.empty((*blocks.shape, 2), dtype=np.float32)
    KVALUES.take(blocks & 15, out=out[..., 0])
    KVALUES.take(blocks >> 4, out=out[..., 1])
    out *= e8m0_half(scales)[..., None, None]
    return out.reshape(*scales.shape[:-1], -1)


# ggml type name -> (raw bytes [rows, row_bytes], optional out) -> float32 [rows, values per row]
DEQUANTIZE: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    "Q8_0": q8_0,
    "Q4_0": q4_0,
    "Q4_1": q4_1,
    "MXFP4": mxfp4,
}

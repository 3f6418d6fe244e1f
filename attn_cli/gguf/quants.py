"""ggml's block quantisations in plain numpy, bit-identical to ggml's C code.

Each block of 32 values is a float16 scale d (Q4_1: and an offset m) followed by the packed
quants; y = d·q (Q8_0: q int8), d·(q − 8) (Q4_0: q a 4-bit nibble), d·q + m (Q4_1). A nibble
block holds elements 0..15 in the low nibbles of its 16 bytes and 16..31 in the high ones.
The products are exact in float32 (11-bit scales times 4- or 8-bit quants), so the one
rounding is Q4_1's addition, as in ggml.

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


def _blocks(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Raw bytes [rows, row_bytes] as a 1-D array of blocks."""
    return np.ascontiguousarray(raw).reshape(-1).view(dtype)


def _chunks(n_blocks: int, out: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(blocks start:stop, their float32 values in `out`) for each chunk."""
    for start in range(0, n_blocks, CHUNK):
        stop = min(n_blocks, start + CHUNK)
        yield slice(start, stop), out[start * QK : stop * QK]


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


def q8_0(raw: np.ndarray) -> np.ndarray:
    blk = _blocks(raw, Q8_0)
    out = np.empty(blk.size * QK, dtype=np.float32)
    for s, o in _chunks(blk.size, out):
        o[...] = np.ascontiguousarray(blk["qs"][s]).view(np.int8)
        o *= _per_value(blk["d"][s])
    return out.reshape(raw.shape[0], -1)


def q4_0(raw: np.ndarray) -> np.ndarray:
    blk = _blocks(raw, Q4_0)
    out = np.empty(blk.size * QK, dtype=np.float32)
    nibbles = _Nibbles()
    for s, o in _chunks(blk.size, out):
        o[...] = nibbles(blk["qs"][s])
        o -= 8
        o *= _per_value(blk["d"][s])
    return out.reshape(raw.shape[0], -1)


def q4_1(raw: np.ndarray) -> np.ndarray:
    blk = _blocks(raw, Q4_1)
    out = np.empty(blk.size * QK, dtype=np.float32)
    nibbles = _Nibbles()
    for s, o in _chunks(blk.size, out):
        o[...] = nibbles(blk["qs"][s])
        o *= _per_value(blk["d"][s])
        o += _per_value(blk["m"][s])
    return out.reshape(raw.shape[0], -1)


# ggml type name -> raw bytes [rows, row_bytes] -> float32 [rows, values per row]
DEQUANTIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q8_0": q8_0,
    "Q4_0": q4_0,
    "Q4_1": q4_1,
}

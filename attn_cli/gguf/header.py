"""Read and validate a GGUF header by hand, before anything trusts it.

A GGUF file is untrusted input. Every count, length, dimension and offset is checked against
the file size while it is read, so a truncated or hostile file stops with one InputError
before any large allocation, long loop or traceback. The layout (GGUF v2/v3, little endian):

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32), then the tensor data

This parser is also the one the model runner uses: the gguf package's GGUFReader builds a
numpy memmap per string of the vocabulary (3.6 s on the 98 MB SmolLM2 file); this takes
about a tenth of a second. The gguf package is used only to dequantise the types that
reader.py does not do in plain numpy (Q5_0, Q5_1 and the K-quants).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.trace import printable

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME (tensor names, including the terminating zero in C)
MAX_DIM = 1 << 40  # no real tensor dimension is near this
MAX_STRING = 1 << 26  # 64 MiB: chat templates are kilobytes, tokens are bytes
MAX_ARRAY = 1 << 26  # items; the largest vocabularies and merge lists are < 1M
MAX_DEPTH = 2  # arrays of arrays are allowed by the format; deeper nesting is refused
# Each becomes a Python object, so these bound memory, not the file: 25 million empty nested
# arrays fit in 300 MB of file and took 4.3 GB. Real files have no nested arrays and fewer
# than a million strings per array (the largest vocabularies).
MAX_NESTED = 1 << 16  # inner arrays in the whole header
MAX_STRINGS = 1 << 22  # items of one string array

# GGUF metadata value types: id -> (name, struct format or None)
_SCALAR = {
    0: ("UINT8", "<B"),
    1: ("INT8", "<b"),
    2: ("UINT16", "<H"),
    3: ("INT16", "<h"),
    4: ("UINT32", "<I"),
    5: ("INT32", "<i"),
    6: ("FLOAT32", "<f"),
    7: ("BOOL", "<?"),
    10: ("UINT64", "<Q"),
    11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
STRING, ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# ggml tensor types: id -> (name, elements per block, bytes per block). Same numbers as
# gguf.constants.GGML_QUANT_SIZES (a test checks); kept here so reading a header (for
# `attn-cli models`) does not import the gguf package.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header. ``ne`` is GGUF order (fastest-varying first);
    ``shape`` is the numpy/torch order, e.g. [out, in] for a linear weight."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int  # absolute position of the first byte in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def row_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type_id]
        return self.ne[0] // block * size

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.ne[1:]:
            n *= d
        return n

    @property
    def n_elements(self) -> int:
        return self.n_rows * self.ne[0]


@dataclass
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int
    value_types: dict[str, str] = field(default_factory=dict)


def show(text: str, limit: int = 60) -> str:
    """Text from the file (a key, a tensor name) made safe and short for a one-line message."""

    cut = text[:limit]
    return repr(printable(cut) + ("…" if len(text) > limit else ""))


class _Bad(Exception):
    """Internal: a malformed header; turned into one InputError with the file name."""


class _Cursor:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.nested = 0  # inner arrays read so far

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"truncated while reading {what} at byte {self.pos}")

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", 8, what))

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        n = self.u64(what + " length")
        if n > limit:
            raise _Bad(f"{what} claims {n} bytes (limit {limit})")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0, strings: bool = True) -> Any:
    if vtype in _SCALAR:
        name, fmt = _SCALAR[vtype]
        v = cur.unpack(fmt, struct.calcsize(fmt), f"value of {key}")
        return bool(v) if vtype == 7 else v
    if vtype == STRING:
        return cur.string(f"value of {key}")
    if vtype == ARRAY:
        if depth >= MAX_DEPTH:
            raise _Bad(f"{key}: arrays nested deeper than {MAX_DEPTH}")
        itype = cur.u32(f"item type of {key}")
        count = cur.u64(f"length of {key}")
        if count > MAX_ARRAY:
            raise _Bad(f"{key}: array of {count} items (limit {MAX_ARRAY})")
        if itype in _NUMPY:
            width = struct.calcsize(_SCALAR[itype][1])
            cur.need(count * width, f"array {key}")
            arr = np.frombuffer(cur.buf, dtype=_NUMPY[itype], count=count, offset=cur.pos).copy()
            cur.pos += count * width
            return arr.astype(bool) if itype == 7 else arr
        if itype == STRING:
            if count > MAX_STRINGS:
                raise _Bad(f"{key}: array of {count} strings (limit {MAX_STRINGS})")
            # each string needs at least its 8-byte length: the count is bounded by the bytes left
            cur.need(count * 8, f"array {key}")
            buf, pos = cur.buf, cur.pos
            length = _U64.unpack_from
            raw = []
            try:
                for _ in range(count):
                    (n,) = length(buf, pos)
                    if n > MAX_STRING:
                        raise _Bad(f"a string of {n} bytes in array {key} (limit {MAX_STRING})")
                    if strings:
                        raw.append(buf[pos + 8 : pos + 8 + n])
                    pos += 8 + n
            except struct.error:
                raise _Bad(f"truncated inside array {key}") from None
            if pos > cur.size:
                raise _Bad(f"the last string of array {key} runs past the end of the file")
            cur.pos = pos
            if not strings:
                return SkippedStrings(count)
            return [r.decode("utf-8", errors="replace") for r in raw]
        if itype == ARRAY:
            cur.nested += count
            if cur.nested > MAX_NESTED:
                raise _Bad(f"{key}: more than {MAX_NESTED} nested arrays")
            cur.need(count * 12, f"array {key}")
            return [_value(cur, ARRAY, key, depth + 1, strings) for _ in range(count)]
        raise _Bad(f"{key}: unknown array item type {itype}")
    raise _Bad(f"{key}: unknown value type {vtype}")


_VTYPE_NAMES = {**{k: v[0] for k, v in _SCALAR.items()}, STRING: "STRING", ARRAY: "ARRAY"}


class SkippedStrings(int):
    """Stands for a string array that was checked but not decoded (its length)."""


def parse_header(buf: Any, size: int, path: Path, strings: bool = True) -> GGUFHeader:
    """Parse and validate everything before the tensor data. Raises InputError.
    ``strings=False`` checks string arrays (vocabularies) without decoding them: they become
    SkippedStrings(count), for listings that need only the scalars."""
    cur = _Cursor(buf, size)
    try:
        if size < 24:
            raise _Bad(f"only {size} bytes")
        magic = bytes(buf[0:4])
        if magic != MAGIC:
            raise _Bad(f"wrong magic {magic!r}, expected b'GGUF'")
        cur.pos = 4
        version = cur.u32("version")
        if version in (1,):
            raise _Bad("GGUF version 1 is too old; re-convert the model with a current llama.cpp")
        if version not in (2, 3):
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            if swapped in (2, 3):
                raise _Bad("big-endian GGUF is not supported")
            raise _Bad(f"unsupported GGUF version {version} (2 and 3 are supported)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # plausibility before any loop: each kv needs >= 13 bytes, each tensor info >= 32
        if n_kv * 13 > size or n_kv > 1 << 20:
            raise _Bad(f"{n_kv} metadata entries cannot fit in {size} bytes")
        if n_tensors * 32 > size or n_tensors > 1 << 20:
            raise _Bad(f"{n_tensors} tensors cannot fit in {size} bytes")
        meta: dict[str, Any] = {}
        vtypes: dict[str, str] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key", limit=1 << 16)
            if key in meta:
                raise _Bad(f"duplicate metadata key {key!r}")
            label = show(key)
            vtype = cur.u32(f"type of {label}")
            meta[key] = _value(cur, vtype, label, strings=strings)
            vtypes[key] = _VTYPE_NAMES.get(vtype, str(vtype))
        alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
            or alignment > 1 << 20
        ):
            raise _Bad(f"general.alignment {alignment!r} is not a power of two")
        raw_infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"name of tensor {i}", limit=1 << 10)
            label = show(name)
            if len(name.encode("utf-8", errors="replace")) >= MAX_NAME:
                raise _Bad(f"tensor name {label} is longer than {MAX_NAME - 1} bytes")
            if name in names:
                raise _Bad(f"duplicate tensor {label}")
            names.add(name)
            n_dims = cur.u32(f"dimension count of {label}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise _Bad(f"tensor {label} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = tuple(cur.u64(f"shape of {label}") for _ in range(n_dims))
            if any(d < 1 or d > MAX_DIM for d in ne):
                raise _Bad(f"tensor {label} has an absurd shape {list(ne)}")
            type_id = cur.u32(f"type of {label}")
            offset = cur.u64(f"offset of {label}")
            if type_id not in GGML_TYPES:
                raise _Bad(f"tensor {label} has unknown ggml type id {type_id}")
            tname, block, bsize = GGML_TYPES[type_id]
            if ne[0] % block:
                raise _Bad(
                    f"tensor {label}: row of {ne[0]} is not a multiple of the {tname} block {block}"
                )
            n = 1
            for d in ne:
                n *= d
            nbytes = n // block * bsize
            if offset % alignment:
                raise _Bad(f"tensor {label} offset {offset} is not aligned to {alignment}")
            raw_infos.append((name, ne, type_id, offset, nbytes))
        data_offset = cur.pos + (-cur.pos) % alignment
        if data_offset > size:
            raise _Bad("no room for tensor data")
        tensors: dict[str, TensorInfo] = {}
        for name, ne, type_id, offset, nbytes in raw_infos:
            start = data_offset + offset
            if start + nbytes > size:
                raise _Bad(
                    f"tensor {show(name)} needs bytes {start}..{start + nbytes} but the file has {size}"
                    " (truncated?)"
                )
            tensors[name] = TensorInfo(name, ne, type_id, start, nbytes)
    except _Bad as exc:
        raise InputError(f"{path.name} is not a valid GGUF file: {exc}") from None
    return GGUFHeader(path, version, size, meta, tensors, alignment, data_offset, vtypes)


class MappedFile:
    """The file memory-mapped read-only (a 4 GB model costs address space, not memory)."""

    def __init__(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise InputError(f"{path.name} is empty, not a GGUF file")
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.size = size
        self.path = path

    def uint8(self, offset: int, nbytes: int) -> np.ndarray:
        return np.frombuffer(self.mm, dtype=np.uint8, count=nbytes, offset=offset)


def read_header(path: str | os.PathLike[str], strings: bool = True) -> GGUFHeader:
    """Validate and parse the header only (for listings: no tensor data is touched)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} is not a file")
    mf = MappedFile(p)
    try:
        return parse_header(mf.mm, mf.size, p, strings)
    finally:
        with contextlib.suppress(BufferError):  # nothing keeps a view after parsing
            mf.mm.close()

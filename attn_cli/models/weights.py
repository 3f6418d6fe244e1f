"""Checkpoint tensors as a read-only mapping of float32 numpy arrays, read on access.

The safetensors files are memory-mapped and their headers parsed here (the format is an 8-byte
header length, a JSON header, then raw little-endian data), so every dtype a checkpoint uses is
readable, bfloat16 included (numpy has no bfloat16, and the safetensors numpy API refuses it).
A tensor is converted to float32 only when a layer asks for it, exactly:

  F32   as stored
  F16   widened (every float16 is a float32)
  BF16  a bit shift: bfloat16 is the top half of a float32, so (u16 << 16) viewed as float32

After a tensor is converted, its pages of the mapping are released (madvise DONTNEED), so the
process holds about one layer's float32 weights at a time, never the whole model.

A sharded checkpoint (model.safetensors.index.json + model-0000k-of-0000n.safetensors) is one
mapping over all its files.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attn_cli.errors import InputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# safetensors dtype -> numpy dtype as stored (little-endian); BF16 is read as raw uint16.
STORED: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOATS = ("F64", "F32", "F16", "BF16")
MAX_HEADER = 100_000_000  # bytes; the format's own limit


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: the 16 bits are a float32's top half."""
    return np.left_shift(u16, 16, dtype=np.uint32).view(np.float32)  # one pass, no temporary


CONVERT_CHUNK = 1 << 18  # elements converted (and summed) at a time: 1 MiB of float32
BLOCK_BYTES = 16 * 2**20  # the largest block of rows matmul_rows_t converts at a time


def read_float32(raw: np.ndarray, dtype: str, where: str, name: str) -> np.ndarray:
    """Stored elements (a flat view of the file) as a new float32 array, checked as `finite`
    checks: converted a cache-sized chunk at a time straight into the result, each chunk summed
    while it is still in the cache, so a tensor costs one pass over the file's bytes and one
    over the result (not a temporary, a copy and a separate pass for the check)."""
    out = np.empty(raw.shape, dtype=np.float32)
    flat_in, flat_out = raw.reshape(-1), out.reshape(-1)
    ok = True
    for start in range(0, flat_in.size, CONVERT_CHUNK):
        chunk = slice(start, start + CONVERT_CHUNK)
        ok = convert_into(flat_in[chunk], dtype, flat_out[chunk]) and ok
    return out if ok else finite(out, where, name)  # finite looks at the elements


FUSED_BYTES = 1 << 20  # float32 bytes of a block converted and multiplied while in the cache


def fused_rows(width: int) -> int:
    """Rows of a table (columns of a matrix) converted and multiplied at a time: FUSED_BYTES
    of float32, a multiple of 16 (a one-row product then sums each row exactly as unblocked
    OpenBLAS does)."""
    return max(16, FUSED_BYTES // (4 * width) // 16 * 16)


def convert_into(src: np.ndarray, dtype: str, out: np.ndarray) -> bool:
    """Stored elements `src` (any shape or strides: a block of the file's mapping) converted
    exactly into `out`, a float32 buffer of the same shape, in one pass without a temporary (a
    BF16 element is its uint16 bits shifted into a float32's top half); True when they are all
    finite (their sum is: `finite` says why that suffices)."""
    if dtype == "BF16":
        np.left_shift(src, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        out[...] = src
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(out, axis=None)))


def finite(a: np.ndarray, where: str, name: str) -> np.ndarray:
    """`a`, or an InputError when it holds NaN or ±inf (a run would give NaN maps). Checked as
    each tensor is read: its sum is not finite whenever an element is not, which costs one
    pass without a temporary; only then (or on float32 overflow) are the elements looked at."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(a, axis=None)
    if np.isfinite(total):
        return a
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        at = [int(i) for i in np.unravel_index(bad[0], a.shape)]
        raise InputError(f"{where}: tensor {name} holds {a.flat[bad[0]]} at {at}")
    return a


@dataclass(frozen=True)
class TensorInfo:
    file: int  # index into the shard list
    dtype: str  # safetensors dtype, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    stop: int


class _Shard:
    """One memory-mapped safetensors file and its parsed header."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("file is shorter than a safetensors header")
                n = int.from_bytes(head, "little")
                if n > min(MAX_HEADER, size - 8):
                    raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
                header = json.loads(f.read(n))
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path.name} is not a readable safetensors file ({str(exc)[:120]})"
            ) from None
        if not isinstance(header, dict):
            raise InputError(
                f"{path.name} is not a readable safetensors file (header is not an object)"
            )
        self.size = size
        self.base = 8 + n
        self.header = {k: v for k, v in header.items() if k != "__metadata__"}

    def tensors(self, file_index: int) -> dict[str, TensorInfo]:
        out = {}
        for key, meta in self.header.items():
            try:
                dtype = str(meta["dtype"])
                shape = tuple(int(s) for s in meta["shape"])
                start, stop = (int(o) for o in meta["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"{self.path.name} is not a readable safetensors file (malformed header entry {key!r})"
                ) from None
            if dtype not in STORED:
                raise InputError(
                    f"{self.path.name}: {key!r} has dtype {dtype}, which is not supported"
                )
            count = int(np.prod(shape, dtype=np.int64))
            if not 0 <= start <= stop or stop - start != count * STORED[dtype].itemsize:
                raise InputError(
                    f"{self.path.name} is not a readable safetensors file ({key!r} has inconsistent data offsets)"
                )
            if self.base + stop > self.size:
                raise InputError(
                    f"{self.path.name} is not a readable safetensors file ({key!r} lies beyond the end of the file: truncated?)"
                )
            out[key] = TensorInfo(file_index, dtype, shape, self.base + start, self.base + stop)
        return out

    def view(self, t: TensorInfo, offset: int = 0, count: int | None = None) -> np.ndarray:
        """The stored elements [offset, offset + count) as a flat read-only view of the mapping."""
        dtype = STORED[t.dtype]
        total = (t.stop - t.start) // dtype.itemsize
        count = total - offset if count is None else count
        if self.map is None or count == 0:
            return np.zeros(0, dtype=dtype)
        return np.frombuffer(
            self.map, dtype=dtype, count=count, offset=t.start + offset * dtype.itemsize
        )

    def _advise(self, advice: str, start: int, stop: int) -> None:
        option = getattr(mmap, advice, None)
        if self.map is None or option is None or not hasattr(self.map, "madvise"):
            return
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(self.size, stop + (-stop) % page)
        if hi > lo:
            with contextlib.suppress(OSError, ValueError):
                self.map.madvise(option, lo, hi - lo)

    def prefetch(self, start: int, stop: int) -> None:
        """Ask the kernel to read [start, stop) ahead: fewer page faults while converting."""
        self._advise("MADV_WILLNEED", start, stop)

    def release(self, start: int, stop: int) -> None:
        """Drop the mapping's pages in [start, stop) from this process (they stay in the file)."""
        self._advise("MADV_DONTNEED", start, stop)


def shard_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: a directory, its index, or one file."""
    if path.is_dir():
        if (path / SINGLE).is_file():
            return [path / SINGLE]
        if (path / INDEX).is_file():
            return shard_files(path / INDEX)
        raise InputError(f"{path} has no {SINGLE} (nor a sharded {INDEX})")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            files = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise InputError(
                f"{path.name} is not a valid safetensors index (no weight_map)"
            ) from None
        out = []
        for name in files:
            f = path.parent / str(name)
            if Path(name).name != name or not f.is_file():
                raise InputError(f"{path.name} lists {name!r}, which is not in {path.parent}")
            out.append(f)
        if not out:
            raise InputError(f"{path.name} lists no weight files")
        return out
    return [path]


class SafetensorsWeights(Mapping[str, np.ndarray]):
    """A checkpoint (one safetensors file, a sharded index, or a directory with either) as a
    mapping of float32 arrays, with any wrapper prefix ('bert.', 'transformer.', 'model.')
    removed from the names that carry it; other names ('lm_head.weight') stay. `rename` maps the
    remaining names (a family's checkpoint quirks)."""

    def __init__(self, path: Path, anchor: str, rename: Callable[[str], str] | None = None) -> None:
        path = Path(path)
        self.path = path
        files = shard_files(path)
        # what messages name: the one weights file, or the index of a sharded checkpoint
        self.label = files[0].name if len(files) == 1 else (path.name if path.is_file() else INDEX)
        self._shards = [_Shard(f) for f in files]
        tensors: dict[str, TensorInfo] = {}
        for i, shard in enumerate(self._shards):
            tensors.update(shard.tensors(i))
        prefix = next((k[: -len(anchor)] for k in tensors if k.endswith(anchor)), None)
        if prefix is None:
            raise InputError(
                f"{self.label}: no tensor named {anchor!r}: not a checkpoint of this architecture"
            )
        self._tensors: dict[str, TensorInfo] = {}
        for key, info in tensors.items():
            name = key[len(prefix) :] if key.startswith(prefix) else key
            self._tensors[rename(name) if rename else name] = info

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise InputError(f"{self.label}: missing tensor {name!r}") from None

    def dtype(self, name: str) -> str:
        """The stored dtype ('BF16', 'F16', 'F32' …)."""
        return self.info(name).dtype

    def __getitem__(self, name: str) -> np.ndarray:
        t = self.info(name)
        if t.dtype not in FLOATS:
            raise InputError(f"{self.label}: {name!r} is {t.dtype}, not a floating-point tensor")
        shard = self._shards[t.file]
        shard.prefetch(t.start, t.stop)
        out = read_float32(shard.view(t), t.dtype, self.label, name).reshape(t.shape)
        shard.release(t.start, t.stop)
        return out

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        """Rows `ids` of a 2-D table (embeddings), reading only those rows; of a stacked tensor
        (experts [E, …]), entries `ids` of its first axis."""
        t = self.info(name)
        if len(t.shape) < 2 or t.dtype not in FLOATS:
            raise InputError(f"{self.label}: {name!r} is not a 2-D floating-point table")
        rows, width = t.shape[0], int(np.prod(t.shape[1:], dtype=np.int64))
        shard = self._shards[t.file]
        size = STORED[t.dtype].itemsize
        for i in ids:
            if not 0 <= i < rows:
                raise InputError(f"token id {i} is outside {name!r} ({rows} rows)")
        if len(ids) == 1:  # one expert of a stacked tensor: converted straight into the result
            (i,) = ids
            shard.prefetch(t.start + i * width * size, t.start + (i + 1) * width * size)
            out = read_float32(shard.view(t, i * width, width), t.dtype, self.label, name)
        else:
            out = np.empty((len(ids), width), dtype=np.float32)
            for r, i in enumerate(ids):
                out[r] = read_float32(shard.view(t, i * width, width), t.dtype, self.label, name)
        for i in ids:
            shard.release(t.start + i * width * size, t.start + (i + 1) * width * size)
        return out.reshape(len(ids), *t.shape[1:])

    def entry_product(self, name: str, index: int, x: np.ndarray) -> np.ndarray:
        """x @ E for entry `index` of a stacked tensor of matrices (one expert's [k, m] of
        [E, k, m]) without E in float32: a few of E's columns at a time (`fused_rows`) are
        converted into one small buffer and multiplied while it is still in the cache. Each
        output column is a dot product over all of k, but OpenBLAS may block narrower products
        differently: equal to x @ E within float32 rounding (not always bit for bit). Non-finite
        elements are refused as `read_float32` refuses them."""
        t = self.info(name)
        if t.dtype not in FLOATS or len(t.shape) != 3 or not 0 <= index < t.shape[0]:
            raise InputError(f"{self.label}: {name!r} has no floating-point matrix {index}")
        k, m = t.shape[1:]
        shard, size = self._shards[t.file], STORED[t.dtype].itemsize
        lo, hi = t.start + index * k * m * size, t.start + (index + 1) * k * m * size
        shard.prefetch(lo, hi)
        raw = shard.view(t, index * k * m, k * m).reshape(k, m)
        step = fused_rows(k)
        buf = np.empty((k, step), dtype=np.float32)
        out = np.empty((x.shape[0], m), dtype=np.float32)
        for start in range(0, m, step):
            part = buf[:, : min(step, m - start)]
            if not convert_into(raw[:, start : start + step], t.dtype, part):
                read_float32(raw, t.dtype, self.label, f"{name}[{index}]")  # NaN/inf: raises
            out[:, start : start + part.shape[1]] = x @ part  # [n, k] @ [k, b]
        shard.release(lo, hi)
        return out

    def stored(self, name: str, index: int) -> np.ndarray:
        """Entry `index` of a tensor's first axis as stored, any dtype, unconverted: a copy of
        its bytes (the hub's MXFP4 expert blocks and scales are uint8)."""
        t = self.info(name)
        if not t.shape or not 0 <= index < t.shape[0]:
            raise InputError(f"{self.label}: {name!r} has no entry {index}")
        width = int(np.prod(t.shape[1:], dtype=np.int64))
        shard = self._shards[t.file]
        out = np.array(shard.view(t, index * width, width)).reshape(t.shape[1:])
        size = STORED[t.dtype].itemsize
        shard.release(t.start + index * width * size, t.start + (index + 1) * width * size)
        return out

    def row_blocks(self, name: str, block: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """A 2-D table in blocks of rows, each converted to float32 and released in turn:
        (first row, block). For the LM head: logits without the whole table in float32."""
        t = self.info(name)
        rows, width = t.shape
        shard = self._shards[t.file]
        size = STORED[t.dtype].itemsize
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            shard.prefetch(t.start + start * width * size, t.start + stop * width * size)
            raw = shard.view(t, start * width, (stop - start) * width)
            yield start, read_float32(raw, t.dtype, self.label, name).reshape(stop - start, width)
            shard.release(t.start + start * width * size, t.start + stop * width * size)

    def product_t(self, name: str, h: np.ndarray, block: int = 4096) -> np.ndarray:
        """h @ Tᵀ for a 2-D table T (the LM head) without T in float32: a few of T's rows at a
        time (`fused_rows`) are converted into one small buffer and multiplied while it is
        still in the cache, so the file's bytes are read once and no float32 copy is written to
        memory and read back; the mapping is released `block` rows at a time. Non-finite
        elements are refused as `read_float32` refuses them."""
        t = self.info(name)
        if t.dtype not in FLOATS or len(t.shape) != 2:
            raise InputError(f"{self.label}: {name!r} is not a 2-D floating-point table")
        rows, width = t.shape
        shard, size = self._shards[t.file], STORED[t.dtype].itemsize
        step = fused_rows(width)
        block = max(step, block - block % step)
        buf = np.empty((step, width), dtype=np.float32)
        out = np.empty((h.shape[0], rows), dtype=np.float32)
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            lo, hi = t.start + start * width * size, t.start + stop * width * size
            shard.prefetch(lo, hi)
            raw = shard.view(t, start * width, (stop - start) * width).reshape(-1, width)
            for i in range(0, stop - start, step):
                part = buf[: min(step, stop - start - i)]
                if not convert_into(raw[i : i + step], t.dtype, part):
                    read_float32(raw, t.dtype, self.label, name)  # raises on NaN/inf
                out[:, start + i : start + i + len(part)] = h @ part.T  # [n, d] @ [d, b]
            shard.release(lo, hi)
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def parameters(self) -> int:
        """How many floating-point weights the checkpoint stores."""
        return sum(
            int(np.prod(t.shape, dtype=np.int64))
            for t in self._tensors.values()
            if t.dtype in FLOATS
        )

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def matmul_rows_t(w: object, name: str, h: np.ndarray, block: int = 4096) -> np.ndarray:
    """h · Tᵀ for a 2-D table T = w[name] (vocab, d): the LM head. Reads T in row blocks when the
    source can (`row_blocks`), so the whole table is never in float32 at once."""
    product = getattr(w, "product_t", None)
    if product is not None:
        return product(name, h, block)
    blocks = getattr(w, "row_blocks", None)
    if blocks is None:
        return h @ w[name].T  # type: ignore[index]
    rows, width = w.shape(name)  # type: ignore[attr-defined]
    # blocks of at most 16 MiB of float32: malloc reuses them instead of page-faulting a new
    # mapping for each (a 201k × 2880 head in blocks of 4096 rows would be 47 MiB each)
    block = max(256, min(block, BLOCK_BYTES // (4 * width)))
    out = np.empty((h.shape[0], rows), dtype=np.float32)
    for start, t in blocks(name, block):
        out[:, start : start + t.shape[0]] = h @ t.T  # [n, d] @ [d, b] -> [n, b]
    return out


def header_summary(directory: Path) -> tuple[int, str] | None:
    """(number of floating-point weights, their stored dtypes, e.g. 'BF16') of a checkpoint
    directory, read from its safetensors headers only; None when it has no readable weights."""
    try:
        files = shard_files(directory)
    except InputError:
        return None
    count, dtypes = 0, set()
    for f in files:
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n > MAX_HEADER:
                    return None
                header = json.loads(fh.read(n))
            for key, meta in header.items():
                if key == "__metadata__" or str(meta["dtype"]) not in FLOATS:
                    continue  # integer buffers (position_ids …) are not parameters
                count += int(np.prod(meta["shape"], dtype=np.int64))
                dtypes.add(str(meta["dtype"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return count, "/".join(sorted(dtypes))


def expect_layers(w: object, layers: int, label: str) -> None:
    """Refuse a layer (or expert) count that the checkpoint cannot hold, each having tensors
    of its own, before anything is built per layer: 'config.json: num_hidden_layers 10¹²'
    would otherwise fill memory with per-layer lists before a missing tensor is noticed."""
    if isinstance(w, Sized) and layers > len(w):
        where = getattr(w, "label", None) or getattr(getattr(w, "path", None), "name", "checkpoint")
        raise InputError(f"{label} is more than {where} holds ({len(w)} tensors)")


def expect_shape(w, name: str, shape: tuple[int, ...]) -> None:
    """Shapes are checked against config.json while loading (picoGPT style)."""
    got = w.shape(name)
    if got != shape:
        where = getattr(w, "label", None) or getattr(getattr(w, "path", None), "name", "checkpoint")
        raise InputError(f"{where}: {name} has shape {got}, config.json implies {shape}")

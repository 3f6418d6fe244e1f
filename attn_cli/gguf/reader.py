"""Open a GGUF file: HF config, lazily dequantised HF-named weights, the file's tokenizer."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli.errors import InputError
from attn_cli.gguf.header import GGUFHeader, MappedFile, TensorInfo, parse_header
from attn_cli.gguf.locate import resolve_gguf
from attn_cli.gguf.to_hf import Recipe, build, recipe_shape, unpermute_index
from attn_cli.gguf.tokenizer import build_tokenizer
from attn_cli.models.weights import finite

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Types dequantised (numpy, gguf.quants); anything else is refused by name.
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "F64",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)


def _scales(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 scale at byte ``start`` of every block, as float32 [n_blocks, 1]."""
    return blocks[:, start : start + 2].copy().view("<f2").astype(np.float32)


def _q8_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 34)  # f16 d, 32 x int8: y = d * q
    out = b[:, 2:].view(np.int8).astype(np.float32)
    out *= _scales(b, 0)
    return out.reshape(raw.shape[0], -1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block -> 32 float32 values: low nibbles are elements 0..15, high 16..31."""
    out: np.ndarray = np.empty((qs.shape[0], 32), dtype=np.float32)
    np.bitwise_and(qs, 15, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")
    return out


def _q4_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 18)  # f16 d, 16 bytes of nibbles: y = d * (q - 8)
    out = _nibbles(b[:, 2:])
    out -= 8
    out *= _scales(b, 0)
    return out.reshape(raw.shape[0], -1)


def _q4_1(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 20)  # f16 d, f16 m, 16 bytes of nibbles: y = d * q + m
    out = _nibbles(b[:, 4:])
    out *= _scales(b, 0)
    out += _scales(b, 2)
    return out.reshape(raw.shape[0], -1)


# Plain numpy for the common small-model types (2-3x faster than gguf.quants, no gguf
# package needed); bit-identical to ggml's C code (tests/test_gguf_dequant.py).
_FAST = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1}


def dequantize_rows(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Rows of raw bytes [n, row_bytes] of tensor ``info`` -> float32 [n, ne0]."""
    t = info.type_name
    if t == "F32":
        return raw.view("<f4")
    if t == "F16":
        return raw.view("<f2").astype(np.float32)
    if t == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if t == "F64":
        return raw.view("<f8").astype(np.float32)
    if t not in SUPPORTED_TYPES:
        raise InputError(f"{info.name} is stored as {t}, which attn-cli cannot dequantise")
    if t in _FAST:
        return _FAST[t](np.ascontiguousarray(raw))
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise InputError(
            f"{info.name} is stored as {t}; dequantising it needs the gguf package: "
            "pip install gguf"
        ) from None
    out = dequantize(np.ascontiguousarray(raw), GGMLQuantizationType(info.type_id))
    return np.asarray(out, dtype=np.float32).reshape(raw.shape[0], info.ne[0])


class GGUFWeights(Mapping[str, np.ndarray]):
    """Read-only mapping from full HuggingFace tensor names to float32 arrays in torch layout
    ([out, in]), dequantised on access, one tensor at a time; nothing is cached."""

    def __init__(self, mf: MappedFile, header: GGUFHeader, plan: dict[str, Recipe]) -> None:
        self._mf = mf
        self._header = header
        self._plan = plan
        self.path = header.path

    def release_mapping(self) -> None:
        """Drop the file's pages from this process's memory (they stay in the page cache):
        for a caller that keeps what it dequantised (generation reads every weight per token)."""
        if hasattr(self._mf.mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mf.mm.madvise(mmap.MADV_DONTNEED)

    # -- raw access -------------------------------------------------------------------------
    def _raw_rows(self, info: TensorInfo) -> np.ndarray:
        """All rows of a tensor as a [n_rows, row_bytes] uint8 view of the mapped file."""
        return self._mf.uint8(info.offset, info.nbytes).reshape(info.n_rows, info.row_bytes)

    def _gguf_rows(self, gname: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of a tensor, dequantised; NaN or ±inf in them is an InputError naming it."""
        info = self._header.tensors[gname]
        raw = self._raw_rows(info)
        if rows is not None:
            raw = raw[rows]
        return finite(dequantize_rows(raw, info), self.path.name, gname)

    def gguf_tensor(self, gname: str) -> np.ndarray:
        """A tensor by its GGUF name, dequantised, in numpy order (GGUF ne reversed), without
        any of the HF fix-ups."""
        if gname not in self._header.tensors:
            raise InputError(f"{self.path.name}: no tensor {gname!r}")
        info = self._header.tensors[gname]
        return self._gguf_rows(gname).reshape(info.shape)

    # -- HF view ------------------------------------------------------------------------------
    def _recipe(self, name: str) -> Recipe:
        try:
            return self._plan[name]
        except KeyError:
            raise InputError(f"{self.path.name}: missing tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The HF shape, from the header only."""
        return recipe_shape(self._recipe(name), self._header.tensors)

    def _finish(self, a: np.ndarray, r: Recipe) -> np.ndarray:
        if r.shift:
            a = a - np.float32(r.shift)
        return a

    def __getitem__(self, name: str) -> np.ndarray:
        r = self._recipe(name)
        infos = [self._header.tensors[s] for s in r.sources]
        if len(r.sources) == 1 and len(infos[0].ne) > 1:
            # a matrix: select (and reorder) rows before dequantising
            sel: Any = slice(*r.rows) if r.rows is not None else None
            if r.unpermute is not None:
                n = (r.rows[1] - r.rows[0]) if r.rows else infos[0].n_rows
                sel = unpermute_index(n, r.unpermute) + (r.rows[0] if r.rows else 0)
            a = self._gguf_rows(r.sources[0], sel)
            return self._finish(a.reshape(-1, *infos[0].shape[1:]), r)
        parts = [self._gguf_rows(s).reshape(i.shape) for s, i in zip(r.sources, infos, strict=True)]
        a = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if r.rows is not None:
            a = a[r.rows[0] : r.rows[1]]
        if r.unpermute is not None:
            a = a[unpermute_index(a.shape[0], r.unpermute)]
        return self._finish(a, r)

    def rows(self, name: str, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Only these rows of a 2-D tensor (an embedding table), dequantising only their bytes.
        Ids out of range are an InputError."""
        r = self._recipe(name)
        idx = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        n = self.shape(name)[0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"{name}: row ids must be in 0..{n - 1}")
        if len(r.sources) != 1:
            return self[name][idx]
        src = idx
        if r.unpermute is not None:
            src = unpermute_index(n, r.unpermute)[idx]
        if r.rows is not None:
            src = src + r.rows[0]
        return self._finish(self._gguf_rows(r.sources[0], src), r)

    def row_blocks(self, name: str, block: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows[start:start+block]) over a 2-D tensor, e.g. a 262k-row unembedding
        multiplied block by block without holding it all in float32."""
        n = self.shape(name)[0]
        for start in range(0, n, block):
            yield start, self.rows(name, np.arange(start, min(n, start + block)))

    def with_names(self, rename: Callable[[str], str]) -> GGUFWeights:
        """The same tensors under other names, e.g. ``with_names(lambda n:
        n.removeprefix("model."))`` for the prefix-free names SafetensorsWeights uses."""
        return GGUFWeights(self._mf, self._header, {rename(k): r for k, r in self._plan.items()})

    def dtype(self, name: str) -> str:
        """The stored ggml type of the tensor's (first) source, e.g. 'Q4_1', 'F32'."""
        return self._header.tensors[self._recipe(name).sources[0]].type_name

    def parameters(self) -> int:
        """How many weights the HF model has (tied tables counted once)."""
        total = 0
        for name in self._plan:
            n = 1
            for d in self.shape(name):
                n *= d
            total += n
        return total

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan)

    def __len__(self) -> int:
        return len(self._plan)

    def __contains__(self, name: object) -> bool:
        return name in self._plan


class GGUFCheckpoint:
    """A GGUF model: ``config`` (HF-style dict with a ``gguf`` sub-dict), ``weights``
    (HF-named, lazily dequantised), ``tokenizer`` (HF tokenizers, built on first use)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path = path
        self.name = name or str(path)
        self._mf = MappedFile(path)
        self.header = parse_header(self._mf.mm, self._mf.size, path)
        self.config, plan = build(self.header, self._small)
        needed = {s for r in plan.values() for s in r.sources}
        bad = sorted({self.header.tensors[s].type_name for s in needed} - set(SUPPORTED_TYPES))
        if bad:
            example = next(s for s in sorted(needed) if self.header.tensors[s].type_name == bad[0])
            raise InputError(
                f"{path.name} stores tensors as {', '.join(bad)} (e.g. {example}), which "
                f"attn-cli cannot dequantise; supported: {', '.join(SUPPORTED_TYPES)}"
            )
        self.weights = GGUFWeights(self._mf, self.header, plan)

    def _small(self, gname: str) -> np.ndarray:
        info = self.header.tensors[gname]
        if info.type_name not in ("F32", "F16", "BF16") or info.n_elements > 1 << 20:
            raise InputError(f"{self.path.name}: unexpected {info.type_name} tensor {gname}")
        raw = self._mf.uint8(info.offset, info.nbytes).reshape(info.n_rows, info.row_bytes)
        return np.array(dequantize_rows(raw, info), dtype=np.float32).reshape(-1)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.header.metadata

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return build_tokenizer(self.header.metadata, self.path.name, self.path)

    # the same read-only properties as attn_cli.models.checkpoint.Checkpoint
    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def hidden(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def max_positions(self) -> int:
        return int(self.config["max_position_embeddings"])


def open_model(name: str) -> GGUFCheckpoint:
    """--model NAME for a GGUF model: 'smollm2', 'ollama:NAME[:TAG]' or a path (see
    attn_cli.gguf.locate.is_gguf_spec), resolved and opened."""

    return open_gguf(resolve_gguf(name), name=name)


def open_gguf(path: str | os.PathLike[str], name: str | None = None) -> GGUFCheckpoint:
    """Validate the header, map names and config; nothing is dequantised yet."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{p} is not a file")
    return GGUFCheckpoint(p, name)


def read_tensor(path: str | os.PathLike[str], gguf_name: str) -> np.ndarray:
    """One tensor of any GGUF file by its GGUF name, dequantised to float32 in numpy order
    (GGUF ``ne`` reversed), without HF fix-ups. For inspection and tests."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{p} is not a file")
    mf = MappedFile(p)
    header = parse_header(mf.mm, mf.size, p)
    info = header.tensors.get(gguf_name)
    if info is None:
        raise InputError(f"{p.name}: no tensor {gguf_name!r}")
    raw = mf.uint8(info.offset, info.nbytes).reshape(info.n_rows, info.row_bytes)
    return np.array(dequantize_rows(raw, info), dtype=np.float32).reshape(info.shape)

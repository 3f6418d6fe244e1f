"""Open a GGUF file: HF config, lazily dequantised HF-named weights, the file's tokenizer."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attn_cli.blas import by_rows
from attn_cli.errors import InputError
from attn_cli.gguf.header import GGUFHeader, MappedFile, TensorInfo, parse_header
from attn_cli.gguf.locate import resolve_gguf
from attn_cli.gguf.quants import DEQUANTIZE
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
    "MXFP4",
)


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
    if t in DEQUANTIZE:  # plain numpy for the common types (no gguf package needed)
        # in row pieces on a model run's free cores: each block's values are its own
        out = np.empty((raw.shape[0], info.ne[0]), dtype=np.float32)
        return by_rows(DEQUANTIZE[t], raw, out)
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

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's metadata, as its header was read (no second parse of the file)."""
        return self._header.metadata

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

    def _expert_rows(self, r: Recipe) -> int:
        """The first row of expert r.expert in its stacked tensor's [rows, row_bytes] view."""
        info = self._header.tensors[r.sources[0]]
        return 0 if r.expert is None else r.expert * (info.n_rows // info.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        r = self._recipe(name)
        infos = [self._header.tensors[s] for s in r.sources]
        if r.expert is not None:  # one expert: only its rows are dequantised
            start, shape = self._expert_rows(r), infos[0].shape[1:]
            return self._gguf_rows(r.sources[0], slice(start, start + shape[0])).reshape(shape)
        if r.per_head is not None:  # per-head blocks, some stored transposed, joined by head
            blocks = [
                self._gguf_rows(s).reshape(i.shape) for s, i in zip(r.sources, infos, strict=True)
            ]
            blocks = [
                b.transpose(0, 2, 1) if t else b for b, t in zip(blocks, r.per_head, strict=True)
            ]
            joined = np.concatenate(blocks, axis=1)  # [heads, Σ rows, in]
            return self._finish(joined.reshape(-1, joined.shape[-1]), r)
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
        """Only these rows of a 2-D tensor (an embedding table), or entries of the first axis of
        a stacked one (experts [E, …]), dequantising only their bytes. Ids out of range are an
        InputError."""
        r = self._recipe(name)
        idx = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        shape = self.shape(name)
        n = shape[0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"{name}: row ids must be in 0..{n - 1}")
        if len(r.sources) != 1 or r.per_head is not None:
            return self[name][idx]
        if len(shape) > 2:  # each entry is a block of ggml rows: read those blocks only
            info = self._header.tensors[r.sources[0]]
            raw = self._raw_rows(info)
            raw = raw.reshape(n, -1, info.row_bytes)[idx].reshape(-1, info.row_bytes)
            out = finite(dequantize_rows(raw, info), self.path.name, r.sources[0])
            return self._finish(out.reshape(len(idx), *shape[1:]), r)
        src = idx
        if r.unpermute is not None:
            src = unpermute_index(n, r.unpermute)[idx]
        if r.rows is not None:
            src = src + r.rows[0]
        return self._finish(self._gguf_rows(r.sources[0], src + self._expert_rows(r)), r)

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

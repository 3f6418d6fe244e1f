"""Token ids -> vectors: the bundled MiniLM table, seeded random vectors, or a user's file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attn_cli.errors import InputError, opt
from attn_cli.tokenizer import DATA_DIR

BUNDLED = "minilm"
BUNDLED_Q = DATA_DIR / "minilm_word_embeddings.i8.npy"
BUNDLED_SCALE = DATA_DIR / "minilm_word_embeddings.scale.npy"
MAX_DIM = 65536
DEFAULT_RANDOM_DIM = 8


@dataclass
class Embedding:
    X: np.ndarray  # (n, d) float64, one row per token
    config: dict  # what shaped these numbers, for the trace's config
    notes: list[str] = field(default_factory=list)


def embed(
    tokens: list[str],
    ids: list[int],
    source: str = BUNDLED,
    dim: int | None = None,
    seed: int = 0,
) -> Embedding:
    if dim is not None and source != "random":
        raise InputError(
            f"{opt('dim')} applies only to {opt('embeddings', 'random')} (other tables have "
            "their own size)"
        )
    if source == BUNDLED:
        return Embedding(
            bundled_embeddings(ids), {"embeddings": "minilm-l6 (bundled, int8)", "dim": 384}
        )
    if source == "random":
        d = DEFAULT_RANDOM_DIM if dim is None else dim
        return Embedding(
            random_embeddings(ids, d, seed),
            {
                "embeddings": "random",
                "dim": d,
                "seed": seed,
                "distribution": "uniform(-sqrt(3/d), sqrt(3/d)) per token id",
            },
        )
    return file_embeddings(tokens, ids, Path(source).expanduser())


def bundled_embeddings(ids: list[int]) -> np.ndarray:
    """Rows of the bundled int8 table, dequantised: x = q · scale (memory-mapped, so only the
    rows asked for are read)."""
    q = np.load(BUNDLED_Q, mmap_mode="r")
    scale = np.load(BUNDLED_SCALE, mmap_mode="r")
    idx = np.asarray(ids)
    if idx.size and idx.max() >= q.shape[0]:
        raise InputError(
            f"token id {int(idx.max())} is outside the bundled table ({q.shape[0]} rows): "
            f"use {opt('embeddings', 'random')} or a table that fits your {opt('tokenizer')}"
        )
    return q[idx].astype(np.float64) * scale[idx].astype(np.float64)[:, None]


def seeded_uniform(seed: int, stream: int, key: int, count: int) -> np.ndarray:
    """`count` numbers in [0, 1), identical on every machine and numpy version.

    PCG64 seeded through SeedSequence([seed, stream, key]) has a fixed bit stream; turning the
    top 53 bits of each 64-bit draw into a float is exact, so no platform rounding enters.
    """
    from numpy.random import PCG64, SeedSequence

    bits = PCG64(SeedSequence([seed, stream, key])).random_raw(count)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_embeddings(ids: list[int], dim: int, seed: int) -> np.ndarray:
    """Each token id gets its own vector, uniform in ±√(3/d) (so E‖x‖² = 1); a repeated token
    gets the same vector every time it occurs."""
    if not 1 <= dim <= MAX_DIM:
        raise InputError(f"{opt('dim')} must be between 1 and {MAX_DIM}, got {dim}")
    if seed < 0:
        raise InputError(f"{opt('seed')} must be 0 or more, got {seed}")
    bound = np.sqrt(3.0 / dim)
    unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    table = np.empty((len(unique), dim))
    for row, token_id in enumerate(unique):
        table[row] = (2.0 * seeded_uniform(seed, 0, int(token_id), dim) - 1.0) * bound
    return table[inverse.reshape(-1)]


def sha256_file(path: Path) -> str:
    import hashlib  # only for user files: keeps it off the start-up path

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_embeddings(tokens: list[str], ids: list[int], path: Path) -> Embedding:
    if not path.is_file():
        raise InputError(
            f"{opt('embeddings')}: {path} does not exist (use 'minilm', 'random', or a "
            ".npy/.npz/.txt file)"
        )
    config: dict[str, str | int] = {
        "embeddings": str(path),
        "embeddings_sha256": sha256_file(path),
    }
    notes: list[str] = []
    if path.suffix in (".npy", ".npz"):
        X = _rows_from_table(_load_array(path), ids, path)
    else:
        X, notes = _vectors_from_text(tokens, path)
    if not np.all(np.isfinite(X)):
        bad = int(np.argwhere(~np.isfinite(X))[0][0])
        raise InputError(
            f"{path.name}: the vector for token {tokens[bad]!r} (id {ids[bad]}) contains NaN or inf"
        )
    config["dim"] = int(X.shape[1])
    return Embedding(X, config, notes)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling anything (allow_pickle=False)."""
    return _read_numpy(path, lambda: _npz_arrays(path))


# What an .npz may hold once decompressed: it is read whole, and a few KB of deflate can
# claim gigabytes. Larger tables belong in a .npy, which is read memory-mapped.
MAX_NPZ_BYTES = 2 << 30


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    _check_npz_sizes(path)
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _check_npz_sizes(path: Path) -> None:
    """Refuse an archive by its headers, before anything is decompressed: the zip directory's
    sizes, then each member's .npy header (dtype and shape), which must account for exactly
    the member's size (numpy allocates what the header says before reading)."""
    import zipfile

    fmt = np.lib.format
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        if total > MAX_NPZ_BYTES:
            raise InputError(
                f"{path.name} would decompress to {total / 2**30:,.1f} GiB (an .npz is read "
                f"whole; limit {MAX_NPZ_BYTES / 2**30:.0f} GiB): save a large table as .npy"
            )
        for member in members:
            if not member.filename.endswith(".npy"):
                continue  # np.load reads these as raw bytes, bounded by the total above
            with archive.open(member) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
                claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if not dtype.hasobject and f.tell() + claimed != member.file_size:
                    raise InputError(
                        f"{path.name}: {member.filename} claims {claimed:,} bytes of data "
                        f"({dtype}, shape {shape}) but holds {member.file_size - f.tell():,}"
                    )


def _read_numpy(path: Path, read):
    """Run a numpy read, turning its failures into one-line errors."""
    try:
        return read()
    except ValueError as exc:
        if any(w in str(exc).lower() for w in ("pickle", "python objects", "object arrays")):
            raise InputError(
                f"{path.name} holds Python objects (pickle), which are never loaded"
            ) from None
        raise InputError(f"{path.name} is not a readable numpy file ({exc})") from None
    except Exception as exc:
        raise InputError(
            f"{path.name} is not a readable numpy file ({type(exc).__name__}: {exc})"
        ) from None


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return _read_numpy(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
    arrays = load_npz(path)
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if "embeddings" in arrays:
        return arrays["embeddings"]
    raise InputError(
        f"{path.name} holds {len(arrays)} arrays ({', '.join(list(arrays)[:5])}): "
        "name the table 'embeddings' or save only one array"
    )


def _rows_from_table(table: np.ndarray, ids: list[int], path: Path) -> np.ndarray:
    if table.ndim != 2:
        raise InputError(
            f"{path.name} has shape {table.shape}: an embedding table must be 2-D (vocab × dim)"
        )
    if table.dtype.kind not in "fiu":
        raise InputError(f"{path.name} has dtype {table.dtype}: embeddings must be real numbers")
    if table.shape[1] == 0:
        raise InputError(f"{path.name} has 0 columns: vectors need at least one dimension")
    top = max(ids)
    if top >= table.shape[0]:
        raise InputError(
            f"{path.name} has {table.shape[0]} rows but token id {top} needs row {top} "
            "(row i must be the vector of token id i)"
        )
    return np.asarray(table[np.asarray(ids)], dtype=np.float64)


def _vectors_from_text(tokens: list[str], path: Path) -> tuple[np.ndarray, list[str]]:
    """word2vec / GloVe text: one 'word v1 v2 …' per line (word2vec's 'count dim' header is
    skipped). A token is looked up as written, then lower-cased, then without a WordPiece '##';
    tokens still missing get a zero vector, and a note says which."""

    def candidates(t: str) -> list[str]:
        c = [t, t.lower()]
        if t.startswith("##"):
            c.append(t[2:])
        return c

    wanted = {c for t in tokens for c in candidates(t)}
    found: dict[str, np.ndarray] = {}
    dim = None
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header: "vocab_size dim"
                if len(parts) < 2:
                    if line.strip():
                        raise InputError(f"{path.name} line {lineno}: expected 'word v1 v2 …'")
                    continue
                if dim is None:
                    dim = len(parts) - 1
                elif len(parts) - 1 != dim:
                    raise InputError(
                        f"{path.name} line {lineno}: {len(parts) - 1} numbers, earlier lines have {dim}"
                    )
                if parts[0] in wanted and parts[0] not in found:
                    try:
                        found[parts[0]] = np.array(parts[1:], dtype=np.float64)
                    except ValueError:
                        raise InputError(
                            f"{path.name} line {lineno}: not a list of numbers"
                        ) from None
                    if len(found) == len(wanted):
                        break
    except UnicodeDecodeError:
        raise InputError(
            f"{path.name} is neither .npy/.npz nor a UTF-8 word2vec/GloVe text file"
        ) from None
    if dim is None:
        raise InputError(f"{path.name} holds no vectors")
    X = np.zeros((len(tokens), dim))
    missing = []
    for i, t in enumerate(tokens):
        hit = next((c for c in candidates(t) if c in found), None)
        if hit is None:
            missing.append(t)
        else:
            X[i] = found[hit]
    notes = []
    if missing:
        shown = ", ".join(sorted(set(missing))[:8]) + (" …" if len(set(missing)) > 8 else "")
        notes.append(
            f"{path.name} has no vector for {len(missing)} of {len(tokens)} tokens ({shown}); "
            "they got zero vectors, so their raw scores are 0 and they attend uniformly"
        )
    return X, notes

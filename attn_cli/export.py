"""Trace <-> JSON (orjson), NPZ export, and atomic file writes."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from attn_cli.errors import InputError, OutputError
from attn_cli.inputs import MAX_STREAM_BYTES, read_limited
from attn_cli.trace import AXIS_KINDS, KINDS, MODEL, Axis, Trace, TraceStep

FORMAT = "attn-cli/trace"
# 2: token axes beyond the text's own ("axes"), and each step's block and row/column axes.
# Version 1 files have none of these and still load.
VERSION = 2
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "trace-v2.schema.json"
# `attn-cli compare --json`: both traces and what compare measured (attn_cli.comparison).
COMPARISON_FORMAT = "attn-cli/comparison"
# The comparison's own fields are unchanged since version 1; its traces carry their version.
COMPARISON_VERSION = 1
COMPARISON_SCHEMA_PATH = SCHEMA_PATH.with_name("comparison-v1.schema.json")


# A model computes attention weights in float32 and agrees with its reference implementation
# to about 1e-6; digits beyond that are noise, and writing them made a 380-token export of
# every layer and head 138 MB instead of 85 MB. (The toy pipeline's float32 weights at 20,000
# tokens are ~5e-5 each: they keep every digit.)
WEIGHT_DECIMALS = 6


def export_array(kind: str, data: np.ndarray, model: bool) -> np.ndarray:
    """Rows of a step's matrix as written: a model's attention weights rounded to
    WEIGHT_DECIMALS decimals (written as the shortest decimal that reads back to that value);
    everything else at the precision it was computed in."""
    data = np.ascontiguousarray(data)
    if model and kind in ("weights", "partial_weights") and data.dtype == np.float32:
        return np.round(data.astype(np.float64), WEIGHT_DECIMALS)
    return data


def trace_document(trace: Trace) -> dict[str, Any]:
    """The JSON document of one trace without the matrices (`json_chunks` streams those after
    each step's fields; the .npz export stores them as arrays)."""
    steps = []
    for s in trace.steps:
        entry: dict[str, Any] = {
            "name": s.name,
            "formula": s.formula,
            "description": s.description,
            "kind": s.kind,
            "shape": list(s.shape),
            "rows": s.rows,
            "cols": s.cols,
        }
        if s.layer is not None:
            entry["layer"] = s.layer
        if s.head is not None:
            entry["head"] = s.head
        for key in ("block", "row_axis", "col_axis"):
            if getattr(s, key) is not None:
                entry[key] = getattr(s, key)
        steps.append(entry)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "text": trace.text,
        "tokens": trace.tokens,
    }
    if trace.raw_tokens is not None:
        doc["raw_tokens"] = trace.raw_tokens
    if trace.axes:
        doc["axes"] = {name: _axis_entry(axis) for name, axis in trace.axes.items()}
    return doc | {
        "token_ids": trace.token_ids,
        "config": trace.config,
        "notes": trace.notes,
        "steps": steps,
    }


def _axis_entry(axis: Axis) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": axis.kind, "labels": axis.labels}
    if axis.coords is not None:
        entry["coords"] = [list(c) for c in axis.coords]
    return entry


def only_steps(trace: Trace, names: list[str] | None) -> Trace:
    """The trace with just the named steps (None: all of them)."""
    if names is None:
        return trace
    wanted = set(names)
    kept = [s for s in trace.steps if s.name in wanted]
    return Trace(
        trace.text,
        trace.tokens,
        trace.token_ids,
        trace.config,
        kept,
        trace.notes,
        trace.raw_tokens,
        trace.axes,
    )


# Matrix rows serialised per chunk: a 20,000-token W is written a few MB at a time, never as
# one multi-GB string.
JSON_ROWS_PER_CHUNK = 256


def json_chunks(traces: Iterable[Trace]) -> Iterator[bytes]:
    """One newline-terminated JSON document per trace: a single trace is a JSON file, several
    are JSON Lines. Streamed: the document's fields, then each step's matrix a block of rows at
    a time, so memory stays at one block whatever the size of the trace."""
    for t in traces:
        doc = trace_document(t)
        steps = doc.pop("steps")
        model = t.config.get("pipeline") == MODEL
        yield orjson.dumps(doc)[:-1] + b',"steps":['
        for i, (entry, step) in enumerate(zip(steps, t.steps, strict=True)):
            yield (b"," if i else b"") + orjson.dumps(entry)[:-1] + b',"data":['
            data = step.data
            for start in range(0, max(len(data), 1), JSON_ROWS_PER_CHUNK):
                block = export_array(step.kind, data[start : start + JSON_ROWS_PER_CHUNK], model)
                if len(block):
                    text = orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY)
                    yield (b"," if start else b"") + text[1:-1]
            yield b"]}"
        yield b"]}\n"


def dumps_traces(traces: list[Trace]) -> bytes:
    return b"".join(json_chunks(traces))


def loads_traces(data: bytes, source: str = "<input>") -> list[Trace]:
    """Parse a JSON trace or a JSON Lines file of traces, with one-line errors."""
    return traces_from_documents(parse_documents(data, source), source)


def traces_from_documents(docs: list[Any], source: str) -> list[Trace]:
    return [
        trace_from_document(d, source if len(docs) == 1 else f"{source} line {i}")
        for i, d in enumerate(docs, 1)
    ]


def is_comparison(docs: list[Any]) -> bool:
    """Whether parsed documents are one saved comparison (`attn-cli compare --json`)."""
    return (
        len(docs) == 1 and isinstance(docs[0], dict) and docs[0].get("format") == COMPARISON_FORMAT
    )


def parse_documents(data: bytes, source: str = "<input>") -> list[Any]:
    """The JSON document, or each line's of a JSON Lines file, with one-line errors."""
    try:
        docs = [orjson.loads(data)]
    except orjson.JSONDecodeError as whole_err:
        docs = []
        lines = [ln for ln in data.splitlines() if ln.strip()]
        if len(lines) < 2:
            raise InputError(f"{source}: not valid JSON ({whole_err})") from None
        for i, line in enumerate(lines, 1):
            try:
                docs.append(orjson.loads(line))
            except orjson.JSONDecodeError as err:
                raise InputError(f"{source} line {i}: not valid JSON ({err})") from None
    if not docs or docs == [None]:
        raise InputError(f"{source}: empty")
    return docs


def read_bytes(path: str | Path) -> bytes:
    """A saved file's bytes, with one-line errors. Its size is checked before it is read, and
    a pipe or device (/dev/zero) is read with a cap."""

    p = Path(path)
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_STREAM_BYTES:
                raise InputError(
                    f"{p} is {st.st_size / 2**30:,.1f} GiB, more than the "
                    f"{MAX_STREAM_BYTES / 2**30:.0f} GiB a saved trace may be"
                )
            return read_limited(f, str(p))
    except FileNotFoundError:
        raise InputError(f"{p} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {p}: it is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror}") from None


def checked_notes(doc: dict, where: str) -> list[str]:
    notes = doc.get("notes", [])
    need(
        isinstance(notes, list) and all(isinstance(n, str) for n in notes),
        where,
        "'notes' must be a list of strings",
    )
    return notes


def need(cond: bool, where: str, what: str) -> None:
    """A check of an untrusted document: `where: what` as a one-line error when it fails."""
    if not cond:
        raise InputError(f"{where}: {what}")


def trace_from_document(doc: Any, where: str) -> Trace:
    need(isinstance(doc, dict), where, "not an attn-cli trace (expected a JSON object)")
    need(
        doc.get("format") != COMPARISON_FORMAT,
        where,
        "holds a comparison, not a trace: `attn-cli show` prints it, "
        "attn_cli.load_comparison reads it",
    )
    need(doc.get("format") == FORMAT, where, f"not an attn-cli trace (format is not {FORMAT!r})")
    check_version(doc, where, "trace")
    for key, typ in (
        ("text", str),
        ("tokens", list),
        ("token_ids", list),
        ("config", dict),
        ("steps", list),
    ):
        need(
            isinstance(doc.get(key), typ),
            where,
            f"trace field '{key}' is missing or not a {typ.__name__}",
        )
    tokens, ids = doc["tokens"], doc["token_ids"]
    need(all(isinstance(t, str) for t in tokens), where, "'tokens' must be strings")
    need(
        len(ids) == len(tokens) and all(isinstance(i, int) for i in ids),
        where,
        "'token_ids' must be integers, one per token",
    )
    notes = checked_notes(doc, where)
    raw = doc.get("raw_tokens")
    need(
        raw is None
        or (
            isinstance(raw, list)
            and len(raw) == len(tokens)
            and all(isinstance(t, str) for t in raw)
        ),
        where,
        "'raw_tokens' must be strings, one per token",
    )
    axes = _axes_from_document(doc, len(tokens), where)
    lengths = {name: len(axis.labels) for name, axis in axes.items()}
    lengths.setdefault("tokens", len(tokens))
    steps = [_step_from_entry(e, f"{where} step {i}", lengths) for i, e in enumerate(doc["steps"])]
    return Trace(doc["text"], tokens, ids, doc["config"], steps, notes, raw, axes)


def _axes_from_document(doc: dict, n_tokens: int, where: str) -> dict[str, Axis]:
    """The document's token axes, checked: known kinds, string labels, finite coordinates
    (one tuple per label), and a stored "tokens" axis as long as the tokens."""
    entries = doc.get("axes", {})
    need(isinstance(entries, dict), where, "'axes' must be an object of named axes")
    axes = {}
    for name, e in entries.items():
        at = f"{where} axis {name!r}"
        need(isinstance(e, dict), at, "not an object")
        need(e.get("kind") in AXIS_KINDS, at, f"unknown kind {e.get('kind')!r}")
        labels = e.get("labels")
        need(
            isinstance(labels, list) and all(isinstance(x, str) for x in labels),
            at,
            "'labels' must be a list of strings",
        )
        need(name != "tokens" or len(labels) == n_tokens, at, "must have one label per token")
        coords = e.get("coords")
        if coords is not None:
            # A label without a place (an image's [CLS] or register tokens) has empty coords.
            placed = [c for c in coords if c] if isinstance(coords, list) else []
            need(
                isinstance(coords, list)
                and len(coords) == len(labels)
                and all(
                    isinstance(c, list)
                    and (not c or len(c) == len(placed[0]))
                    and all(_finite_number(v) for v in c)
                    for c in coords
                ),
                at,
                "'coords' must be one list of finite numbers per label (empty for a label "
                "without a place), all the same length",
            )
            coords = [tuple(float(v) for v in c) for c in coords]
        axes[name] = Axis(name, e["kind"], labels, coords)
    return axes


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def check_version(doc: Any, where: str, what: str, newest: int = VERSION) -> None:
    version = doc.get("version")
    need(isinstance(version, int), where, f"{what} has no integer 'version'")
    need(
        version <= newest,
        where,
        f"{what} version {version} is newer than this attn-cli reads ({newest}): upgrade attn-cli",
    )


def _step_from_entry(e: Any, where: str, axis_lengths: dict[str, int]) -> TraceStep:
    need(isinstance(e, dict), where, "not an object")
    for key in ("name", "formula", "description", "kind"):
        need(isinstance(e.get(key), str), where, f"'{key}' is missing or not a string")
    need(e["kind"] in KINDS, where, f"unknown kind {e['kind']!r}")
    rows, cols, shape = e.get("rows"), e.get("cols"), e.get("shape")
    need(isinstance(rows, list) and isinstance(cols, list), where, "'rows'/'cols' must be lists")
    need(shape == [len(rows), len(cols)], where, "'shape' does not match 'rows' and 'cols'")
    try:
        data = np.array(e.get("data"), dtype=np.float64)  # null -> nan
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'data' is not a matrix of numbers") from None
    need(
        data.shape == tuple(shape), where, f"'data' has shape {data.shape}, expected {tuple(shape)}"
    )
    data[np.isnan(data)] = -np.inf  # null marks a masked cell
    extra: dict[str, Any] = {}
    for key in ("layer", "head"):
        if e.get(key) is not None:
            need(
                isinstance(e[key], int) and not isinstance(e[key], bool) and e[key] >= 0,
                where,
                f"'{key}' must be an integer >= 0",
            )
            extra[key] = e[key]
    if e.get("block") is not None:
        need(isinstance(e["block"], str), where, "'block' must be a string")
        extra["block"] = e["block"]
    for key, labels in (("row_axis", rows), ("col_axis", cols)):
        name = e.get(key)
        if name is None:
            continue
        need(
            isinstance(name, str) and name in axis_lengths,
            where,
            f"'{key}' names no axis of this trace ({name!r})",
        )
        need(
            len(labels) == axis_lengths[name],
            where,
            f"'{key}' is {name!r}, which has {axis_lengths[name]} labels, "
            f"but the step has {len(labels)}",
        )
        extra[key] = name
    return TraceStep(
        e["name"],
        e["formula"],
        e["description"],
        data,
        [str(r) for r in rows],
        [str(c) for c in cols],
        e["kind"],
        **extra,
    )


def npz_arrays(i: int, t: Trace) -> Iterator[tuple[str, np.ndarray]]:
    """One trace's matrices as .npz entries ('0/03_W_raw', or '0/05_W@L2H5'), then its JSON
    without the matrices under '<i>/trace.json'."""
    for j, step in enumerate(t.steps):
        where = (
            ""
            if step.where == ""
            else "@"
            + step.where.replace("layer ", "L").replace(" · head ", "H").replace("head ", "H")
        )
        yield f"{i}/{j:03d}_{step.name}{where}", step.data
    yield f"{i}/trace.json", np.frombuffer(orjson.dumps(trace_document(t)), dtype=np.uint8)


class NpzWriter:
    """Traces appended to a .npz archive one at a time (np.load reads it): nothing is held
    back for a final np.savez."""

    def __init__(self, file: IO[bytes]) -> None:
        import zipfile

        self._zip = zipfile.ZipFile(file, "w", allowZip64=True)
        self._count = 0

    def add(self, t: Trace) -> None:
        for name, array in npz_arrays(self._count, t):
            with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
        self._count += 1

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()


def atomic_write(path: str | Path, data: bytes | Iterable[bytes]) -> None:
    """Write all of `data` or nothing: a temp file beside the target, then a rename."""
    with atomic_file(path) as f:
        for chunk in [data] if isinstance(data, bytes | bytearray) else data:
            f.write(chunk)


def _refuse_planted(path: Path) -> None:
    """Refuse a symlink, FIFO or device that another user put at `path` in a sticky shared
    directory (/tmp): following it would let them redirect the write onto any file the
    writer may write, or read it through a FIFO. The kernel's protected_symlinks rule: an
    entry is trusted when its owner is the writer or the directory's owner."""
    try:
        entry = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(entry.st_mode) or stat.S_ISDIR(entry.st_mode):
        return
    try:
        folder = os.stat(path.parent)
    except OSError:
        return
    if folder.st_mode & stat.S_ISVTX and entry.st_uid not in (os.geteuid(), folder.st_uid):
        what = "a symbolic link" if stat.S_ISLNK(entry.st_mode) else "a special file"
        raise OutputError(
            f"cannot write {path}: it is {what} another user made in a shared (sticky) "
            "directory, which is never followed; choose another name"
        )


def _target(path: str | Path) -> tuple[Path, os.stat_result | None]:
    """Where a write to `path` lands (a symlink's target) and what is there now; one-line
    errors for what cannot be written."""
    path = Path(path)
    _refuse_planted(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {path}: it is a directory")
    if st is None or stat.S_ISREG(st.st_mode):
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    return path, st


def check_writable(path: str | Path) -> None:
    """Fail now, in one line, if `path` could not be written later (before long work)."""
    target, st = _target(path)
    new_or_regular = st is None or stat.S_ISREG(st.st_mode)  # written beside it, then renamed
    if new_or_regular and not os.access(target.parent, os.W_OK):
        raise OutputError(f"cannot write {target}: Permission denied")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A file to write that appears at `path` whole, or not at all: a temp file beside the
    target, renamed over it when the block ends without an error.

    Devices and pipes (/dev/null, /dev/stdout, a FIFO) are written directly: renaming over
    them would replace the device node. A symlink is written through: its target is
    replaced (atomically) and the link stays, as editors do; but a symlink, FIFO or device
    another user planted in a sticky directory is refused. The temp file is created with
    O_EXCL|O_NOFOLLOW (mkstemp) and removed on any exception, SIGTERM included (the CLI turns
    it into one).
    """
    path, st = _target(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            with open(path, "wb") as f:
                yield f
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        return
    parent = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (st.st_mode & 0o7777) if st else (0o666 & ~umask))
        os.replace(tmp, path)
    except BaseException as exc:  # includes KeyboardInterrupt: never leave a partial file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise

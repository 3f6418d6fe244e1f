"""What `attn-cli heads` reads: text files (one input per line), globs of them, or JSON Lines
with the text in one field of each record.

Globs are expanded in sorted order and files are read one after another, so the lines (and the
batches a run cuts them into) come in the same order on every run and every machine. Files are
read as they are consumed, never held whole.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from attn_cli.errors import InputError, opt
from attn_cli.methods.corpus import count_lines, file_lines

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Corpus:
    """Files to read in order; `field`: they are JSON Lines and each record's text is there."""

    paths: tuple[Path, ...]
    field: str | None = None
    source: str = ""  # how to name the input in notes: what the user gave

    @classmethod
    def find(cls, patterns: Sequence[str | Path], field: str | None = None) -> Corpus:
        """Files and globs ('shards/*.txt': every match, sorted) -> a Corpus. A .jsonl file
        needs `field`."""
        paths: list[Path] = []
        for pattern in patterns:
            text = str(pattern)
            if _GLOB_CHARS & set(text) and not Path(text).exists():
                matches = sorted(p for p in glob.glob(text) if Path(p).is_file())
                if not matches:
                    raise InputError(f"no file matches {text!r}")
                paths += [Path(p) for p in matches]
            else:
                paths.append(Path(text))
        if not paths:
            raise InputError("no input files")
        if field is None:
            for p in paths:
                if p.suffix.lower() in (".jsonl", ".ndjson"):
                    raise InputError(
                        f"{p} is JSON Lines: say which field holds the text with {opt('field')} NAME"
                    )
        source = ", ".join(str(p) for p in patterns)
        return cls(tuple(paths), field, source)

    def lines(self) -> Iterator[str]:
        """Every input in order: a line of a text file, or a record's text. Blank lines are
        passed on (as ""), so the count matches count(): a run skips them."""
        for path in self.paths:
            if self.field is None:
                yield from file_lines(path)
            else:
                yield from _jsonl_texts(path, self.field)

    def count(self) -> int | None:
        """How many lines the files have (for the progress bar), None if one is unreadable."""
        total = 0
        for path in self.paths:
            n = count_lines(path)
            if n is None:
                return None
            total += n
        return total

    def digest(self) -> str:
        """SHA-256 of the files' bytes in order (and of the field): what a resumed run must
        find again."""
        h = hashlib.sha256(f"field={self.field}\n".encode())
        for path in self.paths:
            try:
                with path.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
            except OSError as exc:
                raise InputError(f"cannot read {path}: {exc.strerror}") from None
            h.update(b"\0")  # a boundary: moving a line between files is another input
        return h.hexdigest()


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:

    for number, line in enumerate(file_lines(path), 1):
        if not line.strip():
            yield ""
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path}: line {number} is not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {number} is not a JSON object")
        if field not in record:
            raise InputError(f"{path}: line {number} has no field {field!r}")
        text = record[field]
        if not isinstance(text, str):
            raise InputError(
                f"{path}: line {number}: field {field!r} is {type(text).__name__}, not text"
            )
        yield text

"""Where the text comes from: the TEXT argument, stdin (one input per non-empty line), or a
file read whole as one text (--file)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from attn_cli.errors import InputError

EXAMPLE = 'e.g. attn-cli explain "hi how are you"'

# Checked before tokenizing: a text this long has more tokens than any machine holds the
# attention maps of, and tokenizing a 20 MB line alone took 112 s and 4 GB.
MAX_TEXT_CHARS = 1_000_000
MAX_LINE_BYTES = 4 * MAX_TEXT_CHARS  # UTF-8 takes at most 4 bytes a character
MAX_STREAM_BYTES = 1 << 30  # what is read from stdin, a pipe or a saved file, at most


def check_length(text: str, source: str = "the text") -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"{source} is {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} attn-cli "
            "reads (its attention maps would fit in no machine's memory): use a shorter text"
        )


def read_lines(stream, source: str, limit: int = MAX_STREAM_BYTES) -> Iterator[bytes]:
    """The lines of a binary stream, each read with a cap: a file with no newline
    (/dev/zero) or more than `limit` bytes in all stops with one line, not an endless read."""
    total = 0
    for number in itertools.count(1):
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(
                f"{source}: line {number} is longer than {MAX_LINE_BYTES:,} bytes "
                f"(attn-cli reads at most {MAX_TEXT_CHARS:,} characters a text)"
            )
        total += len(raw)
        if total > limit:
            raise InputError(f"{source} holds more than {limit / 2**30:.0f} GiB")
        yield raw


def read_limited(stream, source: str, limit: int = MAX_STREAM_BYTES) -> bytes:
    """All of a JSON document from a binary stream (a file, a pipe, a device) up to `limit`
    bytes; more is refused, and so is a NUL byte (/dev/zero): JSON holds none."""
    chunks, total = [], 0
    while chunk := stream.read(1 << 20):
        if b"\0" in chunk:
            raise InputError(f"{source}: not valid JSON (it holds NUL bytes)")
        total += len(chunk)
        if total > limit:
            raise InputError(f"{source} holds more than {limit / 2**30:.0f} GiB")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


def texts_from_stdin(raw: bytes) -> list[str]:
    """Each non-empty line of stdin is one input."""
    lines = [line for line in decode_utf8(raw, "stdin").splitlines() if line.strip()]
    if not lines:
        raise InputError(f"stdin holds no text (empty or only whitespace): {EXAMPLE}")
    for number, line in enumerate(lines, 1):
        check_length(line, f"stdin line {number}")
    return lines


def check_utf8(text: str, source: str) -> None:
    """Refuse a string that is not text: undecodable argv bytes arrive as lone surrogates
    (PEP 383), reported as the byte they were; other unpaired surrogates by name."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = None
        if raw is not None:
            decode_utf8(raw, source)
        raise InputError(
            f"{source} holds unpaired surrogate characters, which are not text"
        ) from None


def read_texts(text: str | None, stdin) -> list[str]:
    """TEXT as given; '-', or no TEXT with stdin not a terminal, reads stdin."""
    if text is not None and text != "-":
        check_utf8(text, "the text")
        if not text.strip():
            raise InputError(f"the text is empty or only whitespace: {EXAMPLE}")
        check_length(text)
        return [text]
    if text is None and stdin.isatty():
        raise InputError(f"no text given: pass TEXT or pipe text on stdin, {EXAMPLE}")
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        raw = b"".join(read_lines(buffer, "stdin"))
    else:
        raw = stdin.read().encode("utf-8", "surrogateescape")
    return texts_from_stdin(raw)


def read_file(path) -> str:
    """A whole UTF-8 text file as ONE text (--file, file=): its lines are not split into
    inputs. A missing, unreadable, binary (NUL bytes), non-UTF-8, empty or too long file is
    refused in one line, before more than MAX_LINE_BYTES are read."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LINE_BYTES + 1)
    except IsADirectoryError:
        raise InputError(f"{source} is a directory, not a text file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_LINE_BYTES:
        raise InputError(
            f"{source} is more than {MAX_LINE_BYTES:,} bytes (attn-cli reads at most "
            f"{MAX_TEXT_CHARS:,} characters a text): use a shorter file"
        )
    if b"\0" in raw:
        raise InputError(f"{source} is not a text file (it holds NUL bytes)")
    text = decode_utf8(raw, source)
    if not text.strip():
        raise InputError(f"{source} holds no text (empty or only whitespace)")
    check_length(text, source)
    return text

"""Where the text comes from: the TEXT argument, or stdin (one input per non-empty line)."""

from __future__ import annotations

from attn_cli.errors import InputError

EXAMPLE = 'e.g. attn-cli explain "hi how are you"'


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
    return lines


def read_texts(text: str | None, stdin) -> list[str]:
    """TEXT as given; '-', or no TEXT with stdin not a terminal, reads stdin."""
    if text is not None and text != "-":
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Undecodable argv bytes arrive as lone surrogates (PEP 383): report the byte.
            try:
                raw = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = None
            if raw is not None:
                decode_utf8(raw, "the text")
            raise InputError(
                "the text holds unpaired surrogate characters, which are not text"
            ) from None
        if not text.strip():
            raise InputError(f"the text is empty or only whitespace: {EXAMPLE}")
        return [text]
    if text is None and stdin.isatty():
        raise InputError(f"no text given: pass TEXT or pipe text on stdin, {EXAMPLE}")
    buffer = getattr(stdin, "buffer", None)
    raw = buffer.read() if buffer is not None else stdin.read().encode("utf-8", "surrogateescape")
    return texts_from_stdin(raw)

"""Tokens as readable text.

Tokenizers store tokens in encodings of their own: byte-level BPE (GPT-2, Llama 3, Qwen,
SmolLM) maps every byte to a printable character, so " the" is stored as "Ġthe" and a newline
as "Ċ"; SentencePiece models (Llama 2, Gemma, Mistral) write a space as "▁" and unknown bytes as
"<0x0A>". `readable_tokens` turns them back into the text they stand for, with whitespace made
visible:

  "Ġthe" -> "␣the"     "Ċ" -> "↵"     "ĉ" -> "⇥"     "▁the" -> "␣the"     "<0x0A>" -> "↵"

A byte that is only part of a character (a multi-byte UTF-8 character split across tokens)
and other control bytes are shown as <0xNN>. Special tokens (<|im_start|>, <s> …) and
tokenizers of other kinds (WordPiece's "##ing") are left as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

SPACE, NEWLINE, TAB, RETURN = "␣", "↵", "⇥", "␍"
VISIBLE = {" ": SPACE, "\n": NEWLINE, "\t": TAB, "\r": RETURN}
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable stand-in character -> byte."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def visible(text: str) -> str:
    """Whitespace as visible markers; other control characters as <0xNN> (or <U+NNNN>)."""
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"<0x{ord(ch):02X}>")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that is not valid UTF-8 on its own
            out.append(f"<0x{ord(ch) - 0xDC00:02X}>")
        elif ch in ("\u2028", "\u2029", "\u200b", "\ufeff") or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


def bytes_text(data: bytes) -> str:
    """UTF-8 bytes as visible text; bytes that are not a whole character become <0xNN>."""
    return visible(data.decode("utf-8", errors="surrogateescape"))


def _components(node: Any) -> Iterable[Mapping[str, Any]]:
    """Every component dict of a tokenizer.json section, Sequences flattened."""
    if isinstance(node, Mapping):
        yield node
        for key in ("decoders", "pretokenizers", "normalizers"):
            for child in node.get(key) or ():
                yield from _components(child)


class TokenStyle(NamedTuple):
    """How a tokenizer writes its tokens (decide once per tokenizer, reuse for every text)."""

    kind: str  # "byte_level" | "metaspace" | "plain"
    space: str  # SentencePiece's space stand-in, "▁"
    special: frozenset[str]  # special tokens, shown as they are


def _style_parts(tok: Any) -> dict[str, Any]:
    """The parts of a `tokenizers.Tokenizer`'s JSON that decide its style, without serialising
    its model: to_str() of Gemma's 262,144-piece vocabulary and parsing it back take seconds."""
    parts: dict[str, Any] = {
        "added_tokens": [
            {"content": t.content, "special": t.special}
            for t in tok.get_added_tokens_decoder().values()
        ]
    }
    for key in ("decoder", "pre_tokenizer", "normalizer"):
        component = getattr(tok, key, None)
        parts[key] = None if component is None else json.loads(component.__getstate__())
    return parts


def tokenizer_kind(info: Any) -> TokenStyle:
    """The TokenStyle of a tokenizer.json path, its parsed dict or a `tokenizers.Tokenizer`."""
    if isinstance(info, TokenStyle):
        return info
    if isinstance(info, str | Path):
        info = json.loads(Path(info).read_text(encoding="utf-8"))
    elif hasattr(info, "get_added_tokens_decoder"):
        info = _style_parts(info)
    if not isinstance(info, Mapping):
        return TokenStyle("plain", "▁", frozenset())
    special = frozenset(
        str(t.get("content"))
        for t in info.get("added_tokens") or ()
        if isinstance(t, Mapping) and t.get("special")
    )
    parts = [
        c for key in ("decoder", "pre_tokenizer", "normalizer") for c in _components(info.get(key))
    ]
    types = {str(c.get("type")) for c in parts}
    if "ByteLevel" in types:
        return TokenStyle("byte_level", "▁", special)
    for c in parts:
        if c.get("type") == "Metaspace":
            return TokenStyle("metaspace", str(c.get("replacement", "▁")), special)
        if c.get("type") == "Replace":
            pattern = c.get("pattern")
            content = c.get("content")
            src = pattern.get("String") if isinstance(pattern, Mapping) else None
            if src == "▁" and content == " ":
                return TokenStyle("metaspace", "▁", special)
    if "ByteFallback" in types:
        return TokenStyle("metaspace", "▁", special)
    return TokenStyle("plain", "▁", special)


def readable_token(token: str, kind: str, space: str = "▁") -> str:
    """One token as readable text (see the module docstring)."""
    if kind == "byte_level":
        table = byte_decoder()
        if all(ch in table for ch in token):
            return bytes_text(bytes(table[ch] for ch in token))
        return visible(token)
    if kind == "metaspace":
        m = BYTE_TOKEN.fullmatch(token)
        if m:
            return bytes_text(bytes([int(m.group(1), 16)]))
        return visible(token.replace(space, " "))
    return token


def readable_tokens(raw_tokens: list[str], tokenizer: Any) -> list[str]:
    """Raw tokens as readable text, deciding from the tokenizer (a tokenizer.json path, its
    parsed dict, a `tokenizers.Tokenizer`, or its TokenStyle from `tokenizer_kind`, which is
    cheaper to reuse) whether they are byte-level BPE, SentencePiece (▁ and <0xNN>) or plain.
    Special tokens stay as they are."""
    kind, space, special = tokenizer_kind(tokenizer)
    return [t if t in special else readable_token(t, kind, space) for t in raw_tokens]

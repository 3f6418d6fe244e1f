"""Byte-level BPE and SentencePiece tokens shown as readable text (attn_cli.readable)."""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer

from attn_cli.readable import readable_tokens, tokenizer_kind
from attn_cli.tokenizer import BUNDLED_TOKENIZER
from tests.conftest import ROOT

BYTE_LEVEL = {
    "decoder": {"type": "ByteLevel"},
    "added_tokens": [{"content": "<|im_start|>", "special": True}],
}
SENTENCEPIECE = {
    "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    "decoder": {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    },
    "added_tokens": [{"content": "<s>", "special": True}],
}
METASPACE = {
    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"},
    "decoder": {"type": "Metaspace"},
}


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("Ġthe", "␣the"),  # Ġ is byte 0x20
        ("Ċ", "↵"),  # 0x0A
        ("ĊĊ", "↵↵"),
        ("ĉx", "⇥x"),  # 0x09
        ("Ġ", "␣"),
        ("ÃŃ", "í"),  # C3 AD
        ("âĢĶ", "—"),  # E2 80 94
        ("âĢ", "<0xE2><0x80>"),  # the first two bytes of a three-byte character
        ("Ā", "<0x00>"),  # a control byte
        ("<|im_start|>", "<|im_start|>"),  # special: as is
        ("hello", "hello"),
    ],
)
def test_byte_level_tokens(raw, shown):
    assert readable_tokens([raw], BYTE_LEVEL) == [shown]


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("▁the", "␣the"),
        ("▁", "␣"),
        ("<0x0A>", "↵"),
        ("<0x09>", "⇥"),
        ("<0xE2>", "<0xE2>"),
        ("<s>", "<s>"),
        ("cat", "cat"),
    ],
)
def test_sentencepiece_tokens(raw, shown):
    assert readable_tokens([raw], SENTENCEPIECE) == [shown]
    assert readable_tokens([raw.replace("<s>", "x")], METASPACE)[0] == shown.replace("<s>", "x")


def test_kinds_are_read_from_the_tokenizer():
    assert tokenizer_kind(BYTE_LEVEL)[0] == "byte_level"
    assert tokenizer_kind(SENTENCEPIECE)[0] == "metaspace"
    assert tokenizer_kind(METASPACE)[0] == "metaspace"
    assert tokenizer_kind(BUNDLED_TOKENIZER)[0] == "plain"  # BERT WordPiece: "##ing" stays
    assert readable_tokens(["##ing", "[CLS]"], BUNDLED_TOKENIZER) == ["##ing", "[CLS]"]


def test_a_byte_level_tokenizer_round_trips_through_the_markers():
    """Readable tokens, markers turned back into whitespace, spell what the tokenizer's own
    decoder gives (an independent decoder)."""
    path = ROOT / "tests" / "fixtures" / "tiny_gpt2" / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    text = "hi how are you\n\tthe café — naïve"
    enc = tok.encode(text)
    shown = readable_tokens(enc.tokens, tok)
    assert tokenizer_kind(tok)[0] == "byte_level"
    assert any("␣" in s for s in shown) and not any("Ġ" in s for s in shown)
    assert "<0xC3>" in shown  # é split into its two bytes by this tiny vocabulary
    joined = "".join(shown).replace("␣", " ").replace("↵", "\n").replace("⇥", "\t")
    data = b"".join(
        bytes([int(part[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", part) else part.encode()
        for part in re.split(r"(<0x[0-9A-F]{2}>)", joined)
    )
    assert data.decode() == tok.decode(enc.ids)
    assert readable_tokens(enc.tokens, str(path)) == shown  # a path works too
    assert readable_tokens(enc.tokens, tokenizer_kind(tok)) == shown  # and the style, reused

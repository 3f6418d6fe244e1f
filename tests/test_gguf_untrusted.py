"""A GGUF file is untrusted input: every malformed header gets one InputError before anything
large is allocated, never a traceback or a hang. Hand-made hostile headers, then a hypothesis
fuzz run of bit flips, byte overwrites and truncations of the committed fixtures.

Long run:  ATTN_CLI_FUZZ_EXAMPLES=5000 python -m pytest tests/test_gguf_untrusted.py -q
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_cli.errors import InputError
from attn_cli.gguf import open_gguf, read_header

FIXTURES = Path(__file__).parent / "fixtures" / "gguf"
EXAMPLES = int(os.environ.get("ATTN_CLI_FUZZ_EXAMPLES", "60"))


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv_str(key: str, value: str) -> bytes:
    return s(key) + struct.pack("<I", 8) + s(value)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def tensor_info(name: str, ne: list[int], type_id: int, offset: int) -> bytes:
    return (
        s(name)
        + struct.pack("<I", len(ne))
        + b"".join(struct.pack("<Q", d) for d in ne)
        + struct.pack("<IQ", type_id, offset)
    )


def raw_gguf(
    kvs: list[bytes],
    infos: list[bytes],
    data: bytes = b"",
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    magic: bytes = b"GGUF",
) -> bytes:
    head = magic + struct.pack(
        "<IQQ",
        version,
        len(infos) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * ((-len(body)) % 32)
    return body + data


GOOD_KV = [kv_str("general.architecture", "llama")]
GOOD_T = [tensor_info("a", [32, 2], 0, 0)]
GOOD_DATA = np.arange(64, dtype=np.float32).tobytes()


def write(tmp_path: Path, blob: bytes) -> Path:
    p = tmp_path / "x.gguf"
    p.write_bytes(blob)
    return p


def test_the_hand_made_file_is_valid(tmp_path):
    h = read_header(write(tmp_path, raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA)))
    assert h.metadata == {"general.architecture": "llama"}
    assert h.tensors["a"].shape == (2, 32)


BAD = {
    "empty": (b"", "empty"),
    "short": (b"GGUF\x03\x00", "only 6 bytes"),
    "magic": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, magic=b"GGML"), "wrong magic"),
    "v1": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, version=1), "version 1 is too old"),
    "v9": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, version=9), "unsupported GGUF version 9"),
    "big-endian": (
        raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, version=3 << 24),
        "big-endian",
    ),
    "tensor count": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, n_tensors=1 << 62), "tensors cannot fit"),
    "kv count": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, n_kv=1 << 40), "metadata entries cannot fit"),
    "kv count small lie": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA, n_kv=5), "metadata key claims"),
    "string length": (
        raw_gguf([struct.pack("<Q", 1 << 50) + b"x"], [], b""),
        "claims",
    ),
    "array length": (
        raw_gguf([s("k") + struct.pack("<IIQ", 9, 8, 1 << 60)], [], b""),
        "array of",
    ),
    "array past end": (
        raw_gguf([s("k") + struct.pack("<IIQ", 9, 6, 1000)], [], b""),
        "truncated",
    ),
    "value type": (raw_gguf([s("k") + struct.pack("<I", 77)], [], b""), "unknown value type 77"),
    "nested": (
        raw_gguf(
            [
                s("k")
                + struct.pack("<IIQ", 9, 9, 1)
                + struct.pack("<IQ", 9, 1)
                + struct.pack("<IQ", 9, 1)
            ],
            [],
        ),
        "nested deeper",
    ),
    "dims": (raw_gguf(GOOD_KV, [tensor_info("a", [32, 1 << 50], 0, 0)], GOOD_DATA), "absurd shape"),
    "zero dim": (raw_gguf(GOOD_KV, [tensor_info("a", [32, 0], 0, 0)], GOOD_DATA), "absurd shape"),
    "n_dims": (
        raw_gguf(GOOD_KV, [tensor_info("a", [1, 1, 1, 1, 32], 0, 0)], GOOD_DATA),
        "5 dimensions",
    ),
    "type": (
        raw_gguf(GOOD_KV, [tensor_info("a", [32, 2], 99, 0)], GOOD_DATA),
        "unknown ggml type id 99",
    ),
    "block": (raw_gguf(GOOD_KV, [tensor_info("a", [33, 2], 8, 0)], GOOD_DATA), "not a multiple"),
    "offset": (
        raw_gguf(GOOD_KV, [tensor_info("a", [32, 2], 0, 1 << 40)], GOOD_DATA),
        "needs bytes",
    ),
    "unaligned": (raw_gguf(GOOD_KV, [tensor_info("a", [32, 2], 0, 4)], GOOD_DATA), "not aligned"),
    "truncated data": (raw_gguf(GOOD_KV, GOOD_T, GOOD_DATA[:100]), "truncated?"),
    "duplicate tensor": (raw_gguf(GOOD_KV, GOOD_T * 2, GOOD_DATA), "duplicate tensor"),
    "duplicate key": (raw_gguf(GOOD_KV * 2, GOOD_T, GOOD_DATA), "duplicate metadata key"),
    "alignment": (
        raw_gguf([*GOOD_KV, kv_u32("general.alignment", 3)], GOOD_T, GOOD_DATA),
        "power of two",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_hostile_headers_one_line_error(tmp_path, case):
    blob, fragment = BAD[case]
    path = write(tmp_path, blob)
    with pytest.raises(InputError) as info:
        open_gguf(path)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg and len(msg) < 300, msg


def test_not_a_file(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        open_gguf(tmp_path)
    with pytest.raises(InputError, match="is not a file"):
        open_gguf(tmp_path / "missing.gguf")


def test_unsupported_architecture(tmp_path):
    blob = raw_gguf([kv_str("general.architecture", "mamba")], GOOD_T, GOOD_DATA)
    with pytest.raises(InputError, match="architecture 'mamba' is not supported"):
        open_gguf(write(tmp_path, blob))


def test_metadata_of_the_wrong_type(tmp_path):
    kvs = [
        kv_str("general.architecture", "llama"),
        kv_str("llama.block_count", "thirty"),
        kv_u32("llama.embedding_length", 32),
    ]
    with pytest.raises(InputError, match="lacks|malformed"):
        open_gguf(write(tmp_path, raw_gguf(kvs, GOOD_T, GOOD_DATA)))


def test_shape_that_contradicts_the_metadata(tmp_path):
    """A tensor whose shape disagrees with the config is refused at open, not in the forward
    pass: the fixture with q_proj's declared width changed from 32 to 64 columns."""
    blob = bytearray((FIXTURES / "tiny-llama.gguf").read_bytes())
    h = read_header(FIXTURES / "tiny-llama.gguf")
    name = b"blk.0.attn_output.weight"
    at = bytes(blob).index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4
    # ne = (32, 32) Q4_1 -> (64, 16): same byte count, shape now [16, 64]
    blob[at : at + 16] = struct.pack("<QQ", 64, 16)
    path = write(tmp_path, bytes(blob))
    assert read_header(path).tensors["blk.0.attn_output.weight"].shape == (16, 64)
    assert h.tensors["blk.0.attn_output.weight"].shape == (32, 32)
    with pytest.raises(
        InputError, match=r"has shape \[16, 64\], but the metadata implies \[32, 32\]"
    ):
        open_gguf(path)


def exercise(path: Path) -> list[str]:
    """Touch everything a run would: the tokenizer from the metadata, then every weight and
    embedding rows. Returns the InputErrors met (anything else propagates and fails)."""
    from attn_cli.gguf.tokenizer import build_tokenizer

    errors = []
    try:
        tok = build_tokenizer(read_header(path).metadata, path.name)
        tok.encode("hello world 12345 café <|im_start|>")
    except InputError as exc:
        errors.append(str(exc))
    try:
        ck = open_gguf(path)
        w = ck.weights
        for name in w:
            w.shape(name)
            w[name]
        w.rows("model.embed_tokens.weight", [0, 1])
    except InputError as exc:
        errors.append(str(exc))
    return errors


FUZZ_FILES = {p: p.read_bytes() for p in (FIXTURES / "tiny-llama.gguf", FIXTURES / "bpe-tiny.gguf")}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.sampled_from(sorted(FUZZ_FILES, key=str)),
    edits=st.lists(
        st.tuples(st.integers(0, 4000), st.integers(0, 255), st.sampled_from(["set", "flip"])),
        min_size=1,
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(0, 16000)),
)
def test_fuzz_only_input_errors(tmp_path, which, edits, cut):
    blob = bytearray(FUZZ_FILES[which])
    for pos, value, how in edits:
        if pos < len(blob):
            if how == "set":
                blob[pos] = value
            else:
                blob[pos] ^= 1 << (value % 8)
    if cut is not None:
        blob = blob[:cut]
    path = tmp_path / "f.gguf"
    path.write_bytes(bytes(blob))
    for message in exercise(path):
        assert "\n" not in message and len(message) < 400, message


def test_fixtures_exercise_cleanly():
    assert exercise(FIXTURES / "tiny-llama.gguf") == []
    assert exercise(FIXTURES / "bpe-tiny.gguf") == ["bpe-tiny.gguf: no token_embd.weight tensor"]


def test_megabyte_token_does_not_hang():
    """A SentencePiece vocabulary with a 2-million-character piece builds in well under a
    second (such pieces are never merged) and still tokenizes."""
    import time

    from attn_cli.gguf.tokenizer import build_tokenizer

    toks = [
        "<unk>",
        "<s>",
        "</s>",
        *[f"<0x{b:02X}>" for b in range(256)],
        "▁" + "a" * 2_000_000,
        "▁",
        "a",
        "b",
        "ab",
        "▁ab",
    ]
    types = np.array([2, 3, 3] + [6] * 256 + [1] * 6, dtype=np.int32)
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": -np.arange(len(toks), dtype=np.float32),
    }
    start = time.perf_counter()
    tok = build_tokenizer(meta)
    assert time.perf_counter() - start < 5
    assert tok.encode("ab", add_special_tokens=False).tokens == ["▁ab"]

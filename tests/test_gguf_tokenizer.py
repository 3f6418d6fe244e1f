"""The tokenizer rebuilt from GGUF metadata gives llama.cpp's ids (llama-cpp-python as the
reference): the real SmolLM2 file, its vocabulary under every supported pre-tokenizer name,
and SentencePiece-style vocabularies; plus committed tiny fixtures whose expected ids were made
once by llama.cpp (scripts/make_gguf_fixtures.py), checked without any reference installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import llama, require
from tests.test_gguf_models import smollm2_file
from tests.test_gguf_writer import bytes_to_unicode

FIXTURES = Path(__file__).parent / "fixtures" / "gguf"

SAMPLES = [
    "The bank of the river flooded.",
    "Hello world! 12345 café naïve à l'été, garçon. Ça va?",
    "你好，世界。我喜欢机器学习",
    "emoji 🤗🚀👍🏽 and flags 🇫🇷",
    "def f(x):\n    return x**2  # squared\n\n\nclass A: pass\n",
    "multiple   spaces    here  and\ttabs\t\tand\r\nCRLF",
    "I'm can't we'll THEY'RE don'T",
    "Ünïcödé ß ﬁ Ⅻ ２３ ١٢٣ Привет мир! こんにちは 안녕하세요 ὈΔΥΣΣΕΎΣ",
    "1234567890 3.14159 1,000,000 2024-11-23",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
    "  leading and trailing  ",
    "\n\n\n",
]


def compare(llm, tok, samples=SAMPLES) -> list[str]:
    """Every sample with and without BOS, with and without special-token parsing."""
    bad = []
    for text in samples:
        for special in (False, True):
            for add in (False, True):
                want = llm.tokenize(text.encode("utf-8"), add_bos=add, special=special)
                tok.encode_special_tokens = not special
                got = tok.encode(text, add_special_tokens=add).ids
                if got != want:
                    bad.append(f"{text!r} special={special} bos={add}: {got[:20]} != {want[:20]}")
    tok.encode_special_tokens = False
    return bad


def vocab_only_gguf(
    path: Path, kind: str, tokens, types, *, pre=None, merges=None, scores=None, kv=None
):
    """A vocabulary-only llama GGUF (llama.cpp loads it with vocab_only=True)."""
    gguf = require("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_tokenizer_model(kind)
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(list(types))
    if scores is not None:
        w.add_token_scores(list(scores))
    if merges is not None:
        w.add_token_merges(merges)
    for k, v in (kv or {}).items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        else:
            w.add_uint32(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def spm_from_bpe(tokens: list[str], types) -> tuple[list[str], list[int], list[float]]:
    """A realistic SentencePiece vocabulary from a byte-level one: pieces as text with ▁ for
    spaces, <unk> <s> </s>, the 256 <0xXX> byte tokens, scores falling with the id."""
    dec = {c: b for b, c in bytes_to_unicode().items()}
    toks, tys = ["<unk>", "<s>", "</s>"], [2, 3, 3]
    toks += [f"<0x{b:02X}>" for b in range(256)]
    tys += [6] * 256
    seen = set(toks)
    for t, ty in zip(tokens, types, strict=True):
        if ty != 1:
            continue
        try:
            s = bytes(dec[c] for c in t).decode("utf-8").replace(" ", "▁")
        except (KeyError, UnicodeDecodeError):
            continue
        if s and s not in seen:
            seen.add(s)
            toks.append(s)
            tys.append(1)
    toks.append("<|im_start|>")  # a user-defined token: matched even without special parsing
    tys.append(4)
    scores = [0.0] * 259 + [-float(i) for i in range(259, len(toks))]
    return toks, tys, scores


@pytest.fixture(scope="module")
def smollm2_meta():
    from attn_cli.gguf import read_header

    return read_header(smollm2_file()).metadata


@pytest.mark.reference
def test_smollm2_ids_equal_llama_cpp():
    from attn_cli.gguf import open_gguf

    path = smollm2_file()
    llm = llama(str(path), vocab_only=True, verbose=False)
    tok = open_gguf(path).tokenizer
    assert compare(llm, tok) == []
    # what the model sees: no BOS for SmolLM2 (add_bos_token false), specials as one token
    assert tok.encode("<|im_start|>hi").ids == [1, 6004]
    assert tok.decode(tok.encode("café 你好 🤗").ids) == "café 你好 🤗"


PRES = [
    "default",
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "qwen35",
    "smollm",
    "starcoder",
    "falcon",
    "tekken",
    "gpt-4o",
    "bloom",
    "seed-coder",
]


@pytest.mark.reference
@pytest.mark.parametrize("pre", PRES)
def test_pre_tokenizers_equal_llama_cpp(tmp_path, smollm2_meta, pre):
    """SmolLM2's real byte-level BPE vocabulary split by each pre-tokenizer llama.cpp names."""

    m = smollm2_meta
    path = vocab_only_gguf(
        tmp_path / "v.gguf",
        "gpt2",
        m["tokenizer.ggml.tokens"],
        m["tokenizer.ggml.token_type"].tolist(),
        pre=pre,
        merges=m["tokenizer.ggml.merges"],
        kv={"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2},
    )
    llm = llama(str(path), vocab_only=True, verbose=False)
    assert compare(llm, open_gguf_tokenizer(path)) == []


def open_gguf_tokenizer(path: Path):
    from attn_cli.gguf import read_header
    from attn_cli.gguf.tokenizer import build_tokenizer

    return build_tokenizer(read_header(path).metadata, path.name)


@pytest.mark.reference
@pytest.mark.parametrize("space_prefix", [True, False])
def test_sentencepiece_equals_llama_cpp(tmp_path, smollm2_meta, space_prefix):
    m = smollm2_meta
    toks, types, scores = spm_from_bpe(m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"])
    path = vocab_only_gguf(
        tmp_path / "s.gguf",
        "llama",
        toks,
        types,
        scores=scores,
        kv={
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_space_prefix": space_prefix,
        },
    )
    llm = llama(str(path), vocab_only=True, verbose=False)
    tok = open_gguf_tokenizer(path)
    assert compare(llm, tok) == []
    assert tok.encode("hi").ids[0] == 1  # SentencePiece vocabularies add BOS by default


# -- torch-free, reference-free: committed fixtures ------------------------------------------
@pytest.mark.parametrize("name", ["bpe-tiny", "spm-tiny"])
def test_fixture_ids_equal_recorded_llama_cpp(name):
    expected = json.loads((FIXTURES / f"{name}.ids.json").read_text(encoding="utf-8"))
    tok = open_gguf_tokenizer(FIXTURES / f"{name}.gguf")
    for case in expected:
        tok.encode_special_tokens = not case["special"]
        got = tok.encode(case["text"], add_special_tokens=case["add_bos"]).ids
        assert got == case["ids"], case


def test_bpe_fixture_by_hand():
    """The tiny byte-level vocabulary: specials are single tokens, bytes map to GPT-2's
    alphabet, a space starts a word (Ġ); llama-bpe without add_bos_token adds BOS (id 1)."""
    tok = open_gguf_tokenizer(FIXTURES / "bpe-tiny.gguf")
    enc = tok.encode("<|im_start|>a b", add_special_tokens=False)
    assert enc.tokens == ["<|im_start|>", "a", "Ġb"]
    assert tok.encode("a", add_special_tokens=True).ids[0] == 1
    tok.encode_special_tokens = True
    assert "<|im_start|>" not in tok.encode("<|im_start|>", add_special_tokens=False).tokens


def test_unknown_pre_tokenizer_and_model_are_refused():
    from attn_cli.gguf.tokenizer import build_tokenizer

    base = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": []}
    with pytest.raises(InputError, match="pre-tokenizer 'nonesuch'"):
        build_tokenizer({**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(InputError, match="tokenizer model 'bert'"):
        build_tokenizer({**base, "tokenizer.ggml.model": "bert"})
    with pytest.raises(InputError, match="tokenizer.ggml.tokens"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2"})
    types = np.array([1, 1], dtype=np.int32)
    tok = build_tokenizer(
        {**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.token_type": types}
    )
    assert tok.get_vocab_size() == 2


# -- the merges cache: a SentencePiece vocabulary's merges are derived once per file ----------
def recorded_ids_hold(tok) -> None:
    for case in json.loads((FIXTURES / "spm-tiny.ids.json").read_text(encoding="utf-8")):
        tok.encode_special_tokens = not case["special"]
        assert tok.encode(case["text"], add_special_tokens=case["add_bos"]).ids == case["ids"]


@pytest.fixture
def spm_file(tmp_path, monkeypatch) -> Path:
    """The SentencePiece fixture copied into tmp_path, with the user's cache directory there."""
    import shutil

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "spm.gguf"
    shutil.copyfile(FIXTURES / "spm-tiny.gguf", path)
    return path


def cached_tokenizer(path: Path):
    from attn_cli.gguf import read_header
    from attn_cli.gguf.tokenizer import build_tokenizer

    return build_tokenizer(read_header(path).metadata, path.name, path)


def cache_entries(path: Path) -> list[Path]:
    return sorted((path.parent / "cache" / "attn-cli" / "gguf-merges").glob("*"))


def derivations(monkeypatch) -> list[int]:
    """Counts the calls of _spm_merges (the slow derivation the cache saves)."""
    from attn_cli.gguf import tokenizer as gt

    calls: list[int] = []
    derive = gt._spm_merges
    monkeypatch.setattr(gt, "_spm_merges", lambda *a: (calls.append(1), derive(*a))[1])
    return calls


def test_merges_are_derived_once_then_read_back(spm_file, monkeypatch):
    calls = derivations(monkeypatch)
    recorded_ids_hold(cached_tokenizer(spm_file))
    (entry,) = cache_entries(spm_file)
    assert entry.suffix == ".bin" and entry.read_bytes().startswith(b"attn-cli gguf merges\n")
    recorded_ids_hold(cached_tokenizer(spm_file))
    assert calls == [1]
    assert cache_entries(spm_file) == [entry]  # no temporary file left behind


def test_a_changed_file_is_derived_again(spm_file, monkeypatch):
    import os

    calls = derivations(monkeypatch)
    cached_tokenizer(spm_file)
    st = spm_file.stat()
    os.utime(spm_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    recorded_ids_hold(cached_tokenizer(spm_file))
    assert calls == [1, 1] and len(cache_entries(spm_file)) == 2


def _valid_entry_with(spm_file: Path, pairs) -> Path:
    from attn_cli.gguf import read_header
    from attn_cli.gguf.tokenizer import MergesCache, _token_types

    meta = read_header(spm_file).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    cache = MergesCache(
        spm_file, tokens, meta["tokenizer.ggml.scores"], _token_types(meta, len(tokens), "")
    )
    cache.store(pairs)
    return cache.path


def _spoil(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "truncated":
        entry.write_bytes(data[: len(data) - 3])
    elif how == "flipped":
        data[-5] ^= 0xFF
        entry.write_bytes(data)
    elif how == "magic":
        entry.write_bytes(b"x" + data[1:])
    elif how == "header":
        entry.write_bytes(data.replace(b'"count"', b'"cuont"', 1))


@pytest.mark.parametrize("how", ["truncated", "flipped", "magic", "header"])
def test_a_corrupt_entry_is_ignored_and_rewritten(spm_file, monkeypatch, how):
    cached_tokenizer(spm_file)
    (entry,) = cache_entries(spm_file)
    good = entry.read_bytes()
    _spoil(entry, how)
    calls = derivations(monkeypatch)
    recorded_ids_hold(cached_tokenizer(spm_file))
    assert calls == [1] and entry.read_bytes() == good


def test_an_entry_is_validated_not_trusted(spm_file, monkeypatch):
    """Entries with a correct checksum and key whose ids leave the vocabulary, or whose merges
    do not join two tokens into a token, are derived again."""
    from attn_cli.gguf import read_header

    tokens = read_header(spm_file).metadata["tokenizer.ggml.tokens"]
    vocab = set(tokens)
    a, b = next(
        (i, j)
        for i, x in enumerate(tokens)
        for j, y in enumerate(tokens)
        if x + y not in vocab and len(x) == len(y) == 1
    )
    calls = derivations(monkeypatch)
    for pairs in ([(0, len(tokens))], [(-1, 0)], [(a, b)]):
        entry = _valid_entry_with(spm_file, pairs)
        recorded_ids_hold(cached_tokenizer(spm_file))
        assert np.frombuffer(entry.read_bytes().split(b"\n", 2)[2], "<i4").tolist() != [*pairs[0]]
    assert calls == [1, 1, 1]


def test_an_unwritable_cache_directory_costs_only_time(spm_file, monkeypatch):
    blocker = spm_file.parent / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    calls = derivations(monkeypatch)
    recorded_ids_hold(cached_tokenizer(spm_file))
    recorded_ids_hold(cached_tokenizer(spm_file))
    assert calls == [1, 1]


def test_merges_keep_their_order():
    """The faster derivation gives the merges in the order the first one did: best score first,
    ties by the merged token's id, then by the left piece's id (written out here)."""
    from attn_cli.gguf.tokenizer import _spm_merges

    tokens = ["a", "b", "c", "ab", "bc", "abc", "ca", "cab", "<0x41>", "aa"]
    scores = np.array([0, 0, 0, -1, -1, -2, -1, -3, 0, -0.5], dtype=np.float32)
    types = np.array([1, 1, 1, 1, 1, 1, 1, 1, 6, 1])
    vocab = {t: i for i, t in enumerate(tokens)}
    got = [(tokens[a], tokens[b]) for a, b in _spm_merges(tokens, scores, types, vocab)]
    assert got == [
        ("a", "a"),  # aa, score -0.5
        ("a", "b"),  # ab, -1
        ("b", "c"),  # bc, -1
        ("c", "a"),  # ca, -1
        ("a", "bc"),  # abc, -2: left "a" (id 0) before left "ab" (id 3)
        ("ab", "c"),
        ("c", "ab"),  # cab, -3: left "c" (id 2) before left "ca" (id 6)
        ("ca", "b"),
    ]

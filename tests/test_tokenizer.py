"""The bundled tokenizer: built per text from the vocabulary entries the text can reach, it must
give what the full tokenizer.json gives, token for token."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from attn_cli.tokenizer import (
    BUNDLED_TOKENIZER,
    BUNDLED_VOCAB_INDEX,
    BundledTokenizer,
    _configuration_head,
    _tokenizer_from_file,
    load_tokenizer,
    tokenize,
)

FULL_JSON = orjson.loads(BUNDLED_TOKENIZER.read_bytes())
VOCAB: dict[str, int] = FULL_JSON["model"]["vocab"]


@pytest.fixture(scope="module")
def full():
    return _tokenizer_from_file(BUNDLED_TOKENIZER)


def encodings_equal(a, b) -> bool:
    return (a.tokens, a.ids, a.type_ids, a.offsets, a.special_tokens_mask) == (
        b.tokens,
        b.ids,
        b.type_ids,
        b.offsets,
        b.special_tokens_mask,
    )


def test_the_vocabulary_index_is_the_tokenizer_json_vocabulary():
    index = np.load(BUNDLED_VOCAB_INDEX)
    pairs = [(bytes(t).decode(), int(i)) for t, i in index.tolist()]
    assert sorted(pairs, key=lambda p: p[1]) == sorted(VOCAB.items(), key=lambda p: p[1])
    keys = index["token"]
    assert (keys[1:] > keys[:-1]).all()  # strictly sorted: binary search finds the one entry
    assert len(index) == 30522


def test_the_configuration_head_is_everything_but_the_vocabulary():
    head = _configuration_head(BUNDLED_TOKENIZER)
    assert head.endswith('"vocab":')
    without_vocab = dict(FULL_JSON, model=dict(FULL_JSON["model"], vocab={}))
    assert orjson.loads(head + "{}}}") == without_vocab


def test_hand_checked_ids():
    # bert-base-uncased ids, as listed in its vocab.txt (line number - 1)
    tokens, ids = tokenize(load_tokenizer(), "hi how are you")
    assert (tokens, ids) == (["hi", "how", "are", "you"], [7632, 2129, 2024, 2017])
    tokens, ids = tokenize(load_tokenizer(), "unaffable", special=True)
    assert tokens == ["[CLS]", "una", "##ffa", "##ble", "[SEP]"]
    assert ids[0] == 101 and ids[-1] == 102


NASTY = [
    "hi how are you",
    "the bank of the river",
    "Hello, World! [MASK] is here",
    "[CLS]x[SEP]y [PAD][UNK]",
    "Ünïcödé naïve café résumé Ångström",
    "東京は日本の首都です。中文字符",
    "emoji 😀🎉 and ✓ marks",
    "a" * 150 + " ok " + "b" * 100 + " " + "c" * 101,
    "unaffable ##ing ## straße İstanbul ΣΊΣΥΦΟΣ",
    "\x00ctrl\tchars\u200b zero\u00a0width\r\nlines",
    "don't stop-believing... 3.14159 $100 #hashtag @user",
    "e\u0301 combining e\u0301[MASK]\u0301 marks",
    "   ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.mark.parametrize("text", NASTY)
def test_equal_to_the_full_tokenizer_on_hard_texts(full, text):
    for special in (False, True):
        ours = BundledTokenizer().encode(text, add_special_tokens=special)
        assert encodings_equal(ours, full.encode(text, add_special_tokens=special))


def test_sentence_pairs_equal_the_full_tokenizer(full):
    ours = BundledTokenizer().encode("the bank of the river", "the bank approved the loan")
    theirs = full.encode("the bank of the river", "the bank approved the loan")
    assert encodings_equal(ours, theirs)
    assert ours.type_ids == [0] * 7 + [1] * 6


def random_texts(count: int, seed: int) -> list[str]:
    """Words assembled from vocabulary pieces (so WordPiece has real choices to make), random
    characters from many scripts, punctuation and the special tokens, in random case."""
    rng = random.Random(seed)
    entries = list(VOCAB)
    alphabet = (
        "abcxyzABCXYZ0189 .,;!?'\"-_()[]{}#@$%^&*\t\n"
        "éèüßøÅÉñçİı" + "δΣωЖжщ" + "你好世界日本語" + "한국어" + "😀🎉✓" + "\u0301\u200b\x00\x07"
    )
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.5:
                word = "".join(
                    rng.choice(entries).removeprefix("##") for _ in range(rng.randint(1, 4))
                )
            elif kind < 0.9:
                word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
            else:
                word = rng.choice(["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "##"])
            parts.append(word.upper() if rng.random() < 0.2 else word)
        texts.append(rng.choice(["", " "]).join(parts))
    return texts


def test_equal_to_the_full_tokenizer_on_random_texts(full):
    for i, text in enumerate(random_texts(1500, seed=7)):
        if i % 25 == 0:
            ours_tok = BundledTokenizer()  # stay on the per-text path, not the full build
        ours = ours_tok.encode(text, add_special_tokens=i % 2 == 0)
        assert encodings_equal(ours, full.encode(text, add_special_tokens=i % 2 == 0)), text
    assert ours_tok.full is None


def test_after_a_vocabulary_of_lookups_the_full_tokenizer_takes_over(full):
    tok = BundledTokenizer()
    texts = random_texts(400, seed=11)
    switched_at = None
    for i, text in enumerate(texts):
        assert encodings_equal(tok.encode(text), full.encode(text)), text
        if switched_at is None and tok.full is not None:
            switched_at = i
    assert switched_at is not None and 0 < switched_at < len(texts)
    # one text with more pieces than the vocabulary has entries goes straight to the full build
    long_text = " ".join(random_texts(3000, seed=12))
    fresh = BundledTokenizer()
    assert encodings_equal(fresh.encode(long_text), full.encode(long_text))
    assert fresh.full is not None

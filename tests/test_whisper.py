"""Whisper: word-timestamp maths against transformers on the same arrays, and the tiny random
model built in the test against transformers end to end (maps, logits, greedy tokens, token
timestamps)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from attn_cli import timestamps as ts
from tests.conftest import require


def softmax_maps(rng, shape):
    raw = rng.standard_normal(shape).astype(np.float32) * 3
    w = np.exp(raw)
    return w / w.sum(-1, keepdims=True)


@pytest.mark.reference
def test_median_filter_and_dtw_equal_transformers():
    torch = require("torch")
    gw = require("transformers.models.whisper.generation_whisper")
    rng = np.random.default_rng(0)
    for width, frames in ((7, 40), (3, 9), (7, 3), (1, 5)):
        x = rng.standard_normal((2, 3, 5, frames)).astype(np.float32)
        ref = gw._median_filter(torch.tensor(x), width).numpy()
        np.testing.assert_array_equal(ts.median_filter(x, width), ref)
    for shape in ((9, 60), (1, 7), (12, 12), (30, 200)):
        m = rng.standard_normal(shape)
        for mine, ref in zip(ts.dynamic_time_warping(m), gw._dynamic_time_warping(m), strict=True):
            np.testing.assert_array_equal(mine, ref)
    # ties: a constant matrix (every path costs the same) takes transformers' tie-breaks
    flat = np.zeros((4, 6))
    for mine, ref in zip(ts.dynamic_time_warping(flat), gw._dynamic_time_warping(flat), strict=True):
        np.testing.assert_array_equal(mine, ref)


class _Generated(dict):
    def __getattr__(self, key):
        return self[key]


@pytest.mark.reference
@pytest.mark.parametrize("frames", [None, 700, 3000])
def test_token_times_equal_extract_token_timestamps(frames):
    """transformers' _extract_token_timestamps on cross-attention as generate() returns it
    (the prompt's rows in the first step, one row per later step, none for the last token)."""
    torch = require("torch")
    gw = require("transformers.models.whisper.generation_whisper")
    rng = np.random.default_rng(1)
    layers, heads, n, start = 3, 4, 14, 4
    cross = softmax_maps(rng, (layers, heads, n, 1500))
    steps = [cross[:, :, :start]] + [cross[:, :, i : i + 1] for i in range(start, n - 1)]
    generated = _Generated(
        cross_attentions=tuple(
            tuple(torch.tensor(s[layer])[None] for layer in range(layers)) for s in steps
        ),
        sequences=torch.zeros(1, n, dtype=torch.long),
    )
    model = types.SimpleNamespace(
        config=types.SimpleNamespace(decoder_layers=layers, median_filter_width=7)
    )
    alignment = [(0, 1), (2, 3), (1, 0)]
    ref = gw.WhisperGenerationMixin._extract_token_timestamps(
        model,
        generated,
        alignment,
        num_frames=None if frames is None else torch.tensor([frames]),
        num_input_ids=start,
    )[0].numpy()
    mine = ts.token_times(cross, alignment, start, frames, 7)
    np.testing.assert_array_equal(mine, ref)
    assert mine[start:].max() > 0  # not vacuous
    if frames is not None:
        assert mine.max() < frames / 100


class _Tokenizer:
    """What transformers' word grouping asks of a tokenizer, over a tokenizers.Tokenizer."""

    def __init__(self, tok, language=None):
        self.tok = tok
        self.eos_token_id = tok.token_to_id("<|endoftext|>")
        self.language = language

    def decode(self, ids, decode_with_timestamps=False):
        return self.tok.decode(ids, skip_special_tokens=False)


@pytest.mark.reference
def test_words_equal_transformers_grouping():
    """_combine_tokens_into_words and the ASR pipeline's word times ((ts[p − 1], ts[p]) per
    token), over a byte-level tokenizer: spaces, punctuation on either side, a split
    multi-byte character."""
    tw = require("transformers.models.whisper.tokenization_whisper")
    from tests.whisper_utils import tokenizer

    tok = tokenizer()
    texts = [
        ' Hello world, how are "you"? (fine) — 寿司!',
        " the cat sat on the mat.",
        "speech in, words out",
    ]
    for text, language in zip(texts, ("english", None, "japanese"), strict=True):
        ids = tok.encode(text).ids
        seq = [301, 302, 305, 306, *ids, 300]
        times = np.round(np.linspace(0, 3, len(seq)), 2).astype(np.float32)
        text_pos = list(range(4, 4 + len(ids)))
        words = ts.words(seq, times, text_pos, lambda t: tok.decode(t), 300, language)
        shim = _Tokenizer(tok)
        pairs = [(float(times[p - 1]), float(times[p])) for p in text_pos]
        ref = tw._collate_word_timestamps(shim, ids, pairs, language, False)
        assert [w.text for w in words] == [r["text"] for r in ref]
        for w, r in zip(words, ref, strict=True):
            assert (w.start, w.end) == pytest.approx(r["timestamp"], abs=1e-6)
        assert "".join(w.text for w in words) == tok.decode(ids)
    assert len(words) > 1

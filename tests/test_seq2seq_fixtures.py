"""The encoder–decoder families against transformers, without torch: tests/fixtures/tiny_seq2seq
holds five tiny random checkpoints (T5, FLAN-T5-style, BART, mBART, Marian) and what
transformers computed for one source and target (scripts/make_seq2seq_fixtures.py).

Every encoder, decoder and cross-attention map within 1e-5, logits within 1e-4, greedy
generation token for token as transformers' generate()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli.models.registry import family_for
from attn_cli.seq2seq import decode, encode

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tiny_seq2seq"
MODELS = ["t5", "flan_t5", "bart", "mbart", "marian"]
SOURCE = "w10 w11 w12 w13 w14 w15 w16 w17 w18"  # as in scripts/make_seq2seq_fixtures.py
TARGET = "w20 w21 w22 w23 w24"


@pytest.mark.parametrize("name", MODELS)
def test_maps_and_logits_match_the_fixture(name):
    expected = np.load(FIXTURES / name / "expected.npz")
    m = attn_cli.load_model(FIXTURES / name)
    t = m.trace(SOURCE, target=TARGET)
    assert t.config["source_ids"] == expected["source_ids"].tolist()
    assert t.token_ids == expected["target_ids"].tolist()
    for block in ("encoder", "decoder", "cross"):
        maps = t.attention(block=block)
        assert maps.shape == expected[block].shape, block
        assert np.abs(maps - expected[block]).max() < 1e-5, block
    s2s = m.family.seq2seq
    assert s2s is not None
    enc, _ = encode(m.family, m.weights, t.config["source_ids"], m.config)
    out, _ = decode(s2s, m.weights, t.token_ids, enc, m.config)
    assert np.abs(s2s.logits(m.weights, out, m.config) - expected["logits"]).max() < 1e-4
    # the trace's prediction after the last target token is the logits' best
    (prediction,) = t.steps_named("prediction")
    best = m._candidate_text(int(expected["logits"][-1].argmax()))
    assert prediction.rows[0].strip("“”") == best


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generation_matches_the_fixture(name):
    expected = np.load(FIXTURES / name / "expected.npz")
    t = attn_cli.load_model(FIXTURES / name).trace(SOURCE, generate=True)
    assert t.token_ids == expected["generated"].tolist()
    assert t.config["generated"]["max_length"] == 12
    n_source = len(expected["source_ids"])
    assert t.attention(block="cross").shape[2:] == (len(t.token_ids), n_source)


def test_each_fixture_is_its_family():
    names = {
        name: family_for(attn_cli.load_model(FIXTURES / name).config["model_type"])
        for name in MODELS
    }
    assert {n: f.name for n, f in names.items() if f is not None} == {
        "t5": "t5",
        "flan_t5": "t5",
        "bart": "bart",
        "mbart": "mbart",
        "marian": "marian",
    }

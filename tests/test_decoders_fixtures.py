"""Torch-free golden fixtures: a tiny Llama and a tiny Gemma 3 (bf16 safetensors, the second
sharded) with transformers' attention maps and logits, made once by
scripts/make_decoder_fixtures.py. Every developer run checks the decoders' numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from attn_cli.tokens import readable_tokens
from tests.conftest import ROOT
from tests.decoder_utils import attention_maps, run

FIXTURES = ROOT / "tests" / "fixtures"
SENTENCE = "the cat sat\non the café mat"  # as in scripts/make_decoder_fixtures.py


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3"])
def test_fixture_matches_transformers(name):
    d = FIXTURES / name
    expected = np.load(d / "expected.npz")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = tok.encode(SENTENCE).ids
    assert ids == expected["ids"].tolist()
    ours = run(d, ids)
    maps = attention_maps(ours)
    assert maps.shape == expected["attentions"].shape == (2, 4, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected["attentions"], atol=1e-5)
    last = expected["logits"].shape[0]
    np.testing.assert_allclose(ours["logits"][-last:], expected["logits"], atol=1e-4)


def test_tiny_gemma3_is_sharded_and_slides_its_first_layer():
    d = FIXTURES / "tiny_gemma3"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = np.load(d / "expected.npz")["ids"].tolist()
    ours = run(d, ids)
    n = len(ids)
    i, j = np.indices((n, n))
    local, full = ours["layers"][0].attn.attn.W, ours["layers"][1].attn.attn.W
    assert (local[:, (j > i) | (j <= i - 3)] == 0).all()  # window 3: the token and 2 before
    assert (full[:, j <= i] > 0).all() and (full[:, j > i] == 0).all()
    steps = ours["layers"][0].attn
    assert [s[0] for s in steps.stages] == ["norm", "rot"]
    # the grouped heads: query heads 0, 1 read key/value head 0; 2, 3 read head 1
    assert steps.K.shape[0] == 2 and steps.Q.shape[0] == 4


def test_fixture_tokens_read_as_text():
    llama = Tokenizer.from_file(str(FIXTURES / "tiny_llama" / "tokenizer.json"))
    shown = readable_tokens(llama.encode(SENTENCE).tokens, llama)
    assert "␣cat" in shown and "↵" in "".join(shown) and "Ġ" not in "".join(shown)
    gemma = Tokenizer.from_file(str(FIXTURES / "tiny_gemma3" / "tokenizer.json"))
    enc = gemma.encode(SENTENCE)
    assert "<0x0A>" in enc.tokens  # the newline is not in the vocabulary: byte fallback
    shown = readable_tokens(enc.tokens, gemma)
    assert shown[0] == "<bos>" and "↵" in shown and "▁" not in "".join(shown)


def test_describe_says_what_the_config_means_for_attention():
    from attn_cli.models._decoder import describe

    gemma = describe(json.loads((FIXTURES / "tiny_gemma3" / "config.json").read_text()))
    assert gemma["layer_types"] == ["sliding_attention", "full_attention"]
    assert gemma["sliding_window"] == 3 and gemma["qk_norm"] is True
    assert gemma["score_scale"] == 8**-0.5  # query_pre_attn_scalar 8
    assert gemma["rope"]["sliding_attention"] == {
        "type": "default",
        "theta": 10000.0,
        "rotary_dim": 8,
    }
    assert gemma["rope"]["full_attention"]["factor"] == 2.0
    assert (
        gemma["embed_scale"] == pytest.approx(32**0.5) and gemma["final_logit_softcapping"] == 5.0
    )
    llama = describe(json.loads((FIXTURES / "tiny_llama" / "config.json").read_text()))
    assert llama["query_heads_per_kv_head"] == 2 and llama["sliding_window"] is None
    assert llama["rope"]["full_attention"]["type"] == "llama3" and llama["mlp"] == "SwiGLU (silu)"

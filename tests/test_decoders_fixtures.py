"""Torch-free golden fixtures: a tiny Llama, Gemma 3 (sharded), Phi-3 (LongRoPE) and Qwen2
(YaRN), bf16 safetensors with transformers' attention maps and logits, made once by
scripts/make_decoder_fixtures.py. Every developer run checks the decoders' numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from attn_cli.readable import readable_tokens
from tests.conftest import ROOT
from tests.decoder_utils import attention_maps, run

FIXTURES = ROOT / "tests" / "fixtures"
SENTENCE = "the cat sat\non the café mat"  # as in scripts/make_decoder_fixtures.py


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3", "tiny_phi3", "tiny_qwen2"])
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
    local, full = ours["layers"][0].attention.weights, ours["layers"][1].attention.weights
    assert (local[:, (j > i) | (j <= i - 3)] == 0).all()  # window 3: the token and 2 before
    assert (full[:, j <= i] > 0).all() and (full[:, j > i] == 0).all()
    record = ours["layers"][0].attention
    names = [s.name for s in record.stages]
    assert names[names.index("V") + 1 : names.index("W_raw")] == [
        "Q_norm",
        "K_norm",
        "Q_rot",
        "K_rot",
    ]
    # the grouped heads: query heads 0, 1 read key/value head 0; 2, 3 read head 1
    assert record["K"].shape[0] == 2 and record["Q"].shape[0] == 4


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


def test_the_scaled_rotary_fixtures_say_what_they_scale():
    from attn_cli.models._decoder import describe

    phi3 = describe(json.loads((FIXTURES / "tiny_phi3" / "config.json").read_text()))
    rope = phi3["rope"]["sliding_attention"]
    assert rope["type"] == "longrope" and rope["rotary_dim"] == 4  # half of head_dim 8
    # max 128 over an original 4 tokens: √(1 + ln 32 / ln 4) = √3.5
    assert rope["attention_factor"] == pytest.approx(3.5**0.5)
    assert phi3["sliding_window"] == 5
    qwen2 = describe(json.loads((FIXTURES / "tiny_qwen2" / "config.json").read_text()))
    rope = qwen2["rope"]["full_attention"]
    assert rope["type"] == "yarn" and rope["factor"] == 4.0
    assert rope["attention_factor"] == pytest.approx(0.1 * np.log(4.0) + 1.0)


def test_phi3_switches_to_its_long_factors_past_the_original_length():
    """13 tokens run past the 4 the fixture was 'pretrained' at: the long factors. The first 4
    tokens alone use the short ones, so the first rows of their map differ from the full run's
    (with one set of factors, causal rows would be equal)."""
    d = FIXTURES / "tiny_phi3"
    ids = np.load(d / "expected.npz")["ids"].tolist()
    long_run = attention_maps(run(d, ids))
    short_run = attention_maps(run(d, ids[:4]))
    assert np.abs(long_run[:, :, :4, :4] - short_run).max() > 1e-3
    same_factors = attention_maps(run(d, ids[:5]))  # 5 > 4: long factors too
    np.testing.assert_allclose(
        long_run[:, :, :5, :5], same_factors, atol=1e-5
    )  # float32 maps: BLAS may order sums differently

"""Every family's forward pass yields attention records: one self-attention block per layer over
the tokens, its stages in order with their kinds, its map, output and residual stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attn_cli
from attn_cli import records
from attn_cli.attention import AttentionParams, causal_mask
from attn_cli.methods.registry import forward
from attn_cli.models.layers import layer_norm

FIXTURES = Path(__file__).parent / "fixtures"
IDS = [5, 17, 3, 22, 8, 11]  # within every fixture's vocabulary (tiny_bert: 30)


@pytest.mark.parametrize(
    "name", ["tiny_bert", "tiny_gpt2", "tiny_llama", "tiny_gemma3", "tiny_qwen2", "tiny_phi3"]
)
def test_every_family_yields_one_self_attention_record_per_layer(name):
    model = attn_cli.load_model(FIXTURES / name)
    d = model.dims
    layers = forward(model.parts(), IDS)
    assert len(layers) == d.layers
    n = len(IDS)
    resid = None
    for layer in layers:
        (rec,) = layer.blocks
        assert layer.attention is rec
        assert (rec.kind, rec.block, rec.query, rec.key) == ("self", None, "tokens", "tokens")
        assert (rec.heads, rec.kv) == (d.heads, d.kv_heads)
        names = [s.name for s in rec.stages]
        assert names[:4] == ["X", "Q", "K", "V"] and names[-2:] == ["W", "Y"]
        kinds = {s.name: s.kind for s in rec.stages}
        assert {kinds[s] for s in names if s.startswith("W_")} == {"scores"}
        assert rec.map_kind == kinds["W"] == "weights"
        assert rec.weights.shape == (d.heads, n, n)
        np.testing.assert_allclose(rec.weights.sum(-1), 1.0, atol=1e-5)
        assert rec["K"].shape[:2] == rec["V"].shape[:2] == (d.kv_heads, n)
        assert rec.stage("K").rows == records.KEY and rec.stage("Q").rows == records.QUERY
        assert rec.output is not None and rec.output.shape == (n, d.hidden)
        # the residual stream entering the block is the previous layer's output
        if resid is not None:
            np.testing.assert_array_equal(rec.resid, resid)
        resid = layer.out
        above = np.triu(np.ones((n, n), dtype=bool), 1)
        assert ("W_masked" in rec) == model.family.causal
        assert np.all(rec.weights[:, above] == 0) == model.family.causal


def test_a_pre_norm_layer_records_x_as_the_normalised_residual_and_bert_as_the_residual_itself():
    gpt2 = attn_cli.load_model(FIXTURES / "tiny_gpt2")
    rec = forward(gpt2.parts(), IDS)[0].attention
    w = gpt2.weights
    eps = gpt2.config.get("layer_norm_epsilon", 1e-5)
    np.testing.assert_allclose(
        rec["X"], layer_norm(rec.resid, w["h.0.ln_1.weight"], w["h.0.ln_1.bias"], eps), atol=1e-6
    )
    bert = attn_cli.load_model(FIXTURES / "tiny_bert")
    rec = forward(bert.parts(), IDS)[0].attention
    np.testing.assert_array_equal(rec["X"], rec.resid)


def test_the_recipe_records_what_it_computed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6))
    p = AttentionParams(
        rng.normal(size=(6, 8)), rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), 4, kv_heads=2,
        w_o=rng.normal(size=(8, 6)),
    )  # fmt: skip
    rec = records.multi_head_attention(x, p, causal_mask(5), scale=0.5, parameters=True)
    assert [s.name for s in rec.stages] == [
        "X", "W_q", "W_k", "W_v", "Q", "K", "V", "W_raw", "W_scaled", "W_masked", "W", "Y",
        "Y_concat", "W_o", "O",
    ]  # fmt: skip
    np.testing.assert_array_equal(rec["W_q"][3], p.w_q[:, 6:8])  # head 3's columns
    np.testing.assert_array_equal(rec["W_k"][1], p.w_k[:, 2:4])  # key/value head 1's
    np.testing.assert_allclose(rec["W_scaled"], rec["W_raw"] * 0.5)
    # head 3 reads key/value head 1: its scores are its queries against those keys
    np.testing.assert_allclose(rec["W_raw"][3], rec["Q"][3] @ rec["K"][1].T)
    y = np.concatenate([rec["W"][h] @ rec["V"][h // 2] for h in range(4)], axis=1)
    np.testing.assert_allclose(rec["Y_concat"], y)
    np.testing.assert_allclose(rec.output, y @ p.w_o)
    assert rec["O"] is rec.output
    assert rec.facts["scale"] == 0.5 and rec.facts["d_k"] == 2


def test_a_layer_with_several_blocks_has_no_single_attention():
    rec = records.toy_attention(np.eye(3))
    layer = records.LayerRecord([rec, rec], np.eye(3))
    with pytest.raises(ValueError, match="2 attention blocks"):
        _ = layer.attention
    with pytest.raises(KeyError, match="no stage 'Q'"):
        rec.stage("Q")

"""Encoder–decoder models against transformers: tiny random T5, FLAN-T5-style (gated GELU, own
LM head), BART, mBART (pre-LN) and Marian (sinusoidal positions) built in the test. Every
encoder, decoder and cross-attention map within 1e-5 of `output_attentions`, logits within
1e-4, greedy generation token for token as `generate(do_sample=False)`; each special feature
switched off changes the maps. Then the public face: `Model.trace(text, target=…)`,
`generate=True`, the CLI's --target/--generate, the views and a saved trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import require
from tests.seq2seq_utils import build, ours, reference, reference_generate

SRC = [5, 17, 40, 3, 60, 42, 42, 7, 80, 64, 12, 1]
TGT = [0, 9, 33, 21, 9, 70, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")
    built: dict[str, Path] = {}

    def get(name: str, **overrides: Any) -> Path:
        key = name + json.dumps(overrides, sort_keys=True)
        if key not in built:
            built[key] = build(name, tmp_path_factory.mktemp(name), **overrides)
        return built[key]

    return get


def decoder_inputs(d: Path) -> list[int]:
    """TGT with the model's own decoder start token first."""
    start = json.loads((d / "config.json").read_text())["decoder_start_token_id"]
    return [start, *TGT[1:]]


def check_against_reference(d: Path, enc_layers: int = 2, dec_layers: int = 3) -> dict[str, Any]:
    tgt = decoder_inputs(d)
    ref, got = reference(d, SRC, tgt), ours(d, SRC, tgt)
    shapes = {
        "encoder": (enc_layers, 4, len(SRC), len(SRC)),
        "decoder": (dec_layers, 4, len(tgt), len(tgt)),
        "cross": (dec_layers, 4, len(tgt), len(SRC)),
    }
    for block, shape in shapes.items():
        assert got[block].shape == ref[block].shape == shape, block
        np.testing.assert_allclose(got[block], ref[block], atol=1e-5, err_msg=block)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4)
    # the decoder's self-attention is causal; every row of every map sums to 1
    assert np.all(np.triu(got["decoder"], 1) == 0)
    for block in shapes:
        np.testing.assert_allclose(got[block].sum(-1), 1.0, atol=1e-5)
    return got


@pytest.mark.reference
@pytest.mark.parametrize("name", ["t5", "flan-t5"])
def test_t5_maps_and_logits_match_transformers(tiny, name):
    got = check_against_reference(tiny(name))
    enc, dec = got["enc_layers"], got["dec_layers"]
    # blocks and axes: encoder over the source, decoder over the target, cross between them
    assert [(b.block, b.kind, b.query, b.key) for b in enc[0].blocks] == [
        ("encoder", "self", "source", "source")
    ]
    assert [(b.block, b.kind, b.query, b.key) for b in dec[0].blocks] == [
        ("decoder", "self", "tokens", "tokens"),
        ("cross", "cross", "tokens", "source"),
    ]
    # No √d_k: the scaled scores are the raw ones; the position bias is added after them and
    # is layer 0's table in every layer (the same B in layers 0 and 1).
    rec0, rec1 = enc[0].blocks[0], enc[1].blocks[0]
    np.testing.assert_array_equal(rec0["W_scaled"], rec0["W_raw"])
    bias0 = rec0["W_biased"] - rec0["W_scaled"]
    bias1 = rec1["W_biased"] - rec1["W_scaled"]
    np.testing.assert_allclose(bias0, bias1, atol=1e-6)
    assert "W_biased" not in dec[0].blocks[1]  # cross-attention has no position bias


@pytest.mark.reference
def test_t5_relative_buckets_are_transformers_buckets():
    torch = require("torch")
    require("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    from attn_cli.models.t5 import relative_buckets

    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            ours_b = relative_buckets(150, 170, bidirectional, buckets, distance)
            rel = torch.arange(170)[None, :] - torch.arange(150)[:, None]
            ref = T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
            np.testing.assert_array_equal(ours_b, ref.numpy())


@pytest.mark.reference
def test_t5_without_its_position_bias_the_maps_change(tiny, monkeypatch):
    from attn_cli.models import t5

    d = tiny("t5")
    before = ours(d, SRC, TGT)
    monkeypatch.setattr(t5, "position_bias", lambda w, a, stack, n_q, n_k: np.zeros((1, 1, 1)))
    after = ours(d, SRC, TGT)
    assert np.abs(before["encoder"] - after["encoder"]).max() > 1e-2
    assert np.abs(before["decoder"] - after["decoder"]).max() > 1e-2


@pytest.mark.reference
def test_flan_t5_head_is_not_scaled_and_t5_head_is(tiny):
    from attn_cli.models.t5 import T5Args

    t5 = T5Args.parse(json.loads((tiny("t5") / "config.json").read_text()))
    flan = T5Args.parse(json.loads((tiny("flan-t5") / "config.json").read_text()))
    assert t5.scaled_head and not flan.scaled_head and flan.gated and flan.act == "gelu_new"


@pytest.mark.reference
@pytest.mark.parametrize(
    "name, options",
    [
        ("t5", {}),
        ("t5", {"no_repeat_ngram_size": 1, "max_new_tokens": 12}),
        ("flan-t5", {"no_repeat_ngram_size": 2, "min_length": 6}),
    ],
)
def test_greedy_generation_is_transformers_generate(tiny, name, options):
    import attn_cli

    d = tiny(name, seed=len(options))
    if options:
        gen = json.loads((d / "generation_config.json").read_text())
        (d / "generation_config.json").write_text(json.dumps(gen | options))
    m = attn_cli.load_model(d)
    text = " ".join(f"w{i}" for i in SRC[:-1])
    t = m.trace(text, generate=True)
    expected = reference_generate(d, SRC)
    assert t.token_ids == expected
    if options:  # kept from repeating one token: a sequence that tests something
        assert len(set(expected)) > 4
    assert t.config["generated"]["stopped"] in ("eos", "max_length")
    # the maps are those of the generated sequence, as transformers computes them
    ref = reference(d, SRC, expected)
    for block in ("encoder", "decoder", "cross"):
        np.testing.assert_allclose(t.attention(block=block), ref[block], atol=1e-5)


@pytest.mark.reference
def test_trace_with_a_target_has_every_block_with_its_axes(tiny):
    import attn_cli

    m = attn_cli.load_model(tiny("t5"))
    t = m.trace("w5 w17 w40 w3", target="w9 w33")
    assert t.tokens == ["<pad>", "w9", "w33", "</s>"]  # the decoder's start token, the target
    assert t.axes["source"].labels == ["w5", "w17", "w40", "w3", "</s>"]
    assert t.blocks == ["encoder", "decoder", "cross"]
    assert t.attention(block="encoder").shape == (2, 4, 5, 5)
    assert t.attention(block="decoder").shape == (3, 4, 4, 4)
    assert t.attention(block="cross").shape == (3, 4, 4, 5)
    w = t.step("W", layer=1, head=2, block="cross")
    assert (w.row_axis, w.col_axis, w.rows, w.cols) == (
        "tokens",
        "source",
        t.tokens,
        t.axes["source"].labels,
    )
    enc = t.step("W", layer=0, head=0, block="encoder")
    assert (enc.row_axis, enc.col_axis) == ("source", "source")
    assert {s.block for s in t.steps if s.layer is not None} == {"encoder", "decoder", "cross"}
    with pytest.raises(InputError, match="block=None: step W is present for blocks"):
        t.attention()
    with pytest.raises(InputError, match="encoder–decoder model .*target"):
        m.trace("w5 w17")
    with pytest.raises(InputError, match="give one of them"):
        m.trace("w5", target="w9", generate=True)

"""Encoder–decoder models against transformers: tiny random T5, FLAN-T5-style (gated GELU, own
LM head), BART, mBART (pre-LN) and Marian (sinusoidal positions) built in the test. Every
encoder, decoder and cross-attention map within 1e-5 of `output_attentions`, logits within
1e-4, greedy generation token for token as `generate(do_sample=False)`; each special feature
switched off changes the maps. Then the public face: `Model.trace(text, target=…)`,
`generate=True`, the CLI's --target/--generate, the views and a saved trace."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attn_cli.errors import InputError
from tests.conftest import require
from tests.decoder_utils import built_once
from tests.seq2seq_utils import build, ours, reference, reference_generate

SRC = [5, 17, 40, 3, 60, 42, 42, 7, 80, 64, 12, 1]
TGT = [0, 9, 33, 21, 9, 70, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require("torch")
    require("transformers")
    return built_once(tmp_path_factory, lambda d, name, **overrides: build(name, d, **overrides))


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
@pytest.mark.parametrize("name", ["bart", "mbart", "marian"])
def test_bart_family_maps_and_logits_match_transformers(tiny, name):
    got = check_against_reference(tiny(name))
    assert [(b.block, b.kind, b.query, b.key) for b in got["dec_layers"][2].blocks] == [
        ("decoder", "self", "tokens", "tokens"),
        ("cross", "cross", "tokens", "source"),
    ]
    # scores divided by √d_head (32 / 4 heads = 8)
    rec = got["enc_layers"][0].blocks[0]
    np.testing.assert_allclose(rec["W_scaled"], rec["W_raw"] / np.sqrt(8), rtol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize(
    "name, change",
    [
        ("bart", {"scale_embedding": False}),  # √d_model-scaled embeddings
        ("marian", {"scale_embedding": False}),
        ("bart", {"spec": "offset"}),  # the learned positions' 2-row offset
        ("mbart", {"spec": "post-norm"}),  # LayerNorm before each sublayer
        ("marian", {"spec": "no-positions"}),  # sinusoidal positions
    ],
)
def test_bart_family_features_change_the_maps(tiny, monkeypatch, name, change):
    from attn_cli.models import _bart

    d = tiny(name)
    before = ours(d, SRC, TGT)
    if "scale_embedding" in change:
        cfg = json.loads((d / "config.json").read_text())
        other = d.parent / (d.name + "-changed")
        other.mkdir(exist_ok=True)
        for f in d.iterdir():
            (other / f.name).write_bytes(f.read_bytes())
        (other / "config.json").write_text(json.dumps(cfg | change))
        after = ours(other, SRC, TGT)
    elif change["spec"] == "offset":
        import attn_cli.models.bart as bart

        monkeypatch.setattr(_bart, "OFFSET", 0)  # (the checkpoint's table has 2 rows more)
        unchecked = dataclasses.replace(bart.FAMILY, check=lambda w, cfg: None)
        after = ours(d, SRC, TGT, family=unchecked)
    elif change["spec"] == "post-norm":
        import attn_cli.models.mbart as mbart

        spec = dataclasses.replace(mbart.SPEC, pre_norm=False)
        after = ours(d, SRC, TGT, family=_bart.family("mbart", ("mbart",), spec))
    else:
        monkeypatch.setattr(_bart, "sinusoidal_positions", lambda n, dim: np.zeros((n, dim)))
        after = ours(d, SRC, TGT)
    assert np.abs(before["encoder"] - after["encoder"]).max() > 1e-2
    assert np.abs(before["cross"] - after["cross"]).max() > 1e-2


@pytest.mark.reference
def test_marian_positions_are_transformers_sinusoids():
    require("torch")
    require("transformers")
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    from attn_cli.models._bart import sinusoidal_positions

    for d in (32, 33):
        ref = MarianSinusoidalPositionalEmbedding(50, d).create_weight().numpy()
        np.testing.assert_allclose(sinusoidal_positions(50, d), ref, atol=1e-6)


@pytest.mark.reference
def test_final_logits_bias_is_added(tiny):
    from attn_cli.models._bart import logits
    from attn_cli.models.weights import SafetensorsWeights

    d = tiny("bart")
    w = SafetensorsWeights(d, "decoder.layers.0.encoder_attn.q_proj.weight")
    h = np.ones((1, 32), dtype=np.float32)
    bias = w["final_logits_bias"][0]
    assert np.abs(bias).max() > 0.1
    np.testing.assert_allclose(logits(w, h, {}) - h @ w["shared.weight"].T, bias[None], atol=1e-5)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["t5", "flan-t5", "mt5"])
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
    # switched: the tied head's outputs scaled by d_model^-0.5, or not
    from attn_cli.models.t5 import logits
    from attn_cli.models.weights import SafetensorsWeights

    d = tiny("t5")
    cfg = json.loads((d / "config.json").read_text())
    w = SafetensorsWeights(d, "shared.weight")
    h = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    plain = logits(w, h, cfg | {"scale_decoder_outputs": False})
    np.testing.assert_allclose(logits(w, h, cfg), plain / np.sqrt(32), rtol=1e-5, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize(
    "name, options",
    [
        ("t5", {}),
        ("t5", {"no_repeat_ngram_size": 1, "max_new_tokens": 12}),
        ("flan-t5", {"no_repeat_ngram_size": 2, "min_length": 6}),
        ("bart", {"no_repeat_ngram_size": 1}),  # forced_eos_token_id at max_length − 1
        ("mbart", {"no_repeat_ngram_size": 1, "forced_bos_token_id": 5, "max_length": 9}),
        ("marian", {"bad_words_ids": [[1]], "suppress_tokens": [7, 8], "no_repeat_ngram_size": 2}),
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
    src = t.config["source_ids"]  # the tokenizer's bos/eos around the words
    assert src[-1] == json.loads((d / "config.json").read_text())["eos_token_id"]
    expected = reference_generate(d, src)
    assert t.token_ids == expected
    if options:  # kept from repeating one token: a sequence that tests something
        assert len(set(expected)) > 4
    assert t.config["generated"]["stopped"] in ("eos", "max_length")
    # the maps are those of the generated sequence, as transformers computes them
    ref = reference(d, src, expected)
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


# ---------------------------------------------------------------- views, saved traces, the CLI


@pytest.fixture(scope="module")
def t5_trace(tiny):
    import attn_cli

    return attn_cli.load_model(tiny("t5")).trace("w5 w17 w40 w3", target="w9 w33")


SOURCE = ["w5", "w17", "w40", "w3", "</s>"]
TARGET = ["<pad>", "w9", "w33", "</s>"]


def rendered(trace, view: str, width: int = 120) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    trace.show(view=view, console=Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


@pytest.mark.reference
def test_every_view_labels_cross_maps_with_target_rows_and_source_columns(t5_trace, tmp_path):
    from attn_cli.export import loads_traces

    t = t5_trace
    steps = rendered(t, "steps")
    cross = steps.split("W = softmax(W_scaled) per row   cross · layer 1 · head 2")[1]
    header = cross.splitlines()[1].split()
    assert header == SOURCE
    assert [ln.split()[0] for ln in cross.splitlines()[3:7]] == TARGET
    assert "where each token looks in the source." in cross
    assert "W_biased = W_scaled + B (relative position bias)   encoder · layer 0 · head 0" in steps
    assert "W_masked = W_biased, −∞ above the diagonal   decoder · layer 0 · head 0" in steps
    heat = rendered(t, "heatmap")
    assert "W heatmap   cross · layer 2 · head 3" in heat
    grid = rendered(t, "grid")
    assert "encoder attention: 2 layers × 4 heads, each map max-pooled to 5×5" in grid
    assert "decoder attention: 3 layers × 4 heads, each map max-pooled to 4×4" in grid
    assert "cross attention: 3 layers × 4 heads, each map max-pooled to 4×5" in grid
    top = rendered(t, "top")
    assert "from W (source tokens)   cross · layer 0 · head 0" in top
    # geometry pairs the encoder's input with the encoder's output (both over the source)
    from attn_cli.render.pictures import geometry_pair

    pair = geometry_pair(t)
    assert pair is not None and pair[0].rows == pair[1].rows == SOURCE
    # saved and loaded: the same trace, the same views
    path = tmp_path / "t5.json"
    t.save(path)
    again = loads_traces(path.read_bytes())[0]
    assert again.axes["source"].labels == SOURCE and again.tokens == TARGET
    for block in ("encoder", "decoder", "cross"):
        np.testing.assert_allclose(
            again.attention(block=block), t.attention(block=block), atol=1e-6
        )
    for view in ("steps", "overview", "summary", "grid", "heatmap"):
        assert rendered(again, view) == rendered(t, view), view


@pytest.mark.reference
def test_a_saved_seq2seq_trace_validates_against_the_schema(t5_trace, tmp_path):
    jsonschema = require("jsonschema")
    from attn_cli.export import dumps_traces

    schema = json.loads(
        (Path(__file__).parent.parent / "attn_cli/schema/trace-v2.schema.json").read_text()
    )
    doc = json.loads(dumps_traces([t5_trace]))
    docs = doc if isinstance(doc, list) else [doc]
    for d in docs:
        jsonschema.validate(d, schema)


@pytest.mark.reference
def test_page_and_browser_switch_between_the_three_blocks(t5_trace, tmp_path):
    from attn_cli.render.interactive import page_data

    steps = page_data([t5_trace])["traces"][0]["steps"]
    # a map's rows and columns are the target tokens unless it says otherwise
    maps = {
        (s["block"], s.get("rows", TARGET) == SOURCE, s.get("cols", TARGET) == SOURCE)
        for s in steps
        if s["map"]
    }
    assert ("encoder", True, True) in maps and ("cross", False, True) in maps
    assert ("decoder", False, False) in maps

    import asyncio

    pytest.importorskip("textual")
    from attn_cli.browse.app import BrowseApp
    from attn_cli.browse.widgets import Heatmap

    async def run() -> None:
        app = BrowseApp([t5_trace])
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.main
            assert main.index.block == "encoder"
            assert main.query_one(Heatmap)._col_labels == SOURCE
            await pilot.press("b")
            assert main.index.block == "decoder"
            assert main.query_one(Heatmap)._col_labels == TARGET
            await pilot.press("b")
            assert main.index.block == "cross"
            heat = main.query_one(Heatmap)
            assert heat._row_labels == TARGET and heat._col_labels == SOURCE

    asyncio.run(run())


@pytest.mark.reference
def test_page_head_view_shows_target_left_and_source_right(t5_trace, tmp_path):
    import os

    from tests.test_interactive import ARGS, CHROMIUM, Opened, as_numbers

    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    from attn_cli.render.interactive import interactive_html

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        o = Opened(browser, interactive_html([t5_trace]), tmp_path)
        page = o.page
        options = page.locator("#step option").all_text_contents()
        assert {"encoder W", "decoder W", "cross W"} <= set(options)
        page.select_option("#step", "cross W")
        left = page.eval_on_selector_all("#hv-left .tok", "ts => ts.map(t => t.title)")
        right = page.eval_on_selector_all("#hv-right .tok", "ts => ts.map(t => t.title)")
        assert left == TARGET and right == SOURCE
        o.hover_token("q", 2)
        expected = t5_trace.attention(block="cross")[0, 0, 2]
        assert np.all(np.abs(as_numbers(o.values("k")) - expected) <= 5e-3)
        page.select_option("#step", "encoder W")
        left = page.eval_on_selector_all("#hv-left .tok", "ts => ts.map(t => t.title)")
        assert left == SOURCE
        o.check_clean()
        page.close()
        browser.close()


@pytest.mark.reference
def test_cli_target_and_generate(tiny, tmp_path):
    from tests.conftest import invoke

    d = str(tiny("t5"))
    r = invoke(
        [
            "explain",
            "w5 w17 w40 w3",
            "--model",
            d,
            "--target",
            "w9 w33",
            "--layer",
            "1",
            "--head",
            "0",
            "--steps",
            "W",
        ]
    )
    assert r.exit_code == 0, r.stderr
    assert "W = softmax(W_scaled) per row   cross · layer 1 · head 0" in r.stdout
    out = tmp_path / "gen.json"
    r = invoke(
        [
            "explain",
            "w5 w17 w40 w3",
            "--model",
            d,
            "--generate",
            "--max-length",
            "6",
            "--json",
            str(out),
            "--view",
            "grid",
        ]
    )
    assert r.exit_code == 0, r.stderr
    doc = json.loads(out.read_text())
    doc = doc[0] if isinstance(doc, list) else doc
    assert len(doc["token_ids"]) == 6 and doc["config"]["generated"]["stopped"] == "max_length"
    r = invoke(["show", str(out), "--view", "grid"])
    assert r.exit_code == 0 and "cross attention: 3 layers × 4 heads" in r.stdout
    for args, message in (
        ([], "give the target with --target or let it write one with --generate"),
        (["--target", "w9", "--generate"], "--target and --generate: give one of them"),
        (["--method", "rollout", "--target", "w9"], "--method: not available for encoder–decoder"),
        (
            ["--max-length", "3", "--target", "w9"],
            "--max-length 3: a positive number, with --generate",
        ),
    ):
        r = invoke(["explain", "w5", "--model", d, *args])
        assert (
            r.exit_code != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
        ), (args, r.stderr)
    r = invoke(["explain", "w5", "--target", "w9"])
    assert r.exit_code != 0 and "apply with --model" in r.stderr


@pytest.mark.reference
def test_a_decoder_with_more_heads_than_the_encoder(tiny):
    import attn_cli

    d = tiny("bart", decoder_attention_heads=8)
    got = ours(d, SRC, decoder_inputs(d))
    ref = reference(d, SRC, decoder_inputs(d))
    for block in ("encoder", "decoder", "cross"):
        np.testing.assert_allclose(got[block], ref[block], atol=1e-5)
    t = attn_cli.load_model(d).trace("w5 w17", target="w9")
    assert t.attention(block="encoder").shape[1] == 4
    assert t.attention(block="cross").shape[1] == t.attention(block="decoder").shape[1] == 8

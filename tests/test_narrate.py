"""The step catalogue: every stage a record can hold, worded from the record alone (grouped
key/value heads, a model's own scale, soft-capping, sliding windows, q/k stages), and the
record contract itself: rectangular maps, partial weights, mixing maps, a family's own words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from attn_cli import attention as att
from attn_cli import narrate, records
from attn_cli.models.gemma import STAGE_TEXTS as GEMMA_TEXTS
from attn_cli.records import KEY, KV_HEADS, QUERY, QUERY_HEADS, AttentionRecord, Dims
from attn_cli.trace import MAP_KINDS, Axis

LABELS = list("abcdef")
FIXTURES = Path(__file__).parent / "fixtures"
MODEL = narrate.Voice(False)
LAYER_X = {"X": narrate.layer_input("f", lambda i: "d")}


def layer(**kw):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8))
    p = att.AttentionParams(
        rng.normal(size=(8, 8)), rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), 4, kv_heads=2
    )
    return x, records.multi_head_attention(x, p, **kw)


def steps_of(record, i=0, heads=(0,), texts=None, **kw):
    texts = {**LAYER_X, **(texts or {})}
    one = records.LayerRecord([record], record["X"])
    return narrate.model_layer_steps(one, i, heads, narrate.token_axes(LABELS), MODEL, texts, **kw)


def by_name(steps):
    return {(s.name, s.head): s for s in steps}


def test_grouped_heads_say_which_query_heads_share_a_key_value_head():
    x, m = layer(mask=att.causal_mask(6))
    steps = by_name(steps_of(m, 3, [2]))
    k = steps[("K", 2)]
    assert "key/value head 1, shared by query heads 2–3" in k.description
    np.testing.assert_array_equal(k.data, m["K"][1])  # head 2 reads key/value head 2 // 2 = 1
    assert steps[("W_masked", 2)].formula == "W_scaled, −∞ above the diagonal"
    assert all(s.layer == 3 for s in steps.values())
    assert steps[("X", None)].description == "Layer 3's input: one 8-number vector per token" + "d"


def test_a_models_own_scale_soft_cap_and_sliding_window_are_named():
    x, m = layer(mask=att.sliding_window_mask(6, 3), scale=0.25, cap=2.0)
    steps = by_name(steps_of(m, texts=GEMMA_TEXTS))
    assert steps[("W_scaled", 0)].formula == "W_raw·0.25"
    np.testing.assert_allclose(steps[("W_scaled", 0)].data, steps[("W_raw", 0)].data * 0.25)
    capped = steps[("W_capped", 0)]
    assert capped.formula == "2·tanh(W_scaled/2)"
    assert np.all(np.abs(capped.data) < 2.0)
    masked = steps[("W_masked", 0)]
    assert masked.formula == "W_capped, −∞ above the diagonal and 3+ tokens back"
    assert "itself and the 2 tokens before it" in masked.description
    w = steps[("W", 0)].data
    assert w[5, 2] == 0 and w[5, 3] > 0  # token 5 sees 3, 4, 5 only


def test_a_stage_without_words_is_refused_by_name():
    _, m = layer(cap=2.0)  # soft-capping's words are Gemma's (models/gemma.py), not the catalogue's
    with pytest.raises(KeyError, match="'W_capped' has no words"):
        steps_of(m)


def test_a_familys_own_stage_words_come_from_its_module(tmp_path):
    """Gemma 2's soft-capping is described in models/gemma.py; a model run uses those words."""
    import attn_cli

    d = tmp_path / "gemma2"
    shutil.copytree(FIXTURES / "tiny_gemma3", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        model_type="gemma2",
        attn_logit_softcapping=5.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    (d / "config.json").write_text(json.dumps(cfg))
    model = attn_cli.load_model(d)
    assert model.family.stage_texts["W_capped"] is GEMMA_TEXTS["W_capped"]
    t = model.trace("the cat sat", layers=[0], heads=[1])
    capped = t.step("W_capped")
    assert capped.formula == "5·tanh(W_scaled/5)"
    assert capped.description.startswith("Soft-capping: scores are squashed smoothly into (−5, 5)")
    assert (capped.layer, capped.head) == (0, 1)
    np.testing.assert_allclose(capped.data, 5 * np.tanh(t.step("W_scaled").data / 5), rtol=1e-6)
    assert t.step_names.index("W_capped") == t.step_names.index("W_scaled") + 1


def test_hook_stages_become_named_steps_in_order():
    def hook(q, k):
        qn, kn = (
            q / np.linalg.norm(q, axis=-1, keepdims=True),
            k / np.linalg.norm(k, axis=-1, keepdims=True),
        )
        return [("norm", qn, kn), ("rot", qn[:, ::-1], kn[:, ::-1])]

    x, m = layer(qk_hook=hook)
    steps = steps_of(m, heads=[1])
    names = [s.name for s in steps]
    assert names == [
        "X",
        "Q",
        "K",
        "V",
        "Q_norm",
        "K_norm",
        "Q_rot",
        "K_rot",
        "W_raw",
        "W_scaled",
        "W",
        "Y",
    ]
    found = by_name(steps)
    assert found[("Q_rot", 1)].formula == "RoPE(Q_norm, position)"
    assert found[("K_norm", 1)].formula == "RMSNorm(K)"
    assert found[("W_raw", 1)].formula == "Q_rot·K_rotᵀ"
    # The scores are those of the last stage.
    q, k = m["Q_rot"][1], m["K_rot"][0]
    np.testing.assert_allclose(found[("W_raw", 1)].data, np.einsum("id,jd->ij", q, k))


def test_step_filter_keeps_only_the_named_steps():
    x, m = layer()
    keep = {"W", "Y"}.__contains__
    steps = steps_of(m, heads=[0, 1], keep=keep)
    assert [(s.name, s.head) for s in steps] == [("W", 0), ("Y", 0), ("W", 1), ("Y", 1)]


def test_every_step_name_is_in_the_catalogue():
    x, m = layer(mask=att.sliding_window_mask(6, 3), cap=1.0)
    names = {s.name for s in steps_of(m, texts=GEMMA_TEXTS)}
    assert names <= set(narrate.STEP_NAMES)


def test_every_model_step_says_its_block_and_axes():
    x, m = layer(mask=att.causal_mask(6))
    prefix = {"X": "d", "Q": "q", "K": "k", "V": "v", "Y": "v"}
    for s in steps_of(m, heads=[0, 3]):
        assert s.block is None
        assert s.row_axis == "tokens" and s.rows == LABELS  # every stage's rows are tokens here
        if s.kind in MAP_KINDS:
            assert (s.col_axis, s.cols) == ("tokens", LABELS)
        else:
            width = s.data.shape[1]
            assert s.col_axis is None and s.cols == [f"{prefix[s.name]}{j}" for j in range(width)]


# --- the record contract: records that are not one square softmax map --------------------------

SOURCE = ["Das", "Haus", "ist", "wunder", "bar"]
TARGET = ["The", "house", "is"]
AXES = {
    "tokens": Axis("tokens", "text", TARGET),
    "source": Axis("source", "text", SOURCE),
}


def sink_cross_record():
    """A cross-attention block, 3 target queries × 5 source keys, two query heads sharing one
    key/value head, and a sink: one extra logit per head that joins each row's softmax and is
    dropped, so the weights over the real keys sum to less than 1."""
    rng = np.random.default_rng(3)
    x, src = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    q = att.split_heads(x @ rng.normal(size=(4, 4)), 2)  # (2, 3, 2)
    k = att.split_heads(src @ rng.normal(size=(4, 2)), 1)  # (1, 5, 2)
    v = att.split_heads(src @ rng.normal(size=(4, 2)), 1)
    sink = np.array([0.5, 2.0])  # learned, one per head
    logits = att.scores(q, att.repeat_kv(k, 2)) / np.sqrt(2)  # (2, 3, 5)
    full = att.row_softmax(
        np.concatenate([logits, np.broadcast_to(sink[:, None, None], (2, 3, 1))], -1)
    )
    w, to_sink = full[..., :5], full[..., 5:]
    rec = AttentionRecord("cross", "tokens", "source", heads=2, kv_heads=1, block="cross")
    rec.add("X", x)
    rec.add("Q", q, heads=QUERY_HEADS, cols=Dims("q"))
    rec.add("K", k, heads=KV_HEADS, rows=KEY, cols=Dims("k"))
    rec.add("V", v, heads=KV_HEADS, rows=KEY, cols=Dims("v"))
    rec.add("W_scaled", logits, "scores", QUERY_HEADS, QUERY, KEY)
    rec.add("W", w, "partial_weights", QUERY_HEADS, QUERY, KEY)
    rec.add("sink", to_sink, "partial_weights", QUERY_HEADS, QUERY, ("⟂sink",))
    rec.output = rec.add("Y", w @ att.repeat_kv(v, 2), heads=QUERY_HEADS, cols=Dims("v"))
    return rec


# The words a family with sinks would keep in its own module.
SINK_TEXTS = {
    "X": lambda c: ("target hidden states", "The target tokens' vectors."),
    "W_scaled": lambda c: ("Q·Kᵀ/√d_k", "Scores of every target token against every source token."),
    "W": lambda c: (
        f"softmax([{c.logits()}, s])[:, :n_key]",
        f"Head {c.h}: weights over the source tokens; the rest of each row went to the sink.",
    ),
    "sink": lambda c: ("softmax([W_scaled, s])[:, n_key]", f"Head {c.h}'s mass to the sink."),
}


def test_a_rectangular_cross_record_with_a_sink_narrates_with_its_axes():
    rec = sink_cross_record()
    steps = by_name(narrate.record_steps(rec, AXES, MODEL, layer=2, texts=SINK_TEXTS))
    assert [name for name, head in steps if head == 1] == [
        "Q",
        "K",
        "V",
        "W_scaled",
        "W",
        "sink",
        "Y",
    ]
    w = steps[("W", 1)]
    assert (w.kind, w.shape, w.rows, w.cols) == ("partial_weights", (3, 5), TARGET, SOURCE)
    assert (w.row_axis, w.col_axis, w.block, w.layer) == ("tokens", "source", "cross", 2)
    assert w.formula == "softmax([W_scaled, s])[:, :n_key]"
    sink = steps[("sink", 1)]
    assert (sink.kind, sink.shape, sink.cols, sink.col_axis) == (
        "partial_weights",
        (3, 1),
        ["⟂sink"],
        None,
    )
    # rows of the real keys sum to less than 1; with the sink's column, to exactly 1
    assert np.all(w.data.sum(-1) < 1)
    np.testing.assert_allclose(w.data.sum(-1) + sink.data[:, 0], 1.0, atol=1e-12)
    # keys run over the source: K's rows are source tokens; both heads read key/value head 0
    k = steps[("K", 1)]
    assert (k.shape, k.rows, k.row_axis, k.cols) == ((5, 2), SOURCE, "source", ["k0", "k1"])
    np.testing.assert_array_equal(k.data, steps[("K", 0)].data)
    q = steps[("Q", 1)]
    assert (q.shape, q.rows, q.row_axis) == ((3, 2), TARGET, "tokens")
    assert "shared by query heads 0–1" in k.description  # the catalogue's words still apply
    x = steps[("X", None)]
    assert (x.shape, x.head, x.block, x.col_axis) == ((3, 4), None, "cross", None)
    np.testing.assert_array_equal(rec.weights, rec["W"])
    assert rec.map_kind == "partial_weights"


def test_a_linear_attention_record_shows_its_mixing_map():
    """A linear-attention layer: no softmax; its output is still A·V with A lower-triangular,
    signed, rows not summing to 1."""
    rng = np.random.default_rng(4)
    n = 4
    q, k, v = (rng.normal(size=(1, n, 3)) for _ in range(3))
    a = np.tril(att.scores(q, k))  # causal linear attention: A = tril(Q·Kᵀ)
    y = a @ v
    recurrent = np.zeros_like(y)  # the same output as the recurrence S_t = S_(t−1) + k_tᵀ·v_t
    state = np.zeros((3, 3))
    for t in range(n):
        state += np.outer(k[0, t], v[0, t])
        recurrent[0, t] = q[0, t] @ state
    np.testing.assert_allclose(y, recurrent, atol=1e-12)
    rec = AttentionRecord("linear", "tokens", "tokens", heads=1, map="A")
    for name, data in (("Q", q), ("K", k), ("V", v)):
        rec.add(name, data, heads=QUERY_HEADS, rows=QUERY if name == "Q" else KEY)
    rec.add("A", a, "mixing", QUERY_HEADS, QUERY, KEY)
    rec.add("Y", y, heads=QUERY_HEADS, cols=Dims("v"))
    texts = {
        "Q": lambda c: ("X·W_q", "queries"),
        "K": lambda c: ("X·W_k", "keys"),
        "V": lambda c: ("X·W_v", "values"),
        "A": lambda c: ("tril(Q·Kᵀ)", "How much each value moves each token; signed."),
        "Y": lambda c: ("A·V", "The mix."),
    }
    axes = {"tokens": Axis("tokens", "text", LABELS[:n])}
    steps = by_name(narrate.record_steps(rec, axes, MODEL, layer=0, texts=texts))
    m = steps[("A", 0)]
    assert (m.kind, m.shape, m.row_axis, m.col_axis) == ("mixing", (n, n), "tokens", "tokens")
    assert m.data.min() < 0 and not np.allclose(m.data.sum(-1), 1)
    assert rec.map_kind == "mixing" and rec.weights is rec["A"]
    np.testing.assert_array_equal(steps[("Y", 0)].data, m.data @ v[0])

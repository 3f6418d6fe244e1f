"""The parametric Q/K/V pipeline (`--qkv`): hand-checked numbers, properties, option errors,
and agreement with torch's scaled_dot_product_attention and MultiheadAttention."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_cli import attention as att
from attn_cli import records
from attn_cli.export import SCHEMA_PATH
from tests.conftest import invoke, require

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def run_json(args: list[str], input: str | None = None) -> dict:
    r = invoke(["explain", *args, "--json", "-", "--steps", "all"], input=input)
    assert r.exit_code == 0, r.stderr
    return orjson.loads(r.stdout)


def get(doc: dict, name: str, head=None) -> np.ndarray:
    for s in doc["steps"]:
        if s["name"] == name and s.get("head") == head:
            return np.array(s["data"], dtype=float)
    raise KeyError((name, head))


@pytest.fixture
def two_tokens(tmp_path):
    """'hi how' as X = I (2-D), and W_q, W_k, W_v chosen so every number is checkable by hand."""
    table = np.zeros((30522, 2))
    table[7632] = [1, 0]  # hi
    table[2129] = [0, 1]  # how
    np.save(tmp_path / "x.npy", table)
    np.savez(
        tmp_path / "w.npz",
        W_q=np.array([[1.0, 1.0], [0.0, 1.0]]),
        W_k=np.array([[1.0, 0.0], [1.0, 1.0]]),
        W_v=np.array([[2.0, 0.0], [0.0, 1.0]]),
    )
    return [
        "hi how",
        "--qkv",
        "--no-norm",
        "-e",
        str(tmp_path / "x.npy"),
        "--weights",
        str(tmp_path / "w.npz"),
    ]


P, Q1 = 0.33023845, 0.66976155  # softmax([0, 1/√2])


def test_hand_checked_two_tokens(two_tokens):
    doc = run_json(two_tokens)
    names = [s["name"] for s in doc["steps"]]
    assert names == ["X", "W_q", "W_k", "W_v", "Q", "K", "V", "W_raw", "W_scaled", "W", "Y"]
    np.testing.assert_allclose(get(doc, "Q"), [[1, 1], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(get(doc, "K"), [[1, 0], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(get(doc, "V"), [[2, 0], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(get(doc, "W_raw"), [[1, 2], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(
        get(doc, "W_scaled"), [[0.7071068, 1.4142136], [0, 0.7071068]], atol=1e-6
    )
    np.testing.assert_allclose(get(doc, "W"), [[P, Q1], [P, Q1]], atol=1e-6)
    np.testing.assert_allclose(get(doc, "Y"), [[0.6604769, Q1], [0.6604769, Q1]], atol=1e-6)
    assert doc["config"]["weights_sha256"] and "seed" not in doc["config"]


def test_hand_checked_causal_and_temperature(two_tokens):
    doc = run_json(two_tokens + ["--causal"])
    masked = next(s for s in doc["steps"] if s["name"] == "W_masked")
    assert masked["data"][0][1] is None  # -inf exports as null
    np.testing.assert_allclose(get(doc, "W"), [[1, 0], [P, Q1]], atol=1e-6)
    np.testing.assert_allclose(get(doc, "Y"), [[2, 0], [0.6604769, Q1]], atol=1e-6)
    hot = run_json(two_tokens + ["--temperature", "0.5"])
    np.testing.assert_allclose(get(hot, "W")[1], [0.1955703, 0.8044297], atol=1e-6)
    assert (
        next(s for s in hot["steps"] if s["name"] == "W")["formula"]
        == "softmax(W_scaled/0.5) per row"
    )


def test_hand_checked_layer_norm(two_tokens):
    """X = I (2-D): each row has mean 1/2 and variance 1/4, so X_norm = ±0.5/√(0.25 + 1e-5)."""
    doc = run_json([a for a in two_tokens if a != "--no-norm"])
    names = [s["name"] for s in doc["steps"]]
    assert names[:3] == ["X", "X_norm", "W_q"]
    z = 0.5 / math.sqrt(0.25 + 1e-5)
    np.testing.assert_allclose(get(doc, "X_norm"), [[z, -z], [-z, z]], rtol=1e-12)
    np.testing.assert_allclose(get(doc, "Q"), [[z, 0], [-z, 0]], rtol=1e-12)  # X_norm·W_q
    assert [s["formula"] for s in doc["steps"] if s["name"] in "QKV"] == [
        "X_norm·W_q",
        "X_norm·W_k",
        "X_norm·W_v",
    ]
    assert doc["config"]["norm"] == "layernorm (eps 1e-05)"
    assert run_json(two_tokens)["config"]["norm"] is False


def test_identity_projections_reproduce_the_toy_pipeline_with_scale(tmp_path):
    """W_q = W_k = W_v = I turns Q/K/V attention into the parameter-free pipeline with --scale:
    on X itself with --no-norm, and on LayerNorm(X) by default (the toy pipeline run on a
    table whose rows were normalised the same way)."""
    d = 384
    eye = np.eye(d)
    np.savez(tmp_path / "id.npz", W_q=eye, W_k=eye, W_v=eye)
    text = "the cat sat on the mat"
    toy = run_json([text, "--scale"])
    qkv = run_json([text, "--qkv", "--no-norm", "--weights", str(tmp_path / "id.npz")])
    # Same maths; only the last bits may differ (different BLAS call shapes).
    for name in ("X", "W_raw", "W_scaled", "W", "Y"):
        np.testing.assert_allclose(get(qkv, name), get(toy, name), rtol=1e-12, atol=1e-15)
    normed = run_json([text, "--qkv", "--weights", str(tmp_path / "id.npz")])
    x = get(toy, "X")
    ln = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(get(normed, "X_norm"), ln, rtol=1e-12, atol=1e-15)
    table = np.zeros((30522, d))
    table[doc_ids(toy)] = ln
    np.save(tmp_path / "ln.npy", table)
    toy_ln = run_json([text, "--scale", "-e", str(tmp_path / "ln.npy")])
    for name in ("W_raw", "W_scaled", "W", "Y"):
        np.testing.assert_allclose(get(normed, name), get(toy_ln, name), rtol=1e-9, atol=1e-12)


def doc_ids(doc: dict) -> list[int]:
    return doc["token_ids"]


def test_multi_head_export_has_every_step_for_both_heads():
    doc = run_json(["the cat sat on the mat", "--qkv", "--heads", "2", "--causal"])
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    per_head = ["W_q", "W_k", "W_v", "Q", "K", "V", "W_raw", "W_scaled", "W_masked", "W", "Y"]
    expected = [("X", None), ("X_norm", None)] + [(n, h) for h in (0, 1) for n in per_head]
    expected += [("Y_concat", None), ("W_o", None), ("O", None)]
    assert [(s["name"], s.get("head")) for s in doc["steps"]] == expected
    cfg = doc["config"]
    assert (
        cfg
        | {
            "pipeline": "qkv",
            "heads": 2,
            "d_k": 192,
            "d_v": 192,
            "causal": True,
            "temperature": 1.0,
            "seed": 0,
            "weights": "seeded",
        }
        == cfg
    )
    y_concat = get(doc, "Y_concat")
    assert y_concat.shape == (6, 384)
    np.testing.assert_allclose(y_concat, np.hstack([get(doc, "Y", 0), get(doc, "Y", 1)]))
    np.testing.assert_allclose(get(doc, "O"), y_concat @ get(doc, "W_o"), atol=1e-9)


def test_seeded_projections_are_deterministic_and_documented():
    a = run_json(["hi how", "--qkv", "-e", "random", "--dim", "4", "--seed", "5"])
    b = run_json(["hi how", "--qkv", "-e", "random", "--dim", "4", "--seed", "5"])
    np.testing.assert_array_equal(get(a, "W_q"), get(b, "W_q"))
    bits = np.random.PCG64(np.random.SeedSequence([5, 1, 0])).random_raw(16)
    u = (bits >> np.uint64(11)).astype(np.float64) / 2.0**53
    # U(±√(3/d)), d = 4: variance 1/d, so X_norm's unit variance survives the projection.
    np.testing.assert_array_equal(get(a, "W_q"), ((2 * u - 1) * math.sqrt(0.75)).reshape(4, 4))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(1, 3),
    st.booleans(),
    st.floats(0.2, 5),
    st.integers(0, 2**31),
)
def test_properties(n, d_k, heads, causal, temperature, seed):
    rng = np.random.default_rng(seed)
    d = 4
    x = rng.normal(size=(n, d))
    w = [rng.normal(size=(d, heads * d_k)) for _ in range(3)]
    mask = att.causal_mask(n) if causal else None
    p = att.AttentionParams(*w, heads)
    m = records.multi_head_attention(x, p, mask=mask, temperature=temperature)
    for h in range(heads):
        # Independent computation, one head at a time with plain loops over the formula.
        cols = slice(h * d_k, (h + 1) * d_k)
        q, k, v = x @ w[0][:, cols], x @ w[1][:, cols], x @ w[2][:, cols]
        expected = np.zeros((n, n))
        for i in range(n):
            logits = [
                (q[i] @ k[j]) / math.sqrt(d_k) / temperature
                if (not causal or j <= i)
                else -math.inf
                for j in range(n)
            ]
            top = max(logits)
            e = [math.exp(z - top) for z in logits]
            expected[i] = [v_ / sum(e) for v_ in e]
        W = m.weights[h]
        np.testing.assert_allclose(W, expected, atol=1e-9)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
        if causal:
            assert np.all(W[np.triu_indices(n, 1)] == 0.0)
        np.testing.assert_allclose(m["Y"][h], np.einsum("ij,jd->id", expected, v), atol=1e-9)


def test_small_temperature_approaches_one_hot():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cold = att.attend(q[None], k[None], v[None], temperature=1e-3).W[0]
    np.testing.assert_allclose(cold.max(axis=1), 1.0, atol=1e-6)
    warm = att.attend(q[None], k[None], v[None], temperature=1e3).W[0]
    np.testing.assert_allclose(warm, 0.2, atol=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heads", "2"], "--heads applies to the Q/K/V pipeline: add --qkv"),
        (["--causal"], "--causal applies to the Q/K/V pipeline: add --qkv"),
        (["--qkv", "--scale"], "--qkv always scales by √d_k (the W_scaled step): drop --scale"),
        (["--qkv", "--temperature", "0"], "--temperature must be a positive number, got 0"),
        (["--qkv", "--temperature", "-1"], "--temperature must be a positive number, got -1"),
        (["--qkv", "--heads", "5"], "--heads 5 does not divide d = 384: give --d-k"),
        (["--qkv", "--heads", "0"], "--heads must be between 1 and 1024, got 0"),
        (["--qkv", "--d-k", "0"], "--d-k must be between 1 and 65536, got 0"),
    ],
)
def test_conflicting_or_bad_options(args, message):
    r = invoke(["explain", "hi how", *args])
    assert r.exit_code == 2
    assert r.stderr == f"attn-cli: error: {message}\n"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"W_q": np.eye(2), "W_k": np.eye(2)},
            "w.npz: missing W_v (needs W_q, W_k, W_v; optional W_o and biases)",
        ),
        (
            {"W_q": np.eye(2), "W_k": np.ones((2, 3)), "W_v": np.eye(2)},
            "w.npz: W_k has shape (2, 3), expected (2, 2) (d × heads·d_k, like W_q)",
        ),
        (
            {"W_q": np.ones((3, 2)), "W_k": np.eye(2), "W_v": np.eye(2)},
            "w.npz: W_q has shape (3, 2), expected (2, heads·d_k) (d = 2 from the embeddings)",
        ),
        (
            {"W_q": np.eye(2), "W_k": np.eye(2), "W_v": np.eye(2), "b_q": np.ones(3)},
            "w.npz: b_q has shape (3,), expected (2,) (one bias per column of W_q)",
        ),
        (
            {"W_q": np.eye(2), "W_k": np.eye(2), "W_v": np.eye(2), "Wq": np.eye(2)},
            "w.npz: unknown key 'Wq' (expected W_q, W_k, W_v, W_o, b_q, b_k, b_v, b_o)",
        ),
        (
            {"W_q": np.eye(2), "W_k": np.eye(2), "W_v": np.full((2, 2), np.nan)},
            "w.npz: W_v contains NaN or inf",
        ),
        (
            {"W_q": np.eye(2), "W_k": np.eye(2), "W_v": np.eye(2), "W_o": np.eye(3)},
            "w.npz: W_o has shape (3, 3), expected (2, d_out) (heads·d_v × d_out)",
        ),
    ],
)
def test_weight_file_errors_name_the_key_and_shape(tmp_path, two_tokens, arrays, message):
    np.savez(tmp_path / "w.npz", **arrays)
    r = invoke(["explain", *two_tokens])
    assert r.exit_code == 2
    assert r.stderr == f"attn-cli: error: {message}\n"


def test_d_k_that_conflicts_with_the_weights_file(two_tokens):
    r = invoke(["explain", *two_tokens, "--d-k", "3"])
    assert r.exit_code == 2
    assert (
        r.stderr
        == "attn-cli: error: --d-k 3 conflicts with w.npz: its W_q gives d_k = 2 for 1 head(s)\n"
    )


def test_masked_cells_render_as_minus_infinity():
    r = invoke(["explain", "hi how are you", "--qkv", "--causal", "-e", "random", "--dim", "4"])
    assert r.exit_code == 0, r.stderr
    block = r.stdout.split("W_masked =")[1].split("\n\n")[0]
    body = block.split("───\n")[-1].splitlines()  # the rows below the header rule
    rows = [line for line in body if line.split()[:1] in (["hi"], ["how"], ["are"], ["you"])]
    assert [row.count("−∞") for row in rows] == [3, 2, 1, 0]  # the strict upper triangle


# ------------------------------------------------------------------ reference: torch


@pytest.mark.reference
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_torch_scaled_dot_product_attention(causal, temperature):
    torch = require("torch")
    args = ["the cat sat on the mat", "--qkv", "--heads", "2", "--temperature", str(temperature)]
    doc = run_json(args + (["--causal"] if causal else []))
    for h in (0, 1):
        q, k, v = (torch.tensor(get(doc, n, h)) for n in ("Q", "K", "V"))
        scale = 1.0 / (np.sqrt(q.shape[-1]) * temperature)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        np.testing.assert_allclose(get(doc, "Y", h), y.numpy(), atol=1e-5)
        logits = (q @ k.T) * scale
        if causal:
            logits = logits.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
        np.testing.assert_allclose(
            get(doc, "W", h), torch.softmax(logits, dim=-1).numpy(), atol=1e-5
        )


@pytest.mark.reference
@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_multihead_attention(tmp_path, causal):
    torch = require("torch")
    d, heads = 8, 2
    rng = np.random.default_rng(1)
    w = {k: rng.normal(size=(d, d)) / 3 for k in ("W_q", "W_k", "W_v", "W_o")}
    b = {k: rng.normal(size=d) / 3 for k in ("b_q", "b_k", "b_v", "b_o")}
    np.savez(tmp_path / "p.npz", **w, **b)
    doc = run_json(
        [
            "the cat sat on the mat",
            "--qkv",
            "--heads",
            str(heads),
            "-e",
            "random",
            "--dim",
            str(d),
            "--weights",
            str(tmp_path / "p.npz"),
        ]
        + (["--causal"] if causal else [])
    )
    # X_norm is torch's LayerNorm without a learned scale and shift.
    ln = torch.nn.LayerNorm(d, eps=1e-5, elementwise_affine=False, dtype=torch.float64)
    x = ln(torch.tensor(get(doc, "X")))[None]  # batch of 1
    np.testing.assert_allclose(get(doc, "X_norm"), x[0].numpy(), atol=1e-12)
    mha = torch.nn.MultiheadAttention(d, heads, bias=True, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        # torch stores Linear weights [out, in]; attn-cli stores [in, out].
        mha.in_proj_weight.copy_(torch.tensor(np.vstack([w["W_q"].T, w["W_k"].T, w["W_v"].T])))
        mha.in_proj_bias.copy_(torch.tensor(np.concatenate([b["b_q"], b["b_k"], b["b_v"]])))
        mha.out_proj.weight.copy_(torch.tensor(w["W_o"].T))
        mha.out_proj.bias.copy_(torch.tensor(b["b_o"]))
        mask = ~torch.ones(6, 6, dtype=torch.bool).tril() if causal else None
        out, weights = mha(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(get(doc, "O"), out[0].numpy(), atol=1e-5)
    for h in range(heads):
        np.testing.assert_allclose(get(doc, "W", h), weights[0, h].numpy(), atol=1e-5)

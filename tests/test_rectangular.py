"""Rectangular maps (cross attention: queries × source tokens) and map kinds in every view, and
trace format v2: Trace.from_attentions with key_tokens, the terminal views, `show` of a saved
file, the browser (Textual's Pilot) and the interactive page (headless Chromium)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import orjson
import pytest
from rich.console import Console

from attn_cli.errors import InputError
from attn_cli.export import dumps_traces, loads_traces
from attn_cli.render.common import format_number, make_console
from attn_cli.trace import Trace
from tests.conftest import SAMPLES, invoke

QUERIES = ["the", "cat", "sat", "."]
KEYS = ["le", "chat", "est", "assis", "sur", "."]
KEY_LABELS = ["le", "chat", "est", "assis", "sur", "."]  # all distinct: shown as given


def softmax_maps(seed: int = 0) -> np.ndarray:
    """(2 layers, 3 heads, 4 queries, 6 keys), rows summing to 1."""
    logits = np.random.default_rng(seed).normal(size=(2, 3, 4, 6))
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


A = softmax_maps()


def changed(at: tuple[int, int, int, int], value: float) -> np.ndarray:
    """A with one cell replaced."""
    maps = A.copy()
    maps[at] = value
    return maps


def cross_trace(kind: str = "weights", maps: np.ndarray = A) -> Trace:
    # As transformers returns cross_attentions: a tuple of per-layer (1, heads, n_q, n_k).
    layers = tuple(maps[i][None] for i in range(maps.shape[0]))
    return Trace.from_attentions(QUERIES, layers, key_tokens=KEYS, kind=kind)


def rendered(trace: Trace, view: str, width: int = 100) -> str:
    buf = io.StringIO()
    trace.show(view=view, console=Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def flat(text: str) -> str:
    """Text with its line wrapping undone, for sentences a narrow console breaks."""
    return " ".join(text.split())


# ---------------------------------------------------------------- the Trace


def test_from_attentions_keeps_a_rectangular_map_and_its_source_axis():
    t = cross_trace()
    assert t.attention().shape == (2, 3, 4, 6)
    np.testing.assert_array_equal(t.attention(), A)
    np.testing.assert_array_equal(t.attention(block="cross"), A)
    assert t.axes["source"].labels == KEYS and t.axes["source"].kind == "text"
    w = t.step("W", layer=1, head=2)
    assert (w.row_axis, w.col_axis, w.block) == ("tokens", "source", "cross")
    assert w.rows == QUERIES and w.cols == KEY_LABELS and not w.self_map
    assert w.data[3, 5] == A[1, 2, 3, 5]
    assert t.blocks == ["cross"]
    with pytest.raises(
        InputError, match=r"^block='encoder': step W is present for blocks 'cross'$"
    ):
        t.attention(block="encoder")
    # Self-attention from the same call without key_tokens: square, no block, one axis.
    square = Trace.from_attentions(KEYS, A[:, :, :, :6][:, :, [0, 1, 2, 3, 0, 1]])
    assert square.axes == {} and square.step("W", 0, 0).self_map
    assert square.step("W", 0, 0).block is None


def test_attention_asks_for_a_block_when_there_are_several():
    t = cross_trace()
    own = Trace.from_attentions(QUERIES, A[:, :, :, :4] / A[:, :, :, :4].sum(-1, keepdims=True))
    for s in own.steps:
        s.block = "decoder"
    t.steps = own.steps + t.steps
    with pytest.raises(
        InputError, match=r"^block=None: step W is present for blocks 'decoder', 'cross': pick one$"
    ):
        t.attention()
    assert t.attention(block="decoder").shape == (2, 3, 4, 4)
    assert t.attention(block="cross").shape == (2, 3, 4, 6)
    assert t.step("W", 1, 2, block="cross").data[0, 5] == A[1, 2, 0, 5]
    with pytest.raises(
        InputError, match=r"^block=None: step W is present for blocks 'decoder', 'cross'$"
    ):
        t.step("W", 1, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: cross_trace(maps=A[:, :, :, :5]),
            r"^attentions has shape \(2, 3, 4, 5\): expected \(layers, heads, 4, 6\) for 4 query tokens and 6 key tokens$",
        ),
        (
            lambda: Trace.from_attentions(QUERIES, (A[0][None], A[1][None, :2]), key_tokens=KEYS),
            r"^attentions: the layers differ in shape \(\(1, 3, 4, 6\), \(1, 2, 4, 6\)\)$",
        ),
        (
            lambda: Trace.from_attentions(QUERIES, [[[[0.5, 0.5], [1.0]]]], key_tokens=KEYS),
            r"^attentions must be an array of numbers",
        ),
        (
            lambda: cross_trace(maps=changed((1, 0, 2, 3), np.nan)),
            r"^attentions holds nan at layer 1, head 0, row 2, column 3: every value must be finite$",
        ),
        (
            lambda: cross_trace(maps=changed((0, 1, 0, 0), np.inf)),
            r"^attentions holds inf at layer 0, head 1, row 0, column 0",
        ),
        (
            lambda: cross_trace(maps=changed((0, 2, 1, 4), -0.25)),
            r"^attentions holds -0.25 at layer 0, head 2, row 1, column 4: weights are probabilities, never negative",
        ),
        (
            lambda: cross_trace(maps=A * 0.9),
            r"^attentions row 0 of layer 0, head 0 sums to 0.9: rows of weights sum to 1 \(use kind='partial_weights'",
        ),
        (
            lambda: cross_trace("partial_weights", maps=A * 1.5),
            r"^attentions row 0 of layer 0, head 0 sums to 1.5: rows of partial_weights sum to at most 1$",
        ),
        (
            lambda: cross_trace("softmax"),
            r"^kind='softmax': choose from weights, partial_weights, mixing$",
        ),
        (
            lambda: Trace.from_attentions(QUERIES, A, key_tokens="le chat"),
            r"^key_tokens must be a list of token strings, got str$",
        ),
        (lambda: Trace.from_attentions([], A), r"^tokens is empty$"),
    ],
)
def test_from_attentions_refuses_what_is_not_a_map_naming_the_parameter(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_partial_weights_and_mixing_are_accepted_for_what_they_are():
    assert cross_trace("partial_weights", A * 0.75).steps[0].kind == "partial_weights"
    signed = np.random.default_rng(1).normal(size=(2, 3, 4, 6))
    t = cross_trace("mixing", signed)
    assert t.steps[0].kind == "mixing" and t.steps[0].formula == "mixing weights"
    np.testing.assert_array_equal(t.attention(), signed)


# ---------------------------------------------------------------- terminal views


def table_row(text: str, label: str) -> list[str]:
    """The first table line that starts with `label`, split into its cells."""
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == [label])
    return line.split()[1:]


def test_steps_view_has_the_source_tokens_as_columns_and_the_map_as_numbers():
    out = rendered(cross_trace(), "steps")
    assert "4 tokens · pipeline=attentions · heads=3 · source: 6 tokens" in out
    header = next(ln for ln in out.splitlines() if ln.split()[:2] == ["le", "chat"])
    assert header.split() == KEY_LABELS
    first = out.split("W = attention weights   cross · layer 0 · head 0")[1]
    assert table_row(first, "cat") == [format_number(v, 2) for v in A[0, 0, 1]]
    context = out.split("Context — who attends to whom most, from W   cross · layer 1 · head 2")[1]
    cells = table_row(context, "sat")
    top = np.argsort(-A[1, 2, 2], kind="stable")
    assert cells[:2] == [KEY_LABELS[top[0]], format_number(A[1, 2, 2, top[0]], 2)]


def test_top_view_ranks_the_source_tokens_of_each_row():
    out = rendered(cross_trace(), "top")
    assert (
        "Top 3 attended tokens per token, from W (source tokens)   cross · layer 0 · head 0" in out
    )
    cells = table_row(out, "cat")  # layer 0, head 0 comes first
    order = np.argsort(-A[0, 0, 1], kind="stable")[:3]
    picks = [x for j in order for x in (KEY_LABELS[j], format_number(A[0, 0, 1, j], 2))]
    assert cells[:6] == picks
    col = A[0, 0].sum(axis=0)
    j = int(np.argmax(col))
    assert f"(column sums, out of 4): {KEY_LABELS[j]} {format_number(col[j], 2)}" in out


def test_summary_and_overview_use_only_patterns_about_keys():
    t = cross_trace()
    summary = rendered(t, "summary")
    header = next(ln for ln in summary.splitlines() if ln.startswith("map"))
    assert "prev" not in header and "self" not in header and header.split()[-1] == "first"
    cells = table_row(summary, "cross")  # 'cross L0 H0 …'
    assert cells[:2] == ["L0", "H0"]
    assert cells[-1] == format_number(A[0, 0][:, 0].mean(), 2)
    overview = rendered(t, "overview")
    assert "cross attention: 6 attention maps, 2 layers × 3 heads" in overview


def test_heatmap_names_its_columns_and_grid_keeps_the_shape():
    heat = rendered(cross_trace(), "heatmap")
    assert "columns (source): 0 le  1 chat  2 est  3 assis  4 sur  5 ." in heat
    assert any(line.startswith("1 cat ") for line in heat.splitlines())
    grid = rendered(cross_trace(), "grid")
    assert "cross attention: 2 layers × 3 heads, each map max-pooled to 4×6" in grid
    geometry = rendered(cross_trace(), "geometry")
    said = " ".join(geometry.split())  # the message wraps at the console width
    assert "geometry needs X and an output (Y, O or H) of the same size" in said
    assert "this trace keeps no token vectors" in said


def test_partial_weights_say_each_rows_sink_mass():
    maps = A * np.array([0.5, 0.75, 0.9, 1.0])[:, None]  # row i keeps that much
    t = cross_trace("partial_weights", maps)
    steps = rendered(t, "steps")
    assert "sink (1 − row sum): the 0.50  cat 0.25  sat 0.10  . 0.00" in steps
    assert "the rest of its attention went to a sink key that is not shown" in flat(steps)
    top = rendered(t, "top")
    assert table_row(top, "cat")[-1] == "0.25"  # the sink column
    summary = rendered(t, "summary")
    assert table_row(summary, "cross")[-2] == format_number(np.mean([0.5, 0.25, 0.1, 0.0]), 2)


def test_mixing_maps_are_signed_and_said_not_to_be_probabilities():
    signed = np.random.default_rng(1).normal(size=(2, 3, 4, 6))
    t = cross_trace("mixing", signed)
    for view in ("steps", "top", "heatmap", "overview", "summary", "grid"):
        assert "not probabilities" in flat(rendered(t, view)), view
    top = rendered(t, "top")
    order = np.argsort(-np.abs(signed[0, 0, 1]), kind="stable")[:3]
    picks = [x for j in order for x in (KEY_LABELS[j], format_number(signed[0, 0, 1, j], 2))]
    assert table_row(top, "cat")[:6] == picks
    # Colour: a diverging scale, from −max|value| to +max|value|.
    heat = io.StringIO()
    t.show(view="heatmap", console=make_console(color=True, width=100, file=heat))
    vmax = format_number(np.abs(signed[0, 0]).max(), 2)
    assert f"colour  -{vmax} " in heat.getvalue() and "(diverging around 0)" in heat.getvalue()


# ---------------------------------------------------------------- saved files


VIEWS = "steps,overview,summary,top,heatmap,geometry,grid"


def test_a_saved_rectangular_trace_shows_as_it_rendered(tmp_path):
    t = cross_trace("partial_weights", A * 0.8)
    path = tmp_path / "cross.json"
    t.save(path)
    doc = orjson.loads(path.read_bytes())
    assert doc["version"] == 2 and doc["axes"] == {"source": {"kind": "text", "labels": KEYS}}
    step = doc["steps"][0]
    assert (step["block"], step["row_axis"], step["col_axis"]) == ("cross", "tokens", "source")
    assert dumps_traces(loads_traces(path.read_bytes())) == path.read_bytes()
    shown = invoke(["show", str(path), "--view", VIEWS, "--width", "100"])
    assert shown.exit_code == 0, shown.stderr
    buf = io.StringIO()
    t.show(view=VIEWS.split(","), console=make_console(color=False, width=100, file=buf))
    assert shown.stdout == buf.getvalue()
    assert any(line.split() == KEY_LABELS for line in shown.stdout.splitlines())


def test_a_version_1_file_loads_and_shows_as_the_same_trace_saved_as_version_2(tmp_path):
    v1 = (SAMPLES / "hi.json").read_bytes()
    assert orjson.loads(v1)["version"] == 1
    (trace,) = loads_traces(v1)
    assert trace.axes == {} and all(
        s.block is s.row_axis is s.col_axis is None for s in trace.steps
    )
    v2 = tmp_path / "hi2.json"
    trace.save(v2)
    assert orjson.loads(v2.read_bytes())["version"] == 2
    for view in VIEWS.split(","):
        old = invoke(["show", str(SAMPLES / "hi.json"), "--view", view])
        new = invoke(["show", str(v2), "--view", view])
        assert old.exit_code == 0 and old.stdout == new.stdout, view


def v2_doc() -> dict:
    return orjson.loads(dumps_traces([cross_trace()]))


def broken(change) -> bytes:
    doc = v2_doc()
    change(doc)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["steps"][0].update(col_axis="target"),
            " step 0: 'col_axis' names no axis of this trace ('target')",
        ),
        (
            lambda d: d["steps"][1].update(row_axis=7),
            " step 1: 'row_axis' names no axis of this trace (7)",
        ),
        (
            lambda d: d["axes"]["source"]["labels"].pop(),
            " step 0: 'col_axis' is 'source', which has 5 labels, but the step has 6",
        ),
        (
            lambda d: d["axes"]["source"].update(kind="pixels"),
            " axis 'source': unknown kind 'pixels'",
        ),
        (
            lambda d: d["axes"]["source"].update(labels="le chat"),
            " axis 'source': 'labels' must be a list of strings",
        ),
        (
            lambda d: d["axes"]["source"].update(coords=[[0.0]] * 5),
            " axis 'source': 'coords' must be one list of finite numbers per label (empty for a label "
            "without a place), all the same length",
        ),
        (
            lambda d: d["axes"]["source"].update(coords=[["x"]] * 6),
            " axis 'source': 'coords' must be one list of finite numbers per label (empty for a label "
            "without a place), all the same length",
        ),
        (
            lambda d: d["axes"].update(tokens={"kind": "text", "labels": ["a"]}),
            " axis 'tokens': must have one label per token",
        ),
        (lambda d: d.update(axes=[1]), ": 'axes' must be an object of named axes"),
        (lambda d: d["steps"][0].update(block=3), " step 0: 'block' must be a string"),
        (lambda d: d["steps"][0].update(kind="softmax"), " step 0: unknown kind 'softmax'"),
        (lambda d: d["steps"][0].update(layer=-1), " step 0: 'layer' must be an integer >= 0"),
    ],
)
def test_untrusted_v2_fields_are_checked_with_one_line_errors(tmp_path, change, message):
    path = tmp_path / "t.json"
    path.write_bytes(broken(change))
    r = invoke(["show", str(path)])
    assert r.exit_code == 2
    assert r.stderr == f"attn-cli: error: {path}{message}\n"
    assert "Traceback" not in r.stdout + r.stderr


def test_a_non_finite_number_in_a_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "t.json"
    coords = b'"coords":[[1e999],[0],[0],[0],[0],[0]],'
    path.write_bytes(
        dumps_traces([cross_trace()]).replace(b'"labels":["le"', coords + b'"labels":["le"')
    )
    r = invoke(["show", str(path)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "not valid JSON" in r.stderr


# ---------------------------------------------------------------- the browser


def test_browser_shows_source_tokens_as_columns_and_clamps_the_key_cursor():
    pytest.importorskip("textual")
    from textual.widgets import Static

    from attn_cli.browse.app import BrowseApp
    from attn_cli.browse.widgets import Heatmap

    t = cross_trace("partial_weights", A * 0.8)

    async def run() -> None:
        app = BrowseApp([t])
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.main
            heat = main.query_one(Heatmap)
            assert heat._col_labels == KEY_LABELS and heat._row_labels == QUERIES
            assert heat.token_map and heat.cols == 6 and heat.rows == 4
            # The key cursor moves over the 6 source tokens, not the 4 query tokens.
            await pilot.press(*["full_stop"] * 9)
            assert main.key_token == 5
            await pilot.press("right_square_bracket")  # query 1: "cat"
            assert main.qtok == 1
            token = str(main.query_one("#token", Static).content)
            order = np.argsort(-A[0, 0, 1], kind="stable")[:3]
            for j in order:
                assert f"{KEY_LABELS[j]}" in token
            assert "sink 0.200" in token and "received" not in token
            value = str(main.query_one("#value", Static).content)
            assert f"cat → .  W = {float(t.find('W', 0, 0).data[1, 5])!r}" in value
            await pilot.press("down")  # layer 1
            assert main.key == (1, 0) and main.key_token == 5
            await pilot.press("enter")  # no Q/K in the trace: a notice, no crash
            await pilot.pause()
            assert app.screen is main

    asyncio.run(run())


# ---------------------------------------------------------------- the interactive page


def test_page_data_carries_the_source_tokens_of_a_cross_map():
    from attn_cli.render.interactive import page_data

    doc = page_data([cross_trace()])["traces"][0]
    w = doc["steps"][0]
    assert w["map"] and w["cols"] == KEY_LABELS and w["col_axis"] == "source"
    assert w["block"] == "cross" and doc["labels"] == QUERIES
    assert np.array(w["data"]).shape == (4, 6)


def test_page_hovering_a_query_lights_its_source_tokens(tmp_path):
    from tests.test_interactive import CHROMIUM, Opened, as_numbers

    sync_api = pytest.importorskip("playwright.sync_api")
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    from attn_cli.render.interactive import interactive_html
    from tests.test_interactive import ARGS

    maps = A * 0.8
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        o = Opened(browser, interactive_html([cross_trace("partial_weights", maps)]), tmp_path)
        page = o.page
        left = page.eval_on_selector_all("#hv-left .tok", "ts => ts.map(t => t.title)")
        right = page.eval_on_selector_all("#hv-right .tok", "ts => ts.map(t => t.title)")
        assert left == QUERIES and right == KEY_LABELS
        assert page.locator("#step option").all_text_contents() == ["cross W"]
        o.hover_token("q", 1)  # "cat": its row over the six source tokens
        shown = as_numbers(o.values("k"))
        assert np.all(np.abs(shown - maps[0, 0, 1]) <= 5e-4 * maps[0, 0, 1])
        assert o.values("q") == [None] * 4
        info = page.text_content("#hv-info")
        top = int(np.argmax(maps[0, 0, 1]))
        assert info.startswith(f"cat attends most to {KEY_LABELS[top]}")
        assert "sink 0.2 (1 − row sum" in info
        o.hover_token("k", 4)  # "sur": which queries look at it
        assert np.all(np.abs(as_numbers(o.values("q")) - maps[0, 0, :, 4]) <= 5e-4)
        assert "rows sum to < 1" in page.text_content("#legend-kind")
        page.select_option("#layer", "1")
        page.select_option("#head", "2")
        o.hover_token("q", 3)
        assert np.all(np.abs(as_numbers(o.values("k")) - maps[1, 2, 3]) <= 5e-4)
        o.check_clean()
        page.close()
        browser.close()


# ---------------------------------------------------------------- several attention blocks


def encoder_decoder_trace(encoder: bool = False) -> Trace:
    """A decoder's self-attention (4 × 4) and its cross attention (4 × 6) at the same layers
    and heads, as an encoder–decoder trace holds them; encoder=True adds the encoder's
    self-attention over the source (6 × 6) first."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 4, 4))
    own = Trace.from_attentions(
        QUERIES, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), block="decoder"
    )
    t = cross_trace()
    t.steps = own.steps + t.steps
    if encoder:
        logits = rng.normal(size=(2, 3, 6, 6))
        enc = Trace.from_attentions(
            KEYS, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), block="encoder"
        )
        for s in enc.steps:
            s.row_axis = s.col_axis = "source"
        t.steps = enc.steps + t.steps
    return t


def test_views_keep_each_blocks_maps_apart():
    t = encoder_decoder_trace()
    assert t.blocks == ["decoder", "cross"]
    overview = flat(rendered(t, "overview"))
    assert "decoder attention: 6 attention maps" in overview
    assert "cross attention: 6 attention maps" in overview
    grid = rendered(t, "grid")
    assert "decoder attention: 2 layers × 3 heads, each map max-pooled to 4×4" in grid
    assert "cross attention: 2 layers × 3 heads, each map max-pooled to 4×6" in grid
    names = [
        ln.split()[:3]
        for ln in rendered(t, "summary").splitlines()
        if ln[:6] in ("decode", "cross ")
    ]
    assert (
        names[0] == ["decoder", "L0", "H0"]
        and names[6] == ["cross", "L0", "H0"]
        and len(names) == 12
    )


def test_browser_switches_blocks_with_b():
    pytest.importorskip("textual")
    from textual.widgets import Static

    from attn_cli.browse.app import BrowseApp
    from attn_cli.browse.widgets import Heatmap

    async def run() -> None:
        app = BrowseApp([encoder_decoder_trace()])
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.main
            assert main.query_one(Heatmap)._col_labels == QUERIES
            assert "decoder attention" in str(main.query_one("#title", Static).content)
            await pilot.press("b")
            assert main.query_one(Heatmap)._col_labels == KEY_LABELS
            assert "cross attention" in str(main.query_one("#title", Static).content)
            assert main.index.maps[(0, 0)].block == "cross"
            await pilot.press("b")
            assert main.query_one(Heatmap)._col_labels == QUERIES

    asyncio.run(run())


def test_page_lists_each_blocks_map(tmp_path):
    from tests.test_interactive import ARGS, CHROMIUM, Opened, as_numbers

    sync_api = pytest.importorskip("playwright.sync_api")
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    from attn_cli.render.interactive import interactive_html

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        o = Opened(browser, interactive_html([encoder_decoder_trace()]), tmp_path)
        page = o.page
        assert page.locator("#step option").all_text_contents() == ["decoder W", "cross W"]
        right = page.eval_on_selector_all("#hv-right .tok", "ts => ts.map(t => t.title)")
        assert right == QUERIES
        page.select_option("#step", "cross W")
        right = page.eval_on_selector_all("#hv-right .tok", "ts => ts.map(t => t.title)")
        assert right == KEY_LABELS
        o.hover_token("q", 2)
        assert np.all(np.abs(as_numbers(o.values("k")) - A[0, 0, 2]) <= 5e-4)
        o.check_clean()
        page.close()
        browser.close()


def test_an_encoder_block_runs_over_the_source_in_every_view(tmp_path):
    t = encoder_decoder_trace(encoder=True)
    assert t.blocks == ["encoder", "decoder", "cross"]
    assert t.attention(block="encoder").shape == (2, 3, 6, 6)
    summary = rendered(t, "summary")
    assert any(ln.split()[:3] == ["encoder", "L1", "H2"] for ln in summary.splitlines())
    assert "prev" in summary  # the encoder's and decoder's maps are self-attention
    path = tmp_path / "encdec.json"
    t.save(path)
    again = loads_traces(path.read_bytes())[0]
    assert [(s.block, s.row_axis, s.col_axis) for s in again.steps[::6]] == [
        ("encoder", "source", "source"),
        ("decoder", "tokens", "tokens"),
        ("cross", "tokens", "source"),
    ]
    from attn_cli.render.interactive import page_data

    steps = page_data([t])["traces"][0]["steps"]
    assert steps[0]["map"] and steps[0]["rows"] == KEY_LABELS and steps[0]["cols"] == KEY_LABELS

    pytest.importorskip("textual")
    from attn_cli.browse.app import BrowseApp
    from attn_cli.browse.widgets import Heatmap

    async def run() -> None:
        app = BrowseApp([t])
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.main
            heat = main.query_one(Heatmap)
            assert main.index.block == "encoder" and main.index.n == 6
            assert heat._row_labels == KEY_LABELS and heat._col_labels == KEY_LABELS
            await pilot.press(*["right_square_bracket"] * 9)
            assert main.qtok == 5  # the six source tokens are the queries here
            await pilot.press("b")
            assert main.index.block == "decoder" and main.qtok == 0
            assert main.query_one(Heatmap)._row_labels == QUERIES

    asyncio.run(run())


def test_page_shows_a_mixing_map_as_signed_numbers(tmp_path):
    from tests.test_interactive import ARGS, CHROMIUM, Opened, as_numbers

    sync_api = pytest.importorskip("playwright.sync_api")
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    from attn_cli.render.interactive import interactive_html

    signed = np.round(np.random.default_rng(1).normal(size=(2, 3, 4, 6)), 3)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        o = Opened(browser, interactive_html([cross_trace("mixing", signed)]), tmp_path)
        page = o.page
        assert page.text_content("#legend-kind") == (
            "diverging around 0 · signed mixing weights, not probabilities"
        )
        assert page.text_content("#legend-lo") == str(-np.abs(signed[0, 0]).max())
        o.hover_token("q", 2)
        np.testing.assert_array_equal(as_numbers(o.values("k")), signed[0, 0, 2])
        strongest = int(np.argmax(np.abs(signed[0, 0, 2])))
        assert page.text_content("#hv-info").startswith(
            f"sat attends most to {KEY_LABELS[strongest]} {signed[0, 0, 2, strongest]:g}"
        )
        o.check_clean()
        page.close()
        browser.close()

"""`attn-cli browse`: the Textual browser, driven by Pilot at 80 × 24 on traces whose numbers
are written out by hand, plus the saved samples/hi.json. Snapshots: tests/test_browse_snapshots.py."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REQUIRE_REFERENCE, SAMPLES

try:  # the browse extra; CI installs it with [test] and must not skip these tests
    import textual  # noqa: F401
except ImportError:
    if REQUIRE_REFERENCE:
        raise
    pytest.skip(
        "textual is not installed (pip install 'attn-cli[browse]')", allow_module_level=True
    )

from attn_cli.browse import run_browser  # noqa: E402
from attn_cli.browse.app import BrowseApp, HelpScreen, MainScreen, NeuronScreen  # noqa: E402
from attn_cli.browse.state import TraceIndex, neuron_at, token_info  # noqa: E402
from attn_cli.browse.widgets import GeometryView, Heatmap, ThumbGrid  # noqa: E402
from attn_cli.errors import InputError  # noqa: E402
from attn_cli.export import loads_traces  # noqa: E402
from attn_cli.trace import Trace, TraceStep, printable, token_labels  # noqa: E402

# The second token looks like Rich markup and the third holds an escape sequence: both must
# reach the screen as the literal (printable) text.
TOKENS = ["the", "[b]x", "c\x1b[31m"]
LABELS = token_labels(TOKENS)
Q0 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
K0 = np.array([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
# Q0·K0ᵀ by hand: row i, column j = q_i · k_j.
RAW0 = np.array([[1.0, 0.0, 2.0], [2.0, 1.0, 0.0], [3.0, 1.0, 2.0]])
W0 = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.125, 0.125, 0.75]])
V0 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def offset(layer: int, head: int) -> float:
    return 2.0 * layer + head


def raw_at(layer: int, head: int) -> np.ndarray:
    """(Q0 + o)·K0ᵀ = Q0·K0ᵀ + o · (column sums of K0 per key) = RAW0 + o·[3, 1, 2]."""
    return RAW0 + offset(layer, head) * np.array([3.0, 1.0, 2.0])


def w_at(layer: int, head: int) -> np.ndarray:
    return np.roll(W0, int(offset(layer, head)), axis=1)


def synthetic(layers: int = 2, heads: int = 2, causal: bool = False) -> Trace:
    """A trace with hand-written numbers: per head Q = Q0 + o, K = K0, W_raw = Q·Kᵀ (by hand),
    W_scaled = W_raw/√2, optional W_masked, a W of exact binary fractions, Y = W·V."""
    dims = [f"d{i}" for i in range(4)]
    steps: list[TraceStep] = []
    for layer in range(layers):
        x = np.arange(12, dtype=float).reshape(3, 4) + layer
        steps.append(
            TraceStep("X", "hidden states", "the layer input", x, LABELS, dims, "vectors", layer)
        )
        for head in range(heads):
            o = offset(layer, head)
            raw = raw_at(layer, head)
            w = w_at(layer, head)
            if causal:
                w = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
            at = {"layer": layer, "head": head}
            qk = ["q0", "q1"]
            steps += [
                TraceStep("Q", "X·W_q", "queries", Q0 + o, LABELS, qk, "vectors", **at),
                TraceStep("K", "X·W_k", "keys", K0.copy(), LABELS, ["k0", "k1"], "vectors", **at),
                TraceStep("V", "X·W_v", "values", V0.copy(), LABELS, ["v0", "v1"], "vectors", **at),
                TraceStep("W_raw", "Q·Kᵀ", "scores", raw, LABELS, LABELS, "scores", **at),
                TraceStep(
                    "W_scaled",
                    "W_raw/√d_k",
                    "scaled",
                    raw / math.sqrt(2),
                    LABELS,
                    LABELS,
                    "scores",
                    **at,
                ),
            ]
            if causal:
                masked = np.where(np.triu(np.ones((3, 3)), 1) > 0, -np.inf, raw / math.sqrt(2))
                steps.append(
                    TraceStep(
                        "W_masked",
                        "W_scaled, −∞ above the diagonal",
                        "masked",
                        masked,
                        LABELS,
                        LABELS,
                        "scores",
                        **at,
                    )
                )
            steps += [
                TraceStep(
                    "W", "softmax(W_scaled) per row", "weights", w, LABELS, LABELS, "weights", **at
                ),
                TraceStep("Y", "W·V", "outputs", w @ V0, LABELS, ["v0", "v1"], "vectors", **at),
            ]
    return Trace("the [b]x c", TOKENS, [1, 2, 3], {"pipeline": "synthetic"}, steps)


def hi_trace() -> Trace:
    return loads_traces((SAMPLES / "hi.json").read_bytes())[0]


def run(app: BrowseApp, script, size=(80, 24)) -> None:
    """Drive the app with Pilot inside asyncio.run (no pytest-asyncio needed)."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(main())


def main_screen(app: BrowseApp) -> MainScreen:
    screen = app.screen
    assert isinstance(screen, MainScreen)
    return screen


def text_of(screen, selector: str) -> str:
    from textual.widgets import Static

    return str(screen.query_one(selector, Static).content)


def field(text: str, name: str) -> str:
    """The value printed after `name` on its line of a neuron view."""
    for line in text.splitlines():
        if line.startswith(name):
            return line[len(name) :].strip()
    raise AssertionError(f"{name!r} not in {text!r}")


def heat_row(app: BrowseApp, i: int) -> str:
    heat = app.screen.query_one(Heatmap)
    return heat.render_line(1 + i - int(heat.scroll_y)).text


# ---------------------------------------------------------------------------------------------
# The model: which maps exist, and where the keys go


def test_index_layers_heads_and_steps():
    index = TraceIndex(synthetic())
    assert index.layers == [0, 1] and index.heads == [0, 1]
    assert [s.name for s in index.steps_at((1, 0))] == [
        "X",
        "Q",
        "K",
        "V",
        "W_raw",
        "W_scaled",
        "W",
        "Y",
    ]
    assert index.steps_at((1, 0))[0].layer == 1  # that layer's own X
    assert index.move((0, 0), 0, 1) == (0, 1)
    assert index.move((0, 1), 0, 1) == (0, 1)  # clamped at the last head
    assert index.move((0, 1), 1, 0) == (1, 1)
    assert index.move((0, 0), -1, 0) == (0, 0)


def test_single_map_trace_has_one_cell():
    index = TraceIndex(hi_trace())
    assert index.layers == [None] and index.heads == [None]
    assert [s.name for s in index.steps_at((None, None))] == ["X", "W_raw", "W", "Y"]


def test_token_info_by_hand():
    info = token_info(W0, 2, k=2)
    assert info.top == [(2, 0.75), (0, 0.125)]
    # −(0.125 ln 0.125 · 2 + 0.75 ln 0.75)
    assert info.entropy == pytest.approx(-(2 * 0.125 * math.log(0.125) + 0.75 * math.log(0.75)))
    assert info.relative == pytest.approx(info.entropy / math.log(3))
    assert info.received == pytest.approx(0.25 + 0.25 + 0.75)


def test_token_info_causal_counts_visible_keys():
    w = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    info = token_info(w, 1)
    assert info.relative == pytest.approx(1.0)  # even over the 2 keys it can see


def test_neuron_numbers_by_hand():
    trace = synthetic()
    nv = neuron_at(TraceIndex(trace), (1, 1), 2, 0)
    assert nv is not None
    o = offset(1, 1)  # 3
    np.testing.assert_array_equal(nv.q, [1 + o, 1 + o])
    np.testing.assert_array_equal(nv.k, [1.0, 2.0])
    np.testing.assert_array_equal(nv.product, [4.0, 8.0])
    assert nv.total == 12.0 == trace.find("W_raw", 1, 1).data[2, 0] == raw_at(1, 1)[2, 0]
    assert nv.scaled == pytest.approx(12.0 / math.sqrt(2)) and nv.scaled_from_trace
    assert nv.weight == w_at(1, 1)[2, 0]


def test_neuron_on_the_parameter_free_pipeline_uses_x():
    trace = hi_trace()
    nv = neuron_at(TraceIndex(trace), (None, None), 1, 3)
    assert nv is not None and (nv.q_name, nv.k_name) == ("X", "X")
    raw = trace.find("W_raw").data
    assert nv.total == pytest.approx(raw[1, 3], rel=1e-9)
    assert nv.raw is not None and nv.raw.value == raw[1, 3]
    # No W_scaled step in this trace: the view divides by √d itself, and says so.
    assert not nv.scaled_from_trace and nv.scaled == pytest.approx(raw[1, 3] / math.sqrt(384))
    assert nv.weight == trace.find("W").data[1, 3]


# ---------------------------------------------------------------------------------------------
# Pilot: keys, mouse, and the numbers on screen


def test_keys_move_between_layers_heads_steps_and_tokens():
    trace = synthetic()
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        assert s.key == (0, 0) and s.step.name == "W"
        await pilot.press("right")
        assert s.key == (0, 1)
        await pilot.press("j")
        assert s.key == (1, 1)
        await pilot.press("h", "k")
        assert s.key == (0, 0)
        await pilot.press("l", "down")
        assert s.key == (1, 1) and s.step is trace.find("W", 1, 1)
        assert app.screen.query_one(ThumbGrid).selected == (1, 1)
        heat = app.screen.query_one(Heatmap)
        assert heat.step is trace.find("W", 1, 1)
        # Every row of the heatmap shows that map's numbers.
        for i in range(3):
            row = heat_row(app, i)
            for v in w_at(1, 1)[i]:
                assert f"{v:.2f}" in row
        assert printable(TOKENS[1]) in heat_row(app, 1)  # "[b]x", literally
        assert "\\x1b[31m" in heat_row(app, 2)
        # Tab walks the steps present here; the chosen step sticks when the head changes.
        await pilot.press("tab")
        assert s.step is trace.find("Y", 1, 1)
        await pilot.press("shift+tab", "shift+tab")
        assert s.step is trace.find("W_scaled", 1, 1)
        await pilot.press("left")
        assert s.step is trace.find("W_scaled", 1, 0)
        await pilot.press("tab", "tab", "tab")  # W, Y, then wraps to X
        assert s.step.name == "X" and s.step.layer == 1
        await pilot.press("shift+tab")
        assert s.step is trace.find("Y", 1, 0)

    run(app, script)


def test_token_and_key_selection_show_the_trace_values():
    trace = synthetic()
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        w = trace.find("W", 0, 0).data
        # The key cursor starts on token 0's most attended key.
        assert (s.qtok, s.key_token) == (0, 0)
        await pilot.press("right_square_bracket", "right_square_bracket", "full_stop")
        assert (s.qtok, s.key_token) == (2, 1)
        value = text_of(s, "#value")
        assert f"{printable(TOKENS[2])} → {TOKENS[1]}  W = {float(w[2, 1])!r}" in value
        token = text_of(s, "#token")
        assert "top 3 attended" in token
        assert "0.750" in token and "0.125" in token  # row 2 of W0
        h = -(2 * 0.125 * math.log(0.125) + 0.75 * math.log(0.75))
        assert f"entropy {h:.3f} nats" in token
        heat = app.screen.query_one(Heatmap)
        assert (heat.qtok, heat.key_token) == (2, 1)
        # The pinned row is marked; masked nothing here.
        assert heat_row(app, 2).startswith("▸")
        await pilot.press("left_square_bracket", "comma", "comma", "comma")  # clamps at 0
        assert (s.qtok, s.key_token) == (1, 0)
        assert app.screen.query_one(GeometryView).selected == 1

    run(app, script)


def test_mouse_hover_shows_the_exact_value_and_click_selects():
    trace = synthetic()
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        heat = s.query_one(Heatmap)
        x = heat.label_w + 2 * heat.cell_w + 1  # column 2
        await pilot.hover(Heatmap, offset=(x, 1 + 1))  # row 1
        await pilot.pause()
        assert heat.hover == (1, 2)
        raw = trace.find("W", 0, 0).data
        assert f"mouse  {TOKENS[1]} → {printable(TOKENS[2])}  W = {float(raw[1, 2])!r}" in text_of(
            s, "#value"
        )
        await pilot.click(Heatmap, offset=(1, 1 + 2))  # row label of token 2
        assert s.qtok == 2
        await pilot.click(Heatmap, offset=(x, 1 + 1))  # a cell: query 1, key 2
        assert (s.qtok, s.key_token) == (1, 2)
        await pilot.click(Heatmap, offset=(x, 1 + 1))  # the same cell again: neuron view
        assert isinstance(app.screen, NeuronScreen)

    run(app, script)


def test_neuron_view_sum_equals_the_w_raw_cell():
    trace = synthetic()
    app = BrowseApp([trace])

    async def script(pilot):
        await pilot.press("down", "right")  # layer 1, head 1
        await pilot.press("right_square_bracket", "right_square_bracket")  # query 2
        await pilot.press("comma", "comma")  # key 0
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, NeuronScreen)
        nv = screen.neuron
        assert nv is not None and (nv.key, nv.i, nv.j) == ((1, 1), 2, 0)
        raw = trace.find("W_raw", 1, 1).data[2, 0]
        assert raw == 12.0 and nv.total == raw
        side = text_of(screen, "#n-side-text")
        assert field(side, "Σ q⊙k = q·k") == "12.0"
        assert field(side, "W_raw cell ✓") == "12.0"
        assert field(side, "W_scaled cell") == repr(float(trace.find("W_scaled", 1, 1).data[2, 0]))
        assert field(side, "W cell (softmax)") == repr(float(w_at(1, 1)[2, 0]))
        dims = text_of(screen, "#n-dims-text").splitlines()
        # dim, q, k, q⊙k, running sum: q = [4, 4], k = [1, 2].
        assert dims[1].split() == ["0", "4.0000", "1.0000", "4.0000", "4.0000"]
        assert dims[2].split() == ["1", "4.0000", "2.0000", "8.0000", "12.0000"]
        assert "12.0000" in dims[-1]
        # Keys move within the neuron view; escape goes back with the new selection.
        await pilot.press("full_stop")
        assert (
            screen.neuron is not None
            and screen.neuron.total == trace.find("W_raw", 1, 1).data[2, 1]
        )
        await pilot.press("escape")
        s = main_screen(app)
        assert (s.qtok, s.key_token, s.key) == (2, 1, (1, 1))

    run(app, script)


def test_masked_cells_show_as_masked():
    trace = synthetic(layers=1, heads=1, causal=True)
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        await pilot.press("shift+tab")
        assert s.step.name == "W_masked"
        assert "−∞" in heat_row(app, 0)
        await pilot.press("full_stop", "full_stop")  # query 0, key 2: above the diagonal
        assert "W_masked = −∞ (masked)" in text_of(s, "#value")

    run(app, script)


def test_help_and_quit():
    app = BrowseApp([synthetic()])

    async def script(pilot):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        await pilot.press("q")
        assert app.return_code == 0 and not app.is_running

    run(app, script)


def test_saved_trace_browses():
    trace = hi_trace()
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        assert s.step is trace.find("W")
        w = trace.find("W").data
        await pilot.press("right_square_bracket")
        assert f"W = {float(w[1, s.key_token])!r}" in text_of(s, "#value")
        for i in range(4):
            assert all(f"{v:.2f}" in heat_row(app, i) for v in w[i])
        assert app.screen.query_one(GeometryView).geometry.shared
        await pilot.press("enter")
        assert isinstance(app.screen, NeuronScreen)
        assert app.screen.neuron.total == pytest.approx(trace.find("W_raw").data[1, s.key_token])

    run(app, script)


def test_several_inputs_switch_with_angle_brackets():
    app = BrowseApp([synthetic(), hi_trace()])

    async def script(pilot):
        s = main_screen(app)
        assert "input 1/2" in text_of(s, "#title")
        await pilot.press("greater_than_sign")
        assert s.index.trace.text == "hi how are you" and "input 2/2" in text_of(s, "#title")
        await pilot.press("less_than_sign")
        assert s.index.trace.text == "the [b]x c"

    run(app, script)


def test_long_trace_at_80x24_scrolls_to_the_selection():
    n = 40
    rng = np.random.default_rng(0)
    w = rng.random((n, n))
    w /= w.sum(axis=1, keepdims=True)
    tokens = [f"t{i}" for i in range(n)]
    labels = token_labels(tokens)
    trace = Trace(
        "long",
        tokens,
        list(range(n)),
        {},
        [TraceStep("W", "softmax", "", w, labels, labels, "weights")],
    )
    app = BrowseApp([trace])

    async def script(pilot):
        heat = app.screen.query_one(Heatmap)
        assert not heat.numbers  # 40 columns of numbers do not fit: colour only
        for _ in range(30):
            await pilot.press("right_square_bracket")
        await pilot.pause()
        assert heat.scroll_y > 0
        assert heat_row(app, 30).startswith("▸t30")
        await pilot.press("n")
        assert heat.numbers
        assert f"{w[30, 0]:.2f}" in heat_row(app, 30)

    run(app, script)


def test_vector_columns_in_colour_mode_are_labelled_whole_not_d1d1d1():
    n, d = 4, 40
    x = np.arange(n * d, dtype=float).reshape(n, d)
    labels = token_labels([f"t{i}" for i in range(n)])
    cols = [f"d{j}" for j in range(d)]
    trace = Trace("v", [f"t{i}" for i in range(n)], list(range(n)), {}, [
        TraceStep("X", "embed", "", x, labels, cols, "vectors")
    ])  # fmt: skip
    app = BrowseApp([trace])

    async def script(pilot):
        heat = app.screen.query_one(Heatmap)
        assert not heat.numbers  # 40 columns of numbers do not fit: colour only
        header = heat.render_line(0).text
        assert "d1d1" not in header
        # d0, d2, d4 …: each label whole, two cells per column, so each starts above its column
        for j in range(0, 30, 2):
            at = heat.label_w + 2 * j - int(heat.scroll_x)
            if at + len(cols[j]) <= heat.size.width:
                assert header[at : at + len(cols[j]) + 1] == cols[j] + " ", (j, header)

    run(app, script)


# ---------------------------------------------------------------------------------------------
# Entry point: lazy import and friendly errors


def test_importing_attn_cli_and_browse_does_not_import_textual():
    code = "import sys, attn_cli, attn_cli.browse; assert 'textual' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_browser_needs_a_terminal(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with pytest.raises(InputError, match="needs a terminal, and stdout is not one"):
        run_browser([synthetic()])


def test_run_browser_without_textual(monkeypatch):
    import attn_cli.browse as browse

    monkeypatch.setattr(browse, "textual_missing", lambda: True)
    with pytest.raises(InputError, match="needs Textual: pip install"):
        run_browser([synthetic()])
    monkeypatch.setattr(browse, "textual_missing", lambda: False)
    with pytest.raises(InputError, match="nothing to browse"):
        run_browser([])
    with pytest.raises(InputError, match="nothing to browse"):
        run_browser([Trace("x", ["x"], [1], {}, [])])


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize("stdin", ["terminal", "file"])
def test_q_quits_a_real_terminal_and_restores_it(stdin):
    """run_browser in a pseudo-terminal: it draws, `q` returns, and the terminal gets its
    normal screen, cursor and mouse reporting back. With the trace on stdin (`show - --browse
    < saved.json`), keys still come from the terminal."""
    import os
    import pty
    import select
    import time

    sample = str(SAMPLES / "hi.json")
    read = "sys.stdin.buffer.read()" if stdin == "file" else f"open({sample!r}, 'rb').read()"
    code = (
        "import sys; from attn_cli.export import loads_traces; "
        "from attn_cli.browse import run_browser; "
        f"run_browser(loads_traces({read})); print('RETURNED')"
    )
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child process
        os.environ["TERM"] = "xterm-256color"
        if stdin == "file":
            os.dup2(os.open(sample, os.O_RDONLY), 0)
        os.execvp(sys.executable, [sys.executable, "-c", code])
    out = b""

    def read_until(marker: bytes, timeout: float) -> None:
        nonlocal out
        end = time.time() + timeout
        while marker not in out and time.time() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return

    try:
        read_until(b"attn-cli browse", 30)
        assert b"attn-cli browse" in out
        os.write(fd, b"q")
        read_until(b"RETURNED", 30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert status == 0 and b"RETURNED" in out
    restored = out[out.rindex(b"\x1b[?1049l") :]  # leaves the alternate screen …
    assert b"\x1b[?25h" in restored  # … shows the cursor
    assert b"\x1b[?1000l" in out[out.rindex(b"attn-cli browse") :]  # mouse reporting off


def test_neuron_uses_the_operands_named_by_w_raw():
    """A model that rotates q and k (RoPE) keeps Q and K and adds the rotated steps; W_raw's
    formula names the vectors actually multiplied."""
    trace = synthetic(layers=1, heads=1)
    raw = trace.find("W_raw", 0, 0)
    raw.formula = "Q_rot·K_rotᵀ"
    q_rot = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    k_rot = np.array([[1.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    at = {"layer": 0, "head": 0}
    trace.steps += [
        TraceStep("Q_rot", "rope(Q)", "", q_rot, LABELS, ["q0", "q1"], "vectors", **at),
        TraceStep("K_rot", "rope(K)", "", k_rot, LABELS, ["k0", "k1"], "vectors", **at),
    ]
    raw.data = np.array([[2.0, 6.0, 0.0], [2.0, 0.0, 10.0], [0.0, 3.0, -5.0]])  # by hand
    nv = neuron_at(TraceIndex(trace), (0, 0), 2, 2)
    assert nv is not None and (nv.q_name, nv.k_name) == ("Q_rot", "K_rot")
    np.testing.assert_array_equal(nv.product, [0.0, -5.0])
    assert nv.total == raw.data[2, 2] == -5.0


def test_no_neuron_view_without_query_and_key_vectors():
    w = W0.copy()
    trace = Trace(
        "x", TOKENS, [1, 2, 3], {}, [TraceStep("W", "", "", w, LABELS, LABELS, "weights")]
    )
    app = BrowseApp([trace])

    async def script(pilot):
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert any("no neuron view here" in n.message for n in app._notifications)

    run(app, script)


def test_clicking_a_thumbnail_opens_that_map():
    trace = synthetic()
    app = BrowseApp([trace])

    async def script(pilot):
        s = main_screen(app)
        grid = app.screen.query_one(ThumbGrid)
        label_w, side, gap = grid._geometry(grid.size.width)
        lines_per = math.ceil(side / 2)
        # Layer 1 (second block of lines below the header), head 1 (second thumbnail).
        await pilot.click(ThumbGrid, offset=(label_w + (side + gap) + 1, 1 + lines_per))
        assert s.key == (1, 1) and s.step is trace.find("W", 1, 1)

    run(app, script)


def test_a_real_decoder_run_browses_with_rope_and_mask(tmp_path):
    """The tiny Llama fixture (RoPE, causal mask) run by the CLI and saved with every step: the
    neuron view multiplies Q_rot and K_rot, its sum is the W_raw cell, and masked keys show −∞."""
    from .conftest import ROOT, invoke

    model = ROOT / "tests" / "fixtures" / "tiny_llama"
    if not (model / "config.json").exists():
        pytest.skip("tiny_llama fixture not present")
    out = tmp_path / "llama.json"
    result = invoke(
        [
            "explain",
            "the bank of the river",
            "--model",
            str(model),
            "--json",
            str(out),
            "--steps",
            "all",
        ]
    )
    assert result.exit_code == 0, result.output
    trace = loads_traces(out.read_bytes())[0]
    app = BrowseApp([trace])

    async def script(pilot):
        await pilot.press("down", "right")  # layer 1, head 1
        for _ in range(4):
            await pilot.press("right_square_bracket")
        s = main_screen(app)
        await pilot.press(*["comma"] * s.key_token)  # key 0
        await pilot.press("enter")
        nv = app.screen.neuron
        assert (nv.q_name, nv.k_name) == ("Q_rot", "K_rot")
        raw = trace.find("W_raw", 1, 1).data[4, 0]
        assert nv.total == pytest.approx(raw, rel=1e-5)
        np.testing.assert_allclose(nv.q, trace.find("Q_rot", 1, 1).data[4])
        np.testing.assert_allclose(nv.k, trace.find("K_rot", 1, 1).data[0])
        assert nv.weight == trace.find("W", 1, 1).data[4, 0]
        side = text_of(app.screen, "#n-side-text")
        assert "W_raw cell ✓" in side and "−∞" in side  # keys after the query are masked

    run(app, script)


# ---------------------------------------------------------------------------------------------
# The CLI: `attn-cli browse TEXT [explain's options]` and `attn-cli show FILE --browse`

WIRED = hasattr(__import__("attn_cli.cli").cli, "browse")
needs_wiring = pytest.mark.skipif(
    not WIRED, reason="the browse command is not wired into cli.py yet"
)


@needs_wiring
def test_cli_browse_without_a_terminal_is_one_line_error():
    from .conftest import invoke

    for args in (["browse", "hi how are you"], ["show", str(SAMPLES / "hi.json"), "--browse"]):
        result = invoke(args)
        assert result.exit_code == 2
        assert "needs a terminal, and stdout is not one" in result.output
        assert "Traceback" not in result.output


@needs_wiring
def test_cli_browse_without_textual_says_how_to_install(monkeypatch):
    import attn_cli.browse as browse

    from .conftest import invoke

    monkeypatch.setattr(browse, "textual_missing", lambda: True)
    result = invoke(["browse", "hi", "--model", "no-such-model"])
    assert result.exit_code == 2
    # Said before the model is looked for (no model error), in one line.
    assert "needs Textual: pip install 'attn-cli[browse]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


@needs_wiring
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize(
    "args",
    [
        ["browse", "hi how are you", "--qkv", "--heads", "2", "--causal"],
        ["show", "SAMPLE", "--browse"],
    ],
)
def test_cli_browse_in_a_terminal(args):
    """The commands draw the browser in a pseudo-terminal and `q` exits with status 0."""
    import os
    import pty
    import select
    import time

    args = [str(SAMPLES / "hi.json") if a == "SAMPLE" else a for a in args]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child process
        os.environ["TERM"] = "xterm-256color"
        os.execvp(sys.executable, [sys.executable, "-m", "attn_cli", *args])
    out = b""
    try:
        end = time.time() + 60
        while b"quit" not in out and time.time() < end:
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 65536)
        assert b"quit" in out, out[-500:]
        os.write(fd, b"q")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.WEXITSTATUS(status) == 0


def test_wide_and_long_tokens_keep_every_line_the_widget_width():
    tokens = ["日本語", "🙂", "x" * 40, "\u200b", "a\tb"]
    labels = token_labels(tokens)
    n = len(tokens)
    w = np.full((n, n), 1.0 / n)
    w[0, 1:] = 0.0
    w[0, 0] = 1.0
    trace = Trace(
        "wide",
        tokens,
        list(range(n)),
        {},
        [TraceStep("W", "softmax", "", w, labels, labels, "weights")],
    )
    app = BrowseApp([trace])

    async def script(pilot):
        heat = app.screen.query_one(Heatmap)
        for y in range(heat.size.height):
            assert heat.render_line(y).cell_length == heat.size.width
        assert "\\u200b" in heat_row(app, 3)  # the zero-width space, made visible
        assert "\\x09" in heat_row(app, 4)  # the tab
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert "xxxx" in text_of(app.screen, "#token")

    run(app, script)


def test_hovering_a_thumbnail_summarises_that_map():
    app = BrowseApp([synthetic()])

    async def script(pilot):
        grid = app.screen.query_one(ThumbGrid)
        label_w, side, gap = grid._geometry(grid.size.width)
        await pilot.hover(ThumbGrid, offset=(label_w + (side + gap) + 1, 1 + math.ceil(side / 2)))
        await pilot.pause()
        line = text_of(app.screen, "#value").splitlines()[1]
        # Rows of W0 (rolled): entropies of (½, ¼, ¼) twice and (⅛, ⅛, ¾), in nats.
        h1 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
        h2 = -(2 * 0.125 * math.log(0.125) + 0.75 * math.log(0.75))
        assert line.startswith(f"map    L1 · H1  entropy {(2 * h1 + h2) / 3:.2f}")
        assert main_screen(app).key == (0, 0)  # hovering does not select

    run(app, script)


def test_a_deep_model_grid_scrolls_to_the_selected_layer():
    trace = synthetic(layers=12, heads=12)
    app = BrowseApp([trace])

    async def script(pilot):
        wrap = app.screen.query_one("#grid-wrap")
        grid = app.screen.query_one(ThumbGrid)
        assert grid.size.height > wrap.size.height  # 12 layers do not fit in 80 × 24
        assert wrap.scroll_y == 0
        for _ in range(11):
            await pilot.press("down")
        await pilot.pause()
        assert main_screen(app).key == (11, 0)
        y, h = grid.selected_lines()
        assert wrap.scroll_y <= y and y + h <= wrap.scroll_y + wrap.size.height

    run(app, script)

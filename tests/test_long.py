"""Long documents: --file reads one text; the blockwise path (attn_cli/blockwise.py, long.py)
gives exactly the ordinary path's numbers without an n × n matrix: its pooled map is the
pooling of the full map, its zoomed blocks are the full map's cells (and transformers'), and
at 32,768 tokens its blocks equal an independent two-pass reference written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from attn_cli import attention as att
from attn_cli import blockwise, long, memory
from attn_cli.cli import main
from attn_cli.errors import InputError
from attn_cli.inputs import MAX_LINE_BYTES, read_file
from attn_cli.pretrained import load_model
from attn_cli.tokenizer import tokenize
from tests.conftest import invoke, require

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GEMMA3 = FIXTURES / "tiny_gemma3"  # layer 0 slides (window 3), layer 1 is global
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "by",
    "the",
    "river",
    "bank",
    "and",
    "it",
    "is",
    "to",
    "in",
    "of",
]


def text_of(model, count: int, seed: int = 0) -> str:
    """Random words that the model's tokenizer cuts into exactly `count` tokens (BOS included)."""
    rng = np.random.default_rng(seed)
    words = list(rng.choice(WORDS, count))

    def size(k: int) -> int:
        return len(tokenize(model.tokenizer, " ".join(words[:k]), special=True)[1])

    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if size(mid) >= count else (mid + 1, hi)
    text = " ".join(words[:lo])
    while len(tokenize(model.tokenizer, text, special=True)[1]) > count:
        text = text[:-1]
    assert len(tokenize(model.tokenizer, text, special=True)[1]) == count
    return text


def pool(w: np.ndarray, cells: int = long.POOLED_CELLS) -> np.ndarray:
    """The pooled map of a full map, as W_pooled describes it: summed over each column bin,
    averaged over each row bin."""
    e = blockwise.edges(len(w), cells)
    sums = np.add.reduceat(np.add.reduceat(w.astype(np.float64), e[:-1], axis=1), e[:-1], axis=0)
    return sums / np.diff(e)[:, None]


def steps(trace, name: str) -> dict[tuple[int, int], np.ndarray]:
    return {(s.layer, s.head): s.data for s in trace.steps if s.name == name}


# --- --file ------------------------------------------------------------------------------------


def test_a_file_of_nine_lines_is_one_trace(tmp_path):
    doc = tmp_path / "para.txt"
    doc.write_text("\n".join(f"line {i} of the paragraph" for i in range(9)), encoding="utf-8")
    r = invoke(["explain", "--file", str(doc), "--json", "-"])
    assert r.exit_code == 0, r.stderr
    (trace,) = [orjson.loads(line) for line in r.stdout.strip().split("\n")]
    assert trace["text"] == doc.read_text()
    assert read_file(doc) == doc.read_text()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read it"),
        (b"\x00\x01binary", "not a text file"),
        (b"caf\xe9", "not valid UTF-8"),
        (b"  \n\n", "holds no text"),
        (b"a" * (MAX_LINE_BYTES + 1), "more than"),
    ],
)
def test_bad_files_are_one_line_and_a_non_zero_exit(tmp_path, content, words):
    doc = tmp_path / "doc.txt"
    if content is not None:
        doc.write_bytes(content)
    r = invoke(["explain", "--file", str(doc)])
    assert r.exit_code != 0
    assert words in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    with pytest.raises(InputError):
        read_file(doc)


def test_text_and_file_together_are_refused(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("the cat")
    r = invoke(["explain", "hi", "--file", str(doc)])
    assert r.exit_code != 0 and "give one of them" in r.stderr


# --- blockwise maths ---------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "cap"), [(None, None), (37, None), (None, 4.0), (300, 2.5)])
def test_blockwise_equals_the_dense_softmax(monkeypatch, window, cap):
    # small blocks, so every case (diagonal blocks, window edges, skipped blocks) occurs
    monkeypatch.setattr(blockwise, "QUERY_BLOCK", 64)
    monkeypatch.setattr(blockwise, "KEY_BLOCK", 96)
    rng = np.random.default_rng(1)
    n, heads, kv, d = 700, 4, 2, 16
    q = rng.standard_normal((heads, n, d), dtype=np.float32) * 2
    k = rng.standard_normal((kv, n, d), dtype=np.float32) * 2
    v = rng.standard_normal((kv, n, d), dtype=np.float32)
    geo = blockwise.Geometry(0.3, cap, window)
    mask = att.causal_mask(n) if window is None else att.sliding_window_mask(n, window)
    ref = att.attend(q, k, v, mask, 0.3, cap)
    y, lse = blockwise.attend(q, k, v, geo)
    np.testing.assert_allclose(y, ref.Y, atol=2e-5)
    for h in range(heads):
        g = att.kv_head_of(h, heads, kv)
        got = blockwise.block(q[h], k[g], lse[h], geo, (50, 650), (10, 690))
        np.testing.assert_allclose(got, ref.W[h, 50:650, 10:690], atol=1e-5)
        pooled = blockwise.pooled(q[h], k[g], lse[h], geo, *(blockwise.edges(n, 40),) * 2)
        np.testing.assert_allclose(pooled, pool(ref.W[h], 40), atol=1e-5)
        np.testing.assert_allclose(pooled.sum(axis=1), 1.0, atol=1e-5)
    # not vacuous: without the window (or the cap) the weights differ
    other = blockwise.Geometry(0.3, None if cap else 4.0, None if window else 37)
    assert not np.allclose(blockwise.attend(q, k, v, other)[0], ref.Y, atol=1e-3)


# --- 4,096 tokens: the long path equals the ordinary one --------------------------------------


@pytest.fixture(scope="module")
def tiny_4096():
    model = load_model(GEMMA3)
    text = text_of(model, 4096)
    ordinary = model.trace(text, layers="all", heads="all", long=False)
    zoomed = model.trace(
        text, layers="all", heads="all", rows=(3000, 3100), cols=(2900, 3100), long=True
    )
    return model, text, ordinary, zoomed


def test_4096_pooled_and_zoomed_equal_the_ordinary_full_map(tiny_4096):
    _, _, ordinary, zoomed = tiny_4096
    full = steps(ordinary, "W")
    assert len(ordinary.tokens) == 4096 and len(full) == 8  # 2 layers × 4 heads
    assert not steps(zoomed, "W")  # the long trace holds no full map
    pooled, blocks = steps(zoomed, "W_pooled"), steps(zoomed, "W_block")
    assert pooled.keys() == blocks.keys() == full.keys()
    for key, w in full.items():
        assert pooled[key].shape == (256, 256)
        np.testing.assert_allclose(pooled[key], pool(w), atol=1e-5)
        np.testing.assert_allclose(blocks[key], w[3000:3100, 2900:3100], atol=1e-5)
    # the sliding layer's rows read 3 keys, all inside the block (weights); the global layer's
    # rows read 3,001 keys or more, 200 of them here (partial weights summing to their share)
    kinds = {s.layer: s.kind for s in zoomed.steps if s.name == "W_block"}
    assert kinds == {0: "weights", 1: "partial_weights"}
    share = full[(1, 2)][3000:3100, 2900:3100].sum(axis=1)
    np.testing.assert_allclose(blocks[(1, 2)].sum(axis=1), share, atol=1e-5)
    assert share.max() < 0.999
    # the whole forward pass agrees: the next-token prediction is the same
    (a,), (b,) = ([s.data for s in t.steps if s.kind == "prediction"] for t in tiny_4096[2:])
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.reference
def test_4096_pooled_and_zoomed_equal_transformers(tiny_4096):
    torch = require("torch")
    require("transformers")
    from tests.decoder_utils import reference

    model, text, _, zoomed = tiny_4096
    ids = tokenize(model.tokenizer, text, special=True)[1]
    with torch.inference_mode():
        ref = reference(GEMMA3, ids)["attentions"]  # (layers, heads, n, n)
    pooled, blocks = steps(zoomed, "W_pooled"), steps(zoomed, "W_block")
    for (layer, head), p in pooled.items():
        np.testing.assert_allclose(p, pool(ref[layer, head]), atol=1e-5)
        np.testing.assert_allclose(
            blocks[(layer, head)], ref[layer, head, 3000:3100, 2900:3100], atol=1e-5
        )


def test_long_path_kicks_in_when_full_maps_would_not_fit(monkeypatch):
    model = load_model(GEMMA3)
    text = text_of(model, 600)
    need = memory.model_bytes(600, 4, 2, 5, 2, model.weights.parameters(), False)
    # a machine where the ordinary run's estimate is just too much
    monkeypatch.setattr(
        memory, "total_memory", lambda: int((memory.resident_memory() + need) / memory.USABLE) - 1
    )
    trace = model.trace(text, layers="all", heads=[0])
    assert steps(trace, "W_pooled") and not steps(trace, "W")
    assert trace.config["long"]["pooled_cells"] == 256
    with pytest.raises(InputError, match=r"2 × 4 maps of 600 × 600 would take"):
        model.trace(text, layers="all", heads=[0], long=False)


def test_models_without_a_blockwise_path_say_how_big_the_map_would_be(monkeypatch):
    model = load_model(FIXTURES / "tiny_bert")
    with pytest.raises(InputError, match="bert has no long"):
        model.trace("the cat sat", rows="0:2")
    monkeypatch.setattr(memory, "total_memory", lambda: memory.resident_memory() + 1)
    with pytest.raises(InputError, match=r"2 × 2 maps of 8 × 8 would take 1 KiB.*fewer layers"):
        model.trace("the cat sat on the mat", layers="all")


@pytest.mark.parametrize(
    ("fixture", "args"),
    [
        ("tiny_bert", ["the cat sat"]),
        ("tiny_gpt2", ["the cat sat"]),
        ("tiny_qwen3_next", ["the cat sat"]),
        ("tiny_vision/vit", [str(FIXTURES / "tiny_vision" / "picture.ppm")]),
        ("tiny_seq2seq/t5", ["the cat sat", "--target", "a cat"]),
        ("tiny_whisper", [str(FIXTURES / "tiny_whisper" / "speech.wav"), "--target", "hi"]),
    ],
)
@pytest.mark.parametrize("flag", ["--rows", "--cols"])
def test_rows_and_cols_without_a_long_path_are_refused_in_one_line(fixture, args, flag):
    r = invoke(["explain", *args, "--model", str(FIXTURES / fixture), flag, "0:2", "--view", "top"])
    assert r.exit_code != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--rows/--cols" in r.stderr and "has no long (blockwise) path" in r.stderr
    # not vacuous: without the flag the same run works
    assert (
        invoke(["explain", *args, "--model", str(FIXTURES / fixture), "--view", "top"]).exit_code
        == 0
    )


def test_zoom_ranges_are_checked():
    model = load_model(GEMMA3)
    for rows, words in (("5:2", "0 <= A < B"), ("x", "takes A:B"), ("900:950", "tokens")):
        with pytest.raises(InputError, match=words):
            model.trace("the cat sat on the mat", rows=rows)


# --- the CLI: --rows/--cols, the export, Ctrl-C -------------------------------------------------


def test_cli_zoom_exports_the_pooled_map_and_the_block_only(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("\n".join(" ".join(WORDS) for _ in range(9)), encoding="utf-8")
    out = tmp_path / "t.json"
    args = ["explain", "--file", str(doc), "--model", str(GEMMA3), "--layer", "1", "--head", "2"]
    r = invoke([*args, "--rows", "100:110", "--cols", "0:120", "--json", str(out)])
    assert r.exit_code == 0, r.stderr
    trace = json.loads(out.read_text())
    names = [(s["name"], s["shape"]) for s in trace["steps"] if s.get("layer") == 1]
    n = len(trace["tokens"])
    assert names == [("W_pooled", [min(n, 256)] * 2), ("W_block", [10, 120])]
    block = trace["steps"][1]
    assert [r.split(":")[0] for r in block["rows"]] == [str(i) for i in range(100, 110)]
    assert "pooled" in trace["steps"][0]["description"] and "Exact" in block["description"]
    r = invoke([*args, "--rows", "100:110", "--view", "top"])
    assert r.exit_code == 0 and "W_block" in r.stdout


def test_ctrl_c_in_the_blockwise_pass_stops_in_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(blockwise, "attend", interrupted)
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(WORDS))
    code = main(["explain", "--file", str(doc), "--model", str(GEMMA3), "--rows", "0:4"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err and err.count("\n") <= 1


# --- 32,768 tokens: blocks equal an independent reference --------------------------------------


def reference_block(q, k, rows, cols, scale, window):
    """Two passes over key blocks of 1,000 (not blockwise.py's sizes, no online rescaling):
    each row's max, then its sum of exp, then the block's weights, in float64."""
    (r0, r1), (c0, c1) = rows, cols
    i = np.arange(r0, r1)[:, None]
    qr = q[r0:r1].astype(np.float64)

    def logits(j0, j1):
        s = qr @ k[j0:j1].astype(np.float64).T * scale
        j = np.arange(j0, j1)[None, :]
        ok = (j <= i) & ((j > i - window) if window else True)
        return np.where(ok, s, -np.inf)

    m = np.full((r1 - r0, 1), -np.inf)
    for j0 in range(0, r1, 1000):
        m = np.maximum(m, logits(j0, min(r1, j0 + 1000)).max(axis=1, keepdims=True))
    total = np.zeros((r1 - r0, 1))
    for j0 in range(0, r1, 1000):
        total += np.exp(logits(j0, min(r1, j0 + 1000)) - m).sum(axis=1, keepdims=True)
    return np.exp(logits(c0, c1) - m) / total


@pytest.mark.slow
def test_32768_tokens_zoomed_blocks_equal_an_independent_reference():
    model = load_model(GEMMA3)
    n = 32_768
    ids = list(np.random.default_rng(2).integers(3, 320, n))
    family, cfg = model.family, model.config
    h = family.embed(model.weights, ids, cfg)
    plan = long.Plan(frozenset({0, 1}), (3,), n, rows=(30_000, 30_064), cols=(0, n))
    records = [
        layer.attention for layer in long.long_layers(plan, family.layers(model.weights, h, cfg))
    ]
    for layer, rec in enumerate(records):
        kept: long.Kept = rec.facts["long"]
        for head in plan.heads:
            block = kept.blocks[head]
            assert block.shape == (64, n)
            ref = reference_block(
                kept.queries[head], kept.keys[head], (30_000, 30_064), (0, n),
                kept.geo.scale, kept.geo.window,
            )  # fmt: skip
            np.testing.assert_allclose(block, ref, atol=1e-5)
            np.testing.assert_allclose(block.sum(axis=1), 1.0, atol=1e-5)
            # a narrower block: each row keeps its share of 1
            part = kept.block(head, (30_000, 30_064), (29_000, 30_010))
            share = ref[:, 29_000:30_010].sum(axis=1)
            np.testing.assert_allclose(part.sum(axis=1), share, atol=1e-5)
            assert share.min() < 1 - 1e-3 if layer == 1 else True
            np.testing.assert_allclose(kept.pooled[head].sum(axis=1), 1.0, atol=1e-4)
    assert records[0].facts["window"] == 3 and records[1].facts["window"] is None


def test_the_browser_shows_a_long_trace_pooled_map_and_block():
    require("textual")
    import asyncio

    from attn_cli.browse.app import BrowseApp
    from attn_cli.browse.widgets import Heatmap

    model = load_model(GEMMA3)
    trace = model.trace(
        " ".join(WORDS * 20), layers="all", heads=[0, 1], rows=(100, 140), cols=(0, 150)
    )
    app = BrowseApp([trace])

    async def script() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert screen.step.name == "W_pooled"  # type: ignore[attr-defined]
            await pilot.press("tab")
            assert screen.step.name == "W_block"  # type: ignore[attr-defined]
            assert app.screen.query_one(Heatmap).step is screen.step  # type: ignore[attr-defined]
            await pilot.press("j", "l")
            assert screen.key == (1, 1)  # type: ignore[attr-defined]

    asyncio.run(script())


def test_zoom_after_the_run_recomputes_any_block_exactly():
    model = load_model(GEMMA3)
    text = " ".join(WORDS * 30)
    ordinary = model.trace(text, layers=[1], heads=[2], long=False)
    trace = model.trace(text, layers=[1], heads=[2], long=True)
    step = long.zoom(trace, 1, 2, "200:260", (0, 300))
    assert trace.steps[-1] is step and step.name == "W_block" and step.kind == "weights"
    np.testing.assert_allclose(step.data, ordinary.find("W", 1, 2).data[200:260, :300], atol=1e-5)
    with pytest.raises(InputError, match="not a shown layer and head"):
        long.zoom(trace, 0, 2, "0:5", "0:5")
    with pytest.raises(InputError, match="not a shown layer and head"):
        long.zoom(ordinary, 1, 2, "0:5", "0:5")


def test_progress_counting_restores_the_bar():
    from attn_cli.progress import Progress

    bar = Progress("x", total=1)
    bar.advance()
    with bar.counting(100, "tokens"):
        assert (bar.total, bar.unit, bar.done) == (100, "tokens", 0)
        bar.advance(40)
        assert bar.done == 40
    assert (bar.total, bar.unit, bar.done) == (1, None, 1)


def test_the_api_reads_a_file_and_zooms(tmp_path):
    import attn_cli

    doc = tmp_path / "doc.txt"
    doc.write_text("\n".join(" ".join(WORDS) for _ in range(9)), encoding="utf-8")
    trace = attn_cli.explain(file=doc, model=str(GEMMA3), layer=1, head=0, rows="5:9")
    assert trace.text == doc.read_text()
    assert [s.name for s in trace.steps if s.layer == 1] == ["W_pooled", "W_block"]
    assert attn_cli.explain(file=doc).text == doc.read_text()
    with pytest.raises(InputError, match="apply with model="):
        attn_cli.explain(file=doc, rows="0:2")


def test_the_browser_zooms_into_the_pooled_cell_under_the_cursor():
    """z on W_pooled recomputes the exact block of the cursor's pooled cell (its rows × columns
    of tokens): it equals the ordinary full map's cells; a saved trace says it cannot."""
    require("textual")
    import asyncio

    from attn_cli.browse.app import BrowseApp, MainScreen
    from attn_cli.browse.widgets import Heatmap
    from attn_cli.export import dumps_traces, loads_traces

    model = load_model(GEMMA3)
    text = text_of(model, 600)
    full = model.trace(text, layers=[1], heads=[2], long=False).find("W", 1, 2).data
    trace = model.trace(text, layers=[1], heads=[2], long=True)  # a long trace below 4,096
    e = blockwise.edges(600, 256)  # bins of 2 or 3 tokens
    saved = loads_traces(dumps_traces([trace]))[0]
    shown: list[tuple[tuple[int, int], tuple[int, int], np.ndarray, str]] = []

    async def script(app: BrowseApp, fresh: bool) -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, MainScreen) and screen.step.name == "W_pooled"
            screen.qtok, screen.key_token = 451, 300  # then by bins: ] and .
            await pilot.press("right_square_bracket", "full_stop", "full_stop", "comma")
            r, c = int(np.searchsorted(e, 451, "right")), int(np.searchsorted(e, 300, "right"))
            assert (screen.qtok, screen.key_token) == (e[r], e[c])
            assert screen.query_one(Heatmap).qtok == r  # the heatmap's cursor is the cell
            await pilot.press("z")
            await pilot.pause()
            note = [n.message for n in app._notifications][-1]
            if not fresh:
                assert screen.step.name == "W_pooled" and note.count("\n") == 0
                assert "needs a fresh run" in note and "--rows A:B --cols C:D" in note
                return
            step = screen.step
            assert step.name == "W_block" and screen.query_one(Heatmap).step is step
            shown.append(((e[r], e[r + 1]), (e[c], e[c + 1]), step.data, note))
            assert [x.split(":")[0] for x in step.rows] == [str(i) for i in range(e[r], e[r + 1])]
            # zoom again from another cell: the new block replaces the one z made
            await pilot.press("shift+tab", "comma", "z")
            await pilot.pause()
            assert [s.name for s in screen.steps].count("W_block") == 1
            assert screen.step.cols[0].startswith(f"{e[c - 1]}:")

    asyncio.run(script(BrowseApp([trace]), True))
    ((r0, r1), (c0, c1), block, note) = shown[0]
    assert f"queries {r0}–{r1 - 1} over keys {c0}–{c1 - 1}" in note
    np.testing.assert_allclose(block, full[r0:r1, c0:c1], atol=1e-5)
    assert block.shape == (r1 - r0, c1 - c0) and block.any()
    asyncio.run(script(BrowseApp([saved]), False))


def test_attn_cli_browse_of_a_long_file_hands_the_browser_zoomable_traces(monkeypatch, tmp_path):
    """`attn-cli browse --file … --model …` (a fresh run): the browser gets the long traces
    themselves, so z can recompute blocks from their kept queries and keys."""
    import attn_cli.browse as browse

    got = []
    monkeypatch.setattr(browse, "require_browser", lambda: None)
    monkeypatch.setattr(browse, "run_browser", lambda traces, **kw: got.extend(traces))
    monkeypatch.setattr(long, "LONG_TOKENS", 200)  # a long text for the test: past 200 tokens
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(WORDS * 20), encoding="utf-8")
    assert main(["browse", "--file", str(doc), "--model", str(GEMMA3), "--layer", "1"]) in (0, None)
    (trace,) = got
    assert len(trace.tokens) > 200 and steps(trace, "W_pooled") and not steps(trace, "W")
    assert all(long.zoomable(trace, 1, h) for h in range(4)) and not long.zoomable(trace, 0, 0)

"""The interactive HTML page: structure without a browser, then behaviour in a real headless
Chromium (Debian's, driven by Playwright) with every network request refused."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from attn_cli.errors import InputError
from attn_cli.export import loads_traces
from attn_cli.render.interactive import (
    LEVELS,
    MASKED_CODE,
    TABLE_COLS,
    TABLE_ROWS,
    interactive_html,
    page_data,
    round_significant,
    trace_repr_html,
)
from attn_cli.trace import Trace, TraceStep, dim_labels, token_labels
from tests.conftest import REQUIRE_REFERENCE, ROOT, SAMPLES, invoke, minilm_dir, require

DATA_OPEN = '<script type="application/json" id="attn-data">'
EVIL = '</script><img src=x onerror="window.__pwned=1"><!--'


def embedded(page: str) -> dict:
    start = page.index(DATA_OPEN) + len(DATA_OPEN)
    return json.loads(page[start : page.index("</script>", start)])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_trace(tokens: list[str], layers: int = 2, heads: int = 2, causal: bool = False) -> Trace:
    """A small multi-layer, multi-head trace built by hand (no model): per layer an X, per head
    Q, W_raw, (W_masked,) W, and a final H."""
    rng = np.random.default_rng(7)
    n, d = len(tokens), 3
    labels = token_labels(tokens)
    steps = []
    for layer in range(layers):
        x = rng.normal(size=(n, 40))
        steps.append(TraceStep("X", "hidden", "input", x, labels, dim_labels(40), "vectors", layer))
        for head in range(heads):
            q = rng.normal(size=(n, d))
            steps.append(
                TraceStep(
                    "Q", "X·W_q", "queries", q, labels, dim_labels(d, "q"), "vectors", layer, head
                )
            )
            raw = q @ rng.normal(size=(d, n)) * (layer + 1)
            steps.append(
                TraceStep("W_raw", "Q·Kᵀ", "scores", raw, labels, labels, "scores", layer, head)
            )
            if causal:
                raw = np.where(np.triu(np.ones((n, n), bool), 1), -np.inf, raw)
                steps.append(
                    TraceStep(
                        "W_masked", "mask", "masked", raw, labels, labels, "scores", layer, head
                    )
                )
            w = softmax(raw)
            steps.append(
                TraceStep("W", "softmax", "weights", w, labels, labels, "weights", layer, head)
            )
    steps.append(
        TraceStep("H", "out", "final", rng.normal(size=(n, 40)), labels, dim_labels(40), "vectors")
    )
    return Trace(" ".join(tokens), tokens, list(range(n)), {"pipeline": "hand"}, steps, ["a note"])


# ---------------------------------------------------------------- structure, no browser


def test_round_significant_by_hand():
    got = round_significant(np.array([0.123456, 123456.0, -0.000987654, -2.5e-7, 0.0, -0.0, 7.0]))
    assert got.tolist() == [0.1235, 123500.0, -0.0009877, -2.5e-7, 0.0, 0.0, 7.0]
    assert not np.signbit(got[5])
    assert round_significant(np.array([-np.inf, 1e-320]))[0] == -np.inf
    assert round_significant(np.array([1e-320]))[0] == 0.0


def test_one_self_contained_document():
    page = interactive_html(loads_traces((SAMPLES / "hi.json").read_bytes()))
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1 and page.count("</html>") == 1
    assert page.count("<script") == 2 and page.lower().count("</script") == 2
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # No src/href at all, so nothing is loaded from anywhere; and no URL anywhere in the page.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)
    assert "default-src 'none'" in page  # the Content-Security-Policy forbids any fetch
    assert "rounded to 4 significant digits" in page


def test_token_text_is_data_not_markup():
    tokens = [EVIL, "a&b", "\"q'", "<!--"]
    trace = hand_trace(tokens, layers=1, heads=1)
    page = interactive_html([trace], title="<b>t</b>")
    for t in (EVIL, "a&b", "<!--"):  # quotes are harmless inside a script element
        assert t not in page
    assert page.lower().count("</script") == 2  # only the page's own two script elements end
    assert "<!--" not in page
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page
    doc = embedded(page)
    assert doc["traces"][0]["tokens"] == tokens
    assert doc["traces"][0]["text"] == trace.text
    assert doc["traces"][0]["labels"] == token_labels(tokens)


def test_embedded_numbers_are_the_traces_rounded():
    trace = hand_trace(["the", "bank", "of", "the", "river"], causal=True)
    doc = embedded(interactive_html([trace]))
    steps = doc["traces"][0]["steps"]
    assert [(s["name"], s["layer"], s["head"]) for s in steps] == [
        (s.name, s.layer, s.head) for s in trace.steps
    ]
    masked_seen = 0
    for entry, step in zip(steps, trace.steps, strict=True):
        assert entry["shape"] == list(step.shape)
        assert entry["formula"] == step.formula and entry["description"] == step.description
        data = entry["data"]
        r, c = len(data), len(data[0])
        assert (r, c) == (min(step.shape[0], TABLE_ROWS), min(step.shape[1], TABLE_COLS))
        assert entry["map"] == (step.rows == step.cols == token_labels(trace.tokens))
        for i in range(r):
            for j in range(c):
                want, got = step.data[i, j], data[i][j]
                if want == -np.inf:
                    assert got is None
                    masked_seen += 1
                    continue
                # 4 significant digits: the number prints as itself at .4g, within half a unit
                # of the 4th digit of the Trace's value.
                assert float(f"{got:.4g}") == got
                assert abs(got - want) <= 5e-4 * abs(want) + 1e-300
    assert masked_seen == 2 * 2 * (5 * 4 // 2)  # every W_masked: the 10 cells above the diagonal


def test_axes_travel_only_when_not_the_tokens():
    trace = hand_trace(["a", "b", "a"], layers=1, heads=1)
    steps = page_data([trace])["traces"][0]["steps"]
    w = next(s for s in steps if s["name"] == "W")
    x = next(s for s in steps if s["name"] == "X")
    assert "rows" not in w and "cols" not in w and "rows" not in x
    assert x["cols"] == dim_labels(TABLE_COLS)
    assert page_data([trace])["traces"][0]["labels"] == ["a₁", "b", "a₂"]


def test_large_traces_keep_the_weights_and_drop_the_rest():
    trace = hand_trace(list("abcdef"), layers=2, heads=2, causal=True)
    doc = page_data([trace], map_budget=4 * 36, table_budget=0)["traces"][0]
    kept = {(s["name"], s["data"] is not None) for s in doc["steps"] if s["map"]}
    assert kept == {("W", True), ("W_raw", False), ("W_masked", False)}
    assert all(s["data"] is None for s in doc["steps"] if not s["map"])
    assert "not embedded: W_raw (4 of 4), W_masked (4 of 4)." in doc["omitted"]
    assert "not embedded (too many)" in doc["omitted"]
    # Past the budget even attention maps go, in trace order, a trace's first map too.
    doc = page_data([trace, trace], map_budget=3 * 36)["traces"]
    w = [[s["data"] is not None for s in d["steps"] if s["name"] == "W"] for d in doc]
    assert w == [[True, True, True, False], [False, False, False, False]]
    assert "W (1 of 4)" in doc[0]["omitted"] and "W (4 of 4)" in doc[1]["omitted"]


def test_a_first_map_larger_than_the_budget_is_left_out():
    """A single map past the budget is described, not embedded (it used to be kept whatever its
    size: 10,000 tokens made a page of 10⁸ numbers and 4.5 GiB of memory)."""
    trace = hand_trace(list("abcdef"), layers=1, heads=1)
    doc = page_data([trace], map_budget=35)["traces"][0]
    assert all(s["data"] is None for s in doc["steps"] if s["map"])
    assert "not embedded: W_raw (1 of 1), W (1 of 1)." in doc["omitted"]


def test_several_traces_one_page():
    a, b = hand_trace(["x", "y"], 1, 1), hand_trace(["p", "q", "r"], 1, 3)
    doc = embedded(interactive_html([a, b]))
    assert [t["tokens"] for t in doc["traces"]] == [["x", "y"], ["p", "q", "r"]]


def test_no_traces_is_a_user_error():
    with pytest.raises(InputError):
        interactive_html([])


def test_jupyter_repr_is_the_page_in_a_sandboxed_iframe():
    trace = hand_trace([EVIL, "b"], 1, 1)
    out = trace_repr_html(trace)
    m = re.fullmatch(
        r'<iframe class="attn-cli" sandbox="allow-scripts" style="[^"]*" srcdoc="([^"]*)"></iframe>',
        out,
    )
    assert m, out[:300]
    assert html.unescape(m.group(1)) == interactive_html([trace])
    assert "<script" not in out and EVIL not in out


# ---------------------------------------------------------------- a real browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = require("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if REQUIRE_REFERENCE:
            pytest.fail(f"{CHROMIUM} is required here (ATTN_CLI_REQUIRE_REFERENCE=1) but missing")
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Opened:
    """A page opened from a file:// URL with every other request refused and recorded."""

    def __init__(self, browser, page_html: str, tmp_path: Path, scheme: str = "light", ready=True):
        self.file = tmp_path / "page.html"
        self.file.write_text(page_html, encoding="utf-8")
        self.url = self.file.as_uri()
        self.page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on(
            "console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text)
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(self.url)
        if ready:
            self.page.wait_for_selector("html[data-ready='1']")

    def _route(self, route):
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    def check_clean(self):
        assert self.errors == []
        assert set(self.requests) <= {self.url}, self.requests

    def values(self, side: str) -> list[str | None]:
        col = "#hv-right" if side == "k" else "#hv-left"
        return self.page.eval_on_selector_all(
            f"{col} .tok", "ts => ts.map(t => t.dataset.value ?? null)"
        )

    def hover_token(self, side: str, i: int):
        col = "#hv-left" if side == "q" else "#hv-right"
        self.page.hover(f"{col} .tok[data-i='{i}']")


def as_numbers(values: list[str | None]) -> np.ndarray:
    return np.array([-np.inf if v == "masked" else float(v) for v in values])


@pytest.fixture(scope="module")
def minilm_trace(tmp_path_factory) -> Trace:
    minilm_dir()
    path = tmp_path_factory.mktemp("minilm") / "bank.json"
    r = invoke(
        [
            "explain",
            "the bank of the river",
            "--model",
            "minilm",
            "--layer",
            "all",
            "--head",
            "all",
            "--steps",
            "all",
            "--json",
            str(path),
        ]
    )
    assert r.exit_code == 0, r.output
    return loads_traces(path.read_bytes())[0]


def assert_close(shown: np.ndarray, want: np.ndarray):
    assert shown.shape == want.shape
    assert np.array_equal(np.isneginf(shown), np.isneginf(want))
    ok = np.isfinite(want)
    assert np.all(np.abs(shown[ok] - want[ok]) <= 5e-4 * np.abs(want[ok]) + 1e-12)


@pytest.mark.reference
def test_page_renders_and_hover_shows_the_traces_weights(browser, minilm_trace, tmp_path):
    t = minilm_trace
    o = Opened(browser, interactive_html([t]), tmp_path)
    page = o.page
    n = len(t.tokens)
    assert page.locator("#hv-left .tok").count() == n == page.locator("#hv-right .tok").count()
    assert page.locator("#hv-left .tok .lbl").all_text_contents() == token_labels(t.tokens)
    assert page.locator("#thumbs canvas").count() == 6 * 12
    # Step tables of layer 0 · head 0: X (layer 0) and Q K V W_raw W_scaled W Y, and the final H.
    assert page.locator("#step-list .step").evaluate_all("e => e.map(x => x.dataset.step)") == [
        "X",
        "Q",
        "K",
        "V",
        "W_raw",
        "W_scaled",
        "W",
        "Y",
        "H",
    ]
    assert page.input_value("#step") == "W"
    assert o.values("k") == [None] * n  # nothing highlighted before a hover

    w = t.find("W", 0, 0).data
    o.hover_token("q", 2)  # "bank": what it attends to
    assert_close(as_numbers(o.values("k")), w[2])
    top = int(np.argmax(w[2]))
    assert page.text_content("#hv-info").startswith(
        "bank attends most to " + token_labels(t.tokens)[top]
    )
    o.hover_token("k", 5)  # "river": what attends to it
    assert_close(as_numbers(o.values("q")), w[:, 5])

    page.select_option("#layer", "2")
    page.select_option("#head", "5")
    o.hover_token("q", 2)
    w25 = t.find("W", 2, 5).data
    assert not np.allclose(w25[2], w[2], atol=1e-3)
    assert_close(as_numbers(o.values("k")), w25[2])

    # Another map: the scaled scores of the same head, and a thumbnail click selects a head.
    page.select_option("#step", "W_scaled")
    o.hover_token("q", 1)
    assert_close(as_numbers(o.values("k")), t.find("W_scaled", 2, 5).data[1])
    page.click("#thumbs canvas[data-layer='4'][data-head='7']")
    assert page.input_value("#layer") == "4" and page.input_value("#head") == "7"
    o.hover_token("k", 0)
    assert_close(as_numbers(o.values("q")), t.find("W_scaled", 4, 7).data[:, 0])
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_heatmap_tooltip_reads_the_exact_cell(browser, tmp_path):
    t = hand_trace(["hi", "how", "are", "you"], causal=True)
    o = Opened(browser, interactive_html([t]), tmp_path)
    page = o.page
    box = page.locator("#hm").bounding_box()
    seen = set()
    for fx, fy in [(0.97, 0.97), (0.6, 0.6), (0.9, 0.45), (0.5, 0.99)]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        tip = page.locator("#tip")
        assert tip.is_visible()
        i, j = int(tip.get_attribute("data-row")), int(tip.get_attribute("data-col"))
        value = float(tip.get_attribute("data-value"))
        assert abs(value - t.find("W", 0, 0).data[i, j]) <= 5e-4 * abs(value)
        assert tip.text_content().splitlines()[:2] == [f"row  {t.tokens[i]}", f"col  {t.tokens[j]}"]
        seen.add((i, j))
    assert len(seen) >= 3
    page.mouse.move(1, 1)
    assert not page.locator("#tip").is_visible()

    # The masked scores: hatched in the heatmap, "−∞" in the head view and the table.
    page.select_option("#step", "W_masked")
    o.hover_token("q", 1)
    shown = o.values("k")
    assert shown[2:] == ["masked", "masked"]
    assert_close(as_numbers(shown), t.find("W_masked", 0, 0).data[1])
    assert page.locator("#hv-right .tok[data-i='3'] .w").text_content() == "−∞"
    assert page.locator(".step[data-step='W_masked'] td.masked").count() == 6
    box = page.locator("#hm").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] * 0.2)
    assert page.get_attribute("#tip", "data-value") == "masked"
    assert "masked (−∞)" in page.text_content("#tip")
    assert page.locator("#masked-key").is_visible()
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_dark_mode_follows_the_system_and_toggles(browser, tmp_path):
    t = hand_trace(["a", "b"], 1, 1)
    bg = "getComputedStyle(document.body).backgroundColor"
    o = Opened(browser, interactive_html([t]), tmp_path, scheme="light")
    assert o.page.evaluate(bg) == "rgb(246, 247, 249)"
    o.page.click("#theme")
    assert o.page.get_attribute("html", "data-theme") == "dark"
    assert o.page.evaluate(bg) == "rgb(18, 21, 27)"
    assert o.page.text_content("#theme").endswith("Light")
    o.page.click("#theme")
    assert o.page.evaluate(bg) == "rgb(246, 247, 249)"
    o.check_clean()
    o.page.close()
    d = Opened(browser, interactive_html([t]), tmp_path, scheme="dark")
    assert d.page.evaluate(bg) == "rgb(18, 21, 27)"
    d.page.click("#theme")
    assert d.page.evaluate(bg) == "rgb(246, 247, 249)"
    d.check_clean()
    d.page.close()


@pytest.mark.reference
def test_hostile_token_text_stays_text(browser, tmp_path):
    t = hand_trace([EVIL, "<b>x</b>", "ok"], 1, 1)
    o = Opened(browser, interactive_html([t], title=EVIL), tmp_path)
    page = o.page
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0 and page.locator("b:text('x')").count() == 0
    assert page.locator("#hv-left .tok .lbl").all_text_contents() == [EVIL, "<b>x</b>", "ok"]
    assert page.text_content("#text") == t.text
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_several_traces_have_a_selector(browser, tmp_path):
    a, b = hand_trace(["x", "y"], 1, 2), hand_trace(["p", "q", "r"], 2, 1)
    o = Opened(browser, interactive_html([a, b]), tmp_path)
    page = o.page
    assert page.locator("#trace").is_visible()
    assert page.text_content("#text") == "x y"
    page.select_option("#trace", "1")
    assert page.text_content("#text") == "p q r"
    assert page.locator("#hv-left .tok").count() == 3
    assert page.locator("#head option").all_text_contents() == ["0"]  # one head per layer
    o.hover_token("q", 0)
    assert_close(as_numbers(o.values("k")), b.find("W", 0, 0).data[0])
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_method_maps_are_selectable(browser, tmp_path):
    """A per-layer map without a head (as attention rollout is) joins the Map selector of
    every head of its layer and shows its own numbers."""
    t = hand_trace(["a", "b", "c"], layers=2, heads=2)
    r = np.array([[0.5, 0.25, 0.25], [0.2, 0.7, 0.1], [0.125, 0.375, 0.5]])
    t.steps.append(
        TraceStep("rollout", "R", "rollout", r, t.steps[-2].rows, t.steps[-2].cols, "relevance", 1)
    )
    o = Opened(browser, interactive_html([t]), tmp_path)
    page = o.page
    assert page.locator("#step option").all_text_contents() == ["W_raw", "W"]
    page.select_option("#layer", "1")
    page.select_option("#head", "1")
    assert page.locator("#step option").all_text_contents() == ["W_raw", "W", "rollout"]
    page.select_option("#step", "rollout")
    o.hover_token("q", 2)
    assert o.values("k") == ["0.125", "0.375", "0.5"]
    assert page.text_content("#legend-kind") == "0 to the map's max"
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_keys_and_pinning(browser, tmp_path):
    t = hand_trace(["one", "two", "three"], layers=2, heads=3)
    o = Opened(browser, interactive_html([t]), tmp_path)
    page = o.page
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#layer") == "1" and page.input_value("#head") == "2"
    page.click("#hv-right .tok[data-i='1']")  # pin "two" as a key: what attends to it
    page.mouse.move(1, 1)
    assert_close(as_numbers(o.values("q")), t.find("W", 1, 2).data[:, 1])
    assert page.locator("#hv-right .tok.pinned").count() == 1
    page.keyboard.press("Escape")
    assert o.values("q") == [None, None, None]
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_a_trace_without_maps_still_shows_its_tables(browser, tmp_path):
    t = hand_trace(["a", "b"], 1, 1)
    t.steps = [s for s in t.steps if s.kind == "vectors"]
    o = Opened(browser, interactive_html([t]), tmp_path)
    assert o.page.text_content("#hv-info") == "No tokens × tokens map here."
    assert o.page.locator("#step-list .step").count() == len(t.steps)
    o.check_clean()
    o.page.close()


def unpacked(doc: dict) -> dict[int, np.ndarray]:
    """Step index -> the map the page stores packed, decoded as the page's script does (without
    its rounding to 4 significant digits)."""
    import base64
    import zlib

    blob = zlib.decompress(base64.b64decode(doc["packed"]["zlib_base64"]))
    assert len(blob) == doc["packed"]["bytes"]
    maps = {}
    for i, entry in enumerate(doc["traces"][0]["steps"]):
        if "packed" in entry:
            q, (n, m) = entry["packed"], entry["shape"]
            codes = np.frombuffer(blob, np.uint8, n * m, q["offset"]).reshape(n, m)
            maps[i] = np.where(codes == MASKED_CODE, -np.inf, q["lo"] + codes * q["step"])
    return maps


def test_packed_maps_decode_to_the_trace_within_the_stated_precision():
    trace = hand_trace(["the", "bank", "of", "the", "river"], causal=True)
    doc = embedded(interactive_html([trace], pack_above=0))
    steps = doc["traces"][0]["steps"]
    maps = unpacked(doc)
    assert sorted(maps) == [i for i, s in enumerate(trace.steps) if s.kind in ("scores", "weights")]
    for i, got in maps.items():
        want = trace.steps[i].data
        assert steps[i]["data"] is None  # the numbers travel packed only
        assert np.array_equal(np.isneginf(got), np.isneginf(want))
        ok = np.isfinite(want)
        span = want[ok].max() - want[ok].min()
        assert steps[i]["packed"]["step"] == pytest.approx(span / LEVELS)
        # "each within 1/508 of its map's range": half a step
        assert np.abs(got[ok] - want[ok]).max() <= span / (2 * LEVELS) * (1 + 1e-9)
    note = doc["packed"]["note"]
    assert "stored to 8 bits: each within 1/508 of its map's range" in note
    assert not np.isnan(doc["traces"][0]["steps"][0]["data"]).any()  # tables stay as JSON
    assert "packed" not in embedded(interactive_html([trace]))  # small pages are not packed


def test_a_page_of_many_maps_packs_them_to_about_a_byte_per_number():
    """112 tokens × 270 heads: the JSON page spent about 6 bytes per number (79 MB for 112
    SmolLM2 tokens); packed, a byte and a third of base64 at most, less once compressed."""
    rng = np.random.default_rng(0)
    n = 112
    labels = token_labels([f"t{i}" for i in range(n)])
    causal = np.triu(np.ones((n, n), bool), 1)
    steps = []
    for layer in range(30):
        for head in range(9):
            w = softmax(np.where(causal, -np.inf, rng.normal(size=(n, n)) * 3))
            steps.append(TraceStep("W", "softmax", "", w, labels, labels, "weights", layer, head))
    trace = Trace("t", [f"t{i}" for i in range(n)], list(range(n)), {}, steps)
    numbers = 270 * n * n
    size = len(interactive_html([trace]).encode())
    assert size < 1.0 * numbers
    assert len(interactive_html([trace], pack_above=None).encode()) > 5 * numbers


@pytest.mark.reference
def test_a_packed_page_shows_the_traces_weights_within_the_stated_precision(browser, tmp_path):
    t = hand_trace(["hi", "how", "are", "you"], causal=True)
    o = Opened(browser, interactive_html([t], pack_above=0), tmp_path)
    page = o.page
    assert "stored to 8 bits: each within 1/508 of its map's range" in page.text_content(
        "#size-note"
    )
    assert page.is_visible("#size-note")
    for name in ("W", "W_masked"):
        page.select_option("#step", name)
        want = t.find(name, 0, 0).data
        ok = np.isfinite(want)
        half_step = (want[ok].max() - want[ok].min()) / (2 * LEVELS)
        for i in range(4):
            o.hover_token("q", i)
            shown = as_numbers(o.values("k"))
            assert np.array_equal(np.isneginf(shown), np.isneginf(want[i]))
            fin = np.isfinite(want[i])
            # within half a step, then shown to 4 significant digits
            assert np.all(
                np.abs(shown[fin] - want[i][fin]) <= half_step + 5e-4 * np.abs(shown[fin])
            )
    o.check_clean()
    page.close()


@pytest.mark.reference
def test_jupyter_iframe_runs_without_network(browser, tmp_path):
    t = hand_trace(["hi", "there"], 1, 1)
    wrapper = "<!DOCTYPE html><html><body>" + trace_repr_html(t) + "</body></html>"
    o = Opened(browser, wrapper, tmp_path, ready=False)
    frame = o.page.frame_locator("iframe.attn-cli")
    frame.locator("html[data-ready='1']").wait_for()
    frame.locator("#hv-left .tok[data-i='0']").hover()
    shown = frame.locator("#hv-right .tok").evaluate_all("ts => ts.map(t => t.dataset.value)")
    assert_close(as_numbers(shown), t.find("W", 0, 0).data[0])
    o.check_clean()
    o.page.close()


@pytest.mark.reference
def test_screenshots(browser, minilm_trace, tmp_path):
    """Light and dark screenshots (written to docs/ when ATTN_CLI_DOCS=1)."""
    out = ROOT / "docs" if os.environ.get("ATTN_CLI_DOCS") == "1" else tmp_path
    for scheme, name in (("light", "interactive.png"), ("dark", "interactive-dark.png")):
        o = Opened(browser, interactive_html([minilm_trace]), tmp_path, scheme=scheme)
        o.page.select_option("#layer", "0")
        o.page.select_option("#head", "4")
        o.hover_token("q", 2)  # "bank" looks at "river"
        o.page.screenshot(path=str(out / name))
        o.check_clean()
        o.page.close()
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_long_trace_page_shows_the_pooled_map_and_the_block(browser, tmp_path):
    """--html --interactive of a long run (tiny Gemma 3, more tokens than pooled bins): the Map
    selector offers W_pooled and W_block, labelled by token ranges and positions, with their
    numbers; the page holds no n × n map."""
    import attn_cli
    from attn_cli import blockwise

    gemma = ROOT / "tests" / "fixtures" / "tiny_gemma3"
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(["the cat sat on a mat by the river bank"] * 40), encoding="utf-8")
    out = tmp_path / "long.html"
    args = ["explain", "--file", str(doc), "--model", str(gemma), "--layer", "1", "--head", "2"]
    zoom = ["--rows", "300:340", "--cols", "250:350"]
    r = invoke([*args, *zoom, "--html", str(out), "--interactive"])
    assert r.exit_code == 0, r.stderr
    # the same run in this process, at full precision (the JSON export rounds)
    trace = attn_cli.explain(
        file=doc, model=str(gemma), layer=1, head=2, rows="300:340", cols="250:350"
    )
    n = len(trace.tokens)
    pooled, block = trace.find("W_pooled", 1, 2), trace.find("W_block", 1, 2)
    assert n > 256 and pooled.data.shape == (256, 256) and block.data.shape == (40, 100)
    doc_data = embedded(out.read_text(encoding="utf-8"))
    assert all(s["shape"] != [n, n] for s in doc_data["traces"][0]["steps"])  # never the n² map
    e = blockwise.edges(n, 256)
    ranges = [f"{a}–{b - 1}" for a, b in zip(e[:-1], e[1:], strict=True)]
    labels = token_labels(trace.tokens)

    o = Opened(browser, out.read_text(encoding="utf-8"), tmp_path)
    page = o.page
    assert page.eval_on_selector_all("#step option", "os => os.map(o => o.value)") == [
        "W_pooled",
        "W_block",
    ]
    assert page.input_value("#step") == "W_pooled"
    assert page.text_content("#hm-title") == "W_pooled"
    assert page.locator("#hv-left .tok .lbl").all_text_contents() == ranges
    assert page.locator("#hv-right .tok .lbl").all_text_contents() == ranges
    o.hover_token("q", 200)
    assert_close(as_numbers(o.values("k")), pooled.data[200].astype(np.float64))
    assert ranges[200] in page.text_content("#hv-info")

    page.select_option("#step", "W_block")
    assert page.text_content("#hm-title") == "W_block"
    assert page.locator("#hv-left .tok .lbl").all_text_contents() == [
        f"{i}:{labels[i]}" for i in range(300, 340)
    ]
    assert page.locator("#hv-right .tok .lbl").all_text_contents() == [
        f"{j}:{labels[j]}" for j in range(250, 350)
    ]
    o.hover_token("q", 5)
    assert_close(as_numbers(o.values("k")), block.data[5].astype(np.float64))
    assert page.evaluate("document.getElementById('hm').width") > 0  # the heatmap is drawn
    o.check_clean()

"""The interactive page: one self-contained HTML file (inline CSS, JS and data, no network).

Layer, head and map selectors; BertViz's head view (two columns of tokens joined by lines whose
opacity is the weight; hovering a token shows exactly what it attends to, or what attends to
it); a heatmap with a tooltip; a layer × head overview; and the step tables of the selected head.
In Jupyter the same page is shown inline in an iframe (`trace_repr_html`).

The page embeds the Trace as JSON, rounded to a few significant digits: every map over the tokens
(tokens × tokens, or tokens × source tokens for cross attention: the head view's right-hand
column is then the source; the pre-softmax score maps are dropped first when they would make the
page too large), and the top-left corner of every other matrix. Token text is data: it is JSON-escaped here and only ever
inserted with textContent by the script.

A trace of a picture (config["image"], from a vision model) adds the picture: the script draws
its thumbnail as a PNG data: URL (the Content-Security-Policy then allows `img-src data:`, and
nothing else) under a grid of patch cells that hovering tints by the focused token's row.

A page whose maps hold more than PACK_ABOVE numbers stores them packed instead, so a browser
opens it comfortably (112 SmolLM2 tokens, every layer and head: 79 MB as JSON): each map's cells
as one byte, code k meaning lo + k·step with step = (largest − smallest finite value) / 254 (code
255: masked), all maps zlib-compressed into one base64 string that the page inflates with the
browser's own DecompressionStream and decodes map by map when first shown. The page says so.
"""

from __future__ import annotations

import base64
import html
import math
import zlib
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import orjson

from attn_cli.errors import InputError
from attn_cli.render.common import check_color_scale
from attn_cli.trace import MAP_KINDS, Trace, TraceStep, printable, token_labels

SIGNIFICANT = 4
# Numbers of tokens × tokens maps one page embeds: the attention weights (and other maps) first,
# then the pre-softmax scores (W_raw, W_scaled, W_masked); past the budget a map is described but
# its numbers are left out (even a trace's first map: one 10,000-token map alone is 10⁸ numbers).
MAP_BUDGET = 12_000_000
# Other matrices (X, Q, K, V, Y, W_q …) are embedded as their top-left corner, like the terminal
# tables, while the total stays under TABLE_BUDGET numbers.
TABLE_ROWS = 24
TABLE_COLS = 32
TABLE_BUDGET = 1_000_000
PRE_SOFTMAX = ("W_raw", "W_scaled", "W_masked")
# A long text's maps (long.py): the pooled map (rows and columns: bins of tokens, "0–35") and
# the exact block ("300:tok"); the page shows them, and a long trace holds no n × n map.
LONG_MAPS = ("W_pooled", "W_block")
# Past this many map numbers a page stores its maps packed to 8 bits per cell (see above).
PACK_ABOVE = 1_000_000
LEVELS = 254  # codes 0 … 254 are values, 255 is a masked (or non-finite) cell
MASKED_CODE = 255

# Content-Security-Policy: nothing may be fetched, only the inline script and style run.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
# A page with a picture (a vision trace) also shows images, only from the data: URL the script
# makes from the trace's thumbnail.
_CSP_PICTURE = _CSP + "; img-src data:"


def round_significant(data: np.ndarray, digits: int = SIGNIFICANT) -> np.ndarray:
    """`data` rounded to `digits` significant digits, so each number prints short (0.1235,
    not 0.12345678); -0.0 becomes 0.0 and non-finite values stay as they are."""
    a = np.array(data, dtype=np.float64)
    ok = np.isfinite(a) & (np.abs(a) >= 1e-300)
    x = a[ok]
    shift = digits - 1 - np.floor(np.log10(np.abs(x))).astype(np.int64)
    up = shift >= 0
    # Scale by an exact power of ten, round, and undo the scaling with the same power: the
    # result is the double nearest to the rounded decimal, which prints as that decimal.
    p_up = 10.0 ** shift[up]
    p_down = 10.0 ** (-shift[~up])
    x[up] = np.rint(x[up] * p_up) / p_up
    x[~up] = np.rint(x[~up] / p_down) * p_down
    a[ok] = x
    a[np.isfinite(a) & ~ok] = 0.0
    return a + 0.0  # -0.0 -> 0.0


def quantise(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A map as one byte per cell: (codes, lo, step) with cell ≈ lo + code·step, within step/2
    (1/508 of the map's range); non-finite cells (masked: −∞) get MASKED_CODE."""
    a = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(a)
    codes = np.full(a.shape, MASKED_CODE, dtype=np.uint8)
    if not finite.any():
        return codes, 0.0, 0.0
    lo, hi = float(a[finite].min()), float(a[finite].max())
    step = (hi - lo) / LEVELS
    codes[finite] = np.rint((a[finite] - lo) / step) if step > 0 else 0
    return codes, lo, step


def _is_map(step: TraceStep, labels: list[str]) -> bool:
    """A map of the head view and heatmap: tokens × tokens, or an attention map over the
    trace's axes (cross attention: tokens × source tokens; an encoder's source × source), or
    a long text's pooled map and exact block (their rows and columns: token ranges)."""
    if step.rows == labels and step.cols == labels:
        return True
    if step.name in LONG_MAPS and step.kind in MAP_KINDS and step.data.ndim == 2:
        return True
    return step.kind in MAP_KINDS and step.row_axis is not None and step.col_axis is not None


def _step_entry(step: TraceStep, is_map: bool, labels: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": step.name,
        "formula": step.formula,
        "description": step.description,
        "kind": step.kind,
        "layer": step.layer,
        "head": step.head,
        "block": step.block,
        "shape": list(step.shape),
        "map": is_map,
        "data": None,
    }
    # A map over another axis carries its labels (a cross map's keys: the source tokens).
    if is_map and step.rows != labels:
        entry["rows"] = [printable(r) for r in step.rows]
    if is_map and step.cols != labels:
        entry["cols"] = [printable(c) for c in step.cols]
        entry["col_axis"] = step.col_axis
    return entry


def page_data(
    traces: list[Trace],
    title: str = "attn-cli",
    *,
    map_budget: int = MAP_BUDGET,
    table_budget: int = TABLE_BUDGET,
    table_rows: int = TABLE_ROWS,
    table_cols: int = TABLE_COLS,
    pack_above: int | None = PACK_ABOVE,
) -> dict[str, Any]:
    """What the page embeds: per trace its text, tokens, labels, config, notes and steps, each
    step with its metadata and (some of) its numbers, rounded to SIGNIFICANT digits. A
    matrix's masked (-inf) cells are null. Past `pack_above` map numbers (None: never) the
    maps are packed (doc["packed"], each map's "packed" entry) instead of listed."""
    labels_of = [token_labels(t.tokens) for t in traces]
    maps_of = [
        [_is_map(s, labels) for s in t.steps] for t, labels in zip(traces, labels_of, strict=True)
    ]
    # Which maps carry their numbers: the whole page shares one budget. Attention weights and
    # other maps first (in trace order), the pre-softmax scores last.
    candidates = sorted(
        (
            (t.steps[i].name in PRE_SOFTMAX, k, i)
            for k, t in enumerate(traces)
            for i, is_map in enumerate(maps_of[k])
            if is_map
        ),
    )
    keep_map: set[tuple[int, int]] = set()
    used = 0
    for _, k, i in candidates:
        size = traces[k].steps[i].data.size
        if used + size <= map_budget:
            keep_map.add((k, i))
            used += size
    table_cells = sum(
        min(s.shape[0], table_rows) * min(s.shape[1], table_cols)
        for k, t in enumerate(traces)
        for s, is_map in zip(t.steps, maps_of[k], strict=True)
        if not is_map
    )
    keep_tables = table_cells <= table_budget
    packed = pack_above is not None and used > pack_above
    blob = zlib.compressobj(6) if packed else None
    chunks: list[bytes] = []
    offset = 0

    out = []
    for k, trace in enumerate(traces):
        labels, maps = labels_of[k], maps_of[k]
        steps = []
        for i, step in enumerate(trace.steps):
            entry = _step_entry(step, maps[i], labels)
            if maps[i]:
                if (k, i) in keep_map and blob is not None:
                    codes, lo, q_step = quantise(step.data)
                    chunks.append(blob.compress(codes.tobytes()))
                    entry["packed"] = {"offset": offset, "lo": lo, "step": q_step}
                    offset += codes.size
                elif (k, i) in keep_map:
                    entry["data"] = round_significant(step.data)
            else:
                r = min(step.shape[0], table_rows)
                c = min(step.shape[1], table_cols)
                if keep_tables:
                    entry["data"] = round_significant(step.data[:r, :c])
                # Axis labels travel only when they are not the token labels.
                rows, cols = step.rows[:r], step.cols[:c]
                if rows != labels[:r] or r != len(labels):
                    entry["rows"] = [printable(x) for x in rows]
                if cols != labels[:c] or c != len(labels):
                    entry["cols"] = [printable(x) for x in cols]
            steps.append(entry)
        out.append(
            {
                "text": _clean(trace.text),
                "tokens": [_clean(t) for t in trace.tokens],
                "labels": labels,
                "config": trace.config,
                "notes": trace.notes,
                "omitted": _omitted_note(trace, k, maps, keep_map, keep_tables, map_budget),
                "steps": steps,
            }
        )
    doc: dict[str, Any] = {
        "title": title,
        "significant": SIGNIFICANT,
        "table_rows": table_rows,
        "table_cols": table_cols,
        "traces": out,
    }
    if blob is not None:
        chunks.append(blob.flush())
        doc["packed"] = {
            "levels": LEVELS,
            "masked": MASKED_CODE,
            "bytes": offset,
            "zlib_base64": base64.b64encode(b"".join(chunks)).decode("ascii"),
            "note": PACKED_NOTE.format(numbers=used, above=pack_above),
        }
    return doc


PACKED_NOTE = (
    "To keep this page small, its {numbers:,} attention-map numbers (more than {above:,}) are "
    f"stored to 8 bits: each within 1/{2 * LEVELS} of its map's range (largest − smallest "
    "value), shown to 4 significant digits. The JSON export (--json) has every number at full "
    "precision."
)


def _omitted_note(
    trace: Trace,
    k: int,
    maps: list[bool],
    keep_map: set[tuple[int, int]],
    keep_tables: bool,
    map_budget: int,
) -> str | None:
    """What the page left out of this trace, in words, or None."""
    total: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for i, (step, is_map) in enumerate(zip(trace.steps, maps, strict=True)):
        if is_map:
            total[step.name] = total.get(step.name, 0) + 1
            if (k, i) not in keep_map:
                dropped[step.name] = dropped.get(step.name, 0) + 1
    parts = []
    if dropped:
        listed = ", ".join(f"{name} ({dropped[name]} of {total[name]})" for name in dropped)
        parts.append(
            f"To keep this page usable ({map_budget:,} numbers at most), these maps are not "
            f"embedded: {listed}. Choose fewer layers or heads (--layer, --head) or a shorter "
            "text to see them here; the JSON export (--json) has every number."
        )
    if not keep_tables and not all(maps):
        parts.append(
            "The vector and parameter tables are described but their numbers are not embedded "
            "(too many); the JSON export (--json) has every number."
        )
    return " ".join(parts) or None


def _clean(text: str) -> str:
    """Lone surrogates (from undecodable input) cannot be written as UTF-8 JSON: replace them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _json_for_script(doc: dict[str, Any]) -> str:
    """JSON safe inside <script>: '<', '>' and '&' only occur inside JSON strings, where their
    \\u escapes mean the same, so no token text can close the script element."""
    text = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=_default).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _default(obj: Any) -> Any:
    """Config values orjson cannot write (numpy scalars handled natively; anything else as str)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


@cache
def _asset(name: str) -> str:
    return resources.files("attn_cli.render").joinpath(name).read_text(encoding="utf-8")


_BODY = """\
<header>
  <div class="titles">
    <h1><span class="brand">attn-cli</span>{title}</h1>
    <p id="text"></p>
    <p id="meta"></p>
    <ul id="notes" hidden></ul>
  </div>
  <button id="theme" type="button">Dark</button>
</header>
<nav class="controls" aria-label="What to show">
  <label hidden>Trace <select id="trace"></select></label>
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
  <label>Map <select id="step"></select></label>
  <label title="Colour weight maps by log10 of the weight, from max/10⁴ to max"><input type="checkbox" id="log-scale"> log colours</label>
  <span class="hint" id="hint">hover a token · click to pin</span>
</nav>
<p id="size-note" class="info" hidden></p>
<div class="grid">
  <div class="col">
{picture}    <section class="card" id="headview">
      <h2>Head view <span class="sub">· <span id="hv-title"></span><span id="hv-where"></span></span></h2>
      <p class="info" id="hv-info"></p>
      <div class="hv-scroll"><div class="hv">
        <div class="hv-col hv-left" id="hv-left"></div>
        <canvas id="hv-canvas"></canvas>
        <div class="hv-col hv-right" id="hv-right"></div>
      </div></div>
    </section>
    <section class="card" id="overview" hidden>
      <h2>All layers and heads <span class="sub">· <span id="ov-step"></span> · click one to select it</span></h2>
      <div class="thumbs" id="thumbs"></div>
    </section>
  </div>
  <div class="col">
    <section class="card" id="heatmap">
      <h2>Heatmap <span class="sub">· <span id="hm-title"></span> = <code id="hm-formula"></code><span id="hm-where"></span></span></h2>
      <div class="hm-wrap"><canvas id="hm"></canvas></div>
      <div id="legend"><span id="legend-lo" class="num"></span><canvas id="legend-bar"></canvas><span id="legend-hi" class="num"></span><span id="legend-kind"></span><span class="masked-key" id="masked-key"><i></i>masked (−∞)</span></div>
    </section>
  </div>
</div>
<section id="steps"><h2>Steps<span class="sub" id="steps-where"></span></h2><div id="step-list"></div></section>
<footer>
  Made by attn-cli. This page is self-contained: it loads nothing and sends nothing.
  Numbers are rounded to {digits} significant digits; step tables show at most their first
  {rows} rows and {cols} columns (the heatmap shows a whole map). Masked cells (−∞) are hatched.
  {packed}The JSON export (<code>--json</code>) has every number at full precision.
</footer>
<div id="tip" role="tooltip" hidden></div>
"""

# Only in a page with a vision trace: the picture with its patch grid (interactive.js).
_PICTURE = """\
    <section class="card" id="picture" hidden>
      <h2>Picture <span class="sub">· <span id="pic-title"></span></span></h2>
      <p class="info" id="pic-info"></p>
      <div id="pic-prefix"></div>
      <div class="pic-wrap"><img id="pic-img" alt="the picture the model saw"><div id="pic-grid"></div></div>
    </section>
"""


def interactive_html(
    traces: list[Trace],
    title: str = "attn-cli",
    *,
    pack_above: int | None = PACK_ABOVE,
    color_scale: str = "linear",
) -> str:
    """One self-contained HTML document showing `traces` (a selector when several); maps packed
    to 8 bits past `pack_above` numbers (None: never); weight maps coloured on `color_scale`
    (linear or log) until the page's "log colours" box is switched."""
    if not traces:
        raise InputError("no trace to show")
    check_color_scale(color_scale)
    doc = page_data(traces, title, pack_above=pack_above) | {"color_scale": color_scale}
    shown_title = "" if title == "attn-cli" else f' <span class="sub">{html.escape(title)}</span>'
    packed = (
        f"The attention maps are stored to 8 bits: each number within 1/{2 * LEVELS} of its "
        "map's range (largest − smallest value). "
        if "packed" in doc
        else ""
    )
    has_picture = any(isinstance(t.config.get("image"), dict) for t in traces)
    body = _BODY.format(
        title=shown_title,
        digits=SIGNIFICANT,
        rows=TABLE_ROWS,
        cols=TABLE_COLS,
        packed=packed,
        picture=_PICTURE if has_picture else "",
    )
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            '<meta http-equiv="Content-Security-Policy" '
            f'content="{_CSP_PICTURE if has_picture else _CSP}">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{html.escape(title)}</title>\n",
            "<style>\n",
            _asset("interactive.css"),
            "</style>\n</head>\n<body>\n",
            body,
            '<script type="application/json" id="attn-data">',
            _json_for_script(doc),
            "</script>\n<script>\n",
            _asset("interactive.js"),
            "</script>\n</body>\n</html>\n",
        ]
    )


def trace_repr_html(trace: Trace, height: int = 760) -> str:
    """The interactive page for Jupyter (`Trace._repr_html_`): inline, in a sandboxed iframe
    whose `srcdoc` holds the whole page, so its script runs in notebooks and it still loads
    nothing."""
    page = interactive_html([trace], title="attn-cli")
    return (
        '<iframe class="attn-cli" sandbox="allow-scripts" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #ccd2db;border-radius:8px;'
        'resize:vertical;overflow:auto" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )

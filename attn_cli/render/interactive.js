/* attn-cli interactive page: vanilla JS, no network, no frameworks. Inlined into the page.
   Token text is data: it only ever reaches the page through textContent or canvas fillText. */
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("attn-data").textContent);
  const $ = (id) => document.getElementById(id);
  const root = document.documentElement;
  const state = { t: 0, layer: null, head: null, step: "W", focus: null, pin: null, log: DATA.color_scale === "log" };

  // Colour anchors: the terminal's coolwarm (diverging) and Blues (sequential), and dark variants.
  const PALETTES = {
    light: {
      div: [[59, 76, 192], [141, 176, 254], [242, 242, 242], [244, 154, 123], [180, 4, 38]],
      seq: [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
      line: [33, 102, 172], neg: [59, 76, 192], pos: [180, 4, 38], masked: [201, 206, 214],
      hatch: "rgba(90,100,115,0.55)", text: "#1d2330", muted: "#5f6b7d", bg: "#ffffff",
    },
    dark: {
      div: [[96, 140, 255], [52, 78, 140], [34, 39, 48], [150, 66, 52], [255, 110, 84]],
      seq: [[26, 31, 40], [30, 62, 104], [40, 106, 170], [86, 160, 226], [200, 232, 255]],
      line: [108, 176, 240], neg: [110, 150, 255], pos: [255, 120, 96], masked: [58, 65, 77],
      hatch: "rgba(190,200,215,0.35)", text: "#e3e8ef", muted: "#98a3b3", bg: "#1a1f28",
    },
  };
  const media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  function isDark() {
    const forced = root.getAttribute("data-theme");
    if (forced) return forced === "dark";
    return !!(media && media.matches);
  }
  const pal = () => PALETTES[isDark() ? "dark" : "light"];

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null) return "masked (−∞)";
    if (Object.is(v, -0)) return "0";
    return String(v);
  }
  const lerp = (a, b, t) => Math.round(a + (b - a) * t);
  function interp(anchors, t) {
    const x = Math.min(Math.max(t, 0), 1) * (anchors.length - 1);
    const i = Math.min(Math.floor(x), anchors.length - 2);
    const f = x - i;
    const a = anchors[i], b = anchors[i + 1];
    return [lerp(a[0], b[0], f), lerp(a[1], b[1], f), lerp(a[2], b[2], f)];
  }
  // What a map's numbers are, by kind: in the head view's hint and after the legend.
  const KIND_NOTES = {
    weights: "Each row sums to 1.",
    partial_weights: "Each row sums to less than 1: the rest went to a sink key that is not shown.",
    mixing: "Mixing weights (linear attention): signed and unnormalised, not probabilities.",
    scores: "Scores before the softmax.",
  };
  const KIND_LEGEND = {
    weights: "rows sum to 1",
    partial_weights: "rows sum to < 1 (rest to a sink)",
    mixing: "signed mixing weights, not probabilities",
  };
  const rgb = (c, a) => (a === undefined ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${a})`);

  // ---------- the data model ----------
  const trace = () => DATA.traces[state.t];
  const rowsOf = (s) => s.rows || trace().labels;
  const colsOf = (s) => s.cols || trace().labels;
  const uniq = (xs) => Array.from(new Set(xs));
  const byNum = (a, b) => a - b;
  const atLayer = (s, L) => s.layer === L || s.layer === null;
  const atHead = (s, H) => s.head === H || s.head === null;

  /* A map's name in the Map selector: its block first where it has one ("cross W"), so the
     maps of an encoder–decoder's blocks at the same layer and head stay apart. */
  const mapKey = (s) => (s.block ? s.block + " " + s.name : s.name);

  /* Layers and heads to choose from: those of the maps over the tokens (tokens × tokens, or
     tokens × source tokens), or of any step when the trace has no map. */
  function withMaps(tr) {
    const maps = tr.steps.filter((s) => s.map);
    return maps.length ? maps : tr.steps;
  }
  function layersOf(tr) {
    const ls = uniq(withMaps(tr).filter((s) => s.layer !== null).map((s) => s.layer)).sort(byNum);
    return ls.length ? ls : [null];
  }
  function headsOf(tr, L) {
    const hs = uniq(withMaps(tr).filter((s) => atLayer(s, L) && s.head !== null).map((s) => s.head)).sort(byNum);
    return hs.length ? hs : [null];
  }
  function mapNames(tr, L, H) {
    return uniq(tr.steps.filter((s) => s.map && atLayer(s, L) && atHead(s, H)).map(mapKey));
  }
  /* The map called `name` (mapKey) at (L, H), the most specific match first. */
  function findMap(tr, name, L, H) {
    let best = null, bestScore = -1;
    for (const s of tr.steps) {
      if (!s.map || mapKey(s) !== name || !atLayer(s, L) || !atHead(s, H)) continue;
      const score = (s.layer === L ? 2 : 0) + (s.head === H ? 1 : 0);
      if (score > bestScore) { best = s; bestScore = score; }
    }
    return best;
  }
  const current = () => findMap(trace(), state.step, state.layer, state.head);

  /* Colour scale of a step: diverging around 0 for signed kinds (scores, mixing, vectors,
     parameters) or any negative value; sequential from 0 otherwise (weights, partial weights,
     relevance, …). A weight is its own strength (BertViz): `own`. */
  function scaleOf(s) {
    if (s._scale) return s._scale;
    let vmax = 0, neg = false;
    if (s.data) for (const row of s.data) for (const v of row) {
      if (v === null) continue;
      if (v < 0) neg = true;
      if (Math.abs(v) > vmax) vmax = Math.abs(v);
    }
    const diverging = neg || ["scores", "mixing", "vectors", "parameters"].includes(s.kind);
    const own = s.kind === "weights" || s.kind === "partial_weights";
    s._scale = { diverging, vmax: vmax > 0 ? vmax : 1, own };
    return s._scale;
  }
  /* Cell colours come from a 256-entry table per palette and scale type: the overview paints
     millions of cells. */
  const LUTS = new Map();
  function lut(p, diverging) {
    const key = (p === PALETTES.dark ? "d" : "l") + (diverging ? "div" : "seq");
    let t = LUTS.get(key);
    if (!t) {
      t = [];
      for (let k = 0; k < 256; k++) t.push(interp(diverging ? p.div : p.seq, k / 255));
      LUTS.set(key, t);
    }
    return t;
  }
  /* The log scale (the "log colours" box, or --color-scale log): a weight map's colour follows
     log10 of the weight from max/10^4 to max, so the small weights beside a first token or
     sink that takes most of the attention differ; other kinds keep their linear scale. */
  const LOG_DECADES = 4;
  const logScaled = (sc) => state.log && sc.own;
  function cellColor(sc, v, p) {
    if (v === null) return p.masked;
    let t;
    if (logScaled(sc)) {
      const lo = sc.vmax / 10 ** LOG_DECADES;
      t = Math.log10(Math.max(v, lo) / lo) / LOG_DECADES;
    } else t = sc.diverging ? (v / sc.vmax + 1) / 2 : v / sc.vmax;
    return lut(p, sc.diverging)[Math.round(Math.min(Math.max(t, 0), 1) * 255)];
  }
  /* Paint a matrix into ImageData, one pixel per cell. */
  function paint(im, s, p) {
    const sc = scaleOf(s), n = s.data.length, m = n ? s.data[0].length : 0, d = im.data;
    for (let i = 0; i < n; i++) {
      const row = s.data[i];
      for (let j = 0; j < m; j++) {
        const col = cellColor(sc, row[j], p), o = 4 * (i * m + j);
        d[o] = col[0]; d[o + 1] = col[1]; d[o + 2] = col[2]; d[o + 3] = 255;
      }
    }
  }
  /* Line / highlight strength in [0, 1]: a weight is its own opacity (BertViz); a score is
     |value| over the map's largest |value|, coloured by its sign; other non-negative maps
     (relevance) are value over the map's max. */
  function strength(sc, v) {
    if (v === null) return 0;
    if (sc.diverging) return Math.min(Math.abs(v) / sc.vmax, 1);
    return Math.min(Math.max(sc.own ? v : v / sc.vmax, 0), 1);
  }
  function strengthColor(sc, v, p) {
    if (!sc.diverging) return p.line;
    return v < 0 ? p.neg : p.pos;
  }
  function whereText(L, H) {
    const parts = [];
    if (L !== null) parts.push("layer " + L);
    if (H !== null) parts.push("head " + H);
    return parts.join(" · ");
  }

  // ---------- controls ----------
  function fillSelect(sel, values, label, chosen) {
    sel.replaceChildren();
    for (const v of values) {
      const o = el("option", null, label(v));
      o.value = v === null ? "" : String(v);
      if (v === chosen) o.selected = true;
      sel.appendChild(o);
    }
    sel.parentElement.hidden = values.length < 2 && values[0] === null;
  }
  const parseSel = (sel) => (sel.value === "" ? null : Number(sel.value));

  function syncControls() {
    const tr = trace();
    const layers = layersOf(tr);
    if (!layers.includes(state.layer)) state.layer = layers[0];
    fillSelect($("layer"), layers, (v) => (v === null ? "–" : String(v)), state.layer);
    const heads = headsOf(tr, state.layer);
    if (!heads.includes(state.head)) state.head = heads[0];
    fillSelect($("head"), heads, (v) => (v === null ? "–" : String(v)), state.head);
    const names = mapNames(tr, state.layer, state.head);
    if (!names.includes(state.step)) state.step = names.includes("W") ? "W" : names.find((n) => n.endsWith(" W")) || names[0];
    const stepSel = $("step");
    stepSel.replaceChildren();
    for (const n of names) {
      const o = el("option", null, n);
      o.value = n;
      if (n === state.step) o.selected = true;
      stepSel.appendChild(o);
    }
    stepSel.parentElement.hidden = names.length === 0;
    const keys = [];
    if (heads.length > 1) keys.push("←/→ head");
    if (layers.length > 1) keys.push("↑/↓ layer");
    $("hint").textContent = ["hover a token", "click to pin"].concat(keys).join(" · ");
  }

  function select(changes) {
    Object.assign(state, changes);
    if ("t" in changes || "layer" in changes || "head" in changes || "step" in changes) {
      state.focus = null;
      state.pin = null;
    }
    syncControls();
    renderAll();
  }

  // ---------- header ----------
  function renderHeader() {
    const tr = trace();
    $("text").textContent = tr.text;
    const cfg = tr.config || {};
    const bits = [tr.tokens.length + " tokens"];
    for (const key of ["pipeline", "model", "embeddings", "layers", "heads", "d_k", "dim", "seed", "causal", "temperature"]) {
      const v = cfg[key];
      if (v === undefined || v === null || v === false) continue;
      bits.push(v === true ? key : key + "=" + (typeof v === "object" ? JSON.stringify(v) : String(v)));
    }
    $("meta").textContent = bits.join(" · ");
    const notes = $("notes");
    notes.replaceChildren(...(tr.notes || []).map((n) => el("li", null, n)));
    notes.hidden = !(tr.notes || []).length;
    const size = $("size-note");
    const reduced = [DATA.packed ? DATA.packed.note : null, tr.omitted].filter(Boolean).join(" ");
    size.textContent = reduced;
    size.hidden = !reduced;
  }

  // ---------- head view ----------
  const HV_W = 150;
  let dirty = [];  // head-view tokens the current focus has marked
  function rowHeight(n) { return n > 200 ? 15 : 22; }

  function renderHeadView() {
    const s = current();
    const left = $("hv-left"), right = $("hv-right");
    left.replaceChildren();
    right.replaceChildren();
    dirty = [];
    $("hv-title").textContent = s ? s.name : "";
    $("hv-where").textContent = s && whereText(state.layer, state.head) ? " · " + whereText(state.layer, state.head) : "";
    if (!s || !s.data) {
      $("hv-info").textContent = s ? "This map is not embedded in the page (see the note above)." : "No tokens × tokens map here.";
      const c = $("hv-canvas");
      c.width = 0; c.height = 0;
      return;
    }
    const rows = rowsOf(s), cols = colsOf(s), rh = rowHeight(Math.max(rows.length, cols.length));
    const make = (labels, side, parent) => {
      labels.forEach((label, i) => {
        const t = el("div", "tok");
        t.style.height = rh + "px";
        t.tabIndex = 0;
        t.dataset.side = side;
        t.dataset.i = String(i);
        t.title = label;
        const w = el("span", "w");
        const l = el("span", "lbl", label);
        if (side === "q") t.append(w, l); else t.append(l, w);
        t.addEventListener("mouseenter", () => setFocus({ side, i }));
        t.addEventListener("mouseleave", () => setFocus(null));
        t.addEventListener("focus", () => setFocus({ side, i }));
        t.addEventListener("blur", () => setFocus(null));
        t.addEventListener("click", () => {
          const same = state.pin && state.pin.side === side && state.pin.i === i;
          state.pin = same ? null : { side, i };
          applyFocus();
        });
        parent.appendChild(t);
      });
    };
    make(rows, "q", left);
    make(cols, "k", right);
    applyFocus();
  }

  function setFocus(f) {
    state.focus = f;
    applyFocus();
  }

  function applyFocus() {
    const s = current();
    if (!s || !s.data) return;
    const f = state.focus || state.pin;
    const sc = scaleOf(s), p = pal();
    const lefts = $("hv-left").children, rights = $("hv-right").children;
    // Only the tokens the last focus touched are reset: a long input has thousands.
    for (const t of dirty) {
      t.classList.remove("active", "pinned");
      t.style.background = "";
      t.removeAttribute("data-value");
      t.querySelector(".w").textContent = "";
    }
    dirty = [];
    const info = $("hv-info");
    if (state.pin) {
      const pt = (state.pin.side === "q" ? lefts : rights)[state.pin.i];
      if (pt) { pt.classList.add("pinned"); dirty.push(pt); }
    }
    if (!f) {
      const keys = s.col_axis ? " (the " + s.col_axis + " tokens)" : "";
      info.replaceChildren(
        document.createTextNode("Hover a token: on the left to see what it attends to, on the right" + keys + " to see what attends to it. Click to pin. " + (KIND_NOTES[s.kind] || "")),
      );
    } else {
      const rows = rowsOf(s), cols = colsOf(s);
      const mine = f.side === "q" ? lefts[f.i] : rights[f.i];
      if (mine) { mine.classList.add("active"); dirty.push(mine); }
      const others = f.side === "q" ? rights : lefts;
      const values = [];
      for (let k = 0; k < others.length; k++) {
        const v = f.side === "q" ? s.data[f.i][k] : s.data[k][f.i];
        const t = others[k];
        dirty.push(t);
        t.dataset.value = v === null ? "masked" : String(v);
        t.querySelector(".w").textContent = v === null ? "−∞" : fmt(v);
        if (v !== null) t.style.background = rgb(strengthColor(sc, v, p), (0.08 + 0.55 * strength(sc, v)).toFixed(3));
        values.push([k, v]);
      }
      // A mixing map's strongest entries are its largest in absolute value.
      const size = s.kind === "mixing" ? Math.abs : (v) => v;
      const top = values.filter((kv) => kv[1] !== null).sort((a, b) => size(b[1]) - size(a[1])).slice(0, 3);
      const name = f.side === "q" ? rows[f.i] : cols[f.i];
      const b = el("b", null, name);
      const verb = f.side === "q" ? " attends most to " : " is attended most by ";
      const tops = top.map((kv) => (f.side === "q" ? cols : rows)[kv[0]] + " " + fmt(kv[1])).join(" · ");
      let extra = "";
      if (f.side === "q" && s.kind === "partial_weights") {
        const sum = values.reduce((acc, kv) => acc + (kv[1] === null ? 0 : kv[1]), 0);
        extra = " · sink " + fmt(Math.max(0, Math.round((1 - sum) * 1e4) / 1e4)) + " (1 − row sum: to a sink key not shown)";
      }
      info.replaceChildren(b, document.createTextNode(verb + (tops || "nothing (all masked)") + extra));
      info.dataset.side = f.side;
      info.dataset.i = String(f.i);
    }
    drawLines(s, f);
    drawHeatmap(f);
    paintPicture(s, f);
  }

  function drawLines(s, f) {
    const c = $("hv-canvas");
    const rows = rowsOf(s), cols = colsOf(s), rh = rowHeight(Math.max(rows.length, cols.length));
    const h = Math.max(rows.length, cols.length) * rh;
    const dpr = window.devicePixelRatio || 1;
    c.style.width = HV_W + "px";
    c.style.height = h + "px";
    c.width = Math.round(HV_W * dpr);
    c.height = Math.round(h * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, HV_W, h);
    const sc = scaleOf(s), p = pal();
    g.lineWidth = f ? 2.4 : 1.6;
    // Lines are grouped into 32 opacity levels per colour, one path each. A long input has n²
    // lines: without a hovered token only the strongest MAX_LINES are drawn (at least 1%
    // opacity), which is what can be seen anyway.
    const LEVELS = 32, MAX_LINES = 1500;
    const cand = [];
    const line = (i, j) => {
      const st = strength(sc, s.data[i][j]);
      if (st >= 0.01) cand.push([st, i, j]);
    };
    if (!f) {
      for (let i = 0; i < rows.length; i++) for (let j = 0; j < cols.length; j++) line(i, j);
    } else if (f.side === "q") {
      for (let j = 0; j < cols.length; j++) line(f.i, j);
    } else {
      for (let i = 0; i < rows.length; i++) line(i, f.i);
    }
    if (!f && cand.length > MAX_LINES) {
      cand.sort((a, b) => b[0] - a[0]);
      cand.length = MAX_LINES;
    }
    const paths = new Map();
    for (const [st, i, j] of cand) {
      const color = strengthColor(sc, s.data[i][j], p);
      const level = Math.min(LEVELS - 1, Math.floor(st * LEVELS));
      const key = color.join(",") + "|" + level;
      let path = paths.get(key);
      if (!path) { path = { color, level, segs: [] }; paths.set(key, path); }
      path.segs.push(i * rh + rh / 2, j * rh + rh / 2);
    }
    for (const path of paths.values()) {
      g.strokeStyle = rgb(path.color, ((path.level + 0.5) / LEVELS).toFixed(3));
      g.beginPath();
      for (let k = 0; k < path.segs.length; k += 2) {
        g.moveTo(3, path.segs[k]);
        g.lineTo(HV_W - 3, path.segs[k + 1]);
      }
      g.stroke();
    }
  }

  // ---------- the picture (a vision trace) ----------
  /* A trace of a picture (config.image: its patch grid, the tokens before the patches and a
     small RGB thumbnail) is drawn as that thumbnail under a grid of patch cells. Hovering a
     patch (or a token before the patches: [CLS], registers) focuses its row of the current map,
     as in the head view: each patch cell is tinted with opacity PIC_ALPHA × |weight| / the
     row's largest |weight| over the patches, and the query patch is outlined. */
  const PIC_ALPHA = 0.75, PIC_HEAT = [255, 196, 0], PIC_SIDE = 320;
  const pictureOf = (tr) => {
    const im = tr.config && tr.config.image;
    return im && Array.isArray(im.grid) && im.thumbnail ? im : null;
  };
  /* The thumbnail's RGB bytes as a PNG data: URL (the page's only image source). */
  function thumbnailURL(th) {
    const bytes = atob(th.rgb), w = th.width, h = th.height;
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const g = c.getContext("2d"), im = g.createImageData(w, h);
    for (let k = 0; k < w * h; k++) {
      for (let ch = 0; ch < 3; ch++) im.data[4 * k + ch] = bytes.charCodeAt(3 * k + ch);
      im.data[4 * k + 3] = 255;
    }
    g.putImageData(im, 0, 0);
    return c.toDataURL("image/png");
  }
  /* Which token rows of the current map the picture can show: every row when the map's rows
     and columns are the tokens; none otherwise (its columns are not the patches). */
  const pictureMap = (s) => (s && s.data && !s.rows && !s.cols ? s : null);

  function renderPicture() {
    const box = $("picture");
    if (!box) return;
    const tr = trace(), im = pictureOf(tr);
    box.hidden = !im;
    if (!im) return;
    const img = $("pic-img");
    if (img.dataset.t !== String(state.t)) {
      img.setAttribute("src", thumbnailURL(im.thumbnail));
      img.dataset.t = String(state.t);
    }
    const [R, C] = im.grid, prefix = im.prefix || [], first = prefix.length;
    const px = Math.max(4, Math.floor(PIC_SIDE / Math.max(R, C)));
    img.style.width = C * px + "px";
    img.style.height = R * px + "px";
    const grid = $("pic-grid");
    grid.style.gridTemplateColumns = "repeat(" + C + ", " + px + "px)";
    grid.style.gridTemplateRows = "repeat(" + R + ", " + px + "px)";
    const focusable = (cell, i) => {
      cell.dataset.i = String(i);
      cell.addEventListener("mouseenter", () => setFocus({ side: "q", i }));
      cell.addEventListener("mouseleave", () => setFocus(null));
      cell.addEventListener("click", () => {
        const same = state.pin && state.pin.side === "q" && state.pin.i === i;
        state.pin = same ? null : { side: "q", i };
        applyFocus();
      });
    };
    grid.replaceChildren();
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
      const cell = el("div", "patch");
      cell.dataset.r = String(r);
      cell.dataset.c = String(c);
      cell.title = "p(" + r + "," + c + ")";
      focusable(cell, first + r * C + c);
      grid.appendChild(cell);
    }
    const buttons = $("pic-prefix");
    buttons.replaceChildren(...prefix.map((label, i) => {
      const b = el("button", "pic-token");
      b.type = "button";
      b.append(el("span", "lbl", "from " + label), el("span", "w"));
      focusable(b, i);
      return b;
    }));
    const s = current();
    $("pic-title").textContent = (s ? s.name + " · " : "") + R + " × " + C + " patches";
    paintPicture(s, state.focus || state.pin);
  }

  function paintPicture(s, f) {
    const box = $("picture");
    if (!box || box.hidden) return;
    const im = pictureOf(trace()), first = (im.prefix || []).length, m = pictureMap(s);
    const cells = $("pic-grid").children, buttons = $("pic-prefix").children;
    const row = m && f && f.side === "q" ? m.data[f.i] : null;
    let top = 0;
    if (row) for (let k = first; k < row.length; k++) if (row[k] !== null) top = Math.max(top, Math.abs(row[k]));
    for (let k = 0; k < cells.length; k++) {
      const t = cells[k], v = row ? row[first + k] : null;
      t.classList.toggle("query", !!f && f.side === "q" && Number(t.dataset.i) === f.i);
      if (v === null || top === 0) {
        t.style.background = "";
        t.removeAttribute("data-value");
        t.removeAttribute("data-alpha");
        continue;
      }
      const alpha = (PIC_ALPHA * Math.abs(v) / top).toFixed(3);
      t.dataset.value = String(v);
      t.dataset.alpha = alpha;
      t.style.background = rgb(v < 0 ? pal().neg : PIC_HEAT, alpha);
    }
    for (let k = 0; k < buttons.length; k++) {
      const b = buttons[k];
      b.classList.toggle("query", !!f && f.side === "q" && f.i === k);
      b.querySelector(".w").textContent = row && row[k] !== null ? " " + fmt(row[k]) : "";
    }
    const info = $("pic-info");
    if (!m) info.textContent = "This map is not over the patches, or not embedded in the page.";
    else if (!row) info.textContent = "Hover a patch (or a token before the patches) to see what it attends to on the picture; click to pin. Tint opacity: " + PIC_ALPHA + " × weight / the row's largest patch weight.";
    else {
      const rest = [];
      for (let k = 0; k < first; k++) if (row[k] !== null) rest.push(im.prefix[k] + " " + fmt(row[k]));
      info.replaceChildren(el("b", null, trace().labels[f.i]),
        document.createTextNode(" attends to the patches tinted (opacity " + PIC_ALPHA + " × weight / " + fmt(top) + ", its largest patch weight)" + (rest.length ? "; not on the picture: " + rest.join(" · ") : "")));
    }
  }

  // ---------- heatmap ----------
  const hm = { cell: 0, left: 0, top: 0, n: 0, m: 0, img: null, key: null };

  function prepareHeatmap() {
    const s = current();
    const c = $("hm");
    $("hm-title").textContent = s ? s.name : "";
    $("hm-where").textContent = s && whereText(state.layer, state.head) ? " · " + whereText(state.layer, state.head) : "";
    $("hm-formula").textContent = s ? s.formula : "";
    hm.img = null;
    if (!s || !s.data) {
      c.width = 0; c.height = 0; c.style.width = "0px"; c.style.height = "0px";
      $("legend").hidden = true;
      return;
    }
    $("legend").hidden = false;
    const rows = rowsOf(s), cols = colsOf(s), n = rows.length, m = cols.length;
    // Cells fill about 520 px (at most 34 px each); past 260 tokens a cell is under 2 px.
    const fit = 520 / Math.max(n, m);
    const cell = fit >= 2 ? Math.min(34, Math.floor(fit)) : fit;
    const g0 = c.getContext("2d");
    g0.font = "12px ui-monospace, Menlo, Consolas, monospace";
    const labels = cell >= 11;
    let wide = 0;
    if (labels) for (const l of rows.concat(cols)) wide = Math.max(wide, g0.measureText(l).width);
    wide = Math.min(wide, 140);
    Object.assign(hm, { cell, n, m, left: labels ? wide + 10 : 4, top: labels ? wide + 10 : 4, labels });
    // The cells, one pixel each, scaled up without smoothing when drawn.
    const off = document.createElement("canvas");
    off.width = m; off.height = n;
    const og = off.getContext("2d");
    const im = og.createImageData(m, n);
    const sc = scaleOf(s), p = pal();
    paint(im, s, p);
    og.putImageData(im, 0, 0);
    hm.img = off;
    drawLegend(sc, p);
  }

  function drawHeatmap(f, hoverCell) {
    const s = current();
    if (!s || !s.data || !hm.img) return;
    const c = $("hm");
    const { cell, n, m, left, top } = hm;
    const W = left + m * cell + 2, H = top + n * cell + 2;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
      c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
      c.style.width = W + "px"; c.style.height = H + "px";
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, W, H);
    const p = pal();
    g.imageSmoothingEnabled = false;
    g.drawImage(hm.img, left, top, m * cell, n * cell);
    // Masked cells: a diagonal hatch on the masked colour.
    if (cell >= 6) {
      g.strokeStyle = p.hatch;
      g.lineWidth = 1;
      g.beginPath();
      for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) {
        if (s.data[i][j] !== null) continue;
        const x = left + j * cell, y = top + i * cell;
        g.moveTo(x + 2, y + cell - 2); g.lineTo(x + cell - 2, y + 2);
      }
      g.stroke();
    }
    if (hm.labels) {
      g.font = "12px ui-monospace, Menlo, Consolas, monospace";
      g.fillStyle = p.text;
      g.textBaseline = "middle";
      g.textAlign = "right";
      const rows = rowsOf(s), cols = colsOf(s);
      for (let i = 0; i < n; i++) g.fillText(rows[i], left - 6, top + i * cell + cell / 2, left - 8);
      for (let j = 0; j < m; j++) {
        g.save();
        g.translate(left + j * cell + cell / 2, top - 6);
        g.rotate(-Math.PI / 2);
        g.textAlign = "left";
        g.fillText(cols[j], 0, 0, top - 8);
        g.restore();
      }
    }
    g.lineWidth = 2;
    g.strokeStyle = p.text;
    if (f && f.side === "q") g.strokeRect(left, top + f.i * cell, m * cell, cell);
    if (f && f.side === "k") g.strokeRect(left + f.i * cell, top, cell, n * cell);
    if (hoverCell) {
      g.strokeStyle = isDark() ? "#ffffff" : "#000000";
      g.strokeRect(left + hoverCell[1] * cell + 1, top + hoverCell[0] * cell + 1, cell - 2, cell - 2);
    }
  }

  function drawLegend(sc, p) {
    const c = $("legend-bar");
    const w = 160, h = 10, dpr = window.devicePixelRatio || 1;
    c.width = w * dpr; c.height = h * dpr; c.style.width = w + "px"; c.style.height = h + "px";
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (let x = 0; x < w; x++) {
      const t = x / (w - 1);
      g.fillStyle = rgb(sc.diverging ? interp(p.div, t) : interp(p.seq, t));
      g.fillRect(x, 0, 1, h);
    }
    const log = logScaled(sc);
    $("legend-lo").textContent = log ? (sc.vmax / 10 ** LOG_DECADES).toExponential(1) : fmt(sc.diverging ? -sc.vmax : 0);
    $("legend-hi").textContent = fmt(sc.vmax);
    const s0 = current();
    const range = sc.diverging ? "diverging around 0" : "0 to the map's max";
    $("legend-kind").textContent = (log ? "log scale: max/10⁴ to the map's max" : range + (state.log ? " (log scale is for weight maps only)" : "")) + (s0 && KIND_LEGEND[s0.kind] ? " · " + KIND_LEGEND[s0.kind] : "");
    const s = current();
    $("masked-key").hidden = !(s && s.data && s.data.some((row) => row.includes(null)));
  }

  function heatmapCellAt(ev) {
    const r = $("hm").getBoundingClientRect();
    const x = ev.clientX - r.left - hm.left, y = ev.clientY - r.top - hm.top;
    const j = Math.floor(x / hm.cell), i = Math.floor(y / hm.cell);
    if (x < 0 || y < 0 || i >= hm.n || j >= hm.m) return null;
    return [i, j];
  }
  function onHeatmapMove(ev) {
    const s = current();
    const tip = $("tip");
    const at = s && s.data ? heatmapCellAt(ev) : null;
    if (!at) { tip.hidden = true; drawHeatmap(state.focus || state.pin); return; }
    const [i, j] = at, v = s.data[i][j];
    const rows = rowsOf(s), cols = colsOf(s);
    tip.textContent = "row  " + rows[i] + "\ncol  " + cols[j] + "\n" + s.name + "  " + fmt(v);
    tip.dataset.row = String(i);
    tip.dataset.col = String(j);
    tip.dataset.value = v === null ? "masked" : String(v);
    tip.hidden = false;
    const pad = 14, tw = tip.offsetWidth, th = tip.offsetHeight;
    let x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + tw > window.innerWidth - 4) x = ev.clientX - tw - pad;
    if (y + th > window.innerHeight - 4) y = ev.clientY - th - pad;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
    drawHeatmap(state.focus || state.pin, at);
  }

  // ---------- layer × head overview ----------
  /* A map shrunk to at most k × k cells for a thumbnail: each block keeps its value of largest
     magnitude (a sharp peak stays visible); a block is masked only when all of it is. */
  function pooled(s, k) {
    const n = s.data.length, m = n ? s.data[0].length : 0;
    if (n <= k && m <= k) return s;
    if (s._pooled) return s._pooled;
    const bn = Math.ceil(n / k), bm = Math.ceil(m / k), out = [];
    for (let i0 = 0; i0 < n; i0 += bn) {
      const row = [];
      for (let j0 = 0; j0 < m; j0 += bm) {
        let best = null;
        for (let i = i0; i < Math.min(i0 + bn, n); i++) for (let j = j0; j < Math.min(j0 + bm, m); j++) {
          const v = s.data[i][j];
          if (v !== null && (best === null || Math.abs(v) > Math.abs(best))) best = v;
        }
        row.push(best);
      }
      out.push(row);
    }
    s._pooled = { data: out, kind: s.kind, _scale: scaleOf(s) };
    return s._pooled;
  }
  let overviewKey = null;
  function renderOverview() {
    const tr = trace();
    const key = state.t + "|" + state.step + "|" + (isDark() ? "d" : "l") + (state.log ? "|log" : "");
    const box = $("thumbs");
    if (key === overviewKey) {  // only the selection moved: repainting every map is slow
      for (const c of box.querySelectorAll("canvas")) {
        const on = c.dataset.layer === (state.layer === null ? "" : String(state.layer)) &&
          c.dataset.head === (state.head === null ? "" : String(state.head));
        c.classList.toggle("sel", on);
      }
      return;
    }
    overviewKey = key;
    const layers = layersOf(tr);
    box.replaceChildren();
    const allHeads = uniq(layers.flatMap((L) => headsOf(tr, L))).sort((a, b) => (a === null ? -1 : b === null ? 1 : a - b));
    const many = layers.length * allHeads.length > 1;
    $("overview").hidden = !many;
    if (!many) return;
    $("ov-step").textContent = state.step;
    box.style.gridTemplateColumns = "auto repeat(" + allHeads.length + ", 38px)";
    box.appendChild(el("div", "ax", ""));
    for (const H of allHeads) box.appendChild(el("div", "ax", H === null ? "–" : "h" + H));
    const p = pal();
    for (const L of layers) {
      box.appendChild(el("div", "ax", L === null ? "–" : "L" + L));
      for (const H of allHeads) {
        const s = findMap(tr, state.step, L, H);
        const c = el("canvas");
        if (s && s.data) {
          const small = pooled(s, 64), n = small.data.length, m = n ? small.data[0].length : 0;
          c.width = Math.max(m, 1); c.height = Math.max(n, 1);
          const g = c.getContext("2d");
          if (m) {
            const im = g.createImageData(m, n);
            paint(im, small, p);
            g.putImageData(im, 0, 0);
          }
        } else {
          c.width = 1; c.height = 1;
        }
        c.title = s ? s.name + " · " + whereText(L, H) : "not available";
        c.dataset.layer = L === null ? "" : String(L);
        c.dataset.head = H === null ? "" : String(H);
        if (L === state.layer && H === state.head) c.classList.add("sel");
        c.addEventListener("click", () => select({ layer: L, head: H }));
        box.appendChild(c);
      }
    }
  }

  // ---------- step tables ----------
  function renderSteps() {
    const tr = trace(), L = state.layer, H = state.head;
    const box = $("step-list");
    box.replaceChildren();
    $("steps-where").textContent = whereText(L, H) ? " · " + whereText(L, H) : "";
    const p = pal();
    for (const s of tr.steps) {
      if (!atLayer(s, L) || !atHead(s, H)) continue;
      // A <details> card: parameter matrices start folded, everything else open.
      const card = el("details", "card step");
      card.open = s.kind !== "parameters";
      card.dataset.step = s.name;
      if (s.map && mapKey(s) === state.step) card.classList.add("current");
      const head = el("summary", "head");
      const h3 = el("h3", null, s.name);
      const where = whereText(s.layer, s.head);
      if (where) h3.appendChild(el("span", "sub", "  " + where));
      head.append(h3, el("code", "formula", s.formula), el("span", "sub mono", s.shape.join(" × ")));
      card.append(head, el("p", "desc", s.description));
      if (s.data) {
        const r = Math.min(s.data.length, DATA.table_rows);
        const c = Math.min(s.data.length ? s.data[0].length : 0, DATA.table_cols);
        card.appendChild(matrixTable(s, p, r, c));
        if (r < s.shape[0] || c < s.shape[1]) {
          const parts = [];
          if (r < s.shape[0]) parts.push("the first " + r + " of " + s.shape[0] + " rows");
          if (c < s.shape[1]) parts.push("the first " + c + " of " + s.shape[1] + " columns");
          card.appendChild(el("p", "clip", "Showing " + parts.join(" and ") + "; " + (s.map ? "the heatmap shows all of it." : "the JSON export (--json) has every number.")));
        }
      } else {
        card.appendChild(el("p", "clip", "Matrix not embedded (" + s.shape.join(" × ") + ") to keep this page small; the JSON export (--json) has every number."));
      }
      box.appendChild(card);
    }
  }

  function matrixTable(s, p, nr, nc) {
    const sc = scaleOf(s);
    const rows = rowsOf(s), cols = colsOf(s);
    const wrap = el("div", "tbl-wrap");
    const t = el("table", "matrix");
    const thead = el("thead"), hr = el("tr");
    hr.appendChild(el("th", null, ""));
    for (let j = 0; j < nc; j++) hr.appendChild(el("th", null, cols[j]));
    thead.appendChild(hr);
    const tb = el("tbody");
    for (let i = 0; i < nr; i++) {
      const tr = el("tr");
      tr.appendChild(el("th", null, rows[i]));
      for (let j = 0; j < nc; j++) {
        const v = s.data[i][j];
        const td = el("td", v === null ? "masked" : "num", v === null ? "−∞" : fmt(v));
        if (v !== null) {
          const c = cellColor(sc, v, p);
          td.style.background = rgb(c);
          const lum = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
          td.style.color = lum > 140 ? "#151a22" : "#f3f6fa";
        }
        tr.appendChild(td);
      }
      tb.appendChild(tr);
    }
    t.append(thead, tb);
    wrap.appendChild(t);
    return wrap;
  }

  // ---------- wiring ----------
  function renderAll() {
    renderHeader();
    prepareHeatmap();
    renderPicture();
    renderHeadView();
    renderOverview();
    renderSteps();
  }

  function setup() {
    document.title = DATA.title;
    const tsel = $("trace");
    DATA.traces.forEach((tr, k) => {
      const text = tr.text.replace(/\s+/g, " ");
      const o = el("option", null, (k + 1) + ". " + (text.length > 50 ? text.slice(0, 50) + "…" : text));
      o.value = String(k);
      tsel.appendChild(o);
    });
    tsel.parentElement.hidden = DATA.traces.length < 2;
    tsel.addEventListener("change", () => select({ t: Number(tsel.value) }));
    $("layer").addEventListener("change", () => select({ layer: parseSel($("layer")) }));
    $("head").addEventListener("change", () => select({ head: parseSel($("head")) }));
    $("step").addEventListener("change", () => select({ step: $("step").value }));
    const logBox = $("log-scale");
    logBox.checked = state.log;
    logBox.addEventListener("change", () => { state.log = logBox.checked; recolour(); });
    $("theme").addEventListener("click", () => {
      root.setAttribute("data-theme", isDark() ? "light" : "dark");
      themeChanged();
    });
    if (media && media.addEventListener) media.addEventListener("change", () => { if (!root.getAttribute("data-theme")) themeChanged(); });
    const c = $("hm");
    c.addEventListener("mousemove", onHeatmapMove);
    c.addEventListener("mouseleave", () => { $("tip").hidden = true; drawHeatmap(state.focus || state.pin); });
    document.addEventListener("keydown", (ev) => {
      const tag = (ev.target && ev.target.tagName) || "";
      if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      const tr = trace();
      if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
        const hs = headsOf(tr, state.layer), k = hs.indexOf(state.head) + (ev.key === "ArrowRight" ? 1 : -1);
        if (k >= 0 && k < hs.length) { select({ head: hs[k] }); ev.preventDefault(); }
      } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        const ls = layersOf(tr), k = ls.indexOf(state.layer) + (ev.key === "ArrowDown" ? 1 : -1);
        if (k >= 0 && k < ls.length) { select({ layer: ls[k] }); ev.preventDefault(); }
      } else if (ev.key === "Escape") {
        state.pin = null; state.focus = null; applyFocus();
      }
    });
    updateThemeButton();
    syncControls();
    renderAll();
    root.setAttribute("data-ready", "1");
  }
  function updateThemeButton() {
    const b = $("theme");
    b.textContent = isDark() ? "☀ Light" : "☾ Dark";
    b.setAttribute("aria-label", isDark() ? "Switch to light mode" : "Switch to dark mode");
  }
  function themeChanged() {
    updateThemeButton();
    recolour();
  }
  function recolour() {
    prepareHeatmap();
    applyFocus();
    renderOverview();
    renderSteps();
  }
  /* A large page stores its maps packed (interactive.py): one byte per cell, code k meaning
     lo + k·step (code `masked`: −∞), every map zlib-compressed into one base64 string. Inflate
     it with the browser's DecompressionStream (no network), then decode each map into rows of
     numbers the first time it is read, so memory holds only the maps looked at. */
  async function unpack() {
    const P = DATA.packed;
    if (!P) return;
    const text = atob(P.zlib_base64);
    P.zlib_base64 = null;
    const zipped = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) zipped[i] = text.charCodeAt(i);
    const stream = new Blob([zipped]).stream().pipeThrough(new DecompressionStream("deflate"));
    const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    if (bytes.length !== P.bytes) throw new Error("packed maps: " + bytes.length + " bytes, expected " + P.bytes);
    for (const tr of DATA.traces) for (const s of tr.steps) {
      if (!s.packed) continue;
      Object.defineProperty(s, "data", {
        configurable: true, enumerable: true,
        get() {
          const rows = decodeMap(bytes, s.packed, s.shape[0], s.shape[1], P.masked);
          Object.defineProperty(s, "data", { value: rows, writable: true, configurable: true, enumerable: true });
          return rows;
        },
      });
    }
  }
  function decodeMap(bytes, q, n, m, masked) {
    const rows = new Array(n);
    let p = q.offset;
    for (let i = 0; i < n; i++) {
      const row = new Array(m);
      for (let j = 0; j < m; j++, p++) {
        const c = bytes[p];
        row[j] = c === masked ? null : Number((q.lo + c * q.step).toPrecision(4));
      }
      rows[i] = row;
    }
    return rows;
  }
  unpack().then(setup, (err) => {
    const note = $("size-note");
    note.textContent = "This page's packed maps could not be decoded (" + err + "); the JSON export (--json) has every number.";
    note.hidden = false;
  });
})();

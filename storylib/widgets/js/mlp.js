// EmbeddingExplorer's front end (storylib/widgets/mlp.py). anywidget loads it from a blob: URL, so it imports
// nothing: every helper it needs is in this file.

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = { boundary: "#111827", space: "#6b7280", vowel: "#dc2626", consonant: "#2563eb",
                 upper: "#7c3aed", digit: "#059669", punct: "#d97706", other: "#9ca3af" };
const NAMES = { boundary: "◆ boundary", space: "space / newline", vowel: "vowel", consonant: "consonant",
                upper: "capital", digit: "digit", punct: "punctuation", other: "other" };

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function sv(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function cosine(a, b) {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
  return ab / Math.sqrt(aa * bb + 1e-12);
}

function render({ model, el: host }) {
  const root = el("div", "ee-explorer", host);
  root.dataset.testid = "embedding-explorer";
  const title = el("div", "ee-title", root);
  const bar = el("div", "ee-bar", root);
  const tabs = el("div", "ee-tabs", bar);
  const find = el("input", "ee-find", bar);
  Object.assign(find, { type: "text", maxLength: 1, placeholder: "find a character" });
  find.dataset.testid = "find";
  const body = el("div", "ee-body", root);
  const figure = el("div", "ee-figure", body);
  const side = el("div", "ee-side", body);
  const panel = el("div", "ee-panel", side);
  panel.dataset.testid = "neighbours";
  const legend = el("div", "ee-legend", side);
  const note = el("div", "ee-note", root);
  note.dataset.testid = "note";

  const SIZE = 480, PAD = 20;
  let labels = [], groups = [], snaps = [], current = 0, selected = -1;
  let marks = [], links = null;

  function neighbours(i, k) {
    const vecs = snaps[current].vectors;
    return vecs.map((v, j) => [j, cosine(vecs[i], v)]).filter(([j]) => j !== i)
      .sort((a, b) => b[1] - a[1]).slice(0, k);
  }

  function position(j) {
    const xy = snaps[current].xy;
    let lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
    for (const p of xy) for (const a of [0, 1]) { lo[a] = Math.min(lo[a], p[a]); hi[a] = Math.max(hi[a], p[a]); }
    const span = Math.max(hi[0] - lo[0], hi[1] - lo[1], 1e-9);
    const s = (SIZE - 2 * PAD) / span;
    const cx = (lo[0] + hi[0]) / 2, cy = (lo[1] + hi[1]) / 2;
    return [SIZE / 2 + (xy[j][0] - cx) * s, SIZE / 2 - (xy[j][1] - cy) * s];
  }

  function select(i) {
    selected = i;
    links.replaceChildren();
    for (const m of marks) m.classList.remove("ee-sel", "ee-near");
    if (i < 0) {
      panel.replaceChildren(el("div", "ee-hint", null,
        "Hover over or click a character (or type one above) to see its nearest neighbours."));
      return;
    }
    const near = neighbours(i, 6);
    const [x0, y0] = position(i);
    for (const [j] of near) {
      const [x1, y1] = position(j);
      sv("line", { x1: x0, y1: y0, x2: x1, y2: y1, class: "ee-link" }, links);
      marks[j].classList.add("ee-near");
    }
    marks[i].classList.add("ee-sel");
    marks[i].parentNode.appendChild(marks[i]);  // draw the selected character on top of its neighbours
    panel.replaceChildren();
    const head = el("div", "ee-head", panel);
    el("span", "ee-big", head, labels[i]);
    el("span", "ee-group", head, " " + NAMES[groups[i]]);
    const d = snaps[current].vectors[i].length;
    el("div", "ee-sub", panel, `nearest, by cosine similarity in all ${d} dimensions:`);
    const list = el("ol", "ee-list", panel);
    for (const [j, c] of near) {
      const li = el("li", "", list);
      li.dataset.char = labels[j];
      const g = el("span", "ee-glyph", li, labels[j]);
      g.style.color = COLORS[groups[j]];
      const barWrap = el("span", "ee-barwrap", li);
      const b = el("span", "ee-barfill", barWrap);
      b.style.width = Math.max(0, c) * 100 + "%";
      el("span", "ee-val", li, c.toFixed(2));
    }
  }

  function draw() {
    const s = sv("svg", { width: SIZE, height: SIZE, viewBox: `0 0 ${SIZE} ${SIZE}`, class: "ee-svg" });
    const bg = sv("rect", { x: 0, y: 0, width: SIZE, height: SIZE, class: "ee-bg" }, s);
    bg.addEventListener("click", () => select(-1));
    links = sv("g", {}, s);
    marks = labels.map((lab, j) => {
      const [x, y] = position(j);
      const g = sv("g", { class: "ee-mark", "data-char": lab, "data-testid": "char-" + j }, s);
      g.style.transform = `translate(${x}px, ${y}px)`;
      sv("circle", { r: 8, class: "ee-dot" }, g);
      const t = sv("text", { class: "ee-char", "text-anchor": "middle", dy: "0.35em" }, g);
      t.textContent = lab;
      t.style.fill = COLORS[groups[j]];
      g.addEventListener("mouseenter", () => select(j));
      g.addEventListener("click", (e) => { e.stopPropagation(); select(j); });
      return g;
    });
    figure.replaceChildren(s);
  }

  function move() {  // same characters, another table: glide every mark to its new place
    marks.forEach((g, j) => { const [x, y] = position(j); g.style.transform = `translate(${x}px, ${y}px)`; });
    note.textContent = snaps[current].note || "";
    [...tabs.children].forEach((b, k) => b.classList.toggle("ee-on", k === current));
    select(selected);
  }

  function load() {
    labels = model.get("labels") || [];
    groups = model.get("groups") || [];
    snaps = model.get("snapshots") || [];
    current = Math.min(current, Math.max(0, snaps.length - 1));
    title.textContent = model.get("title") || "";
    tabs.replaceChildren();
    snaps.forEach((sn, k) => {
      const b = el("button", "ee-tab", tabs, sn.name);
      b.dataset.testid = "snapshot-" + k;
      b.addEventListener("click", () => { current = k; move(); });
    });
    legend.replaceChildren();
    for (const gname of Object.keys(NAMES)) {
      if (!groups.includes(gname)) continue;
      const item = el("div", "ee-key", legend);
      const sw = el("span", "ee-swatch", item);
      sw.style.background = COLORS[gname];
      el("span", "", item, NAMES[gname]);
    }
    if (!snaps.length) return;
    draw();
    move();
  }

  find.addEventListener("input", () => {
    const v = find.value;
    if (!v) return;
    const name = v === " " ? "␣" : v;
    const i = labels.indexOf(name);
    if (i >= 0) select(i);
  });
  model.on("change:snapshots", load);
  model.on("change:labels", load);
  model.on("change:title", load);
  load();
}
export default { render };

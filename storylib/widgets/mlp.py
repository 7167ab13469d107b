"""An embedding-space explorer for Chapter 3: where the MLP put each character.

    from storylib.widgets.mlp import EmbeddingExplorer
    EmbeddingExplorer.from_tables({"at initialisation": C0, "after training": C1}, vocab)

Each table C (V, d) is projected to 2-D with PCA (its two directions of largest variance) in Python;
the projected points *and* the full d-dimensional vectors are traits, so the widget's JavaScript can
find a character's nearest neighbours (cosine similarity in all d dimensions, not just the two drawn)
in the static book, where no Python kernel runs. Hover or click a character to see its neighbours;
switch tables to watch the structure appear with training.
"""

from __future__ import annotations

import anywidget
import torch
import traitlets

from storylib.bigram import Vocab

_ESM = r"""
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
"""

_CSS = """
.ee-explorer { font-family: system-ui, sans-serif; font-size: 13px; color: #222; max-width: 100%; }
.ee-title { font-weight: 600; margin-bottom: 6px; }
.ee-bar { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin-bottom: 6px; }
.ee-tabs { display: flex; gap: 6px; }
.ee-tab { padding: 3px 10px; border: 1px solid #888; border-radius: 4px; background: #f6f6f6; cursor: pointer;
  font-size: 13px; }
.ee-tab.ee-on { background: #2563eb; color: #fff; border-color: #2563eb; }
.ee-find { width: 120px; padding: 2px 6px; font-size: 13px; }
.ee-body { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
.ee-svg { display: block; border: 1px solid #ddd; border-radius: 6px; }
.ee-bg { fill: #fcfcfd; }
.ee-mark { cursor: pointer; transition: transform 0.7s ease; }
.ee-dot { fill: #fff; fill-opacity: 0.85; stroke: #ccc; stroke-width: 0.8; }
.ee-char { font-family: ui-monospace, monospace; font-size: 13px; font-weight: 600; pointer-events: none; }
.ee-sel .ee-dot { stroke: #111; stroke-width: 2.5; }
.ee-near .ee-dot { stroke: #d97706; stroke-width: 2; }
.ee-link { stroke: #d97706; stroke-width: 1.4; stroke-opacity: 0.7; }
.ee-side { min-width: 220px; max-width: 300px; }
.ee-panel { background: #fafafa; border-left: 3px solid #d97706; padding: 6px 10px; min-height: 170px; }
.ee-hint { color: #666; }
.ee-big { font-family: ui-monospace, monospace; font-size: 22px; font-weight: 700; }
.ee-group { color: #555; }
.ee-sub { color: #555; font-size: 12px; margin: 2px 0 4px; }
.ee-list { margin: 0; padding-left: 22px; }
.ee-list li { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
.ee-glyph { font-family: ui-monospace, monospace; font-weight: 700; width: 1.4em; }
.ee-barwrap { display: inline-block; width: 110px; height: 8px; background: #eee; border-radius: 4px; }
.ee-barfill { display: block; height: 8px; background: #d97706; border-radius: 4px; }
.ee-val { font-family: ui-monospace, monospace; font-size: 12px; }
.ee-legend { margin-top: 10px; display: grid; grid-template-columns: 1fr 1fr; gap: 2px 10px; font-size: 12px; }
.ee-key { display: flex; align-items: center; gap: 5px; }
.ee-swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; }
.ee-note { color: #555; font-size: 12px; margin-top: 6px; min-height: 1.2em; }
"""


def char_group(label: str) -> str:
    """The colour class of a token label (as made by Vocab.label)."""
    if label == "◆":
        return "boundary"
    if label in ("␣", "⏎", "⇥"):
        return "space"
    if len(label) != 1:
        return "other"
    if label in "aeiou":
        return "vowel"
    if label.isalpha() and label.islower() and label.isascii():
        return "consonant"
    if label.isalpha() and label.isupper() and label.isascii():
        return "upper"
    if label.isdigit():
        return "digit"
    if not label.isalnum():
        return "punct"
    return "other"


def pca_2d(table: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Project the rows of a (V, d) table on its two principal directions; also return the share of the
    variance those two directions hold."""
    X = table.detach().double()
    X = X - X.mean(dim=0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    share = float((S[:2] ** 2).sum() / (S**2).sum())
    return U[:, :2] * S[:2], share


class EmbeddingExplorer(anywidget.AnyWidget):
    """Characters placed by their learned embeddings; hover one to list its nearest neighbours."""

    _esm = _ESM
    _css = _CSS
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    groups = traitlets.List(traitlets.Unicode()).tag(sync=True)
    snapshots = traitlets.List(traitlets.Dict()).tag(sync=True)  # [{name, xy, vectors, note}]
    title = traitlets.Unicode("").tag(sync=True)

    @classmethod
    def from_tables(cls, tables: dict[str, torch.Tensor], vocab: Vocab, title: str = "",
                    keep: list[int] | None = None) -> EmbeddingExplorer:
        """One snapshot per named (V, d) embedding table; `keep` limits the tokens shown (default: all)."""
        ids = list(range(len(vocab))) if keep is None else list(keep)
        labels = [vocab.label(i) for i in ids]
        snapshots = []
        for name, table in tables.items():
            rows = table.detach()[ids]
            xy, share = pca_2d(rows)
            snapshots.append({
                "name": name,
                "xy": [[round(float(a), 4), round(float(b), 4)] for a, b in xy],
                "vectors": [[round(float(v), 4) for v in row] for row in rows],
                "note": f"{name}: the 2-D picture holds {share:.0%} of the variance of the {rows.shape[1]}-D "
                        "embeddings; the neighbour list uses all dimensions.",
            })
        return cls(labels=labels, groups=[char_group(s) for s in labels], snapshots=snapshots, title=title)


__all__ = ["EmbeddingExplorer", "char_group", "pca_2d"]

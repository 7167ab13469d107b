"""A computation-graph explorer for Chapter 2: see data flow forward and gradients flow backward.

    from storylib.widgets.graph import GraphExplorer
    GraphExplorer.neuron()                    # tanh(x1*w1 + x2*w2 + b)
    GraphExplorer(some_value, title="...")    # any small micrograd expression

The graph (from `storylib.micrograd.export_graph`) is a trait; forward and backward of the small
graph are re-implemented in the widget's JavaScript, so it stays live in the static book where no
Python kernel runs. Leaves get number inputs and sliders; "backward" runs the whole reverse sweep,
"step" runs one node's local gradient at a time, in reverse topological order, and says what it did.
"""

from __future__ import annotations

import anywidget
import traitlets

from storylib.micrograd import Value, export_graph

_ESM = r"""
const OPS = {
  "+":    { sym: "+",    f: (xs) => xs[0] + xs[1] },
  "*":    { sym: "×",    f: (xs) => xs[0] * xs[1] },
  "pow":  { sym: "^",    f: (xs, n) => Math.pow(xs[0], n.exponent) },
  "exp":  { sym: "exp",  f: (xs) => Math.exp(xs[0]) },
  "log":  { sym: "log",  f: (xs) => Math.log(xs[0]) },
  "tanh": { sym: "tanh", f: (xs) => Math.tanh(xs[0]) },
  "relu": { sym: "relu", f: (xs) => Math.max(0, xs[0]) },
};
const SVGNS = "http://www.w3.org/2000/svg";
const fmt = (v) => (Number.isFinite(v) ? (Math.abs(v) < 5e-5 ? 0 : v).toFixed(4) : String(v));

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

// The local gradient of one node: adds to its inputs' grads; returns a sentence saying what it did.
function localBackward(nodes, n) {
  const g = n.grad, ins = n.inputs.map((i) => nodes[i]);
  const [a, b] = ins;
  const parts = [];
  const add = (node, amount, how) => {
    node.grad += amount;
    parts.push(`${node.label}.grad += ${how} = ${fmt(amount)}`);
  };
  switch (n.op) {
    case "+": add(a, g, `1 · ${fmt(g)}`); add(b, g, `1 · ${fmt(g)}`); break;
    case "*": { const ad = a.data, bd = b.data;
      add(a, bd * g, `${b.label}.data · ${n.label}.grad = ${fmt(bd)} · ${fmt(g)}`);
      add(b, ad * g, `${a.label}.data · ${n.label}.grad = ${fmt(ad)} · ${fmt(g)}`); break; }
    case "pow": { const k = n.exponent;
      add(a, k * Math.pow(a.data, k - 1) * g, `${k} · ${fmt(a.data)}^${k - 1} · ${fmt(g)}`); break; }
    case "exp": add(a, n.data * g, `exp(${fmt(a.data)}) · ${fmt(g)}`); break;
    case "log": add(a, g / a.data, `(1 / ${fmt(a.data)}) · ${fmt(g)}`); break;
    case "tanh": add(a, (1 - n.data * n.data) * g, `(1 − ${fmt(n.data)}²) · ${fmt(g)}`); break;
    case "relu": add(a, (a.data > 0 ? 1 : 0) * g, `[${fmt(a.data)} > 0] · ${fmt(g)}`); break;
  }
  const opText = n.op === "pow" ? `${ins[0].label}^${n.exponent}`
    : ins.length === 2 ? `${ins[0].label} ${OPS[n.op].sym} ${ins[1].label}` : `${n.op}(${ins[0].label})`;
  return `${n.label} = ${opText}:  ` + parts.join(";  ");
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "mg-explorer";
  root.dataset.testid = "graph-explorer";
  el.appendChild(root);

  let nodes = [], order = [], cursor = -1, highlight = new Set(), current = -1;

  function forward() {
    for (const n of nodes) if (n.op) n.data = OPS[n.op].f(n.inputs.map((i) => nodes[i].data), n);
  }
  function zeroGrads() { for (const n of nodes) n.grad = 0; }
  function seed() {
    zeroGrads();
    nodes[nodes.length - 1].grad = 1;
    order = nodes.filter((n) => n.op).map((n) => n.id).reverse();  // reverse topological order
    cursor = 0;
  }

  const title = document.createElement("div");
  title.className = "mg-title";
  const controls = document.createElement("div");
  controls.className = "mg-controls";
  const buttons = document.createElement("div");
  buttons.className = "mg-buttons";
  const mkButton = (text, testid, fn) => {
    const bt = document.createElement("button");
    bt.textContent = text; bt.dataset.testid = testid; bt.addEventListener("click", fn);
    buttons.appendChild(bt); return bt;
  };
  const explain = document.createElement("div");
  explain.className = "mg-explain";
  explain.dataset.testid = "explain";
  const figure = document.createElement("div");
  figure.className = "mg-figure";
  root.append(title, controls, buttons, figure, explain);

  mkButton("backward ⟵", "backward", () => {
    seed();
    const lines = [`${nodes[nodes.length - 1].label}.grad = 1`];
    while (cursor < order.length) lines.push(localBackward(nodes, nodes[order[cursor++]]));
    highlight = new Set(); current = -1;
    explain.textContent = `Backward: seed, then ${order.length} local steps in reverse topological order. Last: ` +
      lines[lines.length - 1];
    draw();
  });
  const stepButton = mkButton("step ⟵", "step", () => {
    if (cursor < 0 || cursor >= order.length) {
      seed(); current = nodes.length - 1; highlight = new Set([current]);
      const r = nodes[current].label;
      explain.textContent = `Start: ${r}.grad = 1 (d${r}/d${r}). ` +
        `${order.length} nodes to go, in reverse topological order.`;
    } else {
      const n = nodes[order[cursor++]];
      current = n.id; highlight = new Set([n.id, ...n.inputs]);
      explain.textContent = `Step ${cursor}/${order.length} — ` + localBackward(nodes, n) +
        (cursor === order.length ? "   (done: every grad is final)" : "");
    }
    draw();
  });
  mkButton("zero grads", "reset", () => {
    zeroGrads(); cursor = -1; current = -1; highlight = new Set();
    explain.textContent = "All grads set to 0. Press backward, or step through it.";
    draw();
  });

  function buildControls() {
    controls.replaceChildren();
    for (const n of nodes.filter((n) => !n.op)) {
      const row = document.createElement("label");
      row.className = "mg-control";
      const name = document.createElement("span");
      name.textContent = n.label;
      const slider = document.createElement("input");
      Object.assign(slider, { type: "range", min: -4, max: 4, step: 0.01, value: n.data });
      slider.dataset.testid = `slider-${n.label}`;
      const num = document.createElement("input");
      Object.assign(num, { type: "number", step: 0.1, value: n.data });
      num.dataset.testid = `input-${n.label}`;
      const set = (v, from) => {
        if (!Number.isFinite(v)) return;
        n.data = v;
        if (from !== slider) slider.value = v;
        if (from !== num) num.value = v;
        forward(); zeroGrads(); cursor = -1; current = -1; highlight = new Set();
        explain.textContent =
          `${n.label} = ${fmt(v)}: forward pass redone, grads are stale (0) until you run backward.`;
        draw();
      };
      slider.addEventListener("input", () => set(parseFloat(slider.value), slider));
      num.addEventListener("input", () => set(parseFloat(num.value), num));
      num.addEventListener("change", () => set(parseFloat(num.value), num));
      row.append(name, slider, num);
      controls.appendChild(row);
    }
  }

  // Layout: column = longest path from a leaf; rows in topological order within a column.
  const W = 118, H = 56, COL = 178, ROW = 76, PAD = 14, OPR = 15;
  function layout() {
    const depth = [], rows = {};
    for (const n of nodes) {
      depth[n.id] = n.inputs.length ? 1 + Math.max(...n.inputs.map((i) => depth[i])) : 0;
    }
    // A leaf sits just left of its first consumer, so its edge does not cross the picture.
    for (const n of nodes) {
      if (n.inputs.length) continue;
      const users = nodes.filter((m) => m.inputs.includes(n.id)).map((m) => depth[m.id]);
      if (users.length) depth[n.id] = Math.min(...users) - 1;
    }
    for (const n of nodes) rows[depth[n.id]] = (rows[depth[n.id]] || 0) + 1;
    const maxRows = Math.max(...Object.values(rows));
    const seen = {};
    for (const n of nodes) {
      const d = depth[n.id], r = (seen[d] = (seen[d] || 0) + 1) - 1;
      n.x = PAD + OPR * 2 + d * COL;
      n.y = PAD + (r + (maxRows - rows[d]) / 2) * ROW;
    }
    const maxDepth = Math.max(...depth);
    return { width: PAD * 2 + OPR * 2 + maxDepth * COL + W, height: PAD * 2 + (maxRows - 1) * ROW + H };
  }

  function draw() {
    const { width, height } = layout();
    const maxAbs = Math.max(1e-9, ...nodes.map((n) => Math.abs(n.grad)));
    const s = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "mg-svg" });
    const defs = svg("defs", {}, s);
    const marker = svg("marker", { id: "mg-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    svg("path", { d: "M0,0 L10,5 L0,10 z", class: "mg-arrowhead" }, marker);
    for (const n of nodes) {
      n.inputs.forEach((i, k) => {
        const a = nodes[i];
        const ox = n.x - OPR, oy = n.y + H / 2 + (n.inputs.length === 2 ? (k ? 6 : -6) : 0);
        const x1 = a.x + W, y1 = a.y + H / 2;
        const hot = highlight.has(n.id) && highlight.has(a.id) && current === n.id;
        svg("path", { d: `M${x1},${y1} C${x1 + 40},${y1} ${ox - 50},${oy} ${ox - OPR},${oy}`,
          class: "mg-edge" + (hot ? " mg-hot" : ""), "marker-end": "url(#mg-arrow)" }, s);
      });
    }
    for (const n of nodes) {
      const state = n.id === current ? " mg-current" : highlight.has(n.id) ? " mg-touched" : "";
      const g = svg("g", { class: "mg-node" + state, "data-testid": `node-${n.label}` }, s);
      if (n.op) {
        svg("line", { x1: n.x - OPR, y1: n.y + H / 2, x2: n.x, y2: n.y + H / 2, class: "mg-edge" }, g);
        svg("circle", { cx: n.x - OPR, cy: n.y + H / 2, r: OPR, class: "mg-op" }, g);
        const sym = n.op === "pow" ? `^${n.exponent}` : OPS[n.op].sym;
        const cls = "mg-optext" + (sym.length > 2 ? " mg-small" : "");
        const t = svg("text", { x: n.x - OPR, y: n.y + H / 2 + 4, class: cls }, g);
        t.textContent = sym;
      }
      const tint = n.grad === 0 ? "transparent"
        : `rgba(${n.grad > 0 ? "46,139,87" : "200,60,60"},${(0.12 + 0.4 * Math.abs(n.grad) / maxAbs).toFixed(3)})`;
      svg("rect", { x: n.x, y: n.y, width: W, height: H, rx: 7, class: "mg-box" }, g);
      svg("rect", { x: n.x, y: n.y, width: W, height: H, rx: 7, fill: tint, class: "mg-tint" }, g);
      const lab = svg("text", { x: n.x + W / 2, y: n.y + 17, class: "mg-label" }, g);
      lab.textContent = n.label;
      const d = svg("text", { x: n.x + 8, y: n.y + 34, class: "mg-data", "data-testid": `data-${n.label}` }, g);
      d.textContent = `data ${fmt(n.data)}`;
      const gr = svg("text", { x: n.x + 8, y: n.y + 49, class: "mg-grad", "data-testid": `grad-${n.label}` }, g);
      gr.textContent = `grad ${fmt(n.grad)}`;
      for (const e of [d, gr]) e.dataset.value = String(e === d ? n.data : n.grad);
    }
    figure.replaceChildren(s);
    stepButton.textContent = cursor >= 0 && cursor < order.length ? `step ⟵ (${cursor}/${order.length})` : "step ⟵";
  }

  function load() {
    const graph = model.get("graph") || { nodes: [] };
    nodes = graph.nodes.map((n) => ({ ...n, inputs: [...n.inputs], grad: 0 }));
    title.textContent = model.get("title") || "";
    title.style.display = title.textContent ? "" : "none";
    cursor = -1; current = -1; highlight = new Set();
    forward();
    buildControls();
    explain.textContent =
      "Move an input: the forward pass reruns. Then press backward, or step through it one node at a time.";
    if (nodes.length) draw();
  }
  model.on("change:graph", load);
  model.on("change:title", load);
  load();
}
export default { render };
"""

_CSS = """
.mg-explorer { font-family: system-ui, sans-serif; font-size: 13px; color: #222; max-width: 100%; }
.mg-title { font-weight: 600; margin-bottom: 6px; }
.mg-controls { display: flex; flex-wrap: wrap; gap: 4px 18px; margin-bottom: 6px; }
.mg-control { display: flex; align-items: center; gap: 6px; }
.mg-control span { font-family: monospace; min-width: 2.5em; text-align: right; }
.mg-control input[type=range] { width: 110px; }
.mg-control input[type=number] { width: 70px; }
.mg-buttons { display: flex; gap: 8px; margin: 6px 0; }
.mg-buttons button { padding: 3px 10px; border: 1px solid #888; border-radius: 4px; background: #f6f6f6;
  cursor: pointer; font-size: 13px; }
.mg-buttons button:hover { background: #e9eef7; }
.mg-figure { overflow-x: auto; }
.mg-svg { display: block; }
.mg-box { fill: #fff; stroke: #555; stroke-width: 1.2; }
.mg-tint { stroke: none; pointer-events: none; }
.mg-current .mg-box { stroke: #d97706; stroke-width: 3; }
.mg-touched .mg-box { stroke: #2563eb; stroke-width: 2.2; }
.mg-op { fill: #eef2ff; stroke: #555; stroke-width: 1.1; }
.mg-optext { text-anchor: middle; font-size: 13px; font-family: monospace; }
.mg-optext.mg-small { font-size: 9px; }
.mg-label { text-anchor: middle; font-weight: 600; font-family: monospace; font-size: 13px; }
.mg-data, .mg-grad { font-family: monospace; font-size: 12px; }
.mg-grad { fill: #7a2e0e; }
.mg-edge { fill: none; stroke: #888; stroke-width: 1.3; }
.mg-edge.mg-hot { stroke: #d97706; stroke-width: 2.5; }
.mg-arrowhead { fill: #888; }
.mg-explain { font-family: monospace; font-size: 12px; background: #fafafa; border-left: 3px solid #d97706;
  padding: 6px 8px; margin-top: 6px; min-height: 1.4em; white-space: pre-wrap; }
"""


class GraphExplorer(anywidget.AnyWidget):
    """Explore one small expression: edit its leaves, then watch backward fill in every grad."""

    _esm = _ESM
    _css = _CSS
    graph = traitlets.Dict().tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, root: Value | dict, title: str = "", **kwargs) -> None:
        graph = root if isinstance(root, dict) else export_graph(root)
        super().__init__(graph=graph, title=title, **kwargs)

    @classmethod
    def neuron(
        cls, x: tuple[float, float] = (1.5, -0.5), w: tuple[float, float] = (0.8, -1.2), b: float = -0.3
    ) -> GraphExplorer:
        """One tanh neuron with two inputs: o = tanh(x1*w1 + x2*w2 + b)."""
        return cls(neuron_expression(x, w, b), title="One neuron: o = tanh(x1·w1 + x2·w2 + b)")


def neuron_expression(
    x: tuple[float, float] = (1.5, -0.5), w: tuple[float, float] = (0.8, -1.2), b: float = -0.3
) -> Value:
    """o = tanh(x1*w1 + x2*w2 + b), with every node labelled."""
    x1, x2 = Value(x[0], label="x1"), Value(x[1], label="x2")
    w1, w2 = Value(w[0], label="w1"), Value(w[1], label="w2")
    bias = Value(b, label="b")
    x1w1 = x1 * w1
    x1w1.label = "x1w1"
    x2w2 = x2 * w2
    x2w2.label = "x2w2"
    s = x1w1 + x2w2
    s.label = "s"
    n = s + bias
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return o

// GraphExplorer's front end (storylib/widgets/graph.py). anywidget loads it from a blob: URL, so it imports
// nothing: every helper it needs is in this file.

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

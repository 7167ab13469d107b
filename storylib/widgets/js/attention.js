// AttentionExplorer's front end (storylib/widgets/attention.py). storylib.widgets.front_end puts
// js/_dom.js (el) before it: anywidget loads one module from a blob: URL, which cannot import another file.

// The model's forward pass, in plain JavaScript. Pure functions, no DOM: the tests run it under node.
function b64ToFloat32(s) {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

// {config, chars, tensors: {name: [offset, shape]}, data: base64} -> {config, chars, t: {name: {data, shape}}}
function decodeModel(m) {
  const flat = b64ToFloat32(m.data);
  const t = {};
  for (const [name, [offset, shape]] of Object.entries(m.tensors)) {
    const n = shape.reduce((a, b) => a * b, 1);
    t[name] = { data: flat.subarray(offset, offset + n), shape };
  }
  return { config: m.config, chars: m.chars, t };
}

// x: array of T rows (Float64Array of width In); W: (Out, In), row-major, as nn.Linear stores it
function linear(x, W, b) {
  const [O, I] = W.shape;
  return x.map((row) => {
    const y = new Float64Array(O);
    for (let o = 0; o < O; o++) {
      let s = b ? b.data[o] : 0;
      const base = o * I;
      for (let i = 0; i < I; i++) s += W.data[base + i] * row[i];
      y[o] = s;
    }
    return y;
  });
}

function layerNorm(x, w, b) {
  return x.map((row) => {
    const n = row.length;
    let mean = 0, varSum = 0;
    for (let i = 0; i < n; i++) mean += row[i];
    mean /= n;
    for (let i = 0; i < n; i++) varSum += (row[i] - mean) ** 2;
    const inv = 1 / Math.sqrt(varSum / n + 1e-5);
    const y = new Float64Array(n);
    for (let i = 0; i < n; i++) y[i] = (row[i] - mean) * inv * w.data[i] + b.data[i];
    return y;
  });
}

// nn.GELU(approximate="tanh")
function gelu(v) { return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))); }

// ids: token ids (ids[0] is usually the boundary token 0). Returns the attention weights of every
// layer and head, attn[l][h] a Float64Array (T*T) with attn[l][h][i*T + j] = weight of key j for query i,
// and probs, the model's distribution of the character after the last one.
function forward(model, ids) {
  const { config: c, t } = model;
  const C = c.d_model, H = c.n_head, D = C / H, T = ids.length;
  const tok = t["tok.weight"].data, pos = t["pos"].data;
  let x = ids.map((id, p) => {
    const r = new Float64Array(C);
    for (let i = 0; i < C; i++) r[i] = tok[id * C + i] + pos[p * C + i];
    return r;
  });
  const attn = [];
  for (let l = 0; l < c.n_layer; l++) {
    const P = `blocks.${l}.`;
    const h1 = layerNorm(x, t[P + "ln1.weight"], t[P + "ln1.bias"]);
    const qkv = linear(h1, t[P + "attn.qkv.weight"], t[P + "attn.qkv.bias"]);  // (T, 3C): q | k | v
    const y = x.map(() => new Float64Array(C));
    const maps = [];
    for (let h = 0; h < H; h++) {
      const w = new Float64Array(T * T);
      const q0 = h * D, k0 = C + h * D, v0 = 2 * C + h * D;
      for (let i = 0; i < T; i++) {
        const s = new Float64Array(i + 1);  // causal: query i sees keys 0..i
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let d = 0;
          for (let e = 0; e < D; e++) d += qkv[i][q0 + e] * qkv[j][k0 + e];
          s[j] = d / Math.sqrt(D);
          if (s[j] > m) m = s[j];
        }
        let z = 0;
        for (let j = 0; j <= i; j++) { s[j] = Math.exp(s[j] - m); z += s[j]; }
        for (let j = 0; j <= i; j++) {
          const a = s[j] / z;
          w[i * T + j] = a;
          for (let e = 0; e < D; e++) y[i][q0 + e] += a * qkv[j][v0 + e];
        }
      }
      maps.push(w);
    }
    attn.push(maps);
    const a = linear(y, t[P + "attn.proj.weight"], t[P + "attn.proj.bias"]);
    x = x.map((r, i) => r.map((v, k) => v + a[i][k]));
    const h2 = layerNorm(x, t[P + "ln2.weight"], t[P + "ln2.bias"]);
    const hidden = linear(h2, t[P + "mlp.0.weight"], t[P + "mlp.0.bias"]).map((r) => r.map(gelu));
    const m = linear(hidden, t[P + "mlp.2.weight"], t[P + "mlp.2.bias"]);
    x = x.map((r, i) => r.map((v, k) => v + m[i][k]));
  }
  const last = layerNorm([x[T - 1]], t["ln_f.weight"], t["ln_f.bias"]);
  const logits = linear(last, t["head.weight"], null)[0];
  const top = Math.max(...logits);
  const e = logits.map((z) => Math.exp(z - top));
  const sum = e.reduce((p, q) => p + q, 0);
  return { attn, probs: e.map((v) => v / sum) };
}

// The text as the model reads it: the boundary token, then the characters it knows (others are skipped),
// at most block_size tokens in all.
function encode(model, text) {
  const index = new Map(model.chars.map((ch, i) => [ch, i + 1]));
  const ids = [0], skipped = new Set();
  let truncated = false;
  for (const ch of Array.from(text)) {
    if (!index.has(ch)) { skipped.add(ch); continue; }
    if (ids.length >= model.config.block_size) { truncated = true; break; }
    ids.push(index.get(ch));
  }
  return { ids, skipped: [...skipped], truncated };
}

function label(model, id) {
  if (id === 0) return "◆";
  const ch = model.chars[id - 1];
  return { " ": "␣", "\n": "⏎", "\t": "⇥" }[ch] || ch;
}

// white -> deep blue; w in [0, 1]
function colour(w) {
  const a = [247, 251, 255], b = [8, 48, 107];
  const s = Math.sqrt(Math.max(0, Math.min(1, w)));  // sqrt: small weights stay visible
  return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * s)).join(",")})`;
}

// Draws the T x T map w into a canvas about `size` pixels wide; with labels when there is room for them.
function drawMap(canvas, w, T, size, labels, sel) {
  const cell = Math.min(22, size / T);
  const pad = labels && cell >= 6 ? 16 : 0;
  const px = Math.ceil(pad + cell * T);
  const edge = (k) => pad + Math.round(k * cell);  // integer cell edges: no seams between cells
  const dpr = window.devicePixelRatio || 1;
  canvas.width = px * dpr; canvas.height = px * dpr;
  canvas.style.width = px + "px"; canvas.style.height = px + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, px, px);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      ctx.fillStyle = j > i ? "#ececec" : colour(w[i * T + j]);
      ctx.fillRect(edge(j), edge(i), edge(j + 1) - edge(j), edge(i + 1) - edge(i));
    }
  }
  if (pad) {
    ctx.fillStyle = "#333"; ctx.font = `${Math.min(12, Math.floor(cell) + 1)}px monospace`;
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (let j = 0; j < T; j++) ctx.fillText(labels[j], pad + (j + 0.5) * cell, pad / 2);
    for (let i = 0; i < T; i++) ctx.fillText(labels[i], pad / 2, pad + (i + 0.5) * cell);
  }
  if (sel) {
    const rowH = edge(sel.i + 1) - edge(sel.i), colW = edge(sel.j + 1) - edge(sel.j);
    ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 2;
    ctx.strokeRect(pad, edge(sel.i), edge(T) - pad, rowH);  // the query's row
    ctx.strokeStyle = "#d62728";
    ctx.strokeRect(edge(sel.j) + 1, edge(sel.i) + 1, colW - 2, rowH - 2);  // the selected key
  }
  return { cell, pad };
}

function render({ model, el: host }) {
  const net = decodeModel(model.get("weights"));
  const c = net.config;
  const root = el("div", { class: "ax", "data-testid": "attention-explorer" }, host);
  const top = el("div", { class: "ax-controls" }, root);
  const input = el("input", { type: "text", class: "ax-text", "data-testid": "attention-text", size: "48",
                              maxlength: String(4 * c.block_size),
                              "aria-label": "a sentence for the model to read" }, top);
  const note = el("div", { class: "ax-note", "data-testid": "attention-note" }, root);
  const pick = el("div", { class: "ax-controls" }, root);
  el("span", {}, pick, "layer");
  const layerButtons = [...Array(c.n_layer).keys()].map((l) =>
    el("button", { type: "button", "data-testid": `attention-layer-${l}` }, pick, String(l + 1)));
  el("span", { class: "ax-gap" }, pick, "head");
  const headButtons = [...Array(c.n_head).keys()].map((h) =>
    el("button", { type: "button", "data-testid": `attention-head-${h}` }, pick, String(h + 1)));
  const body = el("div", { class: "ax-body" }, root);
  const mainBox = el("div", { class: "ax-main" }, body);
  const title = el("div", { class: "ax-title" }, mainBox);
  const canvas = el("canvas", { "data-testid": "attention-heatmap",
                                "aria-label": "attention weights: rows are queries, columns are keys" }, mainBox);
  const side = el("div", { class: "ax-side" }, body);
  el("div", { class: "ax-title" }, side, "all heads (click one)");
  const grid = el("div", { class: "ax-grid", style: `grid-template-columns: repeat(${c.n_head}, auto)` }, side);
  const thumbs = [];
  for (let l = 0; l < c.n_layer; l++) {
    for (let h = 0; h < c.n_head; h++) {
      const cv = el("canvas", { class: "ax-thumb", "data-testid": `attention-thumb-${l}-${h}`,
                                title: `layer ${l + 1}, head ${h + 1}` }, grid);
      cv.addEventListener("click", () => { model.set("layer", l); model.set("head", h); model.save_changes(); });
      thumbs.push({ cv, l, h });
    }
  }
  const readout = el("div", { class: "ax-readout", "data-testid": "attention-readout" }, root);
  const row = el("div", { class: "ax-row", "data-testid": "attention-row" }, root);
  const pred = el("div", { class: "ax-pred", "data-testid": "attention-prediction" }, root);

  let state = null;  // {ids, labels, attn, probs}
  let sel = null;  // {i, j}: the query row and key column shown in the readout

  function argmaxKey(i) {
    const w = state.attn[model.get("layer")][model.get("head")], T = state.ids.length;
    let best = 0;
    for (let j = 0; j <= i; j++) if (w[i * T + j] > w[i * T + best]) best = j;
    return best;
  }

  function compute() {
    const { ids, skipped, truncated } = encode(net, model.get("text"));
    const { attn, probs } = forward(net, ids);
    state = { ids, labels: ids.map((id) => label(net, id)), attn, probs };
    const notes = [];
    if (skipped.length) {
      notes.push(`skipped characters the model never saw: ${skipped.map((s) => JSON.stringify(s)).join(" ")}`);
    }
    if (truncated) notes.push(`only the first ${c.block_size - 1} characters fit in the model's context`);
    note.textContent = notes.join("; ");
    const last = ids.length - 1;
    sel = { i: last, j: 0 };
    sel.j = argmaxKey(last);
    const order = probs.map((p, k) => k).sort((a, b) => probs[b] - probs[a]).slice(0, 5);
    pred.replaceChildren();
    el("span", {}, pred, "next character, as the model guesses it: ");
    for (const k of order) el("span", { class: "ax-chip" }, pred, `${label(net, k)} ${(100 * probs[k]).toFixed(1)}%`);
  }

  function digest(w) {  // a short fingerprint of the shown map, for tests
    let s = 0;
    for (let k = 0; k < w.length; k++) s += w[k] * ((k * 7919) % 101);
    return s.toFixed(6);
  }

  function show() {
    const L = model.get("layer"), H = model.get("head"), T = state.ids.length;
    layerButtons.forEach((b, l) => b.classList.toggle("ax-on", l === L));
    headButtons.forEach((b, h) => b.classList.toggle("ax-on", h === H));
    const w = state.attn[L][H];
    title.textContent = `layer ${L + 1}, head ${H + 1}: row = query (the character reading), `
      + "column = key (the one it reads)";
    canvas.dataset.digest = digest(w);
    canvas._geom = drawMap(canvas, w, T, 420, state.labels, sel);
    for (const th of thumbs) {
      drawMap(th.cv, state.attn[th.l][th.h], T, 84, null, null);
      th.cv.classList.toggle("ax-on", th.l === L && th.h === H);
    }
    const wij = w[sel.i * T + sel.j];
    readout.dataset.weight = String(wij);
    readout.textContent = `query ${sel.i} '${state.labels[sel.i]}' → key ${sel.j} '${state.labels[sel.j]}': `
      + `weight ${wij.toFixed(4)}`;
    row.replaceChildren();
    el("span", { class: "ax-rowlabel" }, row, `what '${state.labels[sel.i]}' (position ${sel.i}) reads: `);
    for (let j = 0; j < T; j++) {
      const a = j <= sel.i ? w[sel.i * T + j] : 0;
      el("span", { class: "ax-char" + (j === sel.i ? " ax-q" : ""), title: `${a.toFixed(4)}`,
                   style: `background:${j <= sel.i ? colour(a) : "#f4f4f4"};color:${a > 0.45 ? "#fff" : "#222"}` },
         row, state.labels[j]);
    }
  }

  function pickCell(ev) {
    const g = canvas._geom, rect = canvas.getBoundingClientRect();
    const j = Math.floor((ev.clientX - rect.left - g.pad) / g.cell);
    const i = Math.floor((ev.clientY - rect.top - g.pad) / g.cell);
    const T = state.ids.length;
    if (i < 0 || j < 0 || i >= T || j >= T) return;
    sel = { i, j: Math.min(i, j) };
    show();
  }

  input.value = model.get("text");
  input.addEventListener("input", () => { model.set("text", input.value); model.save_changes(); });
  layerButtons.forEach((b, l) => b.addEventListener("click", () => { model.set("layer", l); model.save_changes(); }));
  headButtons.forEach((b, h) => b.addEventListener("click", () => { model.set("head", h); model.save_changes(); }));
  canvas.addEventListener("mousemove", pickCell);
  canvas.addEventListener("click", pickCell);
  const onPick = () => { sel.j = argmaxKey(sel.i); show(); };
  model.on("change:text", () => {
    if (input.value !== model.get("text")) input.value = model.get("text");
    compute();
    show();
  });
  model.on("change:layer", onPick);
  model.on("change:head", onPick);
  compute();
  show();
}

export default { render };

// GenerationLens's front end (storylib/widgets/gpt2.py). storylib.widgets.front_end puts
// js/_dom.js (el) before it: anywidget loads one module from a blob: URL, which cannot import another file.

function softmax(z, T, k) {
  const idx = z.map((v, i) => i).sort((a, b) => z[b] - z[a]);
  const keep = new Set(k > 0 ? idx.slice(0, k) : idx);
  if (T === 0) return z.map((v, i) => (i === idx[0] ? 1 : 0));
  const m = z[idx[0]] / T;
  const e = z.map((v, i) => (keep.has(i) ? Math.exp(v / T - m) : 0));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}
const pct = (p) => (100 * p).toFixed(p < 0.001 ? 2 : 1) + "%";


function bars(parent, rows, chosen) {
  // rows: [[token, p], ...]; chosen: the token actually generated
  const box = el("div", { class: "gl-bars" }, parent);
  for (const [tok, p] of rows) {
    const r = el("div", { class: "gl-row" + (tok === chosen ? " gl-chosen" : "") }, box);
    el("span", { class: "gl-tok" }, r, LABELS[tok]);
    const track = el("span", { class: "gl-track" }, r);
    el("span", { class: "gl-fill", style: `width:${(100 * p).toFixed(1)}%` }, track);
    el("span", { class: "gl-p" }, r, pct(p));
  }
}
let LABELS = [];

function render({ model, el: host }) {
  const root = el("div", { class: "gl-root", "data-testid": "generation-lens" }, host);
  const steps = model.get("steps");            // [{logits: [...], lens: [[[tok, p], ...] per layer]}]
  const ids = model.get("ids");                // prompt + generated ids
  const nPrompt = model.get("n_prompt");
  const layers = model.get("layer_names");
  LABELS = model.get("labels");
  let cur = 0;

  const text = el("div", { class: "gl-text" }, root);
  for (let i = 0; i < ids.length; i++) {
    const span = el("span", { class: i < nPrompt ? "gl-c gl-prompt" : "gl-c" }, text, LABELS[ids[i]]);
    if (i >= nPrompt) span.addEventListener("click", () => { cur = i - nPrompt; update(); });
  }
  const nav = el("div", { class: "gl-nav" }, root);
  const prev = el("button", { "data-testid": "gl-prev" }, nav, "◀ prev");
  const next = el("button", { "data-testid": "gl-next" }, nav, "next ▶");
  const where = el("span", { class: "gl-where", "data-testid": "gl-where" }, nav);
  const tLabel = el("label", {}, nav, " temperature ");
  const tIn = el("input", { type: "range", min: "0", max: "2", step: "0.05", value: "1", "data-testid": "gl-temp" },
                 tLabel);
  const tOut = el("span", { class: "gl-val" }, tLabel, "1.00");
  const kLabel = el("label", {}, nav, " top-k ");
  const kIn = el("select", { "data-testid": "gl-topk" }, kLabel);
  for (const k of [0, 1, 3, 10, 40]) el("option", { value: String(k) }, kIn, k === 0 ? "off" : String(k));

  const panes = el("div", { class: "gl-panes" }, root);
  const left = el("div", { class: "gl-pane" }, panes);
  const right = el("div", { class: "gl-pane" }, panes);
  prev.addEventListener("click", () => { cur = Math.max(0, cur - 1); update(); });
  next.addEventListener("click", () => { cur = Math.min(steps.length - 1, cur + 1); update(); });
  tIn.addEventListener("input", update);
  kIn.addEventListener("change", update);

  function update() {
    const T = parseFloat(tIn.value), k = parseInt(kIn.value, 10);
    tOut.textContent = T.toFixed(2);
    const chosen = ids[nPrompt + cur];
    text.querySelectorAll(".gl-c").forEach((s, i) => s.classList.toggle("gl-cur", i === nPrompt + cur));
    where.textContent = ` byte ${cur + 1} of ${steps.length}: drew “${LABELS[chosen]}” `;
    const p = softmax(steps[cur].logits, T, k);
    const order = p.map((v, i) => i).sort((a, b) => p[b] - p[a]).slice(0, 8);
    left.replaceChildren();
    el("div", { class: "gl-h" }, left, `next-byte distribution at T = ${T.toFixed(2)}` + (k ? `, top-${k}` : ""));
    bars(left, order.map((i) => [i, p[i]]), chosen);
    el("div", { class: "gl-note", "data-testid": "gl-chosen-p" }, left,
       `P(“${LABELS[chosen]}”) = ${pct(p[chosen])}   (the sample was drawn at T = ${model.get("temperature")})`);
    right.replaceChildren();
    el("div", { class: "gl-h" }, right, "logit lens: the residual stream read out early (T = 1)");
    steps[cur].lens.forEach((rows, l) => {
      const line = el("div", { class: "gl-lens" }, right);
      el("span", { class: "gl-layer" }, line, layers[l]);
      for (const [tok, q] of rows) {
        el("span", { class: "gl-cand" + (tok === chosen ? " gl-chosen" : ""),
                     style: `opacity:${(0.35 + 0.65 * Math.min(1, 2 * q)).toFixed(2)}` }, line,
           `${LABELS[tok]} ${pct(q)}`);
      }
    });
  }
  update();
}
export default { render };

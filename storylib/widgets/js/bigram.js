// BigramExplorer's front end (storylib/widgets/bigram.py). storylib.widgets.front_end puts
// js/_dom.js (el) before it: anywidget loads one module from a blob: URL, which cannot import another file.

// mulberry32: a tiny seeded PRNG, so a seed always gives the same story.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// p ** (1/T), renormalised; in logs so that small T cannot underflow. T = 0: all mass on the argmax.
function withTemperature(row, T) {
  if (T <= 0) {
    let best = 0;
    row.forEach((p, i) => { if (p > row[best]) best = i; });
    return row.map((_, i) => (i === best ? 1 : 0));
  }
  const logits = row.map((p) => (p > 0 ? Math.log(p) / T : -Infinity));
  const m = Math.max(...logits);
  const e = logits.map((z) => (z === -Infinity ? 0 : Math.exp(z - m)));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

function draw(p, rand) {
  let u = rand(), acc = 0;
  for (let i = 0; i < p.length; i++) { acc += p[i]; if (u < acc) return i; }
  return p.length - 1;
}


function render({ model, el: host }) {
  const labels = model.get("labels"), chars = model.get("chars"), P = model.get("probs");
  const V = labels.length;
  const root = el("div", { class: "bx", "data-testid": "bigram-explorer" }, host);

  const controls = el("div", { class: "bx-controls" }, root);
  const pickLabel = el("label", {}, controls, "after ");
  const select = el("select", { "data-testid": "bigram-char", "aria-label": "previous character" }, pickLabel);
  labels.forEach((l, i) => el("option", { value: String(i) }, select, l));
  const typeLabel = el("label", {}, controls, " or type one: ");
  const typed = el("input", { type: "text", maxlength: "2", size: "2", "data-testid": "bigram-type",
                              "aria-label": "type a character" }, typeLabel);
  const tempLabel = el("label", {}, controls, " temperature ");
  const temp = el("input", { type: "range", min: "0", max: "2", step: "0.05",
                             "data-testid": "bigram-temperature" }, tempLabel);
  const tempOut = el("span", { class: "bx-temp", "data-testid": "bigram-temperature-value" }, tempLabel);

  const title = el("div", { class: "bx-title", "data-testid": "bigram-title" }, root);
  const bars = el("div", { class: "bx-bars", "data-testid": "bigram-bars" }, root);

  const sampleRow = el("div", { class: "bx-controls" }, root);
  const button = el("button", { type: "button", "data-testid": "bigram-sample" }, sampleRow, "sample a story");
  const seedOut = el("span", { class: "bx-seed" }, sampleRow);
  const story = el("pre", { class: "bx-story", "data-testid": "bigram-story" }, root);

  function renderBars() {
    const a = model.get("selected"), T = model.get("temperature"), k = model.get("top_k");
    select.value = String(a);
    temp.value = String(T);
    tempOut.textContent = T.toFixed(2);
    const p = withTemperature(P[a], T);
    const order = p.map((x, i) => i).sort((i, j) => p[j] - p[i]).slice(0, k);
    title.textContent = `P(next | ${labels[a]})` + (T === 1 ? "" : ` at T = ${T.toFixed(2)}`)
      + ` — top ${order.length} of ${V}, click a bar to move there`;
    bars.replaceChildren();
    const top = p[order[0]] || 1;
    for (const j of order) {
      const row = el("div", { class: "bx-row", "data-testid": "bigram-bar", "data-token": labels[j],
                              title: `P(${labels[j]} | ${labels[a]}) = ${p[j].toFixed(5)}` }, bars);
      el("span", { class: "bx-label" }, row, labels[j]);
      const track = el("span", { class: "bx-track" }, row);
      el("span", { class: "bx-fill", style: `width:${(100 * p[j] / top).toFixed(1)}%` }, track);
      el("span", { class: "bx-p" }, row, (100 * p[j]).toFixed(1) + "%");
      row.addEventListener("click", () => { model.set("selected", j); model.save_changes(); });
    }
  }

  function sampleStory() {
    const seed = model.get("seed"), T = model.get("temperature"), maxLen = model.get("max_len");
    const rand = mulberry32(seed);
    let prev = 0, out = "";
    for (let n = 0; n < maxLen; n++) {
      const next = draw(withTemperature(P[prev], T), rand);
      if (next === 0) break;  // the boundary token: the story ends
      out += chars[next];
      prev = next;
    }
    story.textContent = out + (out.length >= maxLen ? " …" : " ◆");
    seedOut.textContent = ` seed ${seed}, T = ${T.toFixed(2)}, ${out.length} characters`;
    model.set("seed", seed + 1);
    model.save_changes();
  }

  select.addEventListener("change", () => { model.set("selected", Number(select.value)); model.save_changes(); });
  typed.addEventListener("input", () => {
    const c = typed.value.slice(-1) === "" ? null : Array.from(typed.value).pop();
    const i = c === null ? -1 : chars.indexOf(c);
    typed.classList.toggle("bx-unknown", c !== null && i < 0);
    if (i > 0) { model.set("selected", i); model.save_changes(); }
  });
  temp.addEventListener("input", () => { model.set("temperature", Number(temp.value)); model.save_changes(); });
  button.addEventListener("click", sampleStory);
  model.on("change:selected", renderBars);
  model.on("change:temperature", renderBars);
  model.on("change:top_k", renderBars);
  renderBars();
}

export default { render };

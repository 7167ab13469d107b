"""A next-character explorer for Chapter 1: pick a character, see what the bigram model expects next.

    from storylib.widgets.bigram import BigramExplorer
    BigramExplorer(P, vocab)              # P: a (V, V) table of next-token probabilities

The probability table travels with the widget as a trait (rounded to 5 decimals), and everything else —
the bar chart, the temperature, sampling a story — happens in the widget's own JavaScript, so it stays
live in the static book where no Python kernel runs. Clicking a bar moves to that character: a walk
through the chain by hand. "Sample" draws a story with a seeded PRNG (the same seed gives the same story).
"""

from __future__ import annotations

import anywidget
import torch
import traitlets

from storylib.bigram import BOUNDARY, Vocab
from storylib.widgets._dom import DOM_JS

_ESM = r"""
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
"""

_CSS = """
.bx { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 14px; max-width: 640px; }
.bx-controls { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; margin: 0.4em 0; }
.bx-controls select, .bx-controls input[type=text] { font-family: monospace; font-size: 14px; }
.bx-unknown { outline: 2px solid #d62728; }
.bx-temp { display: inline-block; width: 3em; font-family: monospace; }
.bx-title { font-weight: 600; margin: 0.5em 0 0.3em; }
.bx-bars { display: grid; gap: 2px; }
.bx-row { display: grid; grid-template-columns: 2.2em 1fr 4.5em; align-items: center; gap: 0.5em; cursor: pointer; }
.bx-row:hover .bx-fill { background: #ff7f0e; }
.bx-label { font-family: monospace; text-align: center; background: #f0f0f0; border-radius: 3px; color: #222; }
.bx-track { background: #eef2f7; height: 1.1em; border-radius: 3px; overflow: hidden; }
.bx-fill { display: block; height: 100%; background: #1f77b4; }
.bx-p { font-family: monospace; text-align: right; }
.bx-seed { color: #666; font-size: 12px; }
.bx-story { white-space: pre-wrap; background: #fafafa; border: 1px solid #ddd; border-radius: 4px;
            padding: 0.6em; min-height: 3em; font-size: 13px; color: #222; }
"""


class BigramExplorer(anywidget.AnyWidget):
    """Next-character distributions of a bigram table, with a temperature slider and a story sampler."""

    _esm = DOM_JS + _ESM
    _css = _CSS
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # printable names: ◆, ␣, ⏎, a, b, ...
    chars = traitlets.List(traitlets.Unicode()).tag(sync=True)  # what each token writes ("" for ◆)
    probs = traitlets.List(traitlets.List(traitlets.Float())).tag(sync=True)  # (V, V), rows sum to ~1
    selected = traitlets.Int(BOUNDARY).tag(sync=True)
    temperature = traitlets.Float(1.0).tag(sync=True)
    top_k = traitlets.Int(15).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    max_len = traitlets.Int(400).tag(sync=True)

    def __init__(self, probs: torch.Tensor, vocab: Vocab, start: str | None = None, **kwargs) -> None:
        V = len(vocab)
        if tuple(probs.shape) != (V, V):
            raise ValueError(f"probs should have shape (V, V) = {(V, V)}, got {tuple(probs.shape)}")
        table = [[round(p, 5) for p in row] for row in probs.double().tolist()]
        selected = vocab.stoi[start] if start is not None else BOUNDARY
        super().__init__(
            labels=[vocab.label(i) for i in range(V)],
            chars=["", *vocab.chars],
            probs=table,
            selected=selected,
            **kwargs,
        )

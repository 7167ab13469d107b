// DenoiseViewer's front end (storylib/widgets/denoise.py). storylib.widgets.front_end puts
// js/_dom.js (el, greetKernel, askBox) before it: anywidget loads one module from a blob: URL, which cannot import another file.


function render({ model, el: host }) {
  const root = el("div", { class: "dn", "data-testid": "denoise-viewer", "data-kernel": "false" }, host);
  const bar = el("div", { class: "dn-row" }, root);
  el("span", { class: "dn-label" }, bar, "caption ");
  const pick = el("select", { class: "dn-pick", "data-testid": "dn-select", "aria-label": "caption" }, bar);
  const caption = el("div", { class: "dn-caption", "data-testid": "dn-caption" }, root);
  const strip = el("div", { class: "dn-strip", "data-testid": "dn-strip" }, root);
  const sliderRow = el("div", { class: "dn-row" }, root);
  const slider = el("input", { type: "range", min: "0", max: "0", step: "1", class: "dn-slider",
                               "data-testid": "dn-slider", "aria-label": "denoising step" }, sliderRow);
  const tLabel = el("span", { class: "dn-t", "data-testid": "dn-t" }, sliderRow);
  const big = el("img", { class: "dn-big", "data-testid": "dn-big", alt: "" }, root);
  const settings = el("div", { class: "dn-settings" }, root);

  const askRow = el("div", { class: "dn-row" }, root);
  const box = el("input", { type: "text", class: "dn-box", "data-testid": "dn-box", "aria-label": "your caption",
                            placeholder: "a green bird on a house at night" }, askRow);
  const draw = el("button", { type: "button", "data-testid": "dn-draw" }, askRow, "Draw");
  const status = el("div", { class: "dn-status", "data-testid": "dn-status" }, root);
  const staticNote = el("div", { class: "dn-static", "data-testid": "dn-static-note" }, root);
  staticNote.append("Live in JupyterLab: run ");
  el("code", {}, staticNote, "make start");
  staticNote.append(" and open this notebook to draw your own captions. Here: captions drawn when the book was built.");

  let kernel = false;  // true once the kernel answered this page's hello

  function current() {
    const examples = model.get("examples");
    return examples[model.get("selected")] || examples[0];
  }

  function frameIndex(ex) {
    const f = model.get("frame"), n = ex.frames.length;
    return f < 0 || f >= n ? n - 1 : f;
  }

  function src(png) { return "data:image/png;base64," + png; }

  function drawPicker() {
    pick.replaceChildren();
    model.get("examples").forEach((ex, i) => {
      el("option", { value: String(i) }, pick, ex.caption);
    });
    pick.value = String(model.get("selected"));
  }

  function drawExample() {
    const ex = current();
    strip.replaceChildren();
    if (!ex) {
      caption.textContent = "no caption yet";
      big.removeAttribute("src");
      return;
    }
    caption.textContent = ex.text && ex.text !== ex.caption ? `${ex.text} → "${ex.caption}"` : `"${ex.caption}"`;
    const at = frameIndex(ex);
    ex.frames.forEach((fr, i) => {
      const cell = el("button", { type: "button", class: "dn-frame" + (i === at ? " dn-on" : ""),
                                  "data-testid": "dn-frame", title: `t = ${fr.t.toFixed(2)}` }, strip);
      el("img", { src: src(fr.png), alt: `t = ${fr.t.toFixed(2)}` }, cell);
      el("div", { class: "dn-tcap" }, cell, `t = ${fr.t.toFixed(2)}`);
      cell.addEventListener("click", () => setFrame(i));
    });
    slider.max = String(ex.frames.length - 1);
    slider.value = String(at);
    const fr = ex.frames[at];
    tLabel.textContent = `t = ${fr.t.toFixed(2)}` + (fr.t === 1 ? " (pure noise)" : fr.t === 0 ? " (the picture)" : "");
    big.src = src(fr.png);
    big.alt = `"${ex.caption}" at t = ${fr.t.toFixed(2)}`;
    const s = model.get("settings");
    settings.textContent = `${s.steps} Euler steps, guidance ${s.guidance}, seed ${s.seed}`;
  }

  function setFrame(i) {
    model.set("frame", i);
    model.save_changes();
    drawExample();
  }

  function drawState() {
    const st = model.get("status");
    root.dataset.kernel = String(kernel);
    root.dataset.status = st;
    staticNote.style.display = kernel ? "none" : "";
    box.disabled = !kernel;
    draw.disabled = !kernel || st === "drawing";
    status.textContent = st === "drawing" ? "drawing…" : model.get("notice");
  }

  pick.addEventListener("change", () => {
    model.set("selected", parseInt(pick.value, 10) || 0);
    model.set("frame", -1);
    model.save_changes();
    drawExample();
  });
  slider.addEventListener("input", () => setFrame(parseInt(slider.value, 10) || 0));
  askBox(model, box, draw, "draw");
  model.on("change:examples", () => { drawPicker(); drawExample(); });
  model.on("change:selected", () => { pick.value = String(model.get("selected")); drawExample(); });
  model.on("change:frame", drawExample);
  for (const t of ["status", "notice"]) model.on(`change:${t}`, drawState);
  drawPicker();
  drawExample();
  drawState();
  greetKernel(model, () => { kernel = true; drawState(); });
}
export default { render };

// ReplyCompare's front end (storylib/widgets/compare.py). storylib.widgets.front_end puts
// js/_dom.js (el, greetKernel, askBox) before it: anywidget loads one module from a blob: URL, which cannot import another file.


function render({ model, el: host }) {
  const root = el("div", { class: "rc", "data-testid": "reply-compare", "data-kernel": "false" }, host);
  const bar = el("div", { class: "rc-row" }, root);
  el("span", { class: "rc-label" }, bar, "request ");
  const pick = el("select", { class: "rc-pick", "data-testid": "rc-select", "aria-label": "request" }, bar);
  const request = el("div", { class: "rc-request", "data-testid": "rc-request" }, root);
  const columns = el("div", { class: "rc-columns" }, root);

  const askRow = el("div", { class: "rc-row" }, root);
  const box = el("input", { type: "text", class: "rc-box", "data-testid": "rc-box", "aria-label": "your request",
                            placeholder: "Write a story about a dog named Max who finds a red ball." }, askRow);
  const ask = el("button", { type: "button", "data-testid": "rc-ask" }, askRow, "Ask every model");
  const status = el("div", { class: "rc-status", "data-testid": "rc-status" }, root);
  const staticNote = el("div", { class: "rc-static", "data-testid": "rc-static-note" }, root);
  staticNote.append("Live in JupyterLab: run ");
  el("code", {}, staticNote, "make start");
  staticNote.append(" and open this notebook to ask your own. Here: replies recorded when the book was built.");

  let kernel = false;  // true once the kernel answered this page's hello

  function drawPicker() {
    pick.replaceChildren();
    model.get("examples").forEach((ex, i) => {
      const title = ex.request.length > 70 ? ex.request.slice(0, 69) + "…" : ex.request;
      el("option", { value: String(i) }, pick, title);
    });
    pick.value = String(model.get("selected"));
  }

  function drawExample() {
    const examples = model.get("examples"), names = model.get("models");
    const ex = examples[model.get("selected")] || examples[0];
    columns.replaceChildren();
    request.textContent = ex ? ex.request : "no request yet";
    if (!ex) return;
    names.forEach((name, i) => {
      const col = el("div", { class: "rc-column", "data-testid": "rc-column" }, columns);
      el("div", { class: "rc-title" }, col, name);
      const reply = ex.replies[i] || { text: "", notes: [] };
      el("div", { class: "rc-reply", "data-testid": "rc-reply" }, col, reply.text || "(an empty reply)");
      if (reply.notes.length) {
        const notes = el("ul", { class: "rc-notes" }, col);
        for (const n of reply.notes) el("li", {}, notes, n);
      }
    });
  }

  function drawState() {
    const st = model.get("status");
    root.dataset.kernel = String(kernel);
    root.dataset.status = st;
    staticNote.style.display = kernel ? "none" : "";
    box.disabled = !kernel;
    ask.disabled = !kernel || st === "answering";
    status.textContent = st === "answering" ? "every model is writing…" : model.get("notice");
  }

  pick.addEventListener("change", () => {
    model.set("selected", parseInt(pick.value, 10) || 0);
    model.save_changes();
    drawExample();
  });
  askBox(model, box, ask, "ask");
  model.on("change:examples", () => { drawPicker(); drawExample(); });
  model.on("change:selected", () => { pick.value = String(model.get("selected")); drawExample(); });
  for (const t of ["status", "notice"]) model.on(`change:${t}`, drawState);
  drawPicker();
  drawExample();
  drawState();
  greetKernel(model, () => { kernel = true; drawState(); });
}
export default { render };

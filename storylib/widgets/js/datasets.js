// LossMaskView's front end (storylib/widgets/datasets.py). storylib.widgets.front_end puts
// js/_dom.js (el) before it: anywidget loads one module from a blob: URL, which cannot import another file.

function render({ model, el: host }) {
  const root = el("div", { class: "lm-root", "data-testid": "loss-mask-view" }, host);
  const examples = model.get("examples");   // [{title, labels, ids, mask, parts}]
  const bar = el("div", { class: "lm-bar" }, root);
  const pick = el("select", { "data-testid": "lm-select" }, bar);
  examples.forEach((ex, i) => el("option", { value: String(i) }, pick, ex.title));
  const idsLabel = el("label", {}, bar, " show ids ");
  const idsBox = el("input", { type: "checkbox", "data-testid": "lm-ids" }, idsLabel);
  const onlyLabel = el("label", {}, bar, " learned only ");
  const onlyBox = el("input", { type: "checkbox", "data-testid": "lm-only" }, onlyLabel);
  const legend = el("div", { class: "lm-legend" }, root);
  for (const [part, name] of [["special", "special token"], ["system", "system"], ["user", "user"],
                              ["assistant", "assistant"]]) {
    el("span", { class: `lm-chip lm-${part}` }, legend, name);
  }
  el("span", { class: "lm-chip lm-learn lm-assistant" }, legend, "loss mask = 1");
  const summary = el("div", { class: "lm-summary", "data-testid": "lm-summary" }, root);
  const box = el("div", { class: "lm-tokens" }, root);
  const readout = el("div", { class: "lm-readout", "data-testid": "lm-readout" }, root,
                     "hover over a token to see its id and mask");

  function update() {
    const ex = examples[parseInt(pick.value, 10) || 0];
    const showIds = idsBox.checked, only = onlyBox.checked;
    box.replaceChildren();
    const learned = ex.mask.reduce((a, b) => a + b, 0);
    summary.textContent = `${ex.ids.length} tokens, ${learned} with loss mask 1 ` +
      `(${(100 * learned / ex.ids.length).toFixed(0)}%): the model is trained to predict only those`;
    ex.ids.forEach((id, i) => {
      const cls = `lm-chip lm-${ex.parts[i]}` + (ex.mask[i] ? " lm-learn" : "") +
        (only && !ex.mask[i] ? " lm-dim" : "");
      const chip = el("span", { class: cls, "data-i": String(i) }, box, showIds ? String(id) : ex.labels[i]);
      chip.addEventListener("mouseenter", () => {
        readout.textContent = `position ${i}: id ${id}, “${ex.labels[i]}”, ${ex.parts[i]}, loss mask ${ex.mask[i]}` +
          (ex.mask[i] ? " (a target the model learns)" : " (context only, never a target)");
      });
    });
  }
  pick.addEventListener("change", update);
  idsBox.addEventListener("change", update);
  onlyBox.addEventListener("change", update);
  update();
}
export default { render };

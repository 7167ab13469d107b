// StrideExplorer's front end (storylib/widgets/strides.py). storylib.widgets.front_end puts js/_dom.js (el) before
// it. All the stride arithmetic happens here, so the widget works in the static book with no kernel; it is the
// arithmetic of storylib/strided.py (tests/test_strides_widget.py runs it under node against torch).

// ---------------------------------------------------------------------------------------------- stride arithmetic

const prod = (xs) => xs.reduce((a, b) => a * b, 1);

function contiguousStrides(shape) {
  const s = shape.map(() => 1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * Math.max(shape[i + 1], 1);
  return s;
}

function normDim(d, n) {
  if (!Number.isInteger(d) || d < -n || d >= n) throw new Error(`dimension ${d} is out of range for ${n} dimensions`);
  return d < 0 ? d + n : d;
}

function inferShape(shape, numel) {
  if (shape.filter((s) => s === -1).length > 1) throw new Error("only one dimension can be -1");
  const rest = prod(shape.filter((s) => s !== -1));
  const out = shape.map((s) => (s === -1 ? (rest ? numel / rest : NaN) : s));
  if (out.some((s) => !Number.isInteger(s) || s < 0) || prod(out) !== numel) {
    throw new Error(`shape (${shape.join(", ")}) is invalid for ${numel} elements`);
  }
  return out;
}

// PyTorch's rule for a view (ATen's computeStride; storylib.strided.view_strides): null when no strides can.
function viewStrides(shape, strides, newShape) {
  if (shape.length === 0) return newShape.map(() => 1);
  if (prod(shape) === 0) {  // no elements: any strides read them all
    return shape.join() === newShape.join() ? [...strides] : contiguousStrides(newShape);
  }
  const out = newShape.map(() => 0);
  let viewD = newShape.length - 1, base = strides[strides.length - 1], tensorNumel = 1, viewNumel = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    tensorNumel *= shape[d];
    if (d === 0 || (shape[d - 1] !== 1 && strides[d - 1] !== tensorNumel * base)) {
      while (viewD >= 0 && (viewNumel < tensorNumel || newShape[viewD] === 1)) {
        out[viewD] = viewNumel * base;
        viewNumel *= newShape[viewD];
        viewD--;
      }
      if (viewNumel !== tensorNumel) return null;
      if (d > 0) { base = strides[d - 1]; tensorNumel = 1; viewNumel = 1; }
    }
  }
  return viewD === -1 ? out : null;
}

// torch.Tensor.expand (storylib.strided.expand_strides): right to left; stretched size-1 dims get stride 0
function expandStrides(shape, strides, newShape) {
  const extra = newShape.length - shape.length;
  if (extra < 0) throw new Error(`cannot expand ${shape.length} dimensions to ${newShape.length}`);
  const sizes = newShape.map(() => 0), out = newShape.map(() => 0);
  for (let k = newShape.length - 1; k >= 0; k--) {
    let old = 1, stride = k + 1 < newShape.length ? sizes[k + 1] * out[k + 1] : 1;
    if (k >= extra) { old = shape[k - extra]; stride = strides[k - extra]; }
    let size = newShape[k];
    if (size === -1) {
      if (k < extra) throw new Error(`a new dimension cannot be -1 (dimension ${k})`);
      size = old;
    }
    if (size !== old) {
      if (old !== 1) throw new Error(`cannot expand size ${old} to ${size}: only size-1 dimensions stretch`);
      stride = 0;
    }
    sizes[k] = size; out[k] = stride;
  }
  return { shape: sizes, strides: out };
}

function isContiguous(t) {
  if (prod(t.shape) === 0) return true;
  let expected = 1;
  for (let k = t.shape.length - 1; k >= 0; k--) {
    if (t.shape[k] !== 1) {
      if (t.strides[k] !== expected) return false;
      expected *= t.shape[k];
    }
  }
  return true;
}

// Every index in row-major order, and the buffer position it reads.
function positions(t) {
  const out = [];
  const walk = (d, at) => {
    if (d === t.shape.length) { out.push(at); return; }
    for (let i = 0; i < t.shape[d]; i++) walk(d + 1, at + i * t.strides[d]);
  };
  walk(0, t.offset);
  return out;
}

function arange(shape) {
  return { buffer: Array.from({ length: prod(shape) }, (_, i) => i), shape: [...shape],
           strides: contiguousStrides(shape), offset: 0, copied: false };
}

// One op on a tensor {buffer, shape, strides, offset}: a new tensor (a view shares the buffer), or an Error thrown.
function applyOp(t, op) {
  const n = t.shape.length, view = (shape, strides, offset) => ({ ...t, shape, strides, offset, copied: false });
  switch (op.op) {
    case "transpose": {
      const [a, b] = op.dims.map((d) => normDim(d, n));
      const shape = [...t.shape], strides = [...t.strides];
      [shape[a], shape[b]] = [shape[b], shape[a]];
      [strides[a], strides[b]] = [strides[b], strides[a]];
      return view(shape, strides, t.offset);
    }
    case "permute": {
      const dims = op.dims.map((d) => normDim(d, n));
      if ([...dims].sort((a, b) => a - b).join() !== t.shape.map((_, i) => i).join()) throw new Error("permute needs each dimension once");
      return view(dims.map((d) => t.shape[d]), dims.map((d) => t.strides[d]), t.offset);
    }
    case "select": {
      const d = normDim(op.dim, n);
      if (n < 1 || op.index < -t.shape[d] || op.index >= t.shape[d]) throw new Error(`index ${op.index} is out of range`);
      const i = op.index < 0 ? op.index + t.shape[d] : op.index;
      return view(t.shape.filter((_, k) => k !== d), t.strides.filter((_, k) => k !== d), t.offset + i * t.strides[d]);
    }
    case "slice": {  // Python's slice(start, stop, step).indices(size), step > 0
      const d = normDim(op.dim, n), size = t.shape[d], step = op.step ?? 1;
      if (!(step > 0)) throw new Error("slice step must be positive");
      const clamp = (v, dflt) => (v === null || v === undefined ? dflt : Math.min(Math.max(v < 0 ? v + size : v, 0), size));
      const start = clamp(op.start, 0), stop = clamp(op.stop, size);
      const shape = [...t.shape], strides = [...t.strides];
      shape[d] = Math.max(0, Math.ceil((stop - start) / step));
      strides[d] *= step;
      return view(shape, strides, t.offset + start * t.strides[d]);
    }
    case "expand": {
      const e = expandStrides(t.shape, t.strides, op.shape);
      return view(e.shape, e.strides, t.offset);
    }
    case "view":
    case "reshape": {
      const shape = inferShape(op.shape, prod(t.shape));
      const strides = viewStrides(t.shape, t.strides, shape);
      if (strides) return view(shape, strides, t.offset);
      if (op.op === "view") {
        throw new Error(`view (${shape.join(", ")}) is impossible: a new dimension would span a gap in memory ` +
                        "(reshape copies)");
      }
      return { ...applyOp(t, { op: "contiguous" }), shape, strides: contiguousStrides(shape) };
    }
    case "contiguous":
      if (isContiguous(t)) return t;
      return { buffer: positions(t).map((p) => t.buffer[p]), shape: [...t.shape], strides: contiguousStrides(t.shape),
               offset: 0, copied: true };
    default:
      throw new Error(`unknown op ${op.op}`);
  }
}

// --------------------------------------------------------------------------------------------------- the widget

const OPS = {
  transpose: { args: "0, 1", help: "dim0, dim1" },
  permute: { args: "1, 0", help: "the dimensions in their new order" },
  slice: { args: "0, 0, 3, 2", help: "dim, start, stop, step" },
  select: { args: "0, 1", help: "dim, index" },
  expand: { args: "2, -1, -1", help: "new shape (-1 keeps a size)" },
  view: { args: "-1", help: "new shape (-1: inferred)" },
  reshape: { args: "-1", help: "new shape (-1: inferred)" },
  contiguous: { args: "", help: "no arguments" },
};

function parseInts(text) {
  const parts = text.split(/[\s,()[\]]+/).filter((p) => p !== "");
  const xs = parts.map((p) => (p === "None" || p === ":" ? null : Number(p)));
  if (xs.some((x) => x !== null && !Number.isInteger(x))) throw new Error(`not a list of integers: ${text}`);
  return xs;
}

function makeOp(kind, text) {
  const xs = parseInts(text);
  if (kind === "transpose") return { op: kind, dims: xs.slice(0, 2) };
  if (kind === "permute") return { op: kind, dims: xs };
  if (kind === "select") return { op: kind, dim: xs[0], index: xs[1] };
  if (kind === "slice") return { op: kind, dim: xs[0], start: xs[1] ?? null, stop: xs[2] ?? null, step: xs[3] ?? 1 };
  if (kind === "contiguous") return { op: kind };
  return { op: kind, shape: xs };
}

function opLabel(op) {
  if (op.op === "transpose" || op.op === "permute") return `${op.op}(${op.dims.join(", ")})`;
  if (op.op === "select") return `select(${op.dim}, ${op.index})`;
  if (op.op === "slice") {
    const f = (v) => (v === null || v === undefined ? "" : v);
    return `[${op.dim > 0 ? ":, ".repeat(op.dim) : ""}${f(op.start)}:${f(op.stop)}:${op.step ?? 1}]`;
  }
  if (op.op === "contiguous") return "contiguous()";
  return `${op.op}(${op.shape.join(", ")})`;
}

const hue = (k, n) => `hsl(${Math.round((300 * k) / Math.max(n, 1))}, 75%, 80%)`;

function render({ model, el: host }) {
  const root = el("div", { class: "sx", "data-testid": "stride-explorer" }, host);
  const top = el("div", { class: "sx-controls" }, root);
  const startLabel = el("label", {}, top, "start: arange, shape ");
  const startBox = el("input", { type: "text", size: "8", "data-testid": "stride-start", "aria-label": "start shape" },
                      startLabel);
  const resetButton = el("button", { type: "button", "data-testid": "stride-reset" }, top, "reset");
  const undoButton = el("button", { type: "button", "data-testid": "stride-undo" }, top, "undo");

  const opRow = el("div", { class: "sx-controls" }, root);
  const opSelect = el("select", { "data-testid": "stride-op", "aria-label": "operation" }, opRow);
  for (const k of Object.keys(OPS)) el("option", { value: k }, opSelect, k);
  const argBox = el("input", { type: "text", size: "14", "data-testid": "stride-args", "aria-label": "arguments" },
                    opRow);
  const help = el("span", { class: "sx-help" }, opRow);
  const applyButton = el("button", { type: "button", "data-testid": "stride-apply" }, opRow, "apply");
  const error = el("div", { class: "sx-error", "data-testid": "stride-error" }, root);

  const history = el("div", { class: "sx-history", "data-testid": "stride-history" }, root);
  const numbers = el("div", { class: "sx-numbers", "data-testid": "stride-numbers" }, root);
  const gridTitle = el("div", { class: "sx-title" }, root);
  const grid = el("div", { class: "sx-tensor", "data-testid": "stride-tensor" }, root);
  const bufTitle = el("div", { class: "sx-title" }, root);
  const buffer = el("div", { class: "sx-buffer", "data-testid": "stride-buffer" }, root);

  function current() {
    let t = arange(model.get("shape"));
    for (const op of model.get("ops")) t = applyOp(t, op);
    return t;
  }

  function cell(parent, text, colour, title, cls) {
    const c = el("span", { class: cls, title }, parent, text);
    if (colour) c.style.background = colour;
    return c;
  }

  function draw() {
    const shape = model.get("shape"), ops = model.get("ops");
    startBox.value = shape.join(", ");
    history.textContent = [`arange(${prod(shape)}).view(${shape.join(", ")})`, ...ops.map(opLabel)].join(" → ");
    undoButton.disabled = ops.length === 0;
    let t;
    try {
      t = current();
    } catch (e) {
      error.textContent = String(e.message || e);
      return;
    }
    const pos = positions(t), n = pos.length;
    numbers.replaceChildren();
    const stat = (k, v) => { const s = el("span", { class: "sx-stat" }, numbers); el("b", {}, s, k); s.append(` ${v}`); };
    stat("shape", `(${t.shape.join(", ")})`);
    stat("strides", `(${t.strides.join(", ")})`);
    stat("offset", t.offset);
    stat("contiguous", isContiguous(t) ? "yes" : "no");
    if (t.copied) stat("buffer", "a new copy");

    // the tensor: 2-D grids of its last two dimensions, one per index of the ones before
    gridTitle.textContent = t.copied
      ? "the tensor: its values, now in a new buffer in row-major order"
      : "the tensor: each element's value is the buffer position it reads (the buffer holds 0, 1, 2, ...)";
    grid.replaceChildren();
    const rows = t.shape.length >= 2 ? t.shape[t.shape.length - 2] : 1;
    const cols = t.shape.length >= 1 ? t.shape[t.shape.length - 1] : 1;
    const per = rows * cols, lead = t.shape.slice(0, Math.max(t.shape.length - 2, 0));
    for (let b = 0; b * per < Math.max(n, 1) && b < 64; b++) {
      const block = el("div", { class: "sx-block" }, grid);
      if (lead.length) {
        const idx = []; let r = b;
        for (let k = lead.length - 1; k >= 0; k--) { idx.unshift(r % lead[k]); r = Math.floor(r / lead[k]); }
        el("div", { class: "sx-block-label" }, block, `[${idx.join(", ")}, :, :]`);
      }
      const g = el("div", { class: "sx-grid" }, block);
      g.style.gridTemplateColumns = `repeat(${cols}, 2.4em)`;
      for (let k = b * per; k < Math.min((b + 1) * per, n); k++) {
        cell(g, String(t.buffer[pos[k]]), hue(k, n), `element ${k} (row-major) reads buffer[${pos[k]}]`, "sx-cell");
      }
    }

    // the buffer: each position coloured by the element that reads it; grey when no element does
    const readers = new Map();
    pos.forEach((p, k) => readers.set(p, [...(readers.get(p) || []), k]));
    bufTitle.textContent = `the buffer (${t.buffer.length} numbers${t.copied ? ", a copy" : ""}): ` +
      "coloured by the element that reads each position";
    buffer.replaceChildren();
    t.buffer.forEach((v, p) => {
      const r = readers.get(p);
      const c = cell(buffer, String(v), r ? hue(r[0], n) : null,
                     r ? `buffer[${p}] is read by element(s) ${r.join(", ")}` : `buffer[${p}]: no element reads it`,
                     r ? "sx-cell" : "sx-cell sx-unread");
      if (r && r.length > 1) el("sup", {}, c, `×${r.length}`);
    });
    error.textContent = "";
  }

  function setHelp() {
    help.textContent = OPS[opSelect.value].help;
    argBox.value = OPS[opSelect.value].args;
    argBox.disabled = opSelect.value === "contiguous";
  }

  applyButton.addEventListener("click", () => {
    try {
      const op = makeOp(opSelect.value, argBox.value);
      applyOp(current(), op);  // throws when the op is not legal here: say why, keep the ops
      model.set("ops", [...model.get("ops"), op]);
      model.save_changes();
    } catch (e) {
      error.textContent = String(e.message || e);
    }
  });
  undoButton.addEventListener("click", () => { model.set("ops", model.get("ops").slice(0, -1)); model.save_changes(); });
  resetButton.addEventListener("click", () => {
    try {
      const shape = parseInts(startBox.value);
      if (!shape.length || shape.some((s) => s === null || s < 1) || prod(shape) > 256) {
        throw new Error("a start shape of sizes >= 1 and at most 256 elements");
      }
      model.set("shape", shape);
      model.set("ops", []);
      model.save_changes();
    } catch (e) {
      error.textContent = String(e.message || e);
    }
  });
  argBox.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); applyButton.click(); } });
  opSelect.addEventListener("change", setHelp);
  model.on("change:ops", draw);
  model.on("change:shape", draw);
  setHelp();
  draw();
}

export default { render };

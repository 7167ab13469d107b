// FloatExplorer's front end (storylib/widgets/floats.py). storylib.widgets.front_end puts js/_dom.js (el) before it.
//
// The first part is pure functions with no DOM (the package tests run them under node against storylib.precision):
// a format is (exponent bits e, mantissa bits m, fn), bit patterns are Numbers (integers below 2**32, exact in a
// double; no 32-bit bitwise operators, fp32's sign is bit 31), values are doubles. Every format here fits inside
// float64, so decoding is exact and encoding can round once, from the double itself.

const F64 = new DataView(new ArrayBuffer(8));

// 2**k exactly, for -1074 <= k <= 1023 (built from its bits: Math.pow need not be exact).
function pow2(k) {
  if (k < -1022) return pow2(k + 64) * pow2(-64);  // a float64 subnormal: an exact product of two normal numbers
  F64.setUint32(0, (k + 1023) * 2 ** 20);
  F64.setUint32(4, 0);
  return F64.getFloat64(0);
}

// The exponent k of a finite a > 0: 2**k <= a < 2**(k + 1), read from a's bits (Math.log2 can be off by one).
function exponentOf(a) {
  F64.setFloat64(0, a);
  const field = (F64.getUint32(0) >>> 20) & 0x7ff;
  return field === 0 ? exponentOf(a * pow2(64)) - 64 : field - 1023;
}

// q rounded to the nearest integer, ties to even (q >= 0, below 2**53).
function roundHalfEven(q) {
  const f = Math.floor(q), d = q - f;
  if (d !== 0.5) return d < 0.5 ? f : f + 1;
  return f % 2 === 0 ? f : f + 1;
}

// What defines a format: as storylib.precision.format_info.
function formatInfo(e, m, fn) {
  const bias = 2 ** (e - 1) - 1;
  const top = fn ? 2 ** e - 1 : 2 ** e - 2;  // the largest exponent field of finite numbers
  const topMantissa = fn ? 2 ** m - 2 : 2 ** m - 1;  // fn: all ones there is NaN
  return {
    bits: 1 + e + m, bias, max: (1 + topMantissa / 2 ** m) * pow2(top - bias),
    minNormal: pow2(1 - bias), minSubnormal: pow2(1 - bias - m), eps: pow2(-m),
  };
}

// A bit pattern -> {sign, E, M}: its three fields.
function fields(bits, e, m) {
  const sign = Math.floor(bits / 2 ** (e + m));
  const rest = bits - sign * 2 ** (e + m);
  const E = Math.floor(rest / 2 ** m);
  return { sign, E, M: rest - E * 2 ** m };
}

// The value of a bit pattern: as storylib.precision.decode.
function decodeBits(bits, e, m, fn) {
  const { sign, E, M } = fields(bits, e, m);
  const s = sign ? -1 : 1, bias = 2 ** (e - 1) - 1;
  if (E === 2 ** e - 1) {
    if (fn) { if (M === 2 ** m - 1) return NaN; }
    else return M === 0 ? s * Infinity : NaN;
  }
  if (E === 0) return s * (M * pow2(1 - bias - m));  // subnormal (M = 0: a signed zero)
  return s * (1 + M / 2 ** m) * pow2(E - bias);
}

// The bit pattern of the format's value nearest to x, ties to even: as storylib.precision.encode. Too large: inf,
// or in an fn format the largest value (also for inf). -0 keeps its sign. NaN: a NaN pattern.
function encodeValue(x, e, m, fn) {
  const n = e + m, emin = 2 - 2 ** (e - 1);
  const signBit = x < 0 || Object.is(x, -0) ? 2 ** n : 0;
  const infMag = (2 ** e - 1) * 2 ** m;
  if (Number.isNaN(x)) return infMag + (fn ? 2 ** m - 1 : 2 ** (m - 1));
  const largest = fn ? infMag + 2 ** m - 2 : infMag;  // where too-large values go
  const a = Math.abs(x);
  if (a === Infinity) return signBit + largest;
  const k = a > 0 ? Math.max(exponentOf(a), emin) : emin;  // 0 sits with the subnormals
  const q = roundHalfEven(a * pow2(m - k));  // a in units of the spacing 2**(k - m) there: exact
  // E * 2**m + M with E = k - emin + 1 and M = q - 2**m; a subnormal has E = 0, M = q; a carry moves into E
  return signBit + Math.min((k - emin) * 2 ** m + q, largest);
}

// The next pattern up (dir = +1) or down (-1) in the order of the values (+0 and -0 count as one point): the
// neighbour of a value. Beyond ±max: ±inf (or NaN in an fn format); beyond ±inf: NaN.
function stepBits(bits, dir, e, m) {
  const n = e + m, { sign } = fields(bits, e, m);
  const mag = bits - sign * 2 ** n;
  const order = (sign ? -mag : mag) + dir;
  return order < 0 ? 2 ** n - order : order;
}

// What the widget shows for a number typed into a format: the stored value and its pattern, its fields, the
// neighbours below and above the stored value, the spacing there, the rounding error, and a word for its state.
function explain(x, e, m, fn) {
  const info = formatInfo(e, m, fn);
  const bits = encodeValue(x, e, m, fn);
  const value = decodeBits(bits, e, m, fn);
  const { sign, E, M } = fields(bits, e, m);
  const nan = Number.isNaN(value);  // a NaN has no neighbours
  const below = nan ? NaN : decodeBits(stepBits(bits, -1, e, m), e, m, fn);
  const above = nan ? NaN : decodeBits(stepBits(bits, 1, e, m), e, m, fn);
  const finite = Number.isFinite(value);
  const ulp = finite ? pow2(Math.max(E, 1) - info.bias - m) : NaN;  // the spacing of the binade of the value
  const absError = Number.isFinite(x) && finite ? Math.abs(value - x) : NaN;
  const relError = x !== 0 ? absError / Math.abs(x) : (value === 0 ? 0 : NaN);
  let state;
  if (Number.isNaN(x)) state = "nan";
  else if (!Number.isFinite(x)) state = finite ? "saturated" : "infinity";
  else if (!finite) state = "overflow";
  else if (fn && Math.abs(x) >= info.max + pow2(exponentOf(info.max) - m - 1)) state = "saturated";  // past max's tie
  else if (value === 0) state = x === 0 ? "zero" : "underflow";
  else state = E === 0 ? "subnormal" : "normal";
  return { bits, value, sign, E, M, below, above, ulp, absError, relError, state, info };
}

// A typed number: "0.1", "-2.5e-3", "inf", "-Infinity", "nan" -> a double, or null when it is none.
function parseNumber(text) {
  const t = String(text).trim().toLowerCase().replace(/^\+/, "");
  if (/^-?(inf|infinity)$/.test(t)) return t.startsWith("-") ? -Infinity : Infinity;
  if (t === "nan" || t === "-nan") return NaN;
  if (t === "" || !/^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/.test(t)) return null;
  return Number(t);
}

// A double written so that reading it back gives the same double (-0 kept).
function showNumber(v) {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  return Object.is(v, -0) ? "-0" : String(v);
}

const STATES = {
  normal: "a normal number",
  subnormal: "a subnormal number: no hidden bit, fewer significant bits",
  zero: "zero",
  underflow: "underflow: too small for the format, rounded to zero",
  overflow: "overflow: too large for the format, rounded to infinity",
  saturated: "too large: this format has no infinity, it saturates at its largest value",
  infinity: "infinity",
  nan: "NaN, not a number",
};

function render({ model, el: host }) {
  const formats = model.get("formats");
  const root = el("div", { class: "fx", "data-testid": "floats-explorer" }, host);
  const controls = el("div", { class: "fx-controls" }, root);
  const fmtLabel = el("label", {}, controls, "format ");
  const select = el("select", { "data-testid": "floats-format", "aria-label": "format" }, fmtLabel);
  for (const name of Object.keys(formats)) el("option", { value: name }, select, name);
  const numLabel = el("label", {}, controls, " number ");
  const input = el("input", { type: "text", size: "18", "data-testid": "floats-value", "aria-label": "a number",
                              spellcheck: "false" }, numLabel);
  const down = el("button", { type: "button", "data-testid": "floats-down", title: "the next value down" },
                  controls, "◀ down");
  const up = el("button", { type: "button", "data-testid": "floats-up", title: "the next value up" },
                controls, "up ▶");

  const bitsRow = el("div", { class: "fx-bits", "data-testid": "floats-bits" }, root);
  const legend = el("div", { class: "fx-legend" }, root);
  const table = el("table", { class: "fx-table" }, root);
  const line = (label, testid) => {
    const tr = el("tr", {}, table);
    el("th", {}, tr, label);
    return el("td", { "data-testid": testid }, tr);
  };
  const out = {
    value: line("stored value", "floats-stored"), formula: line("= ", "floats-formula"),
    below: line("next value down", "floats-below"), above: line("next value up", "floats-above"),
    ulp: line("spacing here (ulp)", "floats-ulp"), error: line("rounding error", "floats-error"),
    state: line("state", "floats-state"),
  };
  const fmtInfo = el("div", { class: "fx-info", "data-testid": "floats-info" }, root);

  const current = () => formats[model.get("format")] || formats[Object.keys(formats)[0]];
  const setValue = (text) => { model.set("value", text); model.save_changes(); };

  function show() {
    const [e, m, fn] = current();
    select.value = model.get("format");
    if (document.activeElement !== input) input.value = model.get("value");
    const x = parseNumber(model.get("value"));
    input.classList.toggle("fx-bad", x === null);
    root.classList.toggle("fx-invalid", x === null);
    if (x === null) {
      out.state.textContent = "not a number I can read: try 0.1, -3.5e-5, inf or nan";
      return;
    }
    const r = explain(x, e, m, fn);
    bitsRow.replaceChildren();
    const pattern = r.bits.toString(2).padStart(1 + e + m, "0");
    [...pattern].forEach((b, i) => {
      const part = i === 0 ? "sign" : i <= e ? "exp" : "man";
      if (i === 1 || i === 1 + e) el("span", { class: "fx-gap" }, bitsRow, " ");
      const bit = el("span", { class: `fx-bit fx-${part}`, "data-part": part, title: "click to flip this bit" },
                     bitsRow, b);
      bit.addEventListener("click", () => {
        const flipped = r.bits + (b === "1" ? -1 : 1) * 2 ** (e + m - i);
        setValue(showNumber(decodeBits(flipped, e, m, fn)));
      });
    });
    el("span", { class: "fx-hex", "data-testid": "floats-hex" }, bitsRow,
       "  0x" + r.bits.toString(16).padStart(Math.ceil((1 + e + m) / 4), "0"));
    legend.replaceChildren();
    el("span", { class: "fx-sign" }, legend, `sign s = ${r.sign}`);
    el("span", { class: "fx-exp" }, legend, `exponent field E = ${r.E} (bias ${r.info.bias})`);
    el("span", { class: "fx-man" }, legend, `mantissa field M = ${r.M}`);

    out.value.textContent = showNumber(r.value);
    const s = r.sign ? "−" : "+";
    if (!Number.isFinite(r.value)) out.formula.textContent = `E all ones: ${showNumber(r.value)}`;
    else if (r.E === 0) out.formula.textContent = `${s}${r.M}/2^${m} × 2^${1 - r.info.bias} (subnormal: E = 0)`;
    else out.formula.textContent = `${s}(1 + ${r.M}/2^${m}) × 2^(${r.E} − ${r.info.bias})`;
    const neighbour = (v) => (Number.isNaN(v) && !Number.isNaN(r.value) ? "none: the next pattern is a NaN" : showNumber(v));
    out.below.textContent = neighbour(r.below);
    out.above.textContent = neighbour(r.above);
    out.ulp.textContent = Number.isFinite(r.ulp) ? `${showNumber(r.ulp)} = 2^${exponentOf(r.ulp)}` : "—";
    out.error.textContent = Number.isFinite(r.absError)
      ? `${r.absError.toPrecision(3)} absolute, ${(r.relError * 100).toPrecision(3)}% relative`
        + (r.state === "normal" ? ` (a normal number is off by at most 2^-${m + 1} = ${(r.info.eps * 50).toPrecision(3)}%)`
          : "")
      : "—";
    out.state.textContent = STATES[r.state];
    root.dataset.state = r.state;
    fmtInfo.textContent = `${model.get("format")}: ${1 + e + m} bits (1 sign, ${e} exponent, ${m} mantissa)`
      + `${fn ? ", no infinities" : ""}; largest ${showNumber(r.info.max)}, smallest normal `
      + `${showNumber(r.info.minNormal)}, smallest subnormal ${showNumber(r.info.minSubnormal)}, epsilon 2^-${m}`;
    down.disabled = Number.isNaN(r.below);
    up.disabled = Number.isNaN(r.above);
    up.onclick = () => setValue(showNumber(r.above));
    down.onclick = () => setValue(showNumber(r.below));
  }

  select.addEventListener("change", () => { model.set("format", select.value); model.save_changes(); });
  input.addEventListener("input", () => setValue(input.value));
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
      ev.preventDefault();
      (ev.key === "ArrowUp" ? up : down).click();
      input.value = model.get("value");
    }
  });
  model.on("change:format", show);
  model.on("change:value", show);
  show();
}

export default { render };

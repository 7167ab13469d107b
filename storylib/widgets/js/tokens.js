// TokenViewer's front end (storylib/widgets/tokens.py). storylib.widgets.front_end puts
// js/_dom.js (el) before it: anywidget loads one module from a blob: URL, which cannot import another file.

// Tokenization in the browser. Pure functions, no DOM: the package tests run this part under node.
// <shared with storylib/web/engine.js>: storylib.web.engine_module puts this part before the browser engine
const UTF8 = new TextEncoder();
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function hexBytes(bytes) { return Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join(" "); }
function hexToBytes(h) {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
  return out;
}

// How a character is shown inside a token (token_label in Python does the same).
const SHOWN = { 0x20: "·", 0x0a: "↵", 0x0d: "␍", 0x09: "⇥", 0x7f: "␡" };
const ESCAPED = new Set([0xa0, 0xad, 0x200b, 0x200c, 0x200d, 0x200e, 0x200f, 0x2028, 0x2029, 0x2060, 0xfeff]);
function visibleChar(ch) {
  const cp = ch.codePointAt(0);
  if (SHOWN[cp] !== undefined) return SHOWN[cp];
  if (cp < 0x20) return String.fromCodePoint(0x2400 + cp);  // control pictures: ␀ ␁ ...
  if ((cp >= 0x80 && cp <= 0x9f) || ESCAPED.has(cp)) return "\\u" + cp.toString(16).padStart(4, "0");
  return ch;
}

// The length of the UTF-8 sequence that byte b starts (0: b cannot start one).
function utf8Len(b) {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}

// A token's bytes as text: whole characters shown (whitespace visible), bytes that do not make a whole
// character in this token grouped as ⟨e2 80⟩.
function tokenLabel(bytes) {
  let out = "", bad = [];
  const flush = () => { if (bad.length) { out += "⟨" + hexBytes(bad) + "⟩"; bad = []; } };
  for (let i = 0; i < bytes.length;) {
    const n = utf8Len(bytes[i]);
    let ch = null;
    if (n && i + n <= bytes.length) {
      try { ch = STRICT_UTF8.decode(bytes.subarray(i, i + n)); } catch { ch = null; }
    }
    if (ch === null) { bad.push(bytes[i]); i += 1; } else { flush(); out += visibleChar(ch); i += n; }
  }
  flush();
  return out;
}

function escapeRegExp(s) { return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&"); }

// spec = {pattern, merges: [a0, b0, a1, b1, ...] (merge i makes id 256 + i), specials: {text: id}}.
// Returns {encode(text) -> ids, tokenBytes(id) -> Uint8Array}: RegexTokenizer.encode(text, "all") in JS.
function compileTokenizer(spec) {
  const K = 1048576;  // pair key a * 2^20 + b (ids stay far below 2^20)
  const rank = new Map(), vocab = [];
  for (let i = 0; i < 256; i++) vocab.push(Uint8Array.of(i));
  const m = spec.merges;
  for (let i = 0; 2 * i < m.length; i++) {
    const a = m[2 * i], b = m[2 * i + 1];
    rank.set(a * K + b, 256 + i);
    const v = new Uint8Array(vocab[a].length + vocab[b].length);
    v.set(vocab[a]);
    v.set(vocab[b], vocab[a].length);
    vocab.push(v);
  }
  const specials = spec.specials || {};
  const specialBytes = new Map(Object.entries(specials).map(([s, id]) => [id, UTF8.encode(s)]));
  const split = spec.pattern ? new RegExp(spec.pattern, "gu") : null;
  // longest first, as Python does, so a special that is a prefix of another never wins by accident
  const names = Object.keys(specials).sort((x, y) => Array.from(y).length - Array.from(x).length);
  const specialRe = names.length ? new RegExp("(" + names.map(escapeRegExp).join("|") + ")", "u") : null;

  // BPE on one chunk: while some pair was learned, merge (everywhere, left to right) the earliest-learned.
  function bpe(bytes) {
    let ids = Array.from(bytes);
    while (ids.length >= 2) {
      let best = Infinity;
      for (let i = 0; i + 1 < ids.length; i++) {
        const r = rank.get(ids[i] * K + ids[i + 1]);
        if (r !== undefined && r < best) best = r;
      }
      if (best === Infinity) break;
      const a = m[2 * (best - 256)], b = m[2 * (best - 256) + 1], out = [];
      for (let i = 0; i < ids.length;) {
        if (i + 1 < ids.length && ids[i] === a && ids[i + 1] === b) { out.push(best); i += 2; }
        else { out.push(ids[i]); i += 1; }
      }
      ids = out;
    }
    return ids;
  }
  let cache = new Map();
  function chunks(text) {
    if (!split) return text ? [text] : [];
    return Array.from(text.matchAll(split), (x) => x[0]);
  }
  function encodeOrdinary(text, out) {
    for (const c of chunks(text)) {
      let ids = cache.get(c);
      if (ids === undefined) {
        ids = bpe(UTF8.encode(c));
        if (cache.size > 20000) cache = new Map();
        cache.set(c, ids);
      }
      for (const id of ids) out.push(id);
    }
    return out;
  }
  function encode(text) {
    if (!specialRe) return encodeOrdinary(text, []);
    const out = [];
    for (const part of text.split(specialRe)) {
      if (Object.prototype.hasOwnProperty.call(specials, part)) out.push(specials[part]);
      else if (part) encodeOrdinary(part, out);
    }
    return out;
  }
  const tokenBytes = (id) => (id < vocab.length ? vocab[id] : specialBytes.get(id));
  return { encode, chunks, tokenBytes };
}
// </shared>

function bytesPerToken(nBytes, nTokens) { return nTokens ? nBytes / nTokens : 0; }

// One id per page load: a reply that carries it was written by a kernel answering *this* page.
const SESSION = (globalThis.__llm101nTokenViewerSession ||= Math.random().toString(36).slice(2, 12));
const N_COLOURS = 5;

function render({ model, el: host }) {
  const info = model.get("row_info");  // [{name, about, live}]
  const live = model.get("live");
  const compiled = {};
  for (const [name, spec] of Object.entries(live)) compiled[name] = compileTokenizer(spec);
  const examples = model.get("examples");
  const liveNames = info.filter((r) => compiled[r.name]).map((r) => r.name);
  const otherNames = info.filter((r) => !compiled[r.name]).map((r) => r.name);
  let kernel = false, asked = 0;

  const root = el("div", { class: "tv", "data-testid": "token-viewer", "data-kernel": "false" }, host);
  // for tests and the curious (devtools): the browser's own split and tokenization, by row name
  root.llm101nTokenize = (name, text) => compiled[name].encode(text);
  root.llm101nSplit = (name, text) => compiled[name].chunks(text);
  const top = el("div", { class: "tv-controls" }, root);
  const input = el("textarea", { class: "tv-text", rows: "3", spellcheck: "false", maxlength: "4000",
                                 "data-testid": "tokens-text", "aria-label": "text to tokenize" }, top);
  const pick = el("select", { "data-testid": "tokens-examples", "aria-label": "example texts" }, top);
  el("option", { value: "" }, pick, "examples…");
  examples.forEach((ex, i) => el("option", { value: String(i) }, pick, ex.label));
  const note = el("div", { class: "tv-note", "data-testid": "tokens-note" }, root);
  for (const n of model.get("notes")) el("div", { class: "tv-skipped", "data-testid": "tokens-skipped" }, root, n);
  const rowsBox = el("div", { class: "tv-rows" }, root);
  const hover = el("div", { class: "tv-hover", "data-testid": "tokens-hover" }, root,
                   "hover over a token to see its id and bytes");

  const rows = {};
  for (const r of info) {
    const row = el("div", { class: "tv-row", "data-testid": "tokens-row", "data-name": r.name }, rowsBox);
    const head = el("div", { class: "tv-head" }, row);
    el("span", { class: "tv-name" }, head, r.name);
    el("span", { class: "tv-about" }, head, r.about + (compiled[r.name] ? " · live in your browser" : ""));
    const stats = el("span", { class: "tv-stats", "data-testid": "tokens-stats" }, head);
    const body = el("div", { class: "tv-body" }, row);
    rows[r.name] = { row, stats, body };
  }

  function showNote() {
    root.dataset.kernel = String(kernel);
    if (kernel) note.textContent = "Live: a Python kernel re-tokenizes every row as you type.";
    else if (!otherNames.length) note.textContent = "Type to re-tokenize: every row is live in your browser.";
    else {
      note.textContent = `Type to re-tokenize: live for ${liveNames.join(", ") || "no row"}; `
        + `${otherNames.join(" / ")} live only with a running kernel (pick an example to see them).`;
    }
  }

  // Where a row's tokens come from, best first: Python for exactly this text (the kernel, or the
  // tokenization saved with the page), the browser (live rows), a saved example, nothing.
  function rowTokens(name, text) {
    const res = model.get("result");
    if (res && res.text === text && res.rows && res.rows[name]) {
      const r = res.rows[name];
      if (r.error) return { source: "python", error: r.error };
      return { source: "python", tokens: r.tokens.map(([id, h]) => [id, hexToBytes(h)]) };
    }
    if (compiled[name]) {
      const c = compiled[name];
      return { source: "browser", tokens: c.encode(text).map((id) => [id, c.tokenBytes(id)]) };
    }
    const ex = examples.find((e) => e.text === text);
    if (ex && ex.rows[name]) {
      if (ex.rows[name].error) return { source: "example", error: ex.rows[name].error };
      return { source: "example", tokens: ex.rows[name].tokens.map(([id, h]) => [id, hexToBytes(h)]) };
    }
    return { source: "none" };
  }

  function draw() {
    const text = model.get("text");
    const nBytes = UTF8.encode(text).length;
    const exIndex = examples.findIndex((e) => e.text === text);
    pick.value = exIndex >= 0 ? String(exIndex) : "";
    for (const r of info) {
      const { row, stats, body } = rows[r.name];
      const got = rowTokens(r.name, text);
      row.dataset.source = got.source;
      delete row.dataset.jsAgrees;
      if (got.source === "python" && compiled[r.name] && got.tokens) {  // self-check of the JS tokenizer
        const js = compiled[r.name].encode(text).join(",");
        row.dataset.jsAgrees = String(js === got.tokens.map((t) => t[0]).join(","));
        if (row.dataset.jsAgrees !== "true") console.warn(`TokenViewer: browser and Python disagree on ${r.name}`);
      }
      if (got.source === "none") {
        row.classList.add("tv-stale");
        if (!kernel || !row.dataset.ids) {
          row.dataset.ids = "";
          stats.textContent = "";
          body.replaceChildren();
          el("span", { class: "tv-missing" }, body,
             kernel ? "waiting for the kernel…" : "needs a running Python kernel — pick an example above");
        }
        continue;
      }
      row.classList.remove("tv-stale");
      body.replaceChildren();
      if (got.error) {
        row.dataset.ids = "";
        stats.textContent = "";
        el("span", { class: "tv-error" }, body, got.error);
        continue;
      }
      const toks = got.tokens;
      row.dataset.ids = toks.map((t) => t[0]).join(",");
      const bpt = bytesPerToken(nBytes, toks.length);
      stats.dataset.n = String(toks.length);
      stats.dataset.bpt = String(bpt);
      stats.textContent = `${toks.length} tokens · ${toks.length ? bpt.toFixed(2) : "–"} bytes/token`;
      toks.forEach(([id, bytes], k) => {
        const span = el("span", { class: `tv-tok tv-c${k % N_COLOURS}`, "data-id": String(id),
                                  title: `id ${id} · bytes ${hexBytes(bytes)}` }, body, tokenLabel(bytes));
        span.dataset.k = String(k);
        if (bytes.length && bytes[bytes.length - 1] === 0x0a) el("br", {}, body);
      });
    }
    showNote();
  }

  function ask() {  // tell a kernel (if any) to recompute; in the static page nothing is sent
    model.set("request", `${SESSION}:${++asked}`);
    model.save_changes();
  }

  rowsBox.addEventListener("mouseover", (ev) => {
    const t = ev.target.closest && ev.target.closest(".tv-tok");
    if (!t) return;
    const name = t.closest(".tv-row").dataset.name;
    hover.textContent = `${name}: token ${Number(t.dataset.k) + 1}, id ${t.dataset.id}, `
      + `${t.title.split(" · ")[1]}, shown as ${t.textContent}`;
    hover.dataset.id = t.dataset.id;
  });
  input.value = model.get("text");
  input.addEventListener("input", () => { model.set("text", input.value); ask(); draw(); });
  pick.addEventListener("change", () => {
    if (pick.value === "") return;
    const t = examples[Number(pick.value)].text;
    input.value = t;
    model.set("text", t);
    ask();
    draw();
  });
  model.on("change:text", () => {
    if (input.value !== model.get("text")) input.value = model.get("text");
    draw();
  });
  model.on("change:result", () => {
    const reply = (model.get("result") || {}).reply || "";
    if (reply.startsWith(SESSION + ":")) kernel = true;
    draw();
  });
  draw();
  ask();
}

export default { render };

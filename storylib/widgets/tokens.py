"""A token viewer for Chapter 6: type some text, see how several tokenizers cut it, side by side.

    from storylib.widgets import TokenViewer
    TokenViewer.default(text="Once upon a time ...")          # storyteller, GPT-2 and cl100k_base rows
    TokenViewer(text, tokenizers={"ours": tok, "GPT-2": tiktoken.get_encoding("gpt2")}, examples=[...])

A tokenizer is a storylib `Tokenizer` (BasicTokenizer, RegexTokenizer, GPT4Tokenizer, the storyteller's) or
anything with `encode(text)` and `decode_single_token_bytes(id)`, such as a `tiktoken.Encoding`. Each row
shows one coloured span per token (whitespace made visible: `·` space, `↵` newline, `⇥` tab, `␍` carriage
return; bytes that are only part of a UTF-8 character as `⟨e2 80⟩`), the id on hover, the number of tokens
and the UTF-8 bytes per token. Special tokens in the text (`<|endoftext|>`) are encoded as specials
(`allowed_special="all"`), so they show as one token.

Two ways to run:

* **With a Python kernel** (JupyterLab): whenever the reader types, Python recomputes every row with the
  real tokenizers (`result`). The JavaScript proves that a kernel answers with a handshake: it writes a
  nonce made fresh on each page load into `request`, and Python echoes it in `result["reply"]`. A saved
  notebook or the static book can hold an old reply, never this page's nonce, so the handshake cannot be
  faked by saved state.
* **In the static book** (no kernel): storylib tokenizers of modest size with GPT-2's or GPT-4's split
  pattern are *live*: their split pattern (translated to JavaScript, see `js_split_pattern`) and merges
  travel in the trait `live`, and TOKENS_JS runs the split and byte-level BPE in the browser. For the others
  (GPT-2 and cl100k_base through tiktoken: far too many merges to ship) the widget carries tokenizations of
  the initial text and of a few examples (a drop-down), and says that they re-tokenize only with a kernel.

The package tests run TOKENS_JS under node and compare it with Python on hard strings; the e2e test types
into the widget in Chromium and compares what it shows with `tok.encode`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anywidget
import traitlets

from storylib.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BasicTokenizer, RegexTokenizer, Tokenizer
from storylib.widgets._dom import DOM_JS

# ----------------------------------------------------------------------------- split patterns for JavaScript

# Python's `regex` module and JavaScript disagree on `\s`: Python's is Unicode's White_Space property
# (it includes U+0085 NEXT LINE), JavaScript's adds U+FEFF (the BOM) and leaves out U+0085. So both JS
# patterns spell Python's set out: exactly the code points `regex.match(r"\s", c)` accepts (a test checks).
_WS_SET = r"\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
_WS = f"[{_WS_SET}]"  # \s
_NOT_WS = f"[^{_WS_SET}]"  # \S
_NOT_WS_L_N = f"[^{_WS_SET}" + r"\p{L}\p{N}]"  # [^\s\p{L}\p{N}]

# GPT-4's pattern (cl100k_base), as JavaScript understands it. Three constructs change:
#
# * `(?i:[sdmt]|ll|ve|re)`: JavaScript (before 2025's "regexp modifiers") has no inline case-insensitive
#   group, so each letter becomes the class of everything Python's `(?i:x)` matches: the two cases, and for
#   `s` also U+017F LATIN SMALL LETTER LONG S, which simple case folding maps to `s` (a test scans every code
#   point under Python's regex to confirm these classes).
# * `[^\r\n\p{L}\p{N}]?+\p{L}+`: the possessive `?+` never gives its character back. Dropping it could only
#   change a match if giving the character back helped: then `\p{L}+` would have to start *at* that
#   character, but it is not a letter (the class excludes \p{L}), so it fails either way. `?` = `?+` here.
# * ` ?[^\s\p{L}\p{N}]++[\r\n]*`: backtracking into `++` happens only if what follows fails, and what
#   follows, `[\r\n]*`, matches (possibly nothing) at any position and ends the alternative. `+` = `++` here.
#
# `\s` and `\S` become _WS and _NOT_WS (above). The pattern is compiled with the `u` flag, so it walks code
# points as Python does (an emoji is one character, not two UTF-16 halves) and `\p{...}` works.
GPT4_SPLIT_PATTERN_JS = "|".join([
    r"'(?:[sdmtSDMT\u017F]|[lL][lL]|[vV][eE]|[rR][eE])",
    r"[^\r\n\p{L}\p{N}]?\p{L}+",
    r"\p{N}{1,3}",
    " ?" + _NOT_WS_L_N + r"+[\r\n]*",
    _WS + r"*[\r\n]",
    _WS + "+(?!" + _NOT_WS + ")",
    _WS + "+",
])
# GPT-2's pattern needs only the \s / \S spelling (it has no possessives and no case-insensitive group).
GPT2_SPLIT_PATTERN_JS = "|".join([
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
    r" ?\p{L}+",
    r" ?\p{N}+",
    " ?" + _NOT_WS_L_N + "+",
    _WS + "+(?!" + _NOT_WS + ")",
    _WS + "+",
])
_JS_PATTERNS = {GPT4_SPLIT_PATTERN: GPT4_SPLIT_PATTERN_JS, GPT2_SPLIT_PATTERN: GPT2_SPLIT_PATTERN_JS, "": ""}


def js_split_pattern(pattern: str) -> str | None:
    """The JavaScript equivalent (flags "gu") of a split pattern, or None when there is none we trust.

    Only GPT-2's and GPT-4's patterns are translated (and "" for no split, as BasicTokenizer): a general
    translation of possessive quantifiers is not equivalent, so other patterns stay kernel-only.
    """
    return _JS_PATTERNS.get(pattern)


# ----------------------------------------------------------------------------- tokenization in the browser

# Pure functions, no DOM: the package tests run this part under node.
TOKENS_JS = r"""
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
      try { ch = STRICT_UTF8.decode(bytes.subarray(i, i + n)); } catch (e) { ch = null; }
    }
    if (ch === null) { bad.push(bytes[i]); i += 1; } else { flush(); out += visibleChar(ch); i += n; }
  }
  flush();
  return out;
}

function escapeRegExp(s) { return s.replace(/[.*+?^${}()|[\]\\\/]/g, "\\$&"); }

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

function bytesPerToken(nBytes, nTokens) { return nTokens ? nBytes / nTokens : 0; }
"""

_RENDER_JS = r"""

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
"""

_CSS = """
.tv { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 14px; color: #222; max-width: 860px;
      padding: 0.3em 0.5em; }
.tv-controls { display: flex; gap: 0.5em; align-items: flex-start; margin: 0.4em 0; }
.tv-text { flex: 1; font-family: monospace; font-size: 14px; padding: 0.3em 0.4em; min-height: 3.5em;
           resize: vertical; color: #222; background: #fff; border: 1px solid #bbb; border-radius: 3px; }
.tv-controls select { font-size: 13px; color: #222; background: #f7f7f7; }
.tv-note { color: #555; font-size: 12px; margin: 0.2em 0 0.4em; }
.tv-skipped { color: #a94400; font-size: 12px; }
.tv-row { border-top: 1px solid #e4e4e4; padding: 0.4em 0; }
.tv-head { display: flex; gap: 0.8em; align-items: baseline; font-size: 12px; margin-bottom: 0.25em; }
.tv-name { font-weight: 600; font-size: 13px; }
.tv-about { color: #777; }
.tv-stats { margin-left: auto; font-family: monospace; color: #333; }
.tv-body { font-family: monospace; font-size: 14px; line-height: 1.9; white-space: normal; word-break: break-all; }
.tv-tok { padding: 1px 0; border-radius: 2px; white-space: pre; color: #222; cursor: default; }
.tv-tok:hover { outline: 2px solid #ff7f0e; }
.tv-c0 { background: #ffd8a8; } .tv-c1 { background: #c3f0ca; } .tv-c2 { background: #bde0fe; }
.tv-c3 { background: #e5d4ff; } .tv-c4 { background: #fff3a8; }
.tv-stale .tv-body { opacity: 0.45; }
.tv-missing { color: #888; font-style: italic; font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.tv-error { color: #b00020; font-size: 12px; }
.tv-hover { font-family: monospace; font-size: 12px; color: #444; margin-top: 0.4em; min-height: 1.2em; }
"""

# ----------------------------------------------------------------------------- the same, in Python

_SHOWN = {0x20: "·", 0x0A: "↵", 0x0D: "␍", 0x09: "⇥", 0x7F: "␡"}
_ESCAPED = {0xA0, 0xAD, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2060, 0xFEFF}


def _visible_char(ch: str) -> str:
    cp = ord(ch)
    if cp in _SHOWN:
        return _SHOWN[cp]
    if cp < 0x20:
        return chr(0x2400 + cp)
    if 0x80 <= cp <= 0x9F or cp in _ESCAPED:
        return f"\\u{cp:04x}"
    return ch


def _utf8_len(b: int) -> int:
    if b < 0x80:
        return 1
    if 0xC2 <= b <= 0xDF:
        return 2
    if 0xE0 <= b <= 0xEF:
        return 3
    if 0xF0 <= b <= 0xF4:
        return 4
    return 0


def token_label(data: bytes) -> str:
    """How the widget shows a token: its characters with whitespace made visible (`·` space, `↵` newline,
    `⇥` tab, `␍` CR, control pictures for other controls), and bytes that are not a whole UTF-8 character
    within the token as `⟨e2 80⟩`. token_label(b" the") == "·the"; token_label("é".encode()[:1]) == "⟨c3⟩".
    """
    out: list[str] = []
    bad: list[int] = []

    def flush() -> None:
        if bad:
            out.append("⟨" + " ".join(f"{x:02x}" for x in bad) + "⟩")
            bad.clear()

    i = 0
    while i < len(data):
        n = _utf8_len(data[i])
        ch = None
        if n and i + n <= len(data):
            try:
                ch = data[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                ch = None
        if ch is None:
            bad.append(data[i])
            i += 1
        else:
            flush()
            out.append(_visible_char(ch))
            i += n
    flush()
    return "".join(out)


def bytes_per_token(text: str, n_tokens: int) -> float:
    """UTF-8 bytes of `text` per token (0.0 for no tokens): how much one token carries on average."""
    return len(text.encode("utf-8")) / n_tokens if n_tokens else 0.0


# ----------------------------------------------------------------------------- tokenizers, any kind


@dataclass
class TokenizerRow:
    """One row of the viewer: how to encode with a tokenizer and how to get a token's bytes."""

    name: str
    encode: Callable[[str], list[int]]
    token_bytes: Callable[[int], bytes]
    about: str
    live: dict | None  # the data TOKENS_JS needs to run it in the browser, or None


def export_live(tok: Any, max_merges: int = 20_000) -> dict | None:
    """A storylib BasicTokenizer/RegexTokenizer as data for TOKENS_JS's compileTokenizer, or None.

    None when the tokenizer cannot run in the browser exactly as in Python: another class (GPT4Tokenizer
    permutes its bytes), a split pattern without a trusted JavaScript translation, more than `max_merges`
    merges (too much data for a page), or merges whose ids are not 256, 257, ... in order.
    """
    if type(tok) not in (RegexTokenizer, BasicTokenizer) or len(tok.merges) > max_merges:
        return None
    pattern = js_split_pattern(tok.pattern) if type(tok) is RegexTokenizer else ""
    if pattern is None or list(tok.merges.values()) != list(range(256, 256 + len(tok.merges))):
        return None
    return {
        "pattern": pattern,
        "merges": [x for pair in tok.merges for x in pair],  # flat: merge i makes 256 + i
        "specials": dict(tok.special_tokens) if type(tok) is RegexTokenizer else {},
    }


def as_row(name: str, tok: Any, max_live_merges: int = 20_000) -> TokenizerRow:
    """Wrap a storylib Tokenizer or an object with encode/decode_single_token_bytes (tiktoken) as a row."""
    if isinstance(tok, Tokenizer):
        if isinstance(tok, RegexTokenizer):
            encode = lambda text: tok.encode(text, allowed_special="all")  # noqa: E731
        else:
            encode = tok.encode
        n_special = len(tok.special_tokens) if isinstance(tok, RegexTokenizer) else 0
        about = f"{type(tok).__name__}, {256 + len(tok.merges):,} tokens" + (
            f" + {n_special} specials" if n_special else "")
        return TokenizerRow(name, encode, lambda i: tok.vocab[i], about, export_live(tok, max_live_merges))
    if callable(getattr(tok, "encode", None)) and callable(getattr(tok, "decode_single_token_bytes", None)):
        try:
            takes_special = "allowed_special" in inspect.signature(tok.encode).parameters
        except (TypeError, ValueError):
            takes_special = False
        encode = (lambda text: tok.encode(text, allowed_special="all")) if takes_special else tok.encode
        n_vocab = getattr(tok, "n_vocab", None)
        about = f"{type(tok).__module__.split('.')[0]} {getattr(tok, 'name', '')}".strip()
        if isinstance(n_vocab, int):
            about += f", {n_vocab:,} tokens"
        return TokenizerRow(name, encode, tok.decode_single_token_bytes, about, None)
    raise TypeError(f"tokenizer {name!r} ({type(tok).__name__}) is neither a storylib Tokenizer nor an object with "
                    "encode(text) and decode_single_token_bytes(id), such as a tiktoken.Encoding")


def tokenize(tok: Any, text: str) -> list[tuple[int, bytes]]:
    """(id, bytes) of every token of `text`, specials allowed, for any tokenizer `as_row` accepts."""
    row = tok if isinstance(tok, TokenizerRow) else as_row("", tok)
    return [(int(i), bytes(row.token_bytes(int(i)))) for i in row.encode(text)]


def _row_data(row: TokenizerRow, text: str) -> dict:
    try:
        toks = tokenize(row, text)
    except Exception as e:  # a learner's stubbed exercise, a text a tokenizer refuses: show it in the row
        return {"error": f"{type(e).__name__}: {e}"}
    return {"tokens": [[i, b.hex()] for i, b in toks], "n_tokens": len(toks),
            "bytes_per_token": bytes_per_token(text, len(toks))}


# ----------------------------------------------------------------------------- defaults

DEFAULT_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun."

DEFAULT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("a story", "One day, Tom and his dog Max found a big red ball in the park. \"Let's play!\" said Tom."),
    ("emoji & accents", "Zoë and Amélie shared a crème brûlée at the café 🍮😋 — naïve? Non! 👩‍👩‍👧"),
    ("Korean", "옛날 옛적에 작은 토끼가 살았어요. 토끼는 당근을 좋아했어요."),
    ("code with spaces", "def add(a, b):\n    # four spaces of indent\n    return a + b\n\n\nprint(add(2, 3))\n"),
    ("numbers", "In 2026 she counted 12345678 stars, 3.14159 moons and 1,000,000 sheep."),
)


def standard_tokenizers() -> tuple[dict[str, Any], list[str]]:
    """The chapter's three rows, {"storyteller", "GPT-2", "cl100k_base"}, and a note for each one that could
    not be loaded (offline, no tokenizer file, ...). Points tiktoken at the course's offline cache
    (.assets/tiktoken) when TIKTOKEN_CACHE_DIR is not set."""
    toks: dict[str, Any] = {}
    notes: list[str] = []
    try:
        from storylib.tokenizer import storyteller_tokenizer

        toks["storyteller"] = storyteller_tokenizer()
    except Exception as e:
        notes.append(f"storyteller row skipped: its tokenizer could not be loaded ({type(e).__name__}: {e})")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        try:
            from storylib.data import course_file

            os.environ["TIKTOKEN_CACHE_DIR"] = str(course_file(".assets/tiktoken"))
        except FileNotFoundError:
            pass
    for name, encoding in (("GPT-2", "gpt2"), ("cl100k_base", "cl100k_base")):
        try:
            import tiktoken

            toks[name] = tiktoken.get_encoding(encoding)
        except Exception as e:
            notes.append(f"{name} row skipped: tiktoken could not load {encoding!r} offline ({type(e).__name__}: "
                         f"{str(e)[:200]}); scripts/assets.sh fills the cache .assets/tiktoken")
    return toks, notes


# ----------------------------------------------------------------------------- the widget


class TokenViewer(anywidget.AnyWidget):
    """Text tokenized by several tokenizers side by side: coloured tokens, ids on hover, tokens and bytes/token."""

    _esm = DOM_JS + TOKENS_JS + _RENDER_JS
    _css = _CSS
    text = traitlets.Unicode("").tag(sync=True)
    row_info = traitlets.List(traitlets.Dict()).tag(sync=True)  # [{name, about, live}], in row order
    live = traitlets.Dict().tag(sync=True)  # name -> export_live(tok), for the rows the browser can run
    examples = traitlets.List(traitlets.Dict()).tag(sync=True)  # [{label, text, rows: {name: row data}}]
    result = traitlets.Dict().tag(sync=True)  # {text, reply, rows: {name: row data}}: Python's, for `text`
    request = traitlets.Unicode("").tag(sync=True)  # written by the browser: "<page session>:<n>"
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)  # tokenizers that were skipped, and why

    def __init__(self, text: str = DEFAULT_TEXT, tokenizers: Mapping[str, Any] | None = None,
                 examples: Iterable[str | tuple[str, str]] | None = None, notes: Iterable[str] = (),
                 max_live_merges: int = 20_000, **kwargs) -> None:
        if not tokenizers:
            raise ValueError("give at least one tokenizer, e.g. tokenizers={'GPT-2': tiktoken.get_encoding('gpt2')},"
                             " or use TokenViewer.default()")
        self._rows = [as_row(name, tok, max_live_merges) for name, tok in tokenizers.items()]
        exs = []
        for i, ex in enumerate(DEFAULT_EXAMPLES if examples is None else examples):
            label, ex_text = (f"example {i + 1}", ex) if isinstance(ex, str) else ex
            exs.append({"label": label, "text": ex_text, "rows": self.compute(ex_text)})
        super().__init__(
            text=text,
            row_info=[{"name": r.name, "about": r.about, "live": r.live is not None} for r in self._rows],
            live={r.name: r.live for r in self._rows if r.live is not None},
            examples=exs,
            result={"text": text, "reply": "", "rows": self.compute(text)},
            notes=list(notes),
            **kwargs,
        )

    @classmethod
    def default(cls, text: str = DEFAULT_TEXT, examples: Iterable[str | tuple[str, str]] | None = None,
                **kwargs) -> TokenViewer:
        """The storyteller, GPT-2 and cl100k_base rows; a row that cannot be loaded is left out with a note
        shown in the widget."""
        toks, notes = standard_tokenizers()
        if not toks:
            raise RuntimeError("no tokenizer could be loaded: " + "; ".join(notes))
        return cls(text=text, tokenizers=toks, examples=examples, notes=notes, **kwargs)

    def compute(self, text: str) -> dict[str, dict]:
        """Every row's data for `text`, computed by Python: {name: {tokens: [[id, hex bytes], ...], n_tokens,
        bytes_per_token}} (or {error} when a tokenizer raised)."""
        return {r.name: _row_data(r, text) for r in self._rows}

    @traitlets.observe("text", "request")
    def _recompute(self, change) -> None:
        text, request = self.text, self.request
        old = self.result or {}
        if old.get("text") == text and old.get("reply") == request:
            return  # both traits changed in one message: the first call did the work
        rows = old["rows"] if old.get("text") == text and "rows" in old else self.compute(text)
        self.result = {"text": text, "reply": request, "rows": rows}

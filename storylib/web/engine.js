// The storyteller's browser engine: storyteller.wasm (storylib/web/storyteller.c) runs the model, this module loads
// it, tokenizes, samples and streams. storylib.web.export_site writes the site's copy, _static/storyteller/engine.js:
// the tokenizer part of storylib/widgets/js/tokens.js (compileTokenizer, the same code the TokenViewer runs), then
// this file. Runs in the browser (StoryChat's front end imports it) and under node (tests/test_web_engine.py).
// compileTokenizer: a global here (eslint.config.mjs), from tokens.js, which engine_module puts first

// A tiny module that uses one SIMD128 instruction (i32x4.splat): WebAssembly.validate says whether SIMD runs here.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8,
  0, 65, 0, 253, 15, 253, 98, 11]);
export function simdSupported() {
  try { return typeof WebAssembly === "object" && WebAssembly.validate(SIMD_PROBE); } catch { return false; }
}

// The parameters of storyteller.c, by their storylib (nn.Module state dict) names: [layer (-1: global), which].
const GLOBAL = { "transformer.wte.weight": 0, "transformer.wpe.weight": 1, "transformer.ln_f.weight": 2,
  "transformer.ln_f.bias": 3 };
const PER_LAYER = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
  "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
  "mlp.c_proj.bias"];
function slot(name) {
  if (name in GLOBAL) return [-1, GLOBAL[name]];
  const m = /^transformer\.h\.(\d+)\.(.+)$/.exec(name);
  const which = m ? PER_LAYER.indexOf(m[2]) : -1;
  return which < 0 ? null : [Number(m[1]), which];
}

// A safetensors file: 8 bytes little-endian header length, the JSON header, the raw tensors.
export function readSafetensors(buffer) {
  const view = new DataView(buffer);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, n)));
  const meta = header.__metadata__ || {};
  delete header.__metadata__;
  return { meta, tensors: header, data: 8 + n };
}

// Seeded random numbers in [0, 1) (mulberry32): the same seed draws the same story in every browser (not the same
// story as torch's generator in Python).
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The ids whose z is within d of `top` for the smallest d in 1, 2, 4, ... 32, inf for which enough(ids) holds,
// sorted by z, descending: the head of the whole vocabulary's order, sorted at a fraction of the cost.
function sortedHead(z, top, enough) {
  for (const d of [1, 2, 4, 8, 16, 32, Infinity]) {
    const ids = [];
    for (let i = 0; i < z.length; i++) if (z[i] >= top - d) ids.push(i);
    if (d === Infinity || enough(ids)) return ids.sort((a, b) => z[b] - z[a]);
  }
  return [];
}

// storylib.kvcache.process_logits + sample for one row: temperature 0 is the argmax; else / temperature, top-k
// (the k largest, ties with the k-th stay), top-p (the smallest set of most probable tokens whose probabilities
// reach top_p; the top token always stays), a draw. topK 0 / null and topP >= 1 / null mean off.
export function sampleToken(logits, { temperature = 0, topK = 0, topP = 1 } = {}, random = Math.random) {
  const V = logits.length;
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const z = new Float64Array(V);
  let top = -Infinity;
  for (let i = 0; i < V; i++) { z[i] = logits[i] / temperature; if (z[i] > top) top = z[i]; }
  let kth = -Infinity;
  if (topK && topK < V) kth = z[sortedHead(z, top, (ids) => ids.length >= topK)[topK - 1]];
  const p = new Float64Array(V);  // unnormalised probabilities; 0 for what top-k removed
  let total = 0;
  for (let i = 0; i < V; i++) if (z[i] >= kth) { p[i] = Math.exp(z[i] - top); total += p[i]; }
  let keep = null;  // the ids that may be drawn (null: every id with p > 0)
  if (topP && topP < 1) {
    const need = topP * total;
    const order = sortedHead(z, top, (ids) => ids.reduce((m, i) => m + p[i], 0) >= need);
    keep = [];
    let before = 0;
    for (const i of order) {
      if (before >= need) break;  // the mass of the tokens ranked above i is enough already
      if (p[i] > 0) { keep.push(i); before += p[i]; }
    }
    total = before;
  }
  let r = random() * total, last = 0;
  for (const i of keep || p.keys()) {
    if (p[i] <= 0) continue;
    last = i;
    r -= p[i];
    if (r < 0) return i;
  }
  return last;
}

// Give the page a chance to paint and to handle a click (Stop): a message to ourselves, not setTimeout, which the
// browser delays by >= 4 ms once nested.
function yieldToPage() {
  if (typeof MessageChannel === "undefined") return new Promise((r) => setTimeout(r, 0));
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => { ch.port1.close(); resolve(); };
    ch.port2.postMessage(0);
  });
}

const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());
const ROLE = { system: "<|system|>", user: "<|user|>", assistant: "<|assistant|>" };

export class Engine {
  // wasm: the bytes of storyteller.wasm; weights: the bytes of a model's .safetensors (fp16 or fp32);
  // tokenizer: storylib.widgets.tokens.export_live's data ({pattern, merges, specials}).
  static async create({ wasm, weights, tokenizer }) {
    const { instance } = await WebAssembly.instantiate(wasm, {});
    return new Engine(instance.exports, weights, tokenizer);
  }

  constructor(exports, weights, tokenizer) {
    this.wasm = exports;
    const { meta, tensors, data } = readSafetensors(weights);
    const cfg = JSON.parse(meta.config);
    this.config = cfg;
    this.about = meta.about || "";
    this.dtype = meta.dtype || "";
    if (!exports.model_init(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size)) {
      throw new Error("the model does not fit in this browser's WebAssembly memory");
    }
    let staging = 0, stagingSize = 0, nParams = 0;
    for (const [name, t] of Object.entries(tensors)) {
      const where = slot(name);
      if (!where) continue;  // lm_head.weight is wte (tied); nothing else is expected
      const n = t.shape.reduce((a, b) => a * b, 1);
      if (n !== Number(exports.param_size(where[0], where[1]))) {
        throw new Error(`${name}: shape ${t.shape} does not fit the config`);
      }
      const dst = exports.param_ptr(where[0], where[1]);
      const [begin, end] = t.data_offsets;
      const src = new Uint8Array(weights, data + begin, end - begin);
      nParams += n;
      if (t.dtype === "F32") {
        new Uint8Array(exports.memory.buffer, dst, 4 * n).set(src);
      } else if (t.dtype === "F16") {
        if (stagingSize < src.length) { staging = exports.mem_alloc(src.length); stagingSize = src.length; }
        if (!staging) throw new Error("out of WebAssembly memory");
        new Uint8Array(exports.memory.buffer, staging, src.length).set(src);
        exports.f16_to_f32(staging, dst, n);
      } else {
        throw new Error(`${name}: dtype ${t.dtype} is not supported (F16 or F32)`);
      }
    }
    this.nParams = nParams;
    this.tok = compileTokenizer(tokenizer);
    this.ordinary = compileTokenizer(Object.assign({}, tokenizer, { specials: {} }));  // storylib's encode_ordinary
    this.specials = tokenizer.specials || {};
    this.eot = this.specials["<|endoftext|>"];
    this.end = this.specials["<|end|>"];
    this.stopIds = [this.eot, this.end].filter((i) => i !== undefined);
    this.pos = 0;  // tokens in the KV cache
    this.cached = [];  // ... and which
  }

  encode(text) { return this.tok.encode(text); }  // special tokens written out become their ids
  encodeOrdinary(text) { return this.ordinary.encode(text); }  // every character is text (what a reader types)
  tokenBytes(id) { return this.tok.tokenBytes(id) || new Uint8Array(0); }
  decode(ids) {
    const parts = ids.filter((i) => i !== this.eot).map((i) => this.tokenBytes(i));
    const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    return new TextDecoder().decode(all);
  }

  // The chat template (storylib.chat_template.render_chat): <|endoftext|>, then per message its role token, its text
  // (encode_ordinary) and <|end|>; addGenerationPrompt: a final <|assistant|>.
  renderChat(messages, addGenerationPrompt = false) {
    const ids = [this.eot];
    for (const m of messages) ids.push(this.specials[ROLE[m.role]], ...this.encodeOrdinary(m.content), this.end);
    if (addGenerationPrompt) ids.push(this.specials["<|assistant|>"]);
    return ids;
  }

  // The generation prompt of a conversation ending in a user message, leaving `reserve` tokens of the context for
  // the reply where it can: the oldest whole (user, reply) pairs go first; the last request and the reply before it
  // (the story it refers to) always stay (a simpler rule than storylib.conversations.fit_conversation's, which
  // finds the reply a request refers to; the same for a story and its changes). Past block_size the prompt keeps
  // its end.
  chatPrompt(messages, reserve) {
    const T = this.config.block_size;
    let msgs = messages.slice();
    let ids = this.renderChat(msgs, true);
    const head = msgs[0] && msgs[0].role === "system" ? 1 : 0;
    while (ids.length > T - reserve && msgs.length - head > 3) {
      msgs = [...msgs.slice(0, head), ...msgs.slice(head + 2)];
      ids = this.renderChat(msgs, true);
    }
    if (ids.length > T) ids = [this.eot, ...ids.slice(ids.length - T + 1)];
    return ids;
  }

  // Logits after `ids`, reusing the cache for the longest prefix it already holds (a Float32Array, copied).
  logitsAfter(ids) {
    const T = this.config.block_size;
    if (ids.length > T) ids = ids.slice(ids.length - T);
    let same = 0;
    while (same < this.pos && same < ids.length - 1 && this.cached[same] === ids[same]) same++;
    this.pos = same;
    this.cached.length = same;
    const chunk = this.wasm.chunk_size();
    for (let i = same; i < ids.length; i += chunk) {  // a prompt goes through in chunks: its weights read once each
      const part = ids.slice(i, i + chunk);
      new Int32Array(this.wasm.memory.buffer, this.wasm.tokens_ptr(), part.length).set(part);
      if (!this.wasm.forward(part.length, this.pos, i + chunk >= ids.length ? 1 : 0)) {
        throw new Error(`bad tokens ${part} at ${this.pos}`);
      }
      this.cached.push(...part);
      this.pos += part.length;
    }
    return this.logits();
  }
  _step(id, wantLogits) {
    if (!this.wasm.step(id, this.pos, wantLogits ? 1 : 0)) throw new Error(`bad token ${id} at ${this.pos}`);
    this.cached.push(id);
    this.pos++;
  }
  logits() {
    return new Float32Array(this.wasm.memory.buffer, this.wasm.logits_ptr(), this.config.vocab_size).slice();
  }
  // The logits of every position of `ids` (the tests compare them with storylib's forward).
  allLogits(ids) {
    this.pos = 0;
    this.cached = [];
    return ids.map((id) => { this._step(id, true); return this.logits(); });
  }

  // Tokens after promptIds, one at a time: onToken(id, bytes) for each. Stops at a stop id (not passed on),
  // after maxTokens, or when shouldStop() says so (checked after each token). When the cache is full it starts
  // again from the last block_size / 2 tokens, as storylib.kvcache.generate_tokens does. Returns
  // {ids, reason: "end" | "length" | "stopped", seconds, firstTokenSeconds, decodeTokensPerS}.
  async generate(promptIds, opts = {}, onToken = () => {}) {
    const { maxTokens = 300, temperature = 0, topK = 0, topP = 1, seed = null, shouldStop = () => false,
            yieldMs = 30 } = opts;
    const stop = new Set(opts.stopIds || this.stopIds);
    const random = rng(seed === null || seed === undefined ? (Math.random() * 2 ** 32) >>> 0 : seed);
    const T = this.config.block_size;
    const ids = promptIds.slice(), out = [];
    const t0 = now();
    let logits = this.logitsAfter(ids.slice(-T)), first = null, reason = "length", lastYield = now();
    const tDecode = now();
    for (let n = 0; n < maxTokens; n++) {
      if (n) {
        if (this.pos >= T) logits = this.logitsAfter(ids.slice(-Math.max(1, T >> 1)));
        else { this._step(ids[ids.length - 1], true); logits = this.logits(); }
      }
      const next = sampleToken(logits, { temperature, topK, topP }, random);
      if (stop.has(next)) { reason = "end"; break; }
      ids.push(next);
      out.push(next);
      if (first === null) first = now() - t0;
      onToken(next, this.tokenBytes(next));
      if (shouldStop()) { reason = "stopped"; break; }
      if (now() - lastYield > yieldMs) { await yieldToPage(); lastYield = now(); if (shouldStop()) { reason = "stopped"; break; } }
    }
    const seconds = (now() - t0) / 1000, decode = (now() - tDecode) / 1000;
    return { ids: out, reason, seconds, firstTokenSeconds: first === null ? null : first / 1000,
             decodeTokensPerS: out.length > 1 && decode > 0 ? (out.length - 1) / decode : 0 };
  }

  // Greedy ids after promptIds, synchronously (tests, benchmarks).
  greedy(promptIds, n) {
    const ids = promptIds.slice(), out = [];
    let logits = this.logitsAfter(ids);
    for (let i = 0; i < n; i++) {
      const next = sampleToken(logits);
      if (this.stopIds.includes(next)) break;
      out.push(next);
      ids.push(next);
      if (this.pos >= this.config.block_size) logits = this.logitsAfter(ids.slice(-(this.config.block_size >> 1)));
      else { this._step(next, true); logits = this.logits(); }
    }
    return out;
  }
}

// The engine of a site: base = the URL of the folder holding manifest.json (e.g. <site>/_static/storyteller/);
// which = "chat" or "story". onProgress(bytesLoaded, bytesTotal) while the weights download. Throws what fails.
export async function loadEngine(base, which = "chat", onProgress = () => {}) {
  if (!simdSupported()) throw new Error("this browser has no WebAssembly SIMD");
  const get = async (name) => {
    const r = await fetch(new URL(name, base));
    if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
    return r;
  };
  const manifest = await (await get("manifest.json")).json();
  const entry = manifest.models[which];
  if (!entry) throw new Error(`this site has no ${which} model`);
  const [wasm, tokenizer, weights] = await Promise.all([
    get(manifest.engine).then((r) => r.arrayBuffer()),
    get(manifest.tokenizer).then((r) => r.json()),
    get(entry.file).then((r) => readWithProgress(r, entry.bytes, onProgress)),
  ]);
  const engine = await Engine.create({ wasm, weights, tokenizer });
  engine.which = which;
  engine.bytes = weights.byteLength;
  return engine;
}

async function readWithProgress(response, total, onProgress) {
  if (!response.body || !response.body.getReader) return response.arrayBuffer();
  const reader = response.body.getReader(), chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    onProgress(got, total);
  }
  const buf = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) { buf.set(c, at); at += c.length; }
  return buf.buffer;
}

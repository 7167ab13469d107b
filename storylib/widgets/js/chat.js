// StoryChat's front end (storylib/widgets/chat.py). storylib.widgets.front_end puts
// js/_dom.js (el, greetKernel) before it: anywidget loads one module from a blob: URL, which cannot import another file.
//
// One widget, two engines. In JupyterLab the kernel answers the hello and runs the story in Python (storylib). In
// the static book no kernel answers: the page's site has the browser engine (storylib/web: the model compiled to
// WebAssembly, served from _static/storyteller/), so the same buttons run it here, in the reader's browser. Where
// neither can run (no engine files on the site, no WebAssembly SIMD) the widget shows the recorded conversation with
// its controls disabled and says why.

const STATUS_TEXT = { idle: "", generating: "telling…", drawing: "drawing…", done: "", stopped: "stopped", error: "" };
// what changes with the mode: chat (instructions to the chat model) or story (the storyteller goes on)
const MODE_TEXT = {
  chat: { placeholder: "Write a story about a cat named Tom who finds a key.  (Enter sends, Shift+Enter: new line)",
          empty: "Ask for a story (“Write a story about a cat named Tom who finds a key.”), then for changes " +
                 "(“Give it a happy ending.”, “Call the cat Max.”).",
          refine: "Regenerate", fresh: "New chat", recorded: "a conversation recorded when the book was built",
          failed: "could not answer: see the note above" },
  story: { placeholder: "Once upon a time, …  (Enter sends, Shift+Enter: new line)",
           empty: "Your story will appear here. Type its first words.",
           refine: "Refine", fresh: "New story", recorded: "a story recorded when the book was built",
           failed: "could not tell the story: see the note above" },
};

// ---- the story as segments [{role, pieces}] (storylib.storyteller.StorySession's methods, for the browser engine)
const segText = (seg) => seg.pieces.join("");
const storyText = (segs) => segs.map(segText).join("");
function addUser(segs, text, mode) {  // StorySession.add_user
  if (!text) return segs;
  let before = storyText(segs);
  if (mode === "chat") before = segs.length && segs[segs.length - 1].role === "user" ? segText(segs[segs.length - 1]) : "";
  if (before && !/\s$/.test(before) && !/^\s/.test(text)) text = " " + text;
  return [...segs, { role: "user", pieces: [text] }];
}
function messagesOf(segs) {  // StorySession.messages
  const out = [];
  for (const seg of segs) {
    const role = seg.role === "user" ? "user" : "assistant";
    if (out.length && out[out.length - 1].role === role) out[out.length - 1].content += segText(seg);
    else out.push({ role, content: segText(seg) });
  }
  return out;
}
function cutStory(segs, offset) {  // StorySession.cut
  const kept = [];
  let start = 0;
  for (const seg of segs) {
    if (start >= offset) break;
    const pieces = [];
    let at = start;
    for (const p of seg.pieces) {
      if (at >= offset) break;
      pieces.push(p.slice(0, offset - at));
      at += p.length;
    }
    kept.push({ role: seg.role, pieces: pieces.filter((p) => p) });
    start += segText(seg).length;
  }
  return kept.filter((s) => s.pieces.length);
}
function rewindStory(segs, cut, text, mode) {  // StorySession.rewind
  const last = segs[segs.length - 1];
  const replyStart = last && last.role === "model" ? storyText(segs).length - segText(last).length
    : storyText(segs).length;
  segs = cutStory(segs, cut === null || cut === undefined ? replyStart : cut);
  if (text) {
    const end = segs[segs.length - 1];
    if ((cut === null || cut === undefined) && end && end.role === "user") {
      segs = cutStory(segs, storyText(segs).length - segText(end).length);
    }
    segs = addUser(segs, text, mode);
  }
  return segs;
}

// The browser engine of this site (one per page and model, shared by every StoryChat on it), or null: only the
// static book's pages set LLM101N_SITE_ROOT (scripts/llm101n-widgets-config.js); JupyterLab never loads it.
const ENGINE_BASE = typeof window !== "undefined" && window.LLM101N_SITE_ROOT
  ? new URL("_static/storyteller/", window.LLM101N_SITE_ROOT).href : null;
const BROWSER = (globalThis.__llm101nStoryEngines ||= { module: null, engines: {}, queue: Promise.resolve() });
function engineModule() {
  BROWSER.module ||= import(ENGINE_BASE + "engine.js");
  return BROWSER.module;
}
function browserEngine(which, onProgress) {
  BROWSER.engines[which] ||= engineModule().then((m) => m.loadEngine(ENGINE_BASE, which, onProgress));
  BROWSER.engines[which].catch(() => { delete BROWSER.engines[which]; });
  return BROWSER.engines[which];
}

function render({ model, el: host }) {
  const root = el("div", { class: "sc", "data-testid": "story-chat", "data-kernel": "false" }, host);
  const modeRow = el("div", { class: "sc-row sc-mode-row" }, root);
  const modeSelect = el("select", { class: "sc-mode", "data-testid": "chat-mode", "aria-label": "mode" }, modeRow);
  const chatOption = el("option", { value: "chat" }, modeSelect, "Chat: ask for a story, then for changes");
  el("option", { value: "story" }, modeSelect, "Continue a story");
  const unavailable = el("span", { class: "sc-unavailable", "data-testid": "chat-unavailable" }, modeRow);
  const view = el("div", { class: "sc-story", "data-testid": "chat-story", "aria-live": "polite" }, root);

  const promptRow = el("div", { class: "sc-row" }, root);
  const box = el("textarea", { class: "sc-box", rows: "2", "data-testid": "chat-prompt", "aria-label": "your words" },
                 promptRow);
  const send = el("button", { type: "button", class: "sc-send", "data-testid": "chat-send",
                              title: "send your words; the storyteller answers (or goes on)" }, promptRow, "Send");
  const buttons = el("div", { class: "sc-row" }, root);
  const button = (id, label, title) =>
    el("button", { type: "button", "data-testid": `chat-${id}`, title }, buttons, label);
  const cont = button("continue", "Continue", "more of the story or reply, from its end");
  const stop = button("stop", "Stop", "stop the turn being told");
  const refine = button("refine", "Refine", "tell the model's last part again (with your edited words from the box, " +
                        "if any, in place of yours); click a word first to go on from there instead");
  const illustrate = button("illustrate", "Illustrate", "draw the most drawable sentence of the story (chat: of " +
                            "the latest reply), or the words you selected in it; the picture goes under its paragraph");
  const fresh = button("new", "New story", "clear everything");

  const controls = el("div", { class: "sc-controls" }, root);
  const inputs = [];
  function control(trait, label, attrs, read, show) {
    const wrap = el("label", { class: "sc-control" }, controls, label + " ");
    const input = el("input", Object.assign({ "data-testid": `chat-${trait}`, "aria-label": label }, attrs), wrap);
    const shown = show ? el("span", { class: "sc-value" }, wrap) : null;
    const pull = () => {
      const v = model.get(trait);
      input.value = v === null || v === undefined ? "" : String(v);
      if (shown) shown.textContent = show(v);
    };
    input.addEventListener(attrs.type === "range" ? "input" : "change", () => {
      const v = read(input.value);
      if (v === undefined) { pull(); return; }  // not a valid value: show the current one again
      model.set(trait, v);
      commit();
      if (shown) shown.textContent = show(v);
    });
    model.on(`change:${trait}`, pull);
    pull();
    inputs.push(input);
  }
  const intIn = (lo, hi, empty) => (s) => {
    if (s.trim() === "") return empty;
    const v = Number(s);
    return Number.isInteger(v) && v >= lo && v <= hi ? v : undefined;
  };
  control("temperature", "temperature", { type: "range", min: "0", max: "2", step: "0.05" }, Number,
          (v) => (v === 0 ? "0 (greedy)" : Number(v).toFixed(2)));
  control("max_tokens", "max tokens", { type: "number", min: "1", max: "1024", step: "1" }, intIn(1, 1024, undefined));
  control("top_k", "top-k", { type: "number", min: "0", max: "99999", step: "1", title: "0: off" }, intIn(0, 99999, 0));
  control("top_p", "top-p", { type: "range", min: "0.05", max: "1", step: "0.05" }, Number,
          (v) => (v >= 1 ? "1 (off)" : Number(v).toFixed(2)));
  control("seed", "seed", { type: "number", min: "0", step: "1", placeholder: "random" }, intIn(0, 2 ** 31 - 1, null));

  const status = el("div", { class: "sc-status", "data-testid": "chat-status" }, root);
  const staticNote = el("div", { class: "sc-static", "data-testid": "chat-static-note" }, root);
  const whyStatic = el("span", { "data-testid": "chat-why-static" }, staticNote);
  staticNote.append("Live in JupyterLab: run ");
  el("code", {}, staticNote, "make start");
  staticNote.append(" and open this notebook. Here: ");
  const recorded = el("span", {}, staticNote);
  const engineNote = el("div", { class: "sc-engine", "data-testid": "chat-engine-note" }, root);
  const footer = el("div", { class: "sc-footer", "data-testid": "chat-footer" }, root);

  let kernel = false;  // true once the kernel answered this page's hello
  // the browser engine (the static book): off | loading | ready | failed; `browser` once it runs this widget
  let engineState = "off", engineWhy = "", browser = false, loadingText = "", stopAsked = false;
  const usable = () => kernel || browser;
  const commit = () => { if (kernel) model.save_changes(); };  // the browser engine's settings stay on the page
  // for tests and the curious (devtools): every turn the browser engine told, with its timings
  const browserLog = { turns: [], readyAt: null, which: null, bytes: 0 };
  root.llm101nBrowser = browserLog;
  let cut = null;      // a chosen cut point (a character offset into the story), or null
  let live = null;     // {seg, offset}: where streamed pieces go while generating

  function piece(parent, text, offset) {
    const s = el("span", { class: "sc-piece", "data-offset": String(offset) }, parent, text);
    if (cut !== null && offset >= cut) s.classList.add(offset === cut ? "sc-cut" : "sc-after-cut");
    return s;
  }

  // a picture Illustrate drew: the image (its caption as alt text), then the sentence drawn and the caption
  function figure(parent, pic) {
    const f = el("div", { class: "sc-figure", "data-testid": "chat-picture", "data-start": String(pic.start),
                          "data-end": String(pic.end) }, parent);
    el("img", { class: "sc-picture", src: pic.src, alt: pic.caption, title: `drawn as “${pic.caption}”` }, f);
    const line = el("div", { class: "sc-figure-line", "data-testid": "chat-picture-sentence" }, f);
    el("span", { class: "sc-figure-sentence" }, line, pic.sentence);
    el("span", { class: "sc-figure-caption" }, line, ` drawn as “${pic.caption}”`);
  }

  // 👍 / 👎 under the reply that is message `position` of the conversation (a sibling after its bubble, so the
  // bubble's text stays the reply's); the kernel keeps the rating (Python's `ratings`)
  // (drawn in SVG: emoji need a font that many systems lack; thumb down is thumb up turned around, in CSS)
  const THUMBS = [[1, "up", "good reply", "chat-rate-up"], [-1, "down", "bad reply", "chat-rate-down"]];
  const THUMB_PATH = "M2 10h4v11H2zM8 10l4-7c1.5 0 2.5 1 2 3l-1 4h6.5c1.4 0 2.3 1.3 1.9 2.6l-2.1 7c-.3.8-1 " +
    "1.4-1.9 1.4H8z";
  function thumbIcon(parent) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    for (const [k, v] of Object.entries({ viewBox: "0 0 24 24", width: "13", height: "13", "aria-hidden": "true",
      focusable: "false" })) svg.setAttribute(k, v);
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", THUMB_PATH);
    path.setAttribute("fill", "currentColor");
    svg.append(path);
    parent.append(svg);
  }
  function thumbs(bubble, position) {
    const row = el("div", { class: "sc-rate", role: "group", "aria-label": "rate this reply",
                            "data-position": String(position) });
    for (const [value, way, label, testid] of THUMBS) {
      const b = el("button", { type: "button", class: `sc-thumb sc-thumb-${way}`, "data-testid": testid,
                               "data-value": String(value), "aria-label": label,
                               title: `${label} (press again to clear)` }, row);
      thumbIcon(b);
      b.addEventListener("click", () => {
        const now = (model.get("ratings") || {})[String(position)] || 0;
        post("rate", { position, rating: now === value ? 0 : value });
      });
    }
    bubble.after(row);
  }
  function drawThumbs() {
    const ratings = model.get("ratings") || {}, st = model.get("status");
    const busy = st === "generating" || st === "drawing";
    for (const row of view.querySelectorAll(".sc-rate")) {
      const rating = ratings[row.dataset.position] || 0;
      for (const b of row.querySelectorAll("button")) {
        b.setAttribute("aria-pressed", String(Number(b.dataset.value) === rating));
        b.disabled = !kernel || busy;  // ratings go to the kernel's feedback file: none in the browser
      }
    }
  }

  function drawStory() {
    view.replaceChildren();
    live = null;
    const story = model.get("story"), chat = model.get("mode") === "chat";
    const pictures = [...(model.get("pictures") || [])].sort((a, b) => a.at - b.at);
    const bubbles = [];
    let offset = 0, bubble = null, next = 0;
    story.forEach((seg, i) => {
      // chat: one bubble per message (parts of one role in a row, e.g. a reply continued, are one message)
      if (chat && (!bubble || bubble.dataset.role !== seg.role)) {
        bubble = el("div", { class: `sc-bubble sc-bubble-${seg.role}`, "data-role": seg.role,
                             "data-testid": `chat-message-${seg.role}` }, view);
        bubbles.push(bubble);
      }
      const parent = chat ? bubble : view;
      const span = () => el("span", { class: `sc-seg sc-${seg.role}`, "data-role": seg.role,
                                      "data-testid": `chat-${seg.role}` }, parent);
      let s = span(), after = false;  // after: a picture came since s's last piece (the text goes on in a new span)
      const put = (q) => {
        if (after) {
          s = span();
          after = false;
          if (q[0] === "\n") {  // the picture ends its paragraph's line already: this line break is hidden
            piece(s, "\n", offset++).classList.add("sc-gap");
            q = q.slice(1);
          }
        }
        if (!q) return;
        piece(s, q, offset);
        offset += q.length;
      };
      // your words are clickable word by word; the model's piece by piece (as they streamed in)
      for (let q of seg.pieces.flatMap((p) => (seg.role === "user" ? p.match(/\s*\S+\s*|\s+/g) || [] : [p]))) {
        // a picture goes where its paragraph ends (Python's place_pictures says where: "at"), between the text's
        // spans, not in them (it is not part of the story's text), splitting a piece if it must
        while (next < pictures.length && pictures[next].at <= offset + q.length) {
          const head = q.slice(0, Math.max(0, pictures[next].at - offset));
          if (head) { put(head); q = q.slice(head.length); }
          figure(parent, pictures[next++]);
          after = true;
        }
        if (q) put(q);
      }
      if (i === story.length - 1 && seg.role === "model" && model.get("status") === "generating") {
        live = { seg: s, offset };
      }
    });
    bubbles.forEach((b, position) => {  // a reply being told is rated once it is told
      if (b.dataset.role === "model" && !(live && position === bubbles.length - 1)) thumbs(b, position);
    });
    drawThumbs();
    if (!story.length) el("span", { class: "sc-empty" }, view, MODE_TEXT[chat ? "chat" : "story"].empty);
    const notice = model.get("notice");
    if (notice) el("div", { class: "sc-notice", "data-testid": "chat-notice" }, view, notice);
    view.dataset.length = String(offset);
  }

  function drawState() {
    const st = model.get("status"), busy = st === "generating" || st === "drawing", mode = model.get("mode");
    const text = MODE_TEXT[mode] || MODE_TEXT.story, why = model.get("chat_unavailable");
    const canUse = usable();
    root.dataset.kernel = String(kernel);
    root.dataset.engine = kernel ? "kernel" : browser ? "browser" : engineState === "loading" ? "loading" : "recorded";
    root.dataset.status = st;
    root.dataset.mode = mode;
    root.classList.toggle("sc-live", canUse);
    root.classList.toggle("sc-chat", mode === "chat");
    staticNote.style.display = canUse || engineState === "loading" ? "none" : "";
    whyStatic.textContent = engineWhy ? engineWhy + " " : "";
    recorded.textContent = text.recorded + ".";
    engineNote.style.display = !kernel && (browser || engineState === "loading") ? "" : "none";
    engineNote.textContent = browser ? `Running in your browser: ${browserLog.about}. In JupyterLab (make start) ` +
      "the same widget runs your own storylib." : loadingText || "Loading the storyteller into your browser…";
    modeSelect.value = mode;
    modeSelect.disabled = !canUse || busy;
    chatOption.disabled = Boolean(why);
    unavailable.textContent = why;
    unavailable.style.display = why ? "" : "none";
    box.placeholder = text.placeholder;
    refine.textContent = text.refine;
    fresh.textContent = text.fresh;
    for (const b of [send, cont, refine]) b.disabled = !canUse || busy;
    illustrate.disabled = !kernel || busy;  // the illustrator runs in Python only
    illustrate.title = kernel || !browser ? illustrate.title : "Illustrate needs the kernel (JupyterLab: make start)";
    fresh.disabled = !canUse;
    stop.disabled = !canUse || st !== "generating";
    box.disabled = !canUse;
    for (const input of inputs) input.disabled = !canUse;
    const stats = model.get("stats");
    let line = STATUS_TEXT[st] || "";
    if ((st === "done" || st === "stopped") && stats && stats.summary) line = stats.summary;
    if (st === "error") line = text.failed;
    if (!canUse && engineState === "loading") line = loadingText;
    if (canUse && cut !== null && !busy) {
      line = "✂ Refine goes on from the marked word (your words in the box first); click it again to cancel";
    }
    status.textContent = line;
    footer.textContent = model.get("footer");
    drawThumbs();
  }

  function post(type, extra) {
    if (browser && !kernel) browserAct(Object.assign({ type }, extra || {}));
    else model.send(Object.assign({ type }, extra || {}));
  }
  send.addEventListener("click", () => {
    post("send", { text: box.value });
    box.value = "";
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !send.disabled) { e.preventDefault(); send.click(); }
  });
  cont.addEventListener("click", () => post("continue"));
  modeSelect.addEventListener("change", () => {
    cut = null;
    if (browser && !kernel) {  // a new conversation in the other mode (its model loads on its first turn)
      model.set({ mode: modeSelect.value, story: [], stats: {}, notice: "", status: "idle", pictures: [] });
      return;
    }
    model.set("mode", modeSelect.value);
    model.save_changes();
  });
  stop.addEventListener("click", () => post("stop"));
  fresh.addEventListener("click", () => { cut = null; post("new"); });
  // The words selected in the story, {text, start} (start: their character offset, when the selection starts in
  // a piece's text), or null. Read at mousedown on Illustrate, before the click could move the selection.
  function selectedWords() {
    const sel = window.getSelection();
    if (!sel || sel.isCollapsed || !sel.rangeCount) return null;
    const range = sel.getRangeAt(0), text = sel.toString();
    if (!view.contains(range.commonAncestorContainer) || !text.trim()) return null;
    const node = range.startContainer;
    const p = node.nodeType === Node.TEXT_NODE ? node.parentElement.closest(".sc-piece") : null;
    return { text, start: p ? Number(p.dataset.offset) + range.startOffset : null };
  }
  let chosen = null;
  illustrate.addEventListener("mousedown", () => { chosen = selectedWords(); });
  illustrate.addEventListener("click", () => {
    post("illustrate", chosen || selectedWords() || {});
    chosen = null;
  });
  refine.addEventListener("click", () => {
    post("refine", { cut, text: box.value });
    box.value = "";
    cut = null;
  });
  view.addEventListener("click", (e) => {
    const p = e.target.closest(".sc-piece");
    const busy = ["generating", "drawing"].includes(model.get("status"));
    if (!p || !usable() || busy || !window.getSelection().isCollapsed) return;  // a drag selects words: no cut
    const at = Number(p.dataset.offset);
    cut = cut === at ? null : at;
    drawStory();
    drawState();
  });

  let scrolling = false;  // a scroll to the end is asked for the next frame (not per piece: each would lay out)
  function appendPiece(text) {
    piece(live.seg, text, live.offset);
    live.offset += text.length;
    view.dataset.length = String(live.offset);
    if (!scrolling) {
      scrolling = true;
      requestAnimationFrame(() => { scrolling = false; view.scrollTop = view.scrollHeight; });
    }
  }
  model.on("msg:custom", (msg) => {
    if (msg.type === "piece" && live && msg.gen === model.get("gen")) appendPiece(msg.text);
  });

  // ---- the browser engine: the kernel's act() and _turn(), in the page
  function browserAct(msg) {
    const busy = ["generating", "drawing"].includes(model.get("status")), mode = model.get("mode");
    if (msg.type === "stop") { stopAsked = true; return; }
    if (msg.type === "new") {  // a new gen: the turn being told (if any) stops and its pieces go nowhere
      stopAsked = true;
      model.set({ gen: model.get("gen") + 1, story: [], stats: {}, notice: "", status: "idle", pictures: [] });
      return;
    }
    if (busy || !["send", "continue", "refine"].includes(msg.type)) return;
    let segs = model.get("story").map((s) => ({ role: s.role, pieces: [...s.pieces] }));
    const text = String(msg.text || "").trim();
    if (msg.type === "send") segs = addUser(segs, text, mode);
    if (msg.type === "refine") segs = rewindStory(segs, msg.cut, text, mode);
    browserTurn(segs, mode);
  }

  async function browserTurn(segs, mode) {
    const gen = model.get("gen") + 1;
    stopAsked = false;
    model.set({ gen, notice: "", status: "generating", story: [...segs, { role: "model", pieces: [] }] });
    const maxTokens = model.get("max_tokens"), topK = model.get("top_k"), topP = model.get("top_p");
    const settings = { maxTokens, temperature: model.get("temperature"), topK: topK || 0, topP: topP >= 1 ? 1 : topP,
                       seed: model.get("seed"), shouldStop: () => stopAsked || model.get("gen") !== gen };
    const pieces = [], decoder = new TextDecoder();
    const turn = { mode, startedAt: performance.now(), firstTokenAt: null };
    let result = null, notice = "";
    const run = async () => {
      const engine = await browserEngine(mode === "chat" ? "chat" : BROWSER.hasStory ? "story" : "chat", progress);
      let ids;
      if (mode === "story") ids = [engine.eot, ...engine.encodeOrdinary(storyText(segs))];
      else {
        const messages = messagesOf(segs);
        const partial = messages.length && messages[messages.length - 1].role === "assistant" ? messages.pop().content
          : "";
        if (!messages.length) throw new Error("chat mode answers a message: type one and press Send");
        const reply = engine.encodeOrdinary(partial);
        ids = [...engine.chatPrompt(messages, maxTokens + reply.length), ...reply];
      }
      turn.promptTokens = ids.length;
      turn.about = engine.about;
      if (model.get("gen") === gen) model.set("footer", footerOf(engine));  // story mode: the storyteller
      result = await engine.generate(ids, settings, (id, bytes) => {
        if (turn.firstTokenAt === null) turn.firstTokenAt = performance.now();
        const t = decoder.decode(bytes, { stream: true });
        if (t && model.get("gen") === gen) { pieces.push(t); if (live) appendPiece(t); }
      });
      const tail = decoder.decode();
      if (tail) pieces.push(tail);
    };
    const done = BROWSER.queue.then(run);  // one turn at a time per page: the engines are single threaded
    BROWSER.queue = done.catch(() => {});
    try { await done; } catch (e) { notice = `the browser engine failed: ${e.message || e}`; }
    if (model.get("gen") !== gen) return;  // New was pressed meanwhile
    const story = pieces.length ? [...segs, { role: "model", pieces }] : segs;
    if (!result) { model.set({ story, notice, status: "error" }); return; }
    const n = result.ids.length, reason = result.reason === "end" ? (mode === "chat" ? "end_chat" : "end")
      : result.reason === "length" || n >= maxTokens ? "length" : "stopped";
    const WHY = { end: "the story ended (<|endoftext|>)", end_chat: "the reply ended (<|end|>)",
                  length: "reached the length limit", stopped: "stopped" };
    const tps = result.seconds > 0 ? n / result.seconds : 0;
    Object.assign(turn, { n_tokens: n, seconds: result.seconds, tokens_per_s: tps, reason: result.reason,
                          decode_tokens_per_s: result.decodeTokensPerS, first_token_s: result.firstTokenSeconds,
                          ids: result.ids, text: pieces.join("") });
    browserLog.turns.push(turn);
    model.set({ story, status: reason === "stopped" ? "stopped" : "done",
                stats: { n_tokens: n, seconds: result.seconds, tokens_per_s: tps, reason,
                         summary: `${n} tokens in ${result.seconds.toFixed(2)} s · ${tps.toFixed(0)} tokens/s · ` +
                                  `${WHY[reason]} · in your browser` } });
  }

  function footerOf(engine) {
    return `engine: your browser (storylib/web, WebAssembly) · model: ${engine.about}, ` +
      `${(engine.nParams / 1e6).toFixed(1)} M parameters, context ${engine.config.block_size} tokens`;
  }

  function progress(got, total) {
    loadingText = `Loading the storyteller into your browser… ${(got / 1e6).toFixed(1)} of ` +
      `${(total / 1e6).toFixed(1)} MB`;
    if (!browser) drawState();
  }

  // The static book: no kernel will answer; load the engine at once (a kernel that answers after all wins).
  async function startBrowser() {
    engineState = "loading";
    drawState();
    try {
      const m = await engineModule();
      if (!m.simdSupported()) {
        engineState = "failed";
        engineWhy = "This browser has no WebAssembly SIMD, so the storyteller cannot run in it.";
        root.dataset.engineWhy = "no-simd";
        drawState();
        return;
      }
      const manifest = await (await fetch(ENGINE_BASE + "manifest.json")).json();
      BROWSER.hasStory = Boolean(manifest.models.story);
      const which = model.get("mode") === "story" && BROWSER.hasStory ? "story" : "chat";
      const engine = await browserEngine(which, progress);
      browserLog.readyAt = performance.now();
      browserLog.which = which;
      browserLog.bytes = engine.bytes;
      browserLog.about = `WebAssembly SIMD, ${(engine.nParams / 1e6).toFixed(1)} M parameters as fp16 ` +
        `(${(engine.bytes / 1e6).toFixed(1)} MB), no server`;
      engineState = "ready";
      if (!kernel) {
        browser = true;
        model.set("footer", footerOf(engine));
      }
    } catch (e) {
      engineState = "failed";
      engineWhy = "The storyteller cannot run in this browser here (" + (e.message || e) + ").";
      root.dataset.engineWhy = "no-engine";
    }
    drawState();
  }
  model.on("change:story", () => { cut = null; drawStory(); drawState(); });
  model.on("change:notice", drawStory);
  model.on("change:pictures", () => {
    const key = (f) => `${f.dataset.start}:${f.dataset.end}:${f.querySelector("img").src}`;
    const before = new Set([...view.querySelectorAll(".sc-figure")].map(key));
    drawStory();
    // a new picture comes into view (the story's box scrolls; the picture may be below its fold)
    const drawn = [...view.querySelectorAll(".sc-figure")].find((f) => !before.has(key(f)));
    if (drawn) drawn.scrollIntoView({ block: "nearest" });
  });
  model.on("change:mode", () => { cut = null; drawStory(); drawState(); });
  for (const t of ["status", "stats", "footer", "chat_unavailable"]) model.on(`change:${t}`, drawState);
  model.on("change:ratings", drawThumbs);
  drawStory();
  drawState();
  greetKernel(model, () => { kernel = true; browser = false; drawState(); });
  if (ENGINE_BASE) startBrowser();
}
export default { render };

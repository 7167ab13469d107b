// StoryChat's front end (storylib/widgets/chat.py). storylib.widgets.front_end puts
// js/_dom.js (el, greetKernel) before it: anywidget loads one module from a blob: URL, which cannot import another file.

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
      model.save_changes();
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
  staticNote.append("Live in JupyterLab: run ");
  el("code", {}, staticNote, "make start");
  staticNote.append(" and open this notebook. Here: ");
  const recorded = el("span", {}, staticNote);
  const footer = el("div", { class: "sc-footer", "data-testid": "chat-footer" }, root);

  let kernel = false;  // true once the kernel answered this page's hello
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
        b.disabled = !kernel || busy;
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
    root.dataset.kernel = String(kernel);
    root.dataset.status = st;
    root.dataset.mode = mode;
    root.classList.toggle("sc-live", kernel);
    root.classList.toggle("sc-chat", mode === "chat");
    staticNote.style.display = kernel ? "none" : "";
    recorded.textContent = text.recorded + ".";
    modeSelect.value = mode;
    modeSelect.disabled = !kernel || busy;
    chatOption.disabled = Boolean(why);
    unavailable.textContent = why;
    unavailable.style.display = why ? "" : "none";
    box.placeholder = text.placeholder;
    refine.textContent = text.refine;
    fresh.textContent = text.fresh;
    for (const b of [send, cont, refine, illustrate]) b.disabled = !kernel || busy;
    fresh.disabled = !kernel;
    stop.disabled = !kernel || st !== "generating";
    box.disabled = !kernel;
    for (const input of inputs) input.disabled = !kernel;
    const stats = model.get("stats");
    let line = STATUS_TEXT[st] || "";
    if ((st === "done" || st === "stopped") && stats && stats.summary) line = stats.summary;
    if (st === "error") line = text.failed;
    if (kernel && cut !== null && !busy) {
      line = "✂ Refine goes on from the marked word (your words in the box first); click it again to cancel";
    }
    status.textContent = line;
    footer.textContent = model.get("footer");
    drawThumbs();
  }

  function post(type, extra) {
    model.send(Object.assign({ type }, extra || {}));
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
    if (!p || !kernel || busy || !window.getSelection().isCollapsed) return;  // a drag selects words: no cut
    const at = Number(p.dataset.offset);
    cut = cut === at ? null : at;
    drawStory();
    drawState();
  });

  model.on("msg:custom", (msg) => {
    if (msg.type === "piece" && live && msg.gen === model.get("gen")) {
      piece(live.seg, msg.text, live.offset);
      live.offset += msg.text.length;
      view.dataset.length = String(live.offset);
      view.scrollTop = view.scrollHeight;
    }
  });
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
  greetKernel(model, () => { kernel = true; drawState(); });
}
export default { render };

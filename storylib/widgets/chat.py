"""The storyteller chat: you write the start of a story, the model goes on, token by token.

    from storylib.widgets import StoryChat
    StoryChat()                          # the shipped storyteller; tells a first story, then it is yours
    StoryChat(prompt=None)               # start empty
    StoryChat(model=model, tokenizer=tok, temperature=0.5, max_tokens=120)

The conversation shows your words and the model's in two styles. Send adds your words and lets the model
continue; Continue asks for more; Stop ends the story being told after the current token; New story clears
everything; Refine tells the model's last part again (with your edited words from the box, if any) or, after
you click a word of the story, cuts the story there and goes on from that point. Temperature, max tokens,
top-k, top-p and the seed are the sampler's (storylib.kvcache.process_logits). After each turn the status line
shows the tokens and tokens/s. The footer names the storylib that runs (yours in a workspace) and the model.

How it streams. The story lives in Python (storylib.storyteller.StorySession). A button sends a custom message
to the kernel; `handle` starts the generation in a worker thread and returns at once, so the kernel stays free
to receive the next message (Stop sets a threading.Event the worker checks after every piece). The worker
sends each text piece as a custom message {"type": "piece"} as soon as storylib.kvcache.generate_stream yields
it, and at the end sets the traits (story, stats, status) in one update. A learner's unfinished exercise shows
as a notice in the conversation naming it (storylib.storyteller.friendly_error), never a traceback.

Without a kernel (the static book) the widget shows the story recorded when the page was built, with the
controls disabled. It knows a kernel is there only when the kernel answers its "hello" (a nonce made fresh on
each page load), so saved state can never make a static page look live.
"""

from __future__ import annotations

import threading

import anywidget
import traitlets

from storylib.storyteller import DEFAULT_PROMPT, MODES, Sampling, StorySession, describe_storylib, friendly_error
from storylib.widgets._dom import DOM_JS

_ESM = r"""

const SESSION = Math.random().toString(36).slice(2, 12);  // this page load (see the hello handshake)
let helloCount = 0;
const STATUS_TEXT = { idle: "", generating: "telling…", done: "", stopped: "stopped", error: "" };

function render({ model, el: host }) {
  const root = el("div", { class: "sc", "data-testid": "story-chat", "data-kernel": "false" }, host);
  const view = el("div", { class: "sc-story", "data-testid": "chat-story", "aria-live": "polite" }, root);

  const promptRow = el("div", { class: "sc-row" }, root);
  const box = el("textarea", { class: "sc-box", rows: "2", "data-testid": "chat-prompt", "aria-label": "your words",
                               placeholder: "Once upon a time, …  (Enter sends, Shift+Enter: new line)" }, promptRow);
  const send = el("button", { type: "button", class: "sc-send", "data-testid": "chat-send",
                              title: "add your words to the story; the storyteller goes on" }, promptRow, "Send");
  const buttons = el("div", { class: "sc-row" }, root);
  const button = (id, label, title) =>
    el("button", { type: "button", "data-testid": `chat-${id}`, title }, buttons, label);
  const cont = button("continue", "Continue", "more of the story, from its end");
  const stop = button("stop", "Stop", "stop the story being told");
  const refine = button("refine", "Refine", "tell the model's last part again (with your edited words from the box, " +
                        "if any); click a word of the story first to go on from there instead");
  const fresh = button("new", "New story", "clear the story");

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
  staticNote.append(" and open this notebook. Here: a story recorded when the book was built.");
  const footer = el("div", { class: "sc-footer", "data-testid": "chat-footer" }, root);

  let kernel = false;  // true once the kernel answered this page's hello
  let cut = null;      // a chosen cut point (a character offset into the story), or null
  let live = null;     // {seg, offset}: where streamed pieces go while generating

  function piece(parent, text, offset) {
    const s = el("span", { class: "sc-piece", "data-offset": String(offset) }, parent, text);
    if (cut !== null && offset >= cut) s.classList.add(offset === cut ? "sc-cut" : "sc-after-cut");
    return s;
  }

  function drawStory() {
    view.replaceChildren();
    live = null;
    const story = model.get("story");
    let offset = 0;
    story.forEach((seg, i) => {
      const s = el("span", { class: `sc-seg sc-${seg.role}`, "data-role": seg.role, "data-testid": `chat-${seg.role}` },
                   view);
      for (const p of seg.pieces) {
        // your words are clickable word by word; the model's piece by piece (as they streamed in)
        const parts = seg.role === "user" ? p.match(/\s*\S+\s*|\s+/g) || [] : [p];
        for (const q of parts) { piece(s, q, offset); offset += q.length; }
      }
      if (i === story.length - 1 && seg.role === "model" && model.get("status") === "generating") {
        live = { seg: s, offset };
      }
    });
    if (!story.length) el("span", { class: "sc-empty" }, view, "Your story will appear here. Type its first words.");
    const notice = model.get("notice");
    if (notice) el("div", { class: "sc-notice", "data-testid": "chat-notice" }, view, notice);
    view.dataset.length = String(offset);
  }

  function drawState() {
    const st = model.get("status"), busy = st === "generating";
    root.dataset.kernel = String(kernel);
    root.dataset.status = st;
    root.classList.toggle("sc-live", kernel);
    staticNote.style.display = kernel ? "none" : "";
    for (const b of [send, cont, refine]) b.disabled = !kernel || busy;
    fresh.disabled = !kernel;
    stop.disabled = !kernel || !busy;
    box.disabled = !kernel;
    for (const input of inputs) input.disabled = !kernel;
    const stats = model.get("stats");
    let line = STATUS_TEXT[st] || "";
    if ((st === "done" || st === "stopped") && stats && stats.summary) line = stats.summary;
    if (st === "error") line = "could not tell the story: see the note above";
    if (kernel && cut !== null && !busy) {
      line = "✂ Refine goes on from the marked word (your words in the box first); click it again to cancel";
    }
    status.textContent = line;
    footer.textContent = model.get("footer");
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
  stop.addEventListener("click", () => post("stop"));
  fresh.addEventListener("click", () => { cut = null; post("new"); });
  refine.addEventListener("click", () => {
    post("refine", { cut, text: box.value });
    box.value = "";
    cut = null;
  });
  view.addEventListener("click", (e) => {
    const p = e.target.closest(".sc-piece");
    if (!p || !kernel || model.get("status") === "generating") return;
    const at = Number(p.dataset.offset);
    cut = cut === at ? null : at;
    drawStory();
    drawState();
  });

  model.on("msg:custom", (msg) => {
    if (msg.type === "hello" && msg.nonce.startsWith(SESSION + ":")) {
      kernel = true;
      drawState();
    } else if (msg.type === "piece" && live && msg.gen === model.get("gen")) {
      piece(live.seg, msg.text, live.offset);
      live.offset += msg.text.length;
      view.dataset.length = String(live.offset);
      view.scrollTop = view.scrollHeight;
    }
  });
  model.on("change:story", () => { cut = null; drawStory(); drawState(); });
  model.on("change:notice", drawStory);
  for (const t of ["status", "stats", "footer"]) model.on(`change:${t}`, drawState);
  drawStory();
  drawState();
  post("hello", { nonce: `${SESSION}:${++helloCount}` });  // a static page has no kernel: no answer comes
}
export default { render };
"""

_CSS = """
.sc { font-family: system-ui, sans-serif; font-size: 14px; border: 1px solid #ddd; border-radius: 8px;
  padding: 10px; max-width: 860px; background: #fff; color: #222; }
.sc-story { min-height: 7em; max-height: 24em; overflow-y: auto; white-space: pre-wrap; line-height: 1.6;
  padding: 8px 10px; border: 1px solid #eee; border-radius: 6px; background: #fcfcfa; font-size: 15px; }
.sc-user { color: #0d47a1; font-weight: 600; background: #e8f0fe; border-radius: 3px; }
.sc-model { color: #222; }
.sc-live .sc-piece { cursor: pointer; }
.sc-live .sc-piece:hover { text-decoration: underline dotted #888; }
.sc-cut { border-left: 2px solid #c62828; }
.sc-cut, .sc-after-cut { color: #999; text-decoration: line-through; }
.sc-empty { color: #999; font-style: italic; }
.sc-notice { margin-top: 8px; padding: 6px 8px; border-left: 4px solid #e65100; background: #fff3e0; color: #5d2c00;
  white-space: normal; font-size: 13px; }
.sc-row { display: flex; gap: 6px; margin-top: 8px; align-items: stretch; flex-wrap: wrap; }
.sc-box { flex: 1; min-width: 240px; font: inherit; padding: 4px 6px; resize: vertical; }
.sc button { padding: 4px 12px; border-radius: 4px; border: 1px solid #bbb; background: #f5f5f5; cursor: pointer; }
.sc button.sc-send { background: #1565c0; color: #fff; border-color: #1565c0; }
.sc button:disabled { opacity: 0.45; cursor: default; }
.sc-controls { display: flex; gap: 14px; flex-wrap: wrap; margin-top: 8px; font-size: 12px; color: #444; }
.sc-control { display: inline-flex; gap: 4px; align-items: center; }
.sc-control input[type=number] { width: 6.5em; }
.sc-value { min-width: 5.5em; font-variant-numeric: tabular-nums; }
.sc-status { margin-top: 6px; min-height: 1.3em; font-size: 12px; color: #333; font-variant-numeric: tabular-nums; }
.sc-static { margin-top: 4px; font-size: 12px; color: #6a4c00; background: #fffbe6; padding: 3px 6px;
  border-radius: 4px; }
.sc-footer { margin-top: 6px; font-size: 11px; color: #888; }
"""


class StoryChat(anywidget.AnyWidget):
    """A story told in turns by you and a model, streamed token by token (see the module docstring)."""

    _esm = DOM_JS + _ESM
    _css = _CSS

    # the story: [{"role": "user" | "model", "pieces": [str, ...]}], Python's; the front end draws it
    story = traitlets.List(traitlets.Dict()).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | generating | done | stopped | error
    stats = traitlets.Dict().tag(sync=True)  # the last turn: n_tokens, seconds, tokens_per_s, reason, summary
    notice = traitlets.Unicode("").tag(sync=True)  # a message for the reader shown in the conversation
    footer = traitlets.Unicode("").tag(sync=True)  # which storylib runs, and the model
    gen = traitlets.Int(0).tag(sync=True)  # the turn being streamed: pieces of an older turn are ignored
    mode = traitlets.Unicode("story").tag(sync=True)  # "story" only; Chapter 14 adds instructions
    # the sampler (storylib.kvcache.process_logits): top_k 0 and top_p 1 mean off, seed None means random
    temperature = traitlets.Float(0.8).tag(sync=True)
    max_tokens = traitlets.Int(200).tag(sync=True)
    top_k = traitlets.Int(0).tag(sync=True)
    top_p = traitlets.Float(0.95).tag(sync=True)
    seed = traitlets.Int(None, allow_none=True).tag(sync=True)

    def __init__(self, prompt: str | None = DEFAULT_PROMPT, *, model=None, tokenizer=None, story_seed: int | None = 0,
                 **kwargs) -> None:
        """prompt: the first story's beginning, told right away (None: start empty) with seed story_seed, so the
        book shows the same first story at every build. model, tokenizer: default the shipped storyteller.
        Other keyword arguments set traits (temperature=0.5, max_tokens=100, mode="story", ...)."""
        super().__init__(**kwargs)
        self.session = StorySession(model, tokenizer, mode=self.mode)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_msg(self._on_msg)
        try:
            self.session.load()
        except Exception as e:  # a learner's unfinished model or tokenizer: say which exercise
            self.notice, self.status = friendly_error(e), "error"
        self.footer = f"storylib: {describe_storylib()} · model: {self.session.describe_model()}"
        if prompt and self.status != "error":
            self.session.add_user(prompt)
            self.tell(block=True, seed=story_seed)

    @traitlets.validate("mode")
    def _valid_mode(self, proposal):
        if proposal["value"] not in MODES:
            raise traitlets.TraitError(f"mode must be one of {MODES} (instructions arrive with Chapter 14)")
        return proposal["value"]

    # -- the sampler and the worker

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens, top_k=self.top_k or None,
                        top_p=None if self.top_p >= 1 else self.top_p, seed=self.seed)

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the turn being told; True when none is running any more."""
        if self._worker is not None:
            self._worker.join(timeout)
        return not self.busy

    def tell(self, block: bool = False, seed: int | None = None) -> None:
        """Let the model go on from the end of the story: in a worker thread (block: in this one)."""
        if self.busy:
            return
        sampling = self.sampling()
        if seed is not None:
            sampling.seed = seed
        self._stop = threading.Event()
        with self.hold_sync():
            self.gen += 1
            self.notice, self.status = "", "generating"
            self.story = [*self.session.snapshot(), {"role": "model", "pieces": []}]
        if block:
            self._turn(self.gen, sampling, self._stop)
        else:
            self._worker = threading.Thread(target=self._turn, args=(self.gen, sampling, self._stop),
                                            name="story-chat", daemon=True)
            self._worker.start()

    def _turn(self, gen: int, sampling: Sampling, stop: threading.Event) -> None:
        g = self.session.generate(sampling, stop, lambda p: self.send({"type": "piece", "gen": gen, "text": p}))
        with self.hold_sync():
            self.story = self.session.snapshot()
            self.stats = {"n_tokens": g.n_tokens, "seconds": g.seconds, "tokens_per_s": g.tokens_per_s,
                          "reason": g.reason, "summary": g.summary()}
            self.notice = g.error or ""
            self.status = "error" if g.error else "stopped" if g.reason == "stopped" else "done"

    def halt(self, timeout: float = 30) -> None:
        """Stop the turn being told and wait for it."""
        self._stop.set()
        self.wait(timeout)

    # -- messages from the front end

    def _on_msg(self, _widget, content, _buffers) -> None:
        self.handle(content)

    def handle(self, content: dict) -> None:
        """One message from the front end: hello, send {text}, continue, stop, new, refine {cut, text}."""
        kind = content.get("type")
        if kind == "hello":  # the handshake: only a live kernel answers
            self.send({"type": "hello", "nonce": str(content.get("nonce", ""))})
        elif kind == "stop":
            self._stop.set()
        elif kind == "new":
            self.halt()
            self.session.new()
            with self.hold_sync():
                self.story, self.stats, self.notice, self.status = [], {}, "", "idle"
        elif kind in ("send", "continue", "refine") and not self.busy:
            text = str(content.get("text") or "").strip()
            try:
                if kind == "send":
                    self.session.add_user(text)
                elif kind == "refine":
                    cut = content.get("cut")
                    self.session.rewind(None if cut is None else int(cut), text)
            except (TypeError, ValueError) as e:
                with self.hold_sync():
                    self.story, self.notice, self.status = self.session.snapshot(), friendly_error(e), "error"
                return
            self.tell()

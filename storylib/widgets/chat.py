"""The storyteller chat: you ask for a story and for changes to it (or write a story's start and the model goes
on), and the reply streams in token by token.

    from storylib.widgets import StoryChat
    StoryChat()                          # the chat model: answers a first request and a change, then it is yours
    StoryChat(prompt=None)               # start empty
    StoryChat(prompt=["Write a story about a dog named Max.", "Call the dog Rex."])   # these turns first
    StoryChat(mode="story")              # the storyteller continues your words (a first story from DEFAULT_PROMPT)
    StoryChat(model=model, tokenizer=tok, temperature=0.5, max_tokens=120)

Two modes (storylib.storyteller.StorySession), switched at the top: "chat" (the default) sends your message to
Chapter 14's chat model through the chat template and shows the reply; "story" lets the storyteller continue
your words. When the chat model cannot run (a workspace whose Chapter 14 is unfinished), one sentence at the
top says which exercise is missing and the widget continues stories instead. Send adds your words and lets the
model answer (or continue); Continue asks for more; Stop ends the turn being told after the current token; New
clears everything; Refine (chat: Regenerate) tells the model's last part again (with your edited words from the
box replacing yours, if any) or, after you click a word, cuts there and goes on from that point. Temperature,
max tokens, top-k, top-p and the seed are the sampler's (storylib.kvcache.process_logits). After each turn the
status line shows the tokens and tokens/s. The footer names the storylib that runs (yours in a workspace) and
the model.

How it streams. The story lives in Python (storylib.storyteller.StorySession). A button sends a custom message
to the kernel; `handle` starts the generation in a worker thread and returns at once, so the kernel stays free
to receive the next message (Stop sets a threading.Event the worker checks after every piece). The worker
sends each text piece as a custom message {"type": "piece"} as soon as storylib.kvcache.generate_stream yields
it, and at the end sets the traits (story, stats, status) in one update. A learner's unfinished exercise shows
as a notice in the conversation naming it (storylib.storyteller.friendly_error), never a traceback.

Without a kernel (the static book) the widget shows the turns recorded when the page was built, with the
controls disabled. It knows a kernel is there only when the kernel answers its "hello" (a nonce made fresh on
each page load), so saved state can never make a static page look live.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anywidget
import traitlets

from storylib.storyteller import FIRST_TURNS, MODES, Sampling, StorySession, describe_storylib, friendly_error
from storylib.widgets import front_end


class StoryChat(anywidget.AnyWidget):
    """A story told in turns by you and a model, streamed token by token (see the module docstring)."""

    _esm = front_end("chat")
    _css = Path(__file__).parent / "js" / "chat.css"

    # the story: [{"role": "user" | "model", "pieces": [str, ...]}], Python's; the front end draws it
    story = traitlets.List(traitlets.Dict()).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | generating | done | stopped | error
    stats = traitlets.Dict().tag(sync=True)  # the last turn: n_tokens, seconds, tokens_per_s, reason, summary
    notice = traitlets.Unicode("").tag(sync=True)  # a message for the reader shown in the conversation
    footer = traitlets.Unicode("").tag(sync=True)  # which storylib runs, and the model
    gen = traitlets.Int(0).tag(sync=True)  # the turn being streamed: pieces of an older turn are ignored
    mode = traitlets.Unicode("chat").tag(sync=True)  # "chat": instructions to the chat model; "story": continue
    chat_unavailable = traitlets.Unicode("").tag(sync=True)  # why chat mode cannot run here, in one sentence
    # the sampler (storylib.kvcache.process_logits): top_k 0 and top_p 1 mean off, seed None means random
    temperature = traitlets.Float(0.8).tag(sync=True)
    max_tokens = traitlets.Int(300).tag(sync=True)
    top_k = traitlets.Int(0).tag(sync=True)
    top_p = traitlets.Float(0.95).tag(sync=True)
    seed = traitlets.Int(None, allow_none=True).tag(sync=True)

    def __init__(self, prompt: str | Sequence[str] | None = ..., *, model=None, tokenizer=None,
                 story_seed: int | None = 0, **kwargs) -> None:
        """prompt: your first turns, each answered right away (turn i with seed story_seed + i, so the book shows
        the same conversation at every build): a string, a list of strings, None (start empty) or, by default,
        the mode's FIRST_TURNS (chat: a story asked for, then changed). model, tokenizer: default the course's
        (the chat model, or the storyteller in story mode). Other keyword arguments set traits (temperature=0.5,
        max_tokens=100, mode="story", ...)."""
        super().__init__(**kwargs)
        self.session = StorySession(model, tokenizer, mode=self.mode)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_msg(self._on_msg)
        self._load()
        if prompt is ...:
            prompt = FIRST_TURNS[self.mode]
        turns = [prompt] if isinstance(prompt, str) else list(prompt or [])
        for i, text in enumerate(t for t in turns if t):
            if self.status == "error":
                break
            self.session.add_user(text)
            self.tell(block=True, seed=None if story_seed is None else story_seed + i)

    def _load(self) -> None:
        """Load the mode's model; say why chat mode is off (then the mode is "story"), or what failed."""
        try:
            self.session.load()
        except Exception as e:  # a learner's unfinished model or tokenizer: say which exercise
            self.notice, self.status = friendly_error(e), "error"
        with self.hold_sync():
            self.chat_unavailable, self.mode = self.session.chat_unavailable, self.session.mode
            self.footer = f"storylib: {describe_storylib()} · model: {self.session.describe_model()}"

    @traitlets.validate("mode")
    def _valid_mode(self, proposal):
        if proposal["value"] not in MODES:
            raise traitlets.TraitError(f"mode must be one of {MODES}, got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.observe("mode")
    def _switch_mode(self, change) -> None:
        """The front end's mode switch: a new conversation in the other mode, its model loaded now."""
        session = getattr(self, "session", None)
        if session is None or change["new"] == session.mode:  # __init__'s, or the session's own fallback
            return
        self.halt()
        session.new()
        with self.hold_sync():
            self.story, self.stats, self.notice, self.status = [], {}, "", "idle"
            try:
                session.set_mode(change["new"])
            except ValueError as e:  # chat mode, once it could not load
                self.notice = str(e)
            self._load()

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

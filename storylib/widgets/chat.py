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

Illustrate (Chapter 17) draws the words you selected in the story, else the most drawable sentence of the story
(chat: of the latest reply), with storylib.illustrate.Illustrator (the illustrator folder: the `illustrator`
argument, else $LLM101N_ILLUSTRATOR, else models/illustrator; loaded on the first Illustrate) and the seed
setting (none: 0). The picture shows under the paragraph it illustrates, with the sentence drawn beneath it; it
stays there while the conversation goes on, goes when that sentence is cut away, and New clears it. Nothing to
draw, or no illustrator, is one sentence in the conversation; the story is never changed.

👍 / 👎 (Chapter 15) under each reply (chat mode) rate it: the conversation and the rating go into the widget's
feedback file, a storylib.service.ConversationStore (the web app's kind of database, source "widget"): the
`feedback_db` argument, else $LLM101N_FEEDBACK_DB, else ~/.local/share/llm101n/widget-feedback.sqlite3
(storylib.service.default_feedback_path; created at the first rating, never by merely showing the widget).
Regenerate and rate again: a liked and a disliked reply to the same request are a preference pair, and
`llm101n prefs export` writes them with the web app's. A rating shows while its reply (and everything before
it) stays as it was; one that cannot be saved is one notice, and the story is never changed.

How it streams. The story lives in Python (storylib.storyteller.StorySession). A button sends a custom message
to the kernel; `handle` starts the generation in a worker thread and returns at once, so the kernel stays free
to receive the next message (Stop sets a threading.Event the worker checks after every piece). The worker
sends each text piece as a custom message {"type": "piece"} as soon as storylib.kvcache.generate_stream yields
it, and at the end sets the traits (story, stats, status) in one update. A learner's unfinished exercise shows
as a notice in the conversation naming it (storylib.storyteller.friendly_error), never a traceback. Illustrate
draws in a worker thread too (status "drawing"), and sets `pictures` when done.

Without a kernel (the static book) the same widget runs the browser engine (storylib.web: the model compiled to
WebAssembly with SIMD, its fp16 weights and the tokenizer served from the site's _static/storyteller/): the
recorded turns show first, then Send, Continue, Stop, New, Refine and the sampler work as here, in the reader's
browser (Illustrate and the ratings need the kernel). Where the engine cannot run (no engine files on the site,
no WebAssembly SIMD) the recorded turns stay, with the controls disabled and a line saying why. The widget knows
a kernel is there only when the kernel answers its "hello" (a nonce made fresh on each page load), so saved state
can never make a static page look live; a kernel that answers always wins over the browser engine.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import anywidget
import traitlets

from storylib.service import ConversationStore, StoreError, default_feedback_path, prefix_keys
from storylib.storyteller import (
    FIRST_TURNS,
    MODES,
    Sampling,
    StorySession,
    describe_storylib,
    friendly_error,
    illustrate_error,
    illustrate_session,
    illustration_scope,
    load_illustrator,
)
from storylib.widgets import front_end
from storylib.widgets._live import LiveWidget


def paragraph_end(story: list[dict], end: int, chat: bool) -> int:
    """Where the paragraph holding story text offset `end` ends: the first line break from there, else the end of
    its message (chat: the parts of one role in a row) or of the story. `story` is a StoryChat.story."""
    text = "".join("".join(seg["pieces"]) for seg in story)
    bound, at = len(text), 0
    for i, seg in enumerate(story if chat else []):
        at += len("".join(seg["pieces"]))
        if at >= end and (i + 1 == len(story) or story[i + 1]["role"] != seg["role"]):
            bound = at
            break
    line = text.find("\n", end, bound)
    return bound if line < 0 else line


def place_pictures(pictures: list[dict], story: list[dict], chat: bool) -> list[dict]:
    """The pictures whose sentence is still where it was drawn from in `story`, in story order, each at the end of
    its paragraph (paragraph_end): a continued story keeps its pictures; one cut before the sentence loses it."""
    text = "".join("".join(seg["pieces"]) for seg in story)
    kept = [p for p in pictures if text[p["start"]:p["end"]] == p["sentence"]]
    return sorted(({**p, "at": paragraph_end(story, p["end"], chat)} for p in kept), key=lambda p: p["start"])


NOT_SAVED = "The rating was not saved: "  # how a failed 👍 / 👎 notice starts


class StoryChat(LiveWidget, anywidget.AnyWidget):
    """A story told in turns by you and a model, streamed token by token (see the module docstring)."""

    _esm = front_end("chat")
    _css = Path(__file__).parent / "js" / "chat.css"

    # the story: [{"role": "user" | "model", "pieces": [str, ...]}], Python's; the front end draws it
    story = traitlets.List(traitlets.Dict()).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | generating | drawing | done | stopped | error
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
    # Illustrate's pictures: {"start", "end": the sentence drawn, as offsets into the story's text; "at": where the
    # picture goes (the end of its paragraph); "sentence", "caption", "src": the PNG as a data: URL}
    pictures = traitlets.List(traitlets.Dict()).tag(sync=True)
    # 👍 / 👎: {"<i>": 1 | -1} for message i of the conversation (session.messages()), while that reply and all
    # before it are as they were rated
    ratings = traitlets.Dict().tag(sync=True)

    def __init__(self, prompt: str | Sequence[str] | None = ..., *, model=None, tokenizer=None,
                 story_seed: int | None = 0, illustrator: str | Path | None = None, illustrate: bool = False,
                 feedback_db: str | Path | None = None, **kwargs) -> None:
        """prompt: your first turns, each answered right away (turn i with seed story_seed + i, so the book shows
        the same conversation at every build): a string, a list of strings, None (start empty) or, by default,
        the mode's FIRST_TURNS (chat: a story asked for, then changed). model, tokenizer: default the course's
        (the chat model, or the storyteller in story mode). illustrator: the illustrator's folder for Illustrate
        (default: $LLM101N_ILLUSTRATOR, else models/illustrator); illustrate: once the first turns are told, draw
        a picture for the story as Illustrate does (the book's recorded story has one). feedback_db: where 👍 / 👎
        are kept (default: storylib.service.default_feedback_path()). Other keyword arguments set traits
        (temperature=0.5, max_tokens=100, mode="story", ...)."""
        self.feedback_db, self._feedback, self._feedback_cid = feedback_db, None, None
        self._rated: dict[int, tuple[str, int]] = {}  # message index -> (prefix_keys of it and before, rating)
        super().__init__(**kwargs)
        self.session = StorySession(model, tokenizer, mode=self.mode)
        self.illustrator_folder, self._illustrator = illustrator, None  # loaded by the first Illustrate
        self._stop = threading.Event()
        self.listen()
        self._load()
        if prompt is ...:
            prompt = FIRST_TURNS[self.mode]
        turns = [prompt] if isinstance(prompt, str) else list(prompt or [])
        for i, text in enumerate(t for t in turns if t):
            if self.status == "error":
                break
            self.session.add_user(text)
            self.tell(block=True, seed=None if story_seed is None else story_seed + i)
        if illustrate and self.status != "error" and self.story:
            self.illustrate(block=True)

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
        self._forget_conversation()
        with self.hold_sync():
            self.story, self.stats, self.notice, self.status, self.pictures = [], {}, "", "idle", []
            try:
                session.set_mode(change["new"])
            except ValueError as e:  # chat mode, once it could not load
                self.notice = str(e)
            self._load()

    # -- the sampler and the worker

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, max_tokens=self.max_tokens, top_k=self.top_k or None,
                        top_p=None if self.top_p >= 1 else self.top_p, seed=self.seed)

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
            self.start(self._turn, self.gen, sampling, self._stop, name="story-chat")

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

    # -- pictures (Chapter 17)

    def illustrate(self, selection: str = "", start: int | None = None, block: bool = False) -> None:
        """Draw `selection` (words selected in the story, from text offset `start`), else the most drawable
        sentence of the story (chat: of the latest reply), and add the picture to `pictures`: in the worker
        thread (block: in this one). Nothing to draw or no illustrator: a notice; the story never changes."""
        if self.busy:
            return
        before = self.status if self.status != "error" else "idle"  # the notice it went with is cleared
        with self.hold_sync():
            self.notice, self.status = "", "drawing"
        if block:
            self._draw(selection, start, before)
        else:
            self.start(self._draw, selection, start, before, name="story-chat-illustrate")

    def _draw(self, selection: str, start: int | None, status: str) -> None:
        pictures, notice = self.pictures, ""
        try:
            if self._illustrator is None:
                self._illustrator = load_illustrator(self.illustrator_folder)
            seed = 0 if self.seed is None else self.seed
            picture = illustrate_session(self._illustrator, self.session, selection.strip() or None, seed=seed)
            at = self._locate(picture.sentence, selection, start)
            src = "data:image/png;base64," + base64.b64encode(picture.png(scale=1)).decode("ascii")  # CSS enlarges
            drawn = {"start": at, "end": at + len(picture.sentence), "sentence": picture.sentence,
                     "caption": picture.caption, "src": src}
            others = [p for p in pictures if (p["start"], p["end"]) != (drawn["start"], drawn["end"])]
            pictures = place_pictures([*others, drawn], self.story, self.mode == "chat")
        except Exception as e:  # nothing to draw, no illustrator, a learner's unfinished Chapter 17
            notice = illustrate_error(e)
        with self.hold_sync():
            self.pictures, self.notice, self.status = pictures, notice, status

    def _locate(self, sentence: str, selection: str, start: int | None) -> int:
        """Where the sentence drawn starts in the story's text: the selection's own place when it is there, else
        the first place in what Illustrate drew from (illustration_scope), else the last anywhere."""
        text = self.session.text
        if selection.strip() and start is not None:
            at = start + len(selection) - len(selection.lstrip())
            if text[at:at + len(sentence)] == sentence:
                return at
        lo, hi = illustration_scope(self.session)
        at = text.find(sentence, lo, hi)
        at = at if at >= 0 else text.rfind(sentence)
        if at < 0:
            from storylib.illustrate import NothingToDraw

            raise NothingToDraw(f"nothing to draw: {sentence!r} is not in the story (select words of the story)")
        return at

    @traitlets.observe("story")
    def _keep_pictures(self, change) -> None:
        """Pictures stay with their sentence while the story changes around it (place_pictures)."""
        if self.pictures:
            self.pictures = place_pictures(self.pictures, change["new"], self.mode == "chat")

    # -- 👍 / 👎 (Chapter 15)

    def rate(self, position: int, rating: int) -> None:
        """Rate the model's reply that is message `position` of the conversation (session.messages()): 1, -1 or 0
        (cleared). The conversation as it is now and the rating go into the feedback store (one conversation there
        per conversation here, made at its first rating). Chat mode only; ignored while a turn is told. A bad
        position or rating, or a store that cannot be written: a notice; the story never changes."""
        if self.busy or self.mode != "chat":
            return
        msgs = self.session.messages()
        try:
            if (not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < len(msgs)
                    or msgs[position]["role"] != "assistant"):
                raise ValueError(f"there is no reply {position!r} to rate")
            if self._feedback is None:
                self._feedback = ConversationStore(self.feedback_db or default_feedback_path(), source="widget")
            title = " ".join(msgs[0]["content"].split())[:48] or "StoryChat"
            if self._feedback_cid is None:
                self._feedback_cid = self._feedback.create(title)["id"]
            self._feedback.put(self._feedback_cid, title, msgs)
            self._feedback.rate(self._feedback_cid, position, rating)
        except (ValueError, KeyError, StoreError, sqlite3.Error, OSError) as e:
            if isinstance(e, KeyError):  # its conversation was deleted from the file: the next rating makes another
                self._feedback_cid = None
            self.notice = f"{NOT_SAVED}{e}"
            return
        self._rated[position] = (prefix_keys(msgs[:position + 1])[-1], rating)
        with self.hold_sync():
            self._show_ratings()
            if self.notice.startswith(NOT_SAVED):
                self.notice = ""

    @traitlets.observe("story")
    def _show_ratings(self, change=None) -> None:
        """`ratings`: the ratings whose reply, and everything before it, are still as they were rated."""
        session = getattr(self, "session", None)  # None while __init__ sets traits
        keys = prefix_keys(session.messages()) if self._rated and session else []
        self._rated = {i: (k, r) for i, (k, r) in self._rated.items() if i + 1 < len(keys) and keys[i + 1] == k}
        self.ratings = {str(i): r for i, (_, r) in sorted(self._rated.items()) if r}

    def _forget_conversation(self) -> None:
        """A new conversation here (New, a mode switch) is a new one in the feedback store."""
        self._feedback_cid, self._rated = None, {}

    # -- messages from the front end

    def act(self, content: dict) -> None:
        """One message from the front end (hello aside): send {text}, continue, stop, new, refine {cut, text},
        illustrate {text, start} (the words selected in the story and where they start; none: the best sentence),
        rate {position, rating}."""
        kind = content.get("type")
        if kind == "stop":
            self._stop.set()
        elif kind == "new":
            self.halt()
            self.session.new()
            self._forget_conversation()
            with self.hold_sync():
                self.story, self.stats, self.notice, self.status, self.pictures = [], {}, "", "idle", []
        elif kind == "rate":
            self.rate(content.get("position"), content.get("rating"))
        elif kind == "illustrate" and not self.busy:
            start = content.get("start")
            self.illustrate(str(content.get("text") or ""), start if isinstance(start, int) else None)
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

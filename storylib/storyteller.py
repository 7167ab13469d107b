"""The storyteller: a conversation (or a story) written by you and the model in turns, told by Chapter 12's engine.

    Sampling          the knobs of one generation: temperature, max tokens, top-k, top-p, seed
    StorySession      the conversation so far (your parts and the model's); generate() appends the model's next
                      part, streaming its pieces, and stops when asked (a threading.Event), at <|end|> /
                      <|endoftext|> or at the length limit. The engine is storylib.kvcache.generate_stream, so a
                      learner's workspace runs the learner's own KV cache and sampler.
    friendly_error    a learner's unfinished exercise (NotImplementedError "ch12.forward_cached: ...") as advice
    chat_unavailable  the same, in one sentence, when chat mode cannot run (Chapter 14 unfinished)
    illustrate_session  Chapter 17's Illustrate: the story's (chat: the latest reply's) most drawable sentence, or
                      one given, drawn by storylib.illustrate (load_illustrator finds the illustrator; a failure
                      reads as one sentence: illustrate_error)
    main              `llm101n chat`: the same session in a terminal (one-shot with --prompt, else a REPL)

Two modes. "chat" (the default): you give instructions ("Write a story about a cat named Tom who finds a key",
then "Give it a happy ending") and Chapter 14's chat model (storylib.sft.load_chat_model) answers each; the
prompt is the conversation through Chapter 11's chat template (storylib.chat_template.render_chat, after
storylib.conversations.fit_conversation drops the oldest whole turns that do not fit the context), ending in
<|assistant|>, and a reply ends at <|end|>. "story": the model goes on with your text; the prompt is
<|endoftext|> (a story starts here) followed by the story so far, on the storyteller (models/storyteller).
Either way the prompt is re-encoded from the text on the screen, so editing or cutting it and generating again
always sees exactly that text. When the chat model cannot load (a learner's Chapter 14 is unfinished), the
session says why in one sentence (chat_unavailable) and tells stories instead.

The chat widget (storylib.widgets.chat.StoryChat) is this session behind buttons; its Illustrate button and the
REPL's /illustrate both draw through illustrate_session.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROMPT = "Once upon a time, there was a little fox"
MODES = ("chat", "story")  # chat: instructions to Chapter 14's chat model; story: the storyteller goes on
# What a new widget tells first (the book shows it): a story asked for, then changed
FIRST_TURNS = {"chat": ("Write a story about a cat named Tom who finds a key.", "Give it a happy ending."),
               "story": (DEFAULT_PROMPT,)}

# ----------------------------------------------------------------------------- settings and results


@dataclass
class Sampling:
    """How the next part is drawn (see storylib.kvcache.process_logits). top_k / top_p None: off; seed None: random."""

    temperature: float = 0.8
    max_tokens: int = 300
    top_k: int | None = None
    top_p: float | None = 0.95
    seed: int | None = None
    repetition_penalty: float = 1.0

    def check(self) -> None:
        """Raise ValueError naming the bad setting (before any work is done)."""
        if not 1 <= self.max_tokens <= 4096:
            raise ValueError(f"max tokens must be in 1..4096, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top-k must be >= 1 (or off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1] (or off), got {self.top_p}")


@dataclass
class Segment:
    """A part of the story: role "user" (you wrote it) or "model" (generated, as the pieces it streamed in)."""

    role: str
    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


REASONS = {
    "end": "the story ended (<|endoftext|>)",
    "end_chat": "the reply ended (<|end|>)",
    "length": "reached the length limit",
    "stopped": "stopped",
    "error": "error",
}


@dataclass
class Generation:
    """What one generate() call did. reason: "end", "length", "stopped" or "error" (then `error` says why); mode:
    the session's ("chat": a reply, which ends at <|end|>)."""

    text: str
    n_tokens: int
    seconds: float
    reason: str
    error: str | None = None
    mode: str = "story"

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.reason == "error":
            return "error"
        why = REASONS["end_chat" if self.reason == "end" and self.mode == "chat" else self.reason]
        return f"{self.n_tokens} tokens in {self.seconds:.2f} s · {self.tokens_per_s:.0f} tokens/s · {why}"


# ----------------------------------------------------------------------------- a learner's unfinished exercise

_EXERCISE_ID = re.compile(r"((?:ch|lab)(\d\d)\.\w+):")


@dataclass
class Unwritten:
    """A stub's NotImplementedError, read: exercise id ("ch12.forward_cached"), chapter, " (storylib/file.py)"
    or "", and the hint."""

    ex_id: str
    chapter: int
    where: str
    hint: str

    @property
    def kind(self) -> str:
        return "lab" if self.ex_id.startswith("lab") else "Chapter"

    @property
    def check(self) -> str:
        return f"llm101n check {self.ex_id.split('.')[0]}"


def unwritten(e: BaseException) -> Unwritten | None:
    """The exercise a stub's NotImplementedError names ("ch12.forward_cached: <hint> — see book §12.4"), else None."""
    m = _EXERCISE_ID.match(str(e)) if isinstance(e, NotImplementedError) else None
    if m is None:
        return None
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames and Path(frames[-1].filename).is_file():  # the stub's file, from storylib/ down
        parts = Path(frames[-1].filename).parts
        top = max((i for i, p in enumerate(parts) if p == "storylib"), default=len(parts) - 1)
        where = " (" + "/".join(parts[top:]) + ")"
    return Unwritten(m.group(1), int(m.group(2)), where, str(e)[m.end():].strip())


def friendly_error(e: BaseException, then: str = "restart the kernel and try again") -> str:
    """One paragraph for the reader instead of a traceback.

    A stub's NotImplementedError: name the exercise, the file it lives in, and the chapter to finish.
    Anything else: its type and message.
    """
    ex = unwritten(e)
    if ex is None:
        return f"{type(e).__name__}: {e}"
    return (f"The storyteller needs exercise {ex.ex_id}{ex.where}, which is not written yet. Finish {ex.kind} "
            f"{ex.chapter} (`{ex.check}`), then {then}. Its hint: {ex.hint}")


def chat_unavailable(e: BaseException) -> str:
    """One sentence: why chat mode cannot run here (the exercise a stub names, a storylib from before Chapter 14,
    a missing chat model), and that stories go on instead."""
    ex = unwritten(e)
    if ex is not None:
        why = f"exercise {ex.ex_id}{ex.where} is not written yet (`{ex.check}`)"
        return f"Chat mode needs {ex.kind} {ex.chapter}: {why}; continuing stories instead."
    if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("storylib."):
        why = f"your storylib has no {e.name.split('.')[-1]}.py yet (`llm101n start` adds it)"
    else:
        why = f"{type(e).__name__}: {e}"
    return f"Chat mode needs Chapter 14: {why}; continuing stories instead."


# ----------------------------------------------------------------------------- the session


def describe_storylib() -> str:
    """Which storylib runs: "the course's reference" (the course repo's own: no folder named, so a page built on
    one machine does not show its paths), "yours, <folder>" in a workspace (grading.release marks one), else the
    folder."""
    import storylib

    where, home = Path(storylib.__file__).resolve().parent, Path.home()
    folder = f"~/{where.relative_to(home)}" if where.is_relative_to(home) else str(where)
    if (where.parent / ".llm101n-workspace").is_file():  # written by grading.release (its MARKER)
        return f"yours, {folder}"
    if (where.parent / "solutions").is_dir() and (where.parent / "grading").is_dir():
        return "the course's reference"
    return folder


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def default_chat_model():
    """The chat model (storylib.sft.default_chat_folder: Chapter 15's models/storyteller-rl, else Chapter 14's
    models/storyteller-chat), checked by rendering a one-line conversation (a
    learner's unfinished template or windowing fails here, before anyone types). Raises what fails (see
    chat_unavailable)."""
    from storylib.sft import load_chat_model as load

    model, tok = load()
    chat_prompt(model, tok, [{"role": "user", "content": "Hello."}], 1)
    return model, tok


def fit_for_reply(messages: list[dict], tokenizer, block_size: int, reserve: int) -> list[dict]:
    """The conversation's last whole turns that leave `reserve` tokens of a block_size context free for the reply
    (storylib.conversations.fit_conversation: the oldest turns go first; the last request and the story it refers
    to always stay). Where those alone leave less room, the reserve is halved until they fit: the reply gets what
    is left. Raises ValueError if even they do not fit. Linear in the conversation's length: pairs that cannot
    fit are dropped by counting tokens first (_surely_out), so a 500-message conversation costs no more than its
    window."""
    from storylib.conversations import fit_conversation

    while True:
        try:
            return fit_conversation(_surely_out(messages, tokenizer, block_size - reserve), tokenizer, block_size,
                                    reserve=reserve)
        except ValueError:
            if reserve == 0:
                raise
            reserve //= 2


def _surely_out(messages: list[dict], tokenizer, budget: int) -> list[dict]:
    """`messages` without the oldest (user, assistant) pairs that fit_conversation would drop anyway: those before
    the newest pairs that alone fill more than `budget` tokens (each message counted as its content's tokens + 2,
    its role token and <|end|>, as the chat template renders it). fit_conversation keeps what it always keeps
    (a system message, the last request, the pair it refers to), and this leaves those too; it then drops what
    else must go, rendering each time, which over hundreds of messages would take seconds."""
    from storylib.conversations import reference_index
    from storylib.fastbpe import encode_ordinary

    def size(i: int) -> int:
        return len(encode_ordinary(tokenizer, messages[i]["content"])) + 2

    generation = bool(messages) and messages[-1]["role"] == "user"
    last_user = len(messages) - (1 if generation else 2)
    head = 1 if messages and messages[0]["role"] == "system" else 0
    if last_user - head < 4:  # nothing to gain
        return messages
    ref = reference_index(messages, last_user)
    keep = {*range(head), *range(last_user, len(messages))} | ({ref - 1, ref} if ref is not None else set())
    used = sum(size(i) for i in keep)
    drop = set()
    for i in range(last_user - 2, head - 1, -2):  # the user index of each pair, newest first
        if i in keep:
            continue
        if used > budget:  # already full without this pair: it and every older one go
            drop |= {i, i + 1}
        else:
            used += size(i) + size(i + 1)
    return [m for j, m in enumerate(messages) if j not in drop]


def chat_prompt(model, tokenizer, messages: list[dict], reserve: int) -> list[int]:
    """The generation prompt of a conversation: fit_for_reply's window through the chat template, ending in
    <|assistant|>. (A reply longer than the room left runs past the end of the context: storylib.kvcache slides
    the window.)"""
    from storylib.chat_template import render_chat

    ids, _ = render_chat(fit_for_reply(messages, tokenizer, model.config.block_size, reserve), tokenizer,
                         add_generation_prompt=True)
    return ids


class StorySession:
    """A conversation (mode "chat") or a story (mode "story") told in turns.

    The model and tokenizer load on first use: the ones given (or the loader's) in both modes; by default the
    course's, one per mode: Chapter 14's chat model for chat, the storyteller for story. When the chat model
    cannot load, `chat_unavailable` says why in one sentence and the session switches to story mode.

    Not thread-safe by itself: one generate() at a time, and nothing else touches the story meanwhile (the
    widget runs generate() in a worker thread and waits for it before any other change).
    """

    def __init__(self, model=None, tokenizer=None, loader: Callable | None = None, mode: str = "chat"):
        check_mode(mode)
        if (model is None) != (tokenizer is None):
            raise ValueError("give both model and tokenizer, or neither (the course's models)")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        if loader is None and model is not None:
            loader = lambda: (model, tokenizer)  # noqa: E731
        self._loader = loader
        self._loaded: dict[str, tuple] = {}  # the course's models, by mode
        self.chat_unavailable = ""  # one sentence, once chat mode failed to load (see chat_unavailable)
        self.segments: list[Segment] = []
        self.retry = "restart the kernel and try again"  # what friendly_error tells the reader to do after a fix

    # -- the model
    def load(self):
        """(model, tokenizer) of the mode, loading them the first time. Raises what loading raises (see
        friendly_error); a chat model that fails to load is no error: the session goes on in story mode."""
        if self._loader is not None:
            if self.model is None:
                self.model, self.tokenizer = self._loader()
            return self.model, self.tokenizer
        if self.mode == "chat" and "chat" not in self._loaded:
            try:
                self._loaded["chat"] = default_chat_model()
            except Exception as e:  # a learner's unfinished Chapter 14 (or no chat model): stories still work
                self.chat_unavailable, self.mode = chat_unavailable(e), "story"
        if self.mode == "story" and "story" not in self._loaded:
            from storylib.checkpoint import default_storyteller

            self._loaded["story"] = default_storyteller()
        self.model, self.tokenizer = self._loaded[self.mode]
        return self.model, self.tokenizer

    def set_mode(self, mode: str) -> None:
        """Switch between "chat" and "story" (the model loads on next use). ValueError for chat mode once it
        failed to load (the message is chat_unavailable) or an unknown mode."""
        check_mode(mode)
        if mode == "chat" and self.chat_unavailable:
            raise ValueError(self.chat_unavailable)
        self.mode = mode

    def describe_model(self) -> str:
        if self.model is None:
            return "not loaded"
        which = "" if self._loader else "the chat model, " if self.mode == "chat" else "the storyteller, "
        return f"{which}{self.model.num_params() / 1e6:.1f} M parameters, context {self.model.config.block_size} tokens"

    # -- the story
    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def new(self) -> None:
        self.segments = []

    def add_user(self, text: str) -> None:
        """Append your own words: to the story (a space joins them if neither side has one); in chat mode a new
        message, or more of yours if you wrote last (an unanswered message)."""
        if not text:
            return
        before = self.text
        if self.mode == "chat":
            before = self.segments[-1].text if self.segments and self.segments[-1].role == "user" else ""
        if before and not before[-1].isspace() and not text[0].isspace():
            text = " " + text
        self.segments.append(Segment("user", [text]))

    def messages(self) -> list[dict]:
        """The conversation as chat messages: your parts "user", the model's "assistant"; parts of one role in a
        row (a reply continued, or cut and told on) are one message."""
        out: list[dict] = []
        for seg in self.segments:
            role = "user" if seg.role == "user" else "assistant"
            if out and out[-1]["role"] == role:
                out[-1]["content"] += seg.text
            else:
                out.append({"role": role, "content": seg.text})
        return out

    def cut(self, offset: int) -> None:
        """Keep the first `offset` characters of the story (0 <= offset <= len(text)); drop the rest."""
        if not 0 <= offset <= len(self.text):
            raise ValueError(f"cut point {offset} is outside the story (0..{len(self.text)})")
        kept, start = [], 0
        for seg in self.segments:
            if start >= offset:
                break
            pieces, at = [], start
            for p in seg.pieces:
                if at >= offset:
                    break
                pieces.append(p[: offset - at])
                at += len(p)
            kept.append(Segment(seg.role, [p for p in pieces if p]))
            start += len(seg.text)
        self.segments = [s for s in kept if s.pieces]

    def last_reply_start(self) -> int:
        """Where the model's last part starts (the end of the story if it did not write last)."""
        if self.segments and self.segments[-1].role == "model":
            return len(self.text) - len(self.segments[-1].text)
        return len(self.text)

    def rewind(self, cut: int | None = None, text: str = "") -> None:
        """Make room for another try ("refine"): keep the story up to `cut` (a character offset; None: where the
        model's last part starts). With text, your words go there; for cut None they replace your own words
        just before the model's last part, if you wrote them (an edited prompt)."""
        self.cut(self.last_reply_start() if cut is None else cut)
        if text:
            if cut is None and self.segments and self.segments[-1].role == "user":
                self.cut(len(self.text) - len(self.segments[-1].text))
            self.add_user(text)

    def snapshot(self) -> list[dict]:
        return [{"role": s.role, "pieces": list(s.pieces)} for s in self.segments]

    def prompt_ids(self, max_tokens: int = 0) -> list[int]:
        """Story mode: <|endoftext|> (a new story begins) + the story so far. Chat mode: the conversation through
        the chat template, leaving max_tokens of the context for the reply (chat_prompt), + the reply so far if
        the model wrote last (its words go on). ValueError for a conversation without a message of yours."""
        from storylib.fastbpe import encode_ordinary
        from storylib.tokenizer import eot_id

        model, tok = self.load()
        if self.mode == "story":
            return [eot_id(tok), *encode_ordinary(tok, self.text)]
        messages = self.messages()
        partial = messages.pop()["content"] if messages and messages[-1]["role"] == "assistant" else ""
        if not messages:
            raise ValueError("chat mode answers a message: type one and press Send")
        reply = encode_ordinary(tok, partial)
        return chat_prompt(model, tok, messages, max_tokens + len(reply)) + reply

    # -- telling
    def generate(self, sampling: Sampling, stop: threading.Event | None = None,
                 on_piece: Callable[[str], None] | None = None) -> Generation:
        """Append the model's next part, piece by piece (on_piece(piece) as each arrives).

        Returns a Generation; never raises: a failure (an unfinished exercise, bad settings) comes back as
        reason "error" with a friendly message, and the story keeps whatever was told before it.
        """
        from storylib import kvcache

        t0 = time.perf_counter()
        seg = Segment("model")
        tokens: list[int] = []  # the ids generated, as generate_stream reports them
        reason = "end"
        try:
            sampling.check()
            model, tok = self.load()
            ids = self.prompt_ids(sampling.max_tokens)
            self.segments.append(seg)
            stream = kvcache.generate_stream(
                model, tok, ids, sampling.max_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty, seed=sampling.seed,
                on_token=tokens.append)
            try:
                for piece in stream:
                    seg.pieces.append(piece)
                    if on_piece is not None:
                        on_piece(piece)
                    if stop is not None and stop.is_set():
                        reason = "stopped"
                        break
            finally:
                stream.close()
            if reason == "end" and len(tokens) >= sampling.max_tokens:
                reason = "length"
            error = None
        except Exception as e:  # an unfinished exercise, a bad setting: a message for the reader, not a crash
            reason, error = "error", friendly_error(e, self.retry)
        if not seg.pieces and seg in self.segments:
            self.segments.remove(seg)
        return Generation(seg.text, len(tokens), time.perf_counter() - t0, reason, error, self.mode)


# ----------------------------------------------------------------------------- pictures (Chapter 17)


class NoIllustrator(FileNotFoundError):
    """There is no illustrator folder where illustrate.illustrator_folder looked; the message says where."""


def load_illustrator(folder: str | Path | None = None):
    """The illustrator of `folder` (illustrate.illustrator_folder: the argument, else $LLM101N_ILLUSTRATOR, else
    models/illustrator). Raises NoIllustrator when the folder is not there, else what loading raises (a learner's
    unfinished Chapter 17: see illustrate_error)."""
    from storylib.illustrate import Illustrator, illustrator_folder

    path = illustrator_folder(folder)
    if not path.is_dir():
        raise NoIllustrator(f"Illustrate needs the illustrator, and there is none at {path} (Chapter 17 trains it; "
                            "LLM101N_ILLUSTRATOR or --illustrator can name another folder).")
    return Illustrator.load(path)


def illustrate_error(e: BaseException, then: str = "restart the kernel and try again") -> str:
    """What the reader sees when Illustrate fails: NothingToDraw's and NoIllustrator's sentences as they are, a
    storylib from before Chapter 17 in one sentence, anything else (a learner's unfinished exercise) as
    friendly_error."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("storylib."):
        module = e.name.split(".")[-1]
        return f"Illustrate needs Chapter 17: your storylib has no {module}.py yet (`llm101n start` adds it)."
    from storylib.illustrate import NothingToDraw  # here, not at the top: a storylib before Chapter 17 has none

    return str(e) if isinstance(e, (NothingToDraw, NoIllustrator)) else friendly_error(e, then)


def illustration_scope(session: StorySession) -> tuple[int, int]:
    """(start, end) in session.text of what Illustrate draws from: the story (story mode), or the model's latest
    message (chat mode: its last parts in a row; empty when it has not answered yet)."""
    if session.mode == "story":
        return 0, len(session.text)
    last = max((i for i, s in enumerate(session.segments) if s.role == "model"), default=None)
    if last is None:
        return len(session.text), len(session.text)
    first = last
    while first > 0 and session.segments[first - 1].role == "model":
        first -= 1
    start = sum(len(s.text) for s in session.segments[:first])
    return start, start + sum(len(s.text) for s in session.segments[first:last + 1])


def illustrate_session(illustrator, session: StorySession, sentence: str | None = None, seed: int = 0):
    """Illustrator.illustrate on `sentence`, or (None) on the most drawable sentence of illustration_scope: a
    Picture. Raises NothingToDraw with the reason."""
    start, end = illustration_scope(session)
    return illustrator.illustrate(session.text[start:end], sentence=sentence, seed=seed)


# ----------------------------------------------------------------------------- the terminal chat

HELP = {"story": """Type the start of a story (or more of it) and press Enter: the storyteller goes on from there.
  Enter on an empty line or /continue   more of the story          /new      start a new story
  /refine [TEXT]   tell the model's last part again; with TEXT, your words go there first (replacing
                   your own words just before it, if you wrote last before the model)
  /show            the whole story      /set KEY VALUE   temperature, max_tokens, top_k, top_p, seed (off/none: off)
  /illustrate [SENTENCE]   draw the story's most drawable sentence (or SENTENCE) into illustration-N.png
  /mode chat       give instructions instead (a new conversation)
  /help            this text            /quit            leave (or Ctrl-D)
Ctrl-C stops the story being told, not the program.""",
        "chat": """Ask for a story ("Write a story about a cat named Tom who finds a key") and press Enter, then for
changes ("Give it a happy ending", "Call the cat Max"): the storyteller answers each message.
  /refine [TEXT]   answer your last message again; with TEXT, it replaces your last message first
  Enter on an empty line or /continue   more of the last reply     /new      a new conversation
  /show            the conversation     /set KEY VALUE   temperature, max_tokens, top_k, top_p, seed (off/none: off)
  /illustrate [SENTENCE]   draw the last reply's most drawable sentence (or SENTENCE) into illustration-N.png
  /mode story      continue stories instead (a new story)
  /help            this text            /quit            leave (or Ctrl-D)
Ctrl-C stops the reply being told, not the program."""}


def _parse_setting(key: str, value: str) -> tuple[str, float | int | None]:
    off = value.lower() in ("off", "none", "")
    kinds: Mapping[str, type] = {"temperature": float, "max_tokens": int, "top_k": int, "top_p": float, "seed": int}
    if key not in kinds:
        raise ValueError(f"unknown setting {key!r}; one of {', '.join(kinds)}")
    if off and key in ("top_k", "top_p", "seed"):
        return key, None
    try:
        return key, kinds[key](value)
    except ValueError:
        raise ValueError(f"{key} needs a {kinds[key].__name__}, got {value!r}") from None


class TerminalChat:
    """The REPL of `llm101n chat`: a StorySession printed as it streams. Ctrl-C during a story stops it.
    /illustrate draws with the illustrator of `illustrator` (a folder; None: load_illustrator's default), loaded
    on first use, and saves the pictures in `images` as illustration-<n>.png."""

    def __init__(self, session: StorySession, sampling: Sampling, out=sys.stdout, err=sys.stderr,
                 illustrator: str | Path | None = None, images: str | Path = "."):
        self.session, self.sampling, self.out, self.err = session, sampling, out, err
        session.retry = "run `llm101n chat` again"
        self.illustrator_folder, self.images = illustrator, Path(images)
        self._illustrator = None  # loaded by the first /illustrate

    def illustrate(self, sentence: str = "") -> Path | None:
        """/illustrate: draw `sentence` (or the story's / last reply's most drawable one) and save it as the next
        free images/illustration-<n>.png; print where, the sentence and the caption. A failure (nothing to draw,
        no illustrator) is one sentence on `err` and None; the story is untouched either way."""
        try:
            if self._illustrator is None:
                self._illustrator = load_illustrator(self.illustrator_folder)
            seed = 0 if self.sampling.seed is None else self.sampling.seed
            picture = illustrate_session(self._illustrator, self.session, sentence.strip() or None, seed=seed)
            self.images.mkdir(parents=True, exist_ok=True)
            n = 1
            while (self.images / f"illustration-{n}.png").exists():  # never overwrite an earlier picture
                n += 1
            path = self.images / f"illustration-{n}.png"
            path.write_bytes(picture.png())
        except Exception as e:  # nothing to draw, no illustrator, an unfinished exercise, a folder not writable
            self.err.write(illustrate_error(e, self.session.retry) + "\n")
            return None
        self.out.write(f"{path}\n  sentence: {picture.sentence}\n  caption:  {picture.caption}\n")
        return path

    def tell(self) -> Generation:
        """Generate the next part, streaming it to `out`; SIGINT (Ctrl-C) stops it after the current token."""
        stop = threading.Event()
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            g = self.session.generate(self.sampling, stop, lambda p: (self.out.write(p), self.out.flush()))
        finally:
            if handler is not None:
                signal.signal(signal.SIGINT, handler)
        self.out.write("\n")
        self.out.flush()
        if g.error:
            self.err.write(g.error + "\n")
        else:
            self.err.write(f"[{g.summary()}]\n")
        self.err.flush()
        return g

    def show(self) -> str:
        """The story, or (chat mode) the conversation: one "you: ..." / "storyteller: ..." paragraph a message."""
        if self.session.mode == "story":
            return self.session.text
        who = {"user": "you", "assistant": "storyteller"}
        return "\n".join(f"{who[m['role']]}: {m['content']}" for m in self.session.messages())

    def command(self, line: str) -> bool:
        """Handle one line of input; False when it is time to leave."""
        s = self.session
        chat = s.mode == "chat"
        if not line.startswith("/"):
            if line.strip():
                s.add_user(line.strip())
                if not chat:  # a story reads on from your words; a reply stands alone
                    self.out.write(s.segments[-1].text)
            else:
                self.out.write("…")
            self.tell()
            return True
        cmd, _, arg = line[1:].partition(" ")
        if cmd in ("quit", "exit", "q"):
            return False
        if cmd == "new":
            s.new()
            self.err.write("(a new conversation: ask for a story)\n" if chat else
                           "(a new story: type its first words)\n")
        elif cmd == "continue":
            self.out.write("…")
            self.tell()
        elif cmd == "refine":
            s.rewind(None, arg.strip())
            if not chat:
                self.out.write(s.text)
            self.tell()
        elif cmd == "show":
            self.out.write(self.show() + "\n")
        elif cmd == "illustrate":
            self.illustrate(arg)
        elif cmd == "mode":
            try:
                s.set_mode(arg.strip())
                s.new()
                s.load()  # the mode's model; a chat model that cannot load leaves story mode, saying why
                self.err.write((s.chat_unavailable if s.mode != arg.strip() else f"({s.mode} mode)") + "\n")
            except ValueError as e:
                self.err.write(f"{e}\n")
        elif cmd == "set":
            key, _, value = arg.strip().partition(" ")
            try:
                k, v = _parse_setting(key, value.strip())
                setattr(self.sampling, k, v)
                self.sampling.check()
                self.err.write(f"({k} = {v})\n")
            except ValueError as e:
                self.err.write(f"{e}\n")
        elif cmd == "help":
            self.err.write(HELP[s.mode] + "\n")
        else:
            self.err.write(f"unknown command /{cmd}; /help lists them\n")
        self.out.flush()
        return True

    def repl(self, read: Callable[[str], str] = input) -> int:
        self.err.write(HELP[self.session.mode] + "\n")
        while True:
            try:
                line = read("> ")
            except EOFError:
                self.err.write("\n")
                return 0
            except KeyboardInterrupt:
                self.err.write("\n(Ctrl-C: /quit leaves)\n")
                continue
            if not self.command(line):
                return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`llm101n chat`: talk to the storyteller in the terminal with the storylib on PYTHONPATH (yours in a
    workspace): instructions to the chat model (--mode chat, the default) or a story continued (--mode story)."""
    p = argparse.ArgumentParser(prog="llm101n chat", description="Talk to the storyteller, streaming: ask for a "
                                "story and for changes to it (chat), or have it continue yours (story).")
    p.add_argument("--mode", choices=MODES, default="chat",
                   help="chat: instructions, answered by the chat model (default); story: the storyteller goes on "
                        "with your text")
    p.add_argument("--prompt", help="one turn from PROMPT (a request, or a story's start) and exit (no REPL)")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    p.add_argument("--max-tokens", type=int, default=300, help="new tokens per turn (default 300)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: off)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1: off (default 0.95)")
    p.add_argument("--seed", type=int, default=None, help="for a reproducible story (default: random)")
    p.add_argument("--illustrator", help="the illustrator's folder for /illustrate (default: $LLM101N_ILLUSTRATOR, "
                                         "else models/illustrator)")
    p.add_argument("--images", default=".", help="where /illustrate saves its pictures (default: this folder)")
    p.add_argument("--model", help="an exported model folder (llm101n train export), for both modes; default "
                                   "models/storyteller-rl, else -chat (chat), models/storyteller (story)")
    args = p.parse_args(argv)
    sampling = Sampling(args.temperature, args.max_tokens, args.top_k, None if args.top_p == 1 else args.top_p,
                        args.seed)
    try:
        sampling.check()
    except ValueError as e:
        p.error(str(e))
    loader = None
    if args.model:
        from storylib.checkpoint import load_model

        loader = lambda: load_model(args.model)  # noqa: E731
    session = StorySession(loader=loader, mode=args.mode)
    try:
        session.load()
    except Exception as e:
        print(f"llm101n chat: {friendly_error(e, then='run `llm101n chat` again')}", file=sys.stderr)
        return 1
    if session.chat_unavailable:
        print(session.chat_unavailable, file=sys.stderr)
    print(f"storyteller: {session.describe_model()} · storylib {describe_storylib()}", file=sys.stderr)
    chat = TerminalChat(session, sampling, illustrator=args.illustrator, images=args.images)
    if args.prompt is not None:
        session.add_user(args.prompt)
        if session.mode == "story":
            sys.stdout.write(session.text)
        return 1 if chat.tell().error else 0
    return chat.repl()

if __name__ == "__main__":
    raise SystemExit(main())

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
  travel in the trait `live`, and js/tokens.js runs the split and byte-level BPE in the browser. For the others
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
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from storylib.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BasicTokenizer, RegexTokenizer, Tokenizer
from storylib.widgets import front_end

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

# The widget's ES module, js/tokens.js, as text. Its first part (compileTokenizer, tokenLabel, ...) is pure
# functions with no DOM: the package tests run it under node.
TOKENS_JS = front_end("tokens")

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

    _esm = TOKENS_JS
    _css = Path(__file__).parent / "js" / "tokens.css"
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

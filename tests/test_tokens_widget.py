"""Chapter 6's TokenViewer without a browser: its traits, Python's recompute, and its JavaScript under node.

The browser side (typing into the widget in the static page) is tests/e2e/test_ch06_widget.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
import regex

from storylib.data import HARD_STRINGS, course_file, synthetic_stories
from storylib.tokenizer import GPT2_SPLIT_PATTERN, BasicTokenizer, RegexTokenizer, eot_id, storyteller_tokenizer
from storylib.widgets import tokens as tw
from storylib.widgets.tokens import TokenViewer, bytes_per_token, token_label, tokenize

os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(course_file(".assets/tiktoken")))


@pytest.fixture(scope="module")
def story_tok() -> RegexTokenizer:
    return storyteller_tokenizer()


@pytest.fixture(scope="module")
def small_toks() -> dict[str, object]:
    """Small tokenizers trained here: GPT-4's pattern with specials, GPT-2's pattern, no pattern at all."""
    text = "".join(s + "\n" for s in synthetic_stories(300, 0, unicode=True))
    gpt4 = RegexTokenizer()
    gpt4.train(text, 256 + 150)
    gpt4.register_special_tokens({"<|endoftext|>": 406, "<|end|>": 407})
    gpt2 = RegexTokenizer(GPT2_SPLIT_PATTERN)
    gpt2.train(text, 256 + 120)
    basic = BasicTokenizer()
    basic.train(text[:6000], 256 + 40)
    return {"gpt4-small": gpt4, "gpt2-small": gpt2, "basic": basic}


def catalogue(seed: int = 0, n_random: int = 150) -> list[str]:
    """Hard strings, story-like text and random strings over an alphabet chosen to hit every corner of
    the split patterns (case folding, \\s differences between Python and JavaScript, specials)."""
    rng = random.Random(seed)
    alphabet = ("aAsSſkK'lLvVeErRdDmMtT \t\n\r\x0b\x0c\x1c\x85\ufeff\xa0\u2028\u3000é😀👩\u200d안1234567890"
                "!?.,-_<|>()\x00")
    rand = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n_random)]
    extra = ["I'LL can't WE'RE it'S", "'ſ 'Ll 'vE", "12345678", "a\r\nb\r\n\r\n", "x    y", "  \n  ",
             "<|end|><|endoftext|>", "<|endoftext|", "naïve café 👍🏽", "\ufeffBOM", "ok\x85next"]
    return list(HARD_STRINGS) + synthetic_stories(12, 7, unicode=True) + extra + rand


# ----------------------------------------------------------------------------- pure Python helpers


def test_token_label_shows_whitespace_and_partial_characters():
    assert token_label(b" the") == "·the"
    assert token_label(b"\n\n") == "↵↵"
    assert token_label(b"\t\r") == "⇥␍"
    assert token_label("é".encode()[:1]) == "⟨c3⟩", "half of é is one byte that is not a whole character"
    assert token_label("🐶".encode()[1:3]) == "⟨9f 90⟩"
    assert token_label(b" " + "🐶".encode()[:2]) == "·⟨f0 9f⟩"
    assert token_label("é🐶".encode()) == "é🐶"
    assert token_label(b"\xed\xa0\x80") == "⟨ed a0 80⟩", "an encoded surrogate is not UTF-8"
    assert token_label(b"\xc0\xaf") == "⟨c0 af⟩", "an overlong encoding is not UTF-8"
    assert token_label("\ufeff\u200d\x00".encode()) == "\\ufeff\\u200d␀"


def test_bytes_per_token():
    assert bytes_per_token("héllo", 2) == 3.0, "héllo is 6 UTF-8 bytes, so 2 tokens carry 3 bytes each"
    assert bytes_per_token("", 0) == 0.0


def test_js_classes_equal_python_regex_on_every_code_point():
    """The JavaScript spelling of \\s, and of (?i:[sdmt]|ll|ve|re), accept exactly what Python's regex does."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert regex.findall(tw._WS, every) == regex.findall(r"\s", every), "_WS must be Python's \\s, exactly"
    assert tw.GPT4_SPLIT_PATTERN_JS.startswith(r"'(?:[sdmtSDMT\u017F]|[lL][lL]|[vV][eE]|[rR][eE])|")
    one = set(regex.findall(r"(?i:[sdmt])", every))
    assert set(regex.findall(r"[sdmtSDMT\u017F]", every)) == one, f"(?i:[sdmt]) matches exactly {sorted(one)}"
    for pair in ("ll", "ve", "re"):
        firsts = set(regex.findall(f"(?i:{pair[0]})", every))
        seconds = set(regex.findall(f"(?i:{pair[1]})", every))
        assert firsts == {pair[0], pair[0].upper()} and seconds == {pair[1], pair[1].upper()}, (
            f"(?i:{pair}) matches more than the two cases of each letter; the JS pattern must list them")


def test_js_split_pattern_only_for_trusted_patterns():
    from storylib.tokenizer import GPT4_SPLIT_PATTERN

    assert tw.js_split_pattern(GPT4_SPLIT_PATTERN) == tw.GPT4_SPLIT_PATTERN_JS
    assert tw.js_split_pattern(GPT2_SPLIT_PATTERN) == tw.GPT2_SPLIT_PATTERN_JS
    assert tw.js_split_pattern("") == ""
    assert tw.js_split_pattern(r"\w+|\s+") is None, "an unknown pattern must stay kernel-only, not be guessed"


# ----------------------------------------------------------------------------- the widget's traits


def test_traits_hold_rows_live_data_and_examples(story_tok, small_toks):
    import tiktoken

    gpt2 = tiktoken.get_encoding("gpt2")
    toks = {"storyteller": story_tok, "GPT-2": gpt2, **small_toks}
    text = "Once upon a time, Zoë saw 12345678 🐶 in the park.\n\n<|endoftext|>The end."
    w = TokenViewer(text=text, tokenizers=toks, examples=["한국어 텍스트", ("code", "def f(x):\n    return x\n")])

    assert [r["name"] for r in w.row_info] == list(toks), "one row per tokenizer, in the order given"
    assert [r["live"] for r in w.row_info] == [True, False, True, True, True]
    spec = w.live["storyteller"]
    assert spec["pattern"] == tw.GPT4_SPLIT_PATTERN_JS
    assert spec["merges"] == [x for pair in story_tok.merges for x in pair], "merges must be flat, in id order"
    assert spec["specials"] == story_tok.special_tokens
    assert w.live["gpt2-small"]["pattern"] == tw.GPT2_SPLIT_PATTERN_JS
    assert w.live["basic"] == {"pattern": "", "merges": [x for p in small_toks["basic"].merges for x in p],
                               "specials": {}}
    assert len(json.dumps(w.get_state())) < 200_000, "the widget state should stay small for the static page"

    expected = {
        "storyteller": story_tok.encode(text, allowed_special="all"),
        "GPT-2": gpt2.encode(text, allowed_special="all"),
        "gpt4-small": small_toks["gpt4-small"].encode(text, allowed_special="all"),
        "gpt2-small": small_toks["gpt2-small"].encode(text, allowed_special="all"),
        "basic": small_toks["basic"].encode(text),
    }
    assert w.result["text"] == text and w.result["reply"] == ""
    for name, ids in expected.items():
        row = w.result["rows"][name]
        assert [i for i, _ in row["tokens"]] == ids, f"row {name}: Python's ids should be the tokenizer's own"
        assert row["n_tokens"] == len(ids)
        assert row["bytes_per_token"] == pytest.approx(len(text.encode()) / len(ids))
        assert b"".join(bytes.fromhex(h) for _, h in row["tokens"]) == text.encode(), (
            f"row {name}: the tokens' bytes should spell the text")
    assert eot_id(story_tok) in expected["storyteller"], "specials are shown as specials"

    assert [e["label"] for e in w.examples] == ["example 1", "code"]
    for ex in w.examples:
        assert ex["rows"]["GPT-2"]["tokens"] == [[i, gpt2.decode_single_token_bytes(i).hex()]
                                                 for i in gpt2.encode(ex["text"], allowed_special="all")]
        assert [i for i, _ in ex["rows"]["storyteller"]["tokens"]] == story_tok.encode(ex["text"])


def test_kernel_recompute_answers_the_browser(story_tok):
    import tiktoken

    cl100k = tiktoken.get_encoding("cl100k_base")
    w = TokenViewer(text="hello", tokenizers={"storyteller": story_tok, "cl100k_base": cl100k}, examples=[])
    # what the browser sends on a keystroke: the new text and a fresh request, in one message
    w.set_state({"text": "I'LL can't 12345678 안녕", "request": "abc123:1"})
    assert w.result["text"] == "I'LL can't 12345678 안녕"
    assert w.result["reply"] == "abc123:1", "Python must echo the browser's request: it proves a live kernel"
    assert [i for i, _ in w.result["rows"]["cl100k_base"]["tokens"]] == cl100k.encode("I'LL can't 12345678 안녕")
    assert [i for i, _ in w.result["rows"]["storyteller"]["tokens"]] == story_tok.encode("I'LL can't 12345678 안녕")
    # the ping on render: same text, new request
    w.set_state({"request": "abc123:2"})
    assert w.result["reply"] == "abc123:2"
    # Python code may set the text too
    w.text = "12345678"
    pieces = [bytes.fromhex(h) for _, h in w.result["rows"]["cl100k_base"]["tokens"]]
    assert pieces == [b"123", b"456", b"78"], f"cl100k cuts digits in threes (123|456|78), the row shows {pieces}"


def test_default_rows_and_visible_notes(monkeypatch):
    w = TokenViewer.default(text="Once upon a time")
    assert [r["name"] for r in w.row_info] == ["storyteller", "GPT-2", "cl100k_base"]
    assert w.notes == [], f"all three tokenizers should load offline, got notes {w.notes}"
    assert w.row_info[0]["live"] and not w.row_info[1]["live"] and not w.row_info[2]["live"]
    assert [e["label"] for e in w.examples] == [label for label, _ in tw.DEFAULT_EXAMPLES]

    import tiktoken

    def offline(name):
        raise ConnectionError(f"cannot download {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    w = TokenViewer.default(text="Once upon a time")
    assert [r["name"] for r in w.row_info] == ["storyteller"], "rows that cannot load are left out"
    assert len(w.notes) == 2 and "GPT-2 row skipped" in w.notes[0] and "cl100k_base row skipped" in w.notes[1], (
        f"each skipped tokenizer must be named in a visible note, got {w.notes}")


def test_any_encode_decode_object_and_errors(story_tok):
    class Chars:  # a toy tokenizer: one token per byte, with the interface of tiktoken
        def encode(self, text):
            return list(text.encode())

        def decode_single_token_bytes(self, i):
            return bytes([i])

    class Broken(RegexTokenizer):
        def encode(self, text, allowed_special="none_raise"):
            raise NotImplementedError("ch06.encode: not written yet")

    w = TokenViewer(text="héllo", tokenizers={"chars": Chars(), "stub": Broken()}, examples=[])
    assert [i for i, _ in w.result["rows"]["chars"]["tokens"]] == list("héllo".encode())
    assert "NotImplementedError" in w.result["rows"]["stub"]["error"], "a failing tokenizer shows its error in its row"
    assert tokenize(story_tok, "<|end|>") == [(4100, b"<|end|>")]
    with pytest.raises(TypeError, match="neither a storylib Tokenizer"):
        TokenViewer(text="x", tokenizers={"bad": object()})


# ----------------------------------------------------------------------------- the JavaScript, under node


def run_node(spec: dict, texts: list[str], tmp_path) -> list[dict]:
    script = tmp_path / "tokens.mjs"
    script.write_text(tw.TOKENS_JS + """
import fs from "node:fs";
const inp = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const c = compileTokenizer(inp.spec);
console.log(JSON.stringify(inp.texts.map((t) => {
  const ids = c.encode(t);
  return { ids, chunks: c.chunks(t), labels: ids.map((i) => tokenLabel(c.tokenBytes(i))) };
})));
""")
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"spec": spec, "texts": texts}))
    proc = subprocess.run(["node", str(script), str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"node failed:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["storyteller", "gpt4-small", "gpt2-small", "basic"])
def test_javascript_tokenizer_equals_python(name, story_tok, small_toks, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    tok = story_tok if name == "storyteller" else small_toks[name]
    spec = tw.export_live(tok)
    assert spec is not None
    texts = catalogue(seed=len(name), n_random=60 if name == "basic" else 150)
    out = run_node(spec, texts, tmp_path)
    for text, got in zip(texts, out, strict=True):
        want = tok.encode(text, allowed_special="all") if isinstance(tok, RegexTokenizer) else tok.encode(text)
        if isinstance(tok, RegexTokenizer):  # chunks(): the split alone, specials not cut out
            assert got["chunks"] == tok.split(text), f"{name}: the JS split of {text!r} differs from Python's"
        assert got["ids"] == want, f"{name}: JavaScript encodes {text!r} as {got['ids']}, Python as {want}"
        labels = [token_label(tok.vocab[i]) for i in want]
        assert got["labels"] == labels, f"{name}: JS labels {got['labels']} != Python's {labels} for {text!r}"

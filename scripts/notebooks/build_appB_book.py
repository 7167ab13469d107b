"""Write book/appendix_b_dtypes_utf8.ipynb, Appendix B's page (the book executes it at build time, on CPU).

    .venv/bin/python scripts/notebooks/build_appB_book.py

Its exercises (storylib/textbytes.py, appB.*) are graded in exercises/appB_dtypes.ipynb (build_appB_dtypes.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("appendix_b_dtypes_utf8", notebook="appB_dtypes")
md, code, ex = page.md, page.code, page.exercise

md("""
# Data types and UTF-8

A tensor's memory (Appendix A) holds bits; its **dtype** says what they mean. The course uses a handful of integer
types — bytes of text as `uint8`, token ids on disk as `uint16` (Chapter 11), ids in a tensor as `int64`,
quantized weights as `int8` and `int4` (Chapter 13) summed in `int32` — and floating-point types, which have their
own chapter ([Chapter 9](ch09_precision.ipynb): fp32, bf16, fp16, fp8) and are not repeated here. Text becomes
numbers before any of that: Unicode gives every character a number, a *code point*, and **UTF-8** turns code points
into bytes, the alphabet of the byte-level tokenizer of [Chapter 6](ch06_tokenization.ipynb).

This appendix writes both conversions by hand in `storylib/textbytes.py`: integers to bits (two's complement), and
text to bytes and back (UTF-8), checked against NumPy and against Python's own codec on every code point there is.
""")
code("""
import numpy as np
import torch
from IPython.display import Markdown, display

from storylib import textbytes as TB
from storylib.kvcache import StreamDecoder, utf8_complete
from storylib.tokenizer import storyteller_tokenizer


def table(header, rows):
    # a Markdown table: what the book renders best
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return Markdown("\\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]))
""")
md("""
## B.1 Integers as bits: two's complement

$n$ bits $b_{n-1} \\dots b_1 b_0$ read as an *unsigned* integer are $\\sum_i b_i 2^i$, from $0$ to $2^n - 1$. For
*signed* integers every modern machine uses **two's complement**: the top bit weighs $-2^{n-1}$ instead of
$+2^{n-1}$,

$$
v = -b_{n-1}\\, 2^{n-1} + \\sum_{i=0}^{n-2} b_i\\, 2^i, \\qquad -2^{n-1} \\le v \\le 2^{n-1} - 1 .
$$

So a negative $v$ is stored as the unsigned pattern $2^n + v$: $-1$ is all ones, the top bit says "negative",
and adding patterns as if they were unsigned (throwing away the carry out of the top bit) adds the signed numbers
correctly — which is why the hardware needs only one adder for both. Here are all eight 3-bit integers:
""")
ex("appB.twos_complement", "The `bits`-bit pattern of a signed integer; `ValueError` when it does not fit.")
code("""
rows = [(v, format(TB.twos_complement(v, 3), "03b"), TB.twos_complement(v, 3)) for v in range(-4, 4)]
display(table(["value", *[str(v) for v, _, _ in rows]], [["bits", *[f"`{b}`" for _, b, _ in rows]],
                                                         ["as unsigned", *[u for _, _, u in rows]]]))
ours = [TB.twos_complement(v, 8) for v in (-128, -56, -1, 0, 127)]
print("int8 -128, -56, -1, 0, 127 as bits:", [format(p, "08b") for p in ours])
print("NumPy's int8 -> uint8 view:        ", np.array([-128, -56, -1, 0, 127], dtype=np.int8).view(np.uint8).tolist(),
      "= ours:", ours)
""")
md("""
The integer types of the course, their ranges, and where they appear:
""")
code("""
use = {torch.uint8: "a byte of text; two int4 weights packed (Ch. 13)",
       torch.int8: "quantized weights and activations (Ch. 13)",
       torch.int16: "—", torch.int32: "sums of int8 products (Ch. 13)",
       torch.int64: "token ids in a tensor (the index of nn.Embedding)"}
rows = [(str(dt).replace("torch.", ""), torch.iinfo(dt).bits, f"{torch.iinfo(dt).min:,}", f"{torch.iinfo(dt).max:,}",
         u) for dt, u in use.items()]
rows.insert(3, ("uint16", 16, "0", f"{np.iinfo(np.uint16).max:,}", "token ids on disk, 2 bytes each (Ch. 11)"))
display(table(["dtype", "bits", "min", "max", "in this course"], rows))
""")
md("""
## B.2 Overflow

A result that does not fit keeps only its low $n$ bits, read in the same type: the exact result plus or minus a
multiple of $2^n$. No error is raised — not by the processor, not by PyTorch, not by NumPy arrays.
""")
code("""
a = torch.tensor([100, 127, -128], dtype=torch.int8)
print("int8  ", a.tolist(), "+ 100 =", (a + 100).tolist(), " wrap():", [TB.wrap(int(v) + 100, 8) for v in a])
u = torch.tensor([250, 255, 3], dtype=torch.uint8)
print("uint8 ", u.tolist(), "+ 10 =", (u + 10).tolist(), " wrap():", [TB.wrap(int(v) + 10, 8, signed=False) for v in u])
k_max = (2**31 - 1) // (127 * 127)
Markdown(f"This is why Chapter 13 sums int8 × int8 products in int32: a product is at most 127 · 127 = "
         f"{127 * 127:,} in size, so {k_max:,} of them always fit, while int16 could hold only "
         f"{(2**15 - 1) // (127 * 127)} of them. And why a vocabulary of up to {2**16:,} ids fits uint16 on disk "
         "but is widened to int64 before it indexes an embedding table.")
""")
md("""
## B.3 Text: code points and UTF-8

**ASCII** (1963) numbers 128 characters, 0 to 127: English letters, digits, punctuation, and controls such as
newline (10). **Unicode** numbers every character of every script, plus emoji: a *code point* from U+0000 to
U+10FFFF (Python's `ord`). Storing each as a 4-byte integer would quadruple English text; **UTF-8** stores a code
point in 1 to 4 bytes instead, and ASCII text is its own UTF-8:

| code points | bytes | bit pattern (x: the code point's bits) |
|---|---|---|
| U+0000 – U+007F | 1 | `0xxxxxxx` |
| U+0080 – U+07FF | 2 | `110xxxxx 10xxxxxx` |
| U+0800 – U+FFFF | 3 | `1110xxxx 10xxxxxx 10xxxxxx` |
| U+10000 – U+10FFFF | 4 | `11110xxx 10xxxxxx 10xxxxxx 10xxxxxx` |

The first byte says how many follow (its count of leading 1s); the others, *continuation bytes*, all start with
`10`, so a reader dropped anywhere in the middle of a text finds the next character by skipping at most three
bytes. Code points U+D800 – U+DFFF are **surrogates**, halves of a pair in UTF-16, and are not characters: UTF-8
must not encode them. [Chapter 6](ch06_tokenization.ipynb) encoded one code point; here, a whole string.
""")
ex("appB.utf8_encode", "A string to UTF-8 bytes by hand; a lone surrogate raises `ValueError`.")
code("""
for text in ["Once", "café", "Привет", "月", "🙂", "👩‍🚀"]:
    data = TB.utf8_encode(text)
    print(f"{text!r:10} code points {[f'U+{ord(c):04X}' for c in text]!s:52} {len(data):2} bytes: {data.hex(' ')}")
""")
md("""
Does the encoder agree with Python's codec? There are only 1,114,112 code points, so we can simply try them all:
""")
code("""
every = "".join(chr(cp) for cp in range(0x110000) if cp not in TB.SURROGATES)
ours = TB.utf8_encode(every)
lengths = {n: sum(1 for c in every if len(c.encode("utf-8")) == n) for n in (1, 2, 3, 4)}
Markdown(f"All {len(every):,} characters (every code point but the 2,048 surrogates) encoded into "
         f"{len(ours):,} bytes, identical to `str.encode`: **{ours == every.encode('utf-8')}**. "
         f"Characters of 1, 2, 3 and 4 bytes: {', '.join(f'{v:,}' for v in lengths.values())}.")
""")
md("""
## B.4 Decoding, strictly

Decoding runs the table backwards: the lead byte gives the length, each continuation byte gives 6 more bits. The
hard part is saying **no**. Not every byte string is UTF-8, and a decoder that accepts a malformed one can be
tricked: an *overlong* encoding such as `C0 AF` would decode to `/` and slip past a filter that looks for the byte
`2F`. A strict decoder (Python's `bytes.decode("utf-8")`) rejects:

- a byte no sequence starts with: a stray continuation byte `10xxxxxx`, or `F8`–`FF`;
- a **truncated** sequence: the lead byte announces more continuation bytes than follow;
- an **overlong** sequence: more bytes than the code point needs (so `C0`, `C1` are never valid, and `E0`, `F0`
  must be followed by large enough values);
- a **surrogate** (`ED A0 80` is U+D800) and anything **above U+10FFFF** (`F4 90 80 80` and `F5`–`F7`).
""")
ex("appB.utf8_decode", "UTF-8 bytes back to a string, rejecting (with `ValueError`) exactly what "
   "`bytes.decode('utf-8')` rejects.")
code("""
def verdict(f, data):
    try:
        return repr(f(data))
    except ValueError as e:
        return "error: " + str(e).split(": ", 1)[-1][:60]

cases = {"ASCII": b"cat", "é": b"\\xc3\\xa9", "🙂": b"\\xf0\\x9f\\x99\\x82", "stray continuation": b"\\x80",
         "truncated €": b"\\xe2\\x82", "overlong /": b"\\xc0\\xaf", "overlong NUL": b"\\xe0\\x80\\x80",
         "surrogate U+D800": b"\\xed\\xa0\\x80", "U+110000": b"\\xf4\\x90\\x80\\x80", "FF": b"\\xff"}
rows = [(name, f"`{data.hex(' ')}`", verdict(lambda d: d.decode("utf-8"), data), verdict(TB.utf8_decode, data))
        for name, data in cases.items()]
display(table(["case", "bytes", "Python", "ours"], rows))
back = TB.utf8_decode(every.encode("utf-8"))
Markdown(f"Decoding all {len(every):,} characters back gives the same string: **{back == every}**. (The graded "
         "tests also compare accept and reject with Python on every lead byte followed by every second byte, and on "
         "thousands of random byte strings.)")
""")
md("""
## B.5 Never split a character: tokens and streams

The storyteller's tokenizer (Chapter 6) is *byte-level* BPE: its first 256 tokens are the 256 byte values, and
merges join byte strings without asking where characters begin. So a token can hold part of a character, and a
character can be spread over several tokens. TinyStories is nearly all ASCII, so such characters are rare in the
data — which is exactly why the tokenizer never learned merges for them:
""")
code("""
tok = storyteller_tokenizer()

def valid(b):
    try:
        TB.utf8_decode(b)
        return True
    except ValueError:
        return False

partial = [i for i, b in tok.vocab.items() if not valid(b)]
text = "Lily ate a crème brûlée 🙂"
ids = tok.encode_ordinary(text)
print(f"{len(partial)} of the {len(tok.vocab)} tokens are not valid UTF-8 on their own")
print(f"{text!r} -> {len(ids)} tokens:")
print(" | ".join(tok.vocab[i].decode("utf-8", errors="replace") if valid(tok.vocab[i]) else tok.vocab[i].hex(" ")
                 for i in ids))
""")
md("""
`è` is `C3 A8` and the tokenizer writes it as two tokens; the emoji is four. A program that decodes and prints each
token as it is generated would print `�` (U+FFFD, the replacement character) for every such piece — the garbage you
may have seen in a terminal. Chapter 12's streaming decoder avoids it: it keeps the bytes of an unfinished
character aside (`utf8_complete` finds how many leading bytes are whole characters; the exercise `ch12.stream`) and
emits text only when the character is complete:
""")
code("""
one_by_one = "".join(tok.vocab[i].decode("utf-8", errors="replace") for i in ids)
stream = StreamDecoder(tok)
pieces = [stream.push(i) for i in ids] + [stream.flush()]
print("token by token:", repr(one_by_one))
print("StreamDecoder: ", repr("".join(pieces)))
print("the pieces it emitted:", pieces)
print("utf8_complete(b'cr\\\\xc3') =", utf8_complete(b"cr\\xc3"), "(the lead byte of è waits for its partner)")
""")
md("""
The same rule holds at every boundary where text is cut: a training example cut at a byte position (Chapter 11),
a reply cut at a token limit, a network packet. Cut between characters, never inside one — the continuation
bytes `10xxxxxx` say where "inside" is.
""")

if __name__ == "__main__":
    print(page.write())

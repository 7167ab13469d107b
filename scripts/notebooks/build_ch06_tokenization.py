"""Build solutions/ch06_tokenization.ipynb, the nbgrader source notebook of Chapter 6 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch06_tokenization", title="Chapter 6 — Tokenization: byte-pair encoding from scratch")
nb.markdown(
    """
    In this notebook you write the tokenizer of `storylib/tokenizer.py` in the order of the book: UTF-8 by hand,
    the two primitives of byte-pair encoding (counting pairs, merging one), a `BasicTokenizer` that trains, encodes
    and decodes, a `RegexTokenizer` that splits text into chunks first (as GPT-2 and GPT-4 do), special tokens, and
    finally GPT-4's own tokenizer rebuilt from tiktoken's ranks — equal to tiktoken, token for token.

    One rule is the same everywhere in the course: BPE merges the most frequent pair, and a tie goes to the
    smaller pair of ids (`best_pair` in the file does this for you).
    """
)
nb.exercise(
    "ch06.utf8",
    try_it="""
    for ch in "aé€🐶":
        print(repr(ch), f"U+{ord(ch):04X}", utf8_encode(ord(ch)).hex(" "), "expected", ch.encode("utf-8").hex(" "))
    """,
)
nb.question(
    "ch06_q_bytes",
    1,
    prompt="""
    How many UTF-8 bytes does the string `"Zoë 🐶"` have? Set `n_bytes` to the number (work it out from the table
    of §6.1, then check with `len(...encode())`).
    """,
    solution="n_bytes = 1 + 1 + 2 + 1 + 4",
    test="assert n_bytes == 9, 'Z, o: 1 byte each; ë: 2; the space: 1; the dog: 4'",
)
nb.exercise(
    "ch06.stats",
    try_it="""
    print(get_stats([1, 2, 3, 1, 2]))            # {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    print(get_stats([7, 7], {(7, 7): 1}, weight=5))
    """,
)
nb.exercise(
    "ch06.merge",
    try_it="""
    print(merge([1, 2, 3, 1, 2], (1, 2), 4))      # [4, 3, 4]
    print(merge([5, 5, 5], (5, 5), 6))            # [6, 5]: left to right, no overlap
    """,
)
nb.exercise(
    "ch06.train",
    try_it="""
    tok = BasicTokenizer()
    tok.train("aaabdaaabac", 256 + 3, verbose=True)  # the Wikipedia example: aa, ab, then aaab
    print({tok.vocab[i]: i for i in tok.merges.values()})
    """,
)
nb.exercise(
    "ch06.encode",
    try_it="""
    from storylib.tokenizer import BasicTokenizer

    tok = BasicTokenizer()
    tok.train("the cat sat on the mat with the hat", 256 + 12)
    ids = tok.encode("the cat and the hat")
    print(ids, [tok.vocab[i] for i in ids])
    """,
)
nb.exercise(
    "ch06.decode",
    try_it="""
    from storylib.tokenizer import BasicTokenizer

    tok = BasicTokenizer()
    tok.train("Zoë and the 🐶 dog. Zoë and the cat.", 256 + 10)
    print(repr(tok.decode(tok.encode("Zoë 🐶"))), repr(tok.decode([0xF0, 0x9F])))  # a broken emoji -> '�'
    """,
)
nb.exercise(
    "ch06.regex_train",
    try_it="""
    from storylib.data import synthetic_stories
    from storylib.tokenizer import render_token

    tok = RegexTokenizer()
    tok.train("\\n".join(synthetic_stories(200, seed=0)), 256 + 50)
    print([render_token(tok.vocab[i]) for i in range(256, 306)])  # whole words with their leading space
    """,
)
nb.exercise(
    "ch06.special",
    try_it="""
    from storylib.data import synthetic_stories

    tok = RegexTokenizer()
    tok.train("\\n".join(synthetic_stories(100, seed=1)), 256 + 30)
    tok.register_special_tokens({"<|endoftext|>": 1000})
    print(tok.encode("<|endoftext|>Once upon a time", allowed_special="all"))
    try:
        tok.encode("<|endoftext|>Once upon a time")
    except ValueError as e:
        print("refused:", e)
    """,
)
nb.exercise(
    "ch06.recover_merges",
    try_it="""
    import tiktoken
    from storylib.tokenizer import GPT4Tokenizer

    enc = tiktoken.get_encoding("cl100k_base")
    tok = GPT4Tokenizer(enc._mergeable_ranks, enc._special_tokens)
    text = "Once upon a time, Zoë met a dragon 🐉 named 12345."
    print(tok.encode(text, "none") == enc.encode_ordinary(text), tok.encode(text, "none"))
    """,
    notes="The first merges of cl100k are pairs of single bytes, so `bpe_split` of a 2-byte token returns its two "
    "bytes; longer tokens need the ranks below their own.",
)
nb.markdown(
    """
    ## What next

    The storyteller's own tokenizer (4096 tokens, trained on TinyStories with `storylib.fastbpe`) is
    `storylib.tokenizer.storyteller_tokenizer()`; it uses *your* `RegexTokenizer` to encode. Compare how many tokens
    a story takes under it, GPT-2 and cl100k: book §6.7.
    """
)

if __name__ == "__main__":
    print(nb.write())

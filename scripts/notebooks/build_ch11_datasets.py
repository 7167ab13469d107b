"""Build solutions/ch11_datasets.ipynb, the nbgrader source notebook of Chapter 11 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch11_datasets", title="Chapter 11 — Datasets")
nb.markdown(
    """
    In this notebook you write the data side of training, `storylib/datasets.py`, in the order of the book: the
    token stream with its `<|endoftext|>` layout, the batches of a resumable window sampler, packing whole stories
    with a loss mask, a train/valid split that cannot leak, exact dedup and MinHash, quality filters, the rules
    and templates of the synthetic instruction dataset, and, in `storylib/chat_template.py`, the chat template
    with its loss mask.

    The cells use the course's tokenizer, `storyteller_tokenizer()` (4096 BPE tokens, specials 4096..4103), and
    small inputs; the graded cells run the package tests of one exercise against *your* `storylib`.
    """
)
nb.code(
    """
    from storylib.data import synthetic_stories
    from storylib.tokenizer import eot_id, storyteller_tokenizer

    tok = storyteller_tokenizer()
    stories = synthetic_stories(20, seed=0)
    """,
    locked=True,
)
nb.exercise(
    "ch11.encode",
    try_it="""
    ids = encode_stories(stories[:3], tok)
    print(ids.dtype, len(ids), ids[:10])
    eot = eot_id(tok)
    print("EOTs:", (ids == eot).sum(), "(expected 4 for 3 stories)")
    """,
)
nb.question(
    "ch11_q_shard_bytes",
    points=1,
    prompt="""
    A shard holds 1,000,000 tokens. How many bytes does its file have, header included? Set `shard_bytes`.
    """,
    solution="shard_bytes = 32 + 2 * 1_000_000",
    test="assert shard_bytes == 2_000_032, 'a 32-byte header, then 2 bytes (uint16) a token'",
)
nb.exercise(
    "ch11.windows",
    try_it="""
    import numpy as np

    stream = np.arange(1000, dtype=np.uint16)  # token i is i: easy to read
    s = WindowSampler(stream, block_size=8, batch_size=2, seed=0)
    x, y = s.next_batch()
    print(x, y, s.state_dict(), sep="\\n")
    """,
)
nb.exercise(
    "ch11.pack",
    try_it="""
    packed = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12]], block_size=6, eot=0, pad=-1)
    print(packed.tokens, packed.segments, packed.loss_mask.astype(int), sep="\\n")
    """,
)
nb.exercise(
    "ch11.split",
    try_it="""
    for s in ["Once upon a time.", "ONCE  upon a time.", "Once upon a time!"]:
        print(repr(s), split_of(s, val_fraction=0.5))
    """,
)
nb.exercise(
    "ch11.dedup",
    try_it="""
    print(dedup_exact(["A cat.", "a  CAT.", "A dog.", "A cat."]))  # expected [0, 2]
    """,
)
nb.exercise(
    "ch11.minhash",
    try_it="""
    from storylib.datasets import jaccard, shingles

    a, b = shingles(stories[0] + " " + stories[1]), shingles(stories[0] + " " + stories[2])
    print("Jaccard", jaccard(a, b), "MinHash estimate", (minhash(a, 256) == minhash(b, 256)).mean())
    """,
)
nb.question(
    "ch11_q_lsh",
    points=1,
    prompt="""
    With 64 MinHash values cut into 16 bands of 4 rows, what is the probability that a pair of stories with
    Jaccard similarity exactly 0.5 becomes a candidate pair? Set `p_candidate` (a float).
    """,
    solution="p_candidate = 1 - (1 - 0.5**4) ** 16",
    test="assert abs(p_candidate - (1 - (1 - 0.5**4) ** 16)) < 1e-9, 'all 4 rows of some band must agree'",
)
nb.exercise(
    "ch11.filter",
    try_it="""
    for s in [stories[0], "Too short.", stories[1] + " and then", "Same line.\\nSame line.\\nSame line."]:
        print(quality_problems(s), repr(s[:40]))
    """,
)
nb.exercise(
    "ch11.features",
    try_it="""
    print(story_features('Once there was a little dog named Rex. "Hi!" said Rex. In the end, Rex smiled.'))
    """,
)
nb.exercise(
    "ch11.instruct",
    try_it="""
    import random

    for s in stories[:4]:
        print(make_instruction(s, random.Random(0))["instruction"])
    """,
)
nb.exercise(
    "ch11.chat_template",
    try_it="""
    chat = [{"role": "user", "content": "Write a story about a cat."}, {"role": "assistant", "content": stories[0]}]
    ids, mask = render_chat(chat, tok)
    print([tok.decode([i]) for i in ids[:8]], mask[:8])
    print("learned tokens:", sum(mask), "=", len(tok.encode_ordinary(stories[0])), "+ 1 <|end|>")
    """,
)
nb.markdown(
    """
    ## What next

    Write the shards of the full data with `python -m storylib.datasets shards --out data/shards`, and the
    instruction dataset with `python -m storylib.datasets instruct --out data/instruct.jsonl`; Chapter 14
    fine-tunes on the second, through `render_chat`.
    """
)

if __name__ == "__main__":
    print(nb.write())

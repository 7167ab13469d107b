"""Build solutions/ch12_kvcache.ipynb, the nbgrader source notebook of Chapter 12 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch12_kvcache", title="Chapter 12 — Inference: the KV cache")
nb.markdown(
    """
    In this notebook you write `storylib/kvcache.py`, the engine that makes the storyteller talk: a KV cache that
    keeps every layer's keys and values, attention of new tokens over it, the cached forward pass (prefill and
    decode), the sampler (repetition penalty, temperature, top-k, top-p), streaming text that never shows half a
    character or part of a stop sequence, and batched generation with a length per row.

    The small cells use a tiny random GPT (fast); the last cell runs the shipped storyteller with *your* code.
    Your Chapter 5 (`storylib/gpt2.py`) must pass for the cached forward to have a model to walk.
    """
)
nb.code(
    """
    import torch

    from storylib.gpt2 import GPT, GPTConfig

    torch.manual_seed(0)
    tiny = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    """,
    locked=True,
)
nb.exercise(
    "ch12.cache_update",
    try_it="""
    cache = KVCache.for_model(tiny, batch_size=2, max_len=10)
    cache.lengths = torch.tensor([3, 1])
    k = v = torch.ones(2, 2, 2, 8)  # (B, n_head, T=2, head_dim)
    keys, values = cache.update(0, k, v)
    print(keys.shape, "(expected (2, 2, 5, 8))")
    print(cache.k[0, :, 0, :6, 0], "(row 0: slots 3 and 4 written; row 1: slots 1 and 2)")
    """,
)
nb.exercise(
    "ch12.attention_cached",
    try_it="""
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    y = attention_cached(q, k, v, lengths=torch.tensor([2]))  # 2 cached tokens, 3 new ones
    print(y.shape, "(expected (1, 2, 3, 8))")
    """,
)
nb.exercise(
    "ch12.forward_cached",
    try_it="""
    from storylib.kvcache import KVCache

    idx = torch.randint(0, 50, (1, 12))
    cache = KVCache.for_model(tiny, 1, 12)
    prefill = forward_cached(tiny, idx[:, :8], cache)  # 8 tokens at once
    steps = [forward_cached(tiny, idx[:, t : t + 1], cache) for t in range(8, 12)]  # then one at a time
    cached = torch.cat([prefill, *steps], dim=1)
    full, _ = tiny(idx)
    print("max |cached - uncached| =", (cached - full).abs().max().item(), "(expected ~1e-6)")
    """,
)
nb.exercise(
    "ch12.sample",
    try_it="""
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    print(process_logits(logits, top_k=2))
    print(process_logits(logits, top_p=0.9).softmax(-1))
    """,
)
nb.question(
    "ch12_q_cache_bytes",
    points=1,
    prompt="""
    A storyteller has 10 layers, width 288 and a 256-token context. How many bytes does a float32 KV cache for
    one full sequence take? Set `cache_bytes`.
    """,
    solution="cache_bytes = 2 * 10 * 256 * 288 * 4",
    test="assert cache_bytes == 5_898_240, 'keys and values (2) × layers × tokens × width × 4 bytes'",
)
nb.exercise(
    "ch12.stream",
    try_it="""
    data = "a🐉".encode()
    print([utf8_complete(data[:n]) for n in range(len(data) + 1)], "(expected [0, 1, 1, 1, 1, 5])")
    """,
)
nb.exercise(
    "ch12.stop",
    try_it="""
    print(stop_scan("The end.<|e", ["<|end|>"]))  # ('The end.', '<|e', False)
    print(stop_scan("Yes.\\nUser: hi", ["\\nUser:"]))  # ('Yes.', '', True)
    """,
)
nb.exercise(
    "ch12.batch",
    try_it="""
    from storylib.kvcache import generate_tokens

    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    together = generate_batch(tiny, prompts, 6)
    alone = [list(generate_tokens(tiny, p, 6)) for p in prompts]
    print(together == alone, together)
    """,
)
nb.markdown(
    """
    ## Your code tells the story

    Everything the storyteller does between a prompt and its story now runs through your `storylib`: your GPT
    (Chapter 5), your tokenizer (Chapter 6), your cache, sampler and stream (this chapter). The reference storylib,
    given the same prompt, greedily writes the story in `grading/tests/golden/`. Here is yours.
    """
)
nb.code(
    """
    from storylib.kvcache import golden_story
    from grading.notebook import golden_file

    mine = golden_story()
    reference = golden_file("ch12_once_upon_a_time.txt")
    print(mine)
    print("\\nsame story as the reference, token for token:", mine == reference)
    """,
    locked=True,
)

if __name__ == "__main__":
    print(nb.write())

"""Build solutions/ch16_deployment.ipynb, the nbgrader source notebook of Chapter 16 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch16_deployment", title="Chapter 16 — Deployment: an API and a web app")
nb.markdown(
    """
    In this notebook you write the heart of `storylib/serve.py`, in the order of the book: the server-sent-events
    encoder, the streaming handler that turns the engine's events into OpenAI chunks, the validation of a request's
    sampling parameters, and the two halves of continuous batching: admitting a request into a free row of the
    batch KV cache, and one decode step of every active row.

    The batching cells use a tiny random GPT (fast, and enough to see the rows at work); the graded cells run the
    package tests of one exercise against *your* `storylib`. When all five pass, `llm101n serve` runs your code:
    open http://127.0.0.1:8080/ and chat with the storyteller.
    """
)
nb.code(
    """
    import torch

    from storylib.gpt2 import GPT, GPTConfig
    from storylib.tokenizer import eot_id, storyteller_tokenizer

    tok = storyteller_tokenizer()
    torch.manual_seed(0)
    tiny = GPT(GPTConfig(block_size=64, vocab_size=4160, n_layer=2, n_head=2, n_embd=32)).eval()
    eot = eot_id(tok)
    """,
    locked=True,
)
nb.exercise(
    "ch16.sse",
    try_it="""
    print(sse_event("Once upon a time"))
    print(sse_event("two\\nlines", event="chunk", id="1"))
    """,
)
nb.question(
    "ch16_q_content_length",
    points=1,
    prompt="""
    A client sends the JSON body `{"prompt": "café"}` (no spaces other than the one after the colon, as written).
    What must its `Content-Length` header say? Set `content_length` (an int).
    """,
    solution='content_length = len(\'{"prompt": "café"}\'.encode("utf-8"))',
    test="assert content_length == 19, 'Content-Length counts bytes: é is 2 bytes in UTF-8'",
)
nb.exercise(
    "ch16.stream",
    try_it="""
    from storylib.serve import stream_chunks


    async def events():
        for piece in ["Once", " upon", " a time"]:
            yield ("text", piece)
        yield ("done", "stop")


    async def show():
        async for raw in stream_chunks(events(), completion_id="chatcmpl-1", created=0, model="storyteller", chat=True):
            print(raw.decode(), end="")


    await show()  # a notebook runs an event loop already: await at the top level
    """,
)
nb.exercise(
    "ch16.validate",
    try_it="""
    from storylib.serve import Limits, RequestError

    print(check_sampling({"max_tokens": 20, "temperature": 0.7, "stop": "The end"}, Limits()))
    try:
        check_sampling({"max_tokens": True}, Limits())
    except RequestError as e:
        print(e.status, e.param, e.message)
    """,
)
nb.exercise(
    "ch16.admit",
    try_it="""
    from storylib.serve import GenRequest

    engine = Engine(tiny, tok, max_batch=4, max_queue=4)
    req = GenRequest([eot, *tok.encode_ordinary("Once upon a time")], max_tokens=8, temperature=0.0)
    engine.admit(req)
    print("row 0 holds", int(engine.cache.lengths[0]), "tokens; first new token:", req.tokens)
    """,
)
nb.exercise(
    "ch16.step",
    try_it="""
    from storylib.serve import GenRequest

    engine = Engine(tiny, tok, max_batch=3, max_queue=8)
    reqs = [GenRequest([eot, *tok.encode_ordinary(p)], max_tokens=6 + 3 * i, temperature=0.0)
            for i, p in enumerate(["Once", "The cat sat", "Tom and Lily went", "A dog", "The sun"])]
    for r in reqs:
        engine.submit(r)
    while engine.run_once():
        print("active rows:", len(engine.rows), "lengths:", engine.cache.lengths.tolist())
    print([len(r.tokens) for r in reqs], engine.stats["steps"], "steps")
    """,
)
nb.question(
    "ch16_q_batch",
    points=1,
    prompt="""
    An engine with `max_batch = 4` gets eight requests at once, each asking for exactly 10 new tokens (no stop).
    A request's first new token comes from its prefill, every further token from one decode step. How many decode
    steps does the engine run until all eight are done? Set `steps_needed` (an int).
    """,
    solution="steps_needed = 9 + 9",
    test="assert steps_needed == 18, 'two waves of 4 rows, each needing 9 decode steps after the prefill'",
)
nb.markdown(
    """
    ## What next

    Start the server on your own code with `llm101n serve` (in a terminal, in your workspace) and open
    http://127.0.0.1:8080/. Point any OpenAI client at `http://127.0.0.1:8080/v1`. `bench/serve_load.py` (in the
    course repository) measures what batching buys on your machine.
    """
)

if __name__ == "__main__":
    print(nb.write())

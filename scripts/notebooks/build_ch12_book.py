"""Write book/ch12_kvcache.ipynb, the Chapter 12 page (the book executes it at build time).

    .venv/bin/python scripts/notebooks/build_ch12_book.py
"""

import sys
import textwrap
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import write_notebook  # noqa: E402

nb = nbformat.v4.new_notebook()
nb.metadata.update(kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
                   language_info={"name": "python"})
def md(s): nb.cells.append(nbformat.v4.new_markdown_cell(textwrap.dedent(s).strip()))
def code(s): nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(s).strip()))
def ex(i, pts, what, func):
    md(f"""
    :::{{admonition}} Exercise `{i}` ({pts} pts)
    :class: tip

    {what}

    Write it in **`storylib/kvcache.py`**, `{func}`, between the `### BEGIN SOLUTION {i}` and `### END SOLUTION` lines.
    Check it with `llm101n check {i}`, or in the notebook `exercises/ch12_kvcache.ipynb`.
    :::
    """)

md("""
# Inference: the KV cache

The storyteller of Chapter 5 can already write: `GPT.generate` feeds the story so far through the model, takes the
logits of the last position, picks a token, appends it, and does it all again. *All* again: to write token 200 it
recomputes the keys and values of tokens 1 to 199, which it had already computed for token 199, and for 198, and
so on. This chapter stops that waste, and turns a model that can write into a storyteller you can talk to:

- a **KV cache** that keeps every layer's keys and values, so a new token costs one token's worth of work;
- **prefill** (the prompt in one pass) and **decode** (one token a step);
- a **sampler** with the knobs every chat product has: temperature, top-k, top-p, repetition penalty, a seed;
- **streaming** text that never shows half a UTF-8 character or the beginning of a stop sequence;
- **batches** of prompts of different lengths, decoded together.

Everything lives in `storylib/kvcache.py`. Chapter 5's `GPT` is not touched: the cached forward pass walks the
model's own modules. At the end, the story on this page is written by that code, and in your workspace, by yours.
""")
code("""
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from myst_nb import glue

from storylib import kvcache as K
from storylib.checkpoint import default_storyteller
from storylib.data import course_file
from storylib.tokenizer import eot_id

torch.set_num_threads(2)  # the book is built on two CPU cores
model, tok = default_storyteller()
model.eval()
eot = eot_id(tok)
cfg = model.config
print(f"the storyteller: {model.num_params() / 1e6:.1f}M parameters, {cfg.n_layer} layers, {cfg.n_head} heads, "
      f"width {cfg.n_embd}, context {cfg.block_size} tokens")
""")
md("""
## Where the time goes

Time one step of Chapter 5's loop: a forward pass over the whole context, of which only the last position's logits
are used. The work grows with the context, up to the model's window (`cfg.block_size`, 512 tokens for the
storyteller); after that the context is cropped and every step costs a full window's pass.
""")
code("""
def median_ms(f, repeats=5):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))

g = torch.Generator().manual_seed(0)
W = cfg.block_size
lengths = [8, 32, 64, 128, 256, W - 1]  # W - 1: room for one decode step in the window
idx = torch.randint(0, 4096, (1, W), generator=g)
with torch.no_grad():
    full_ms = [median_ms(lambda n=n: model(idx[:, :n])) for n in lengths]
for n, ms in zip(lengths, full_ms):
    print(f"context {n:3d}: {ms:6.1f} ms per new token")
""")
md("""
Yet the keys and values of the earlier tokens do not change when a token is appended: the attention is causal, so
token $t$'s key $k_t = W_k\\,\\mathrm{LN}(x_t)$ depends only on tokens $\\le t$. Keep them, and a step only has to
compute the new token's query, key and value, and attend over the kept ones.

## The cache

One tensor for the keys and one for the values, allocated once for the longest sequence we will write:

$$
K, V \\in \\mathbb{R}^{\\,n_\\text{layer} \\times B \\times n_\\text{head}
  \\times L_\\text{max} \\times d_\\text{head}},
\\qquad \\texttt{lengths} \\in \\mathbb{N}^{B}
$$

Row $b$'s token at position $p$ keeps its key and value in slot $p$; `lengths[b]` says how many slots of the row are
real. A new chunk of $T$ tokens is written into slots `lengths[b]` … `lengths[b] + T - 1`, and nothing is ever
reallocated (growing a tensor with `torch.cat` at every step would copy the whole cache every step).
""")
code("""
cache = K.KVCache.for_model(model, batch_size=1, max_len=cfg.block_size)
mb = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / 2**20
print(f"K and V: {tuple(cache.k.shape)} each, {mb:.1f} MiB in float32 for one {cfg.block_size}-token window")
weights_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
print(f"the weights: {weights_mib:.1f} MiB in float32")
glue("weights_mib", weights_mib, display=False)
""")
md("""
The cache is small next to the weights here. It is not for large models: Llama-2-70B, with 80 layers of width
8,192, keeps $2 \\cdot 80 \\cdot 8192$ numbers *per token*, 2.5 MiB in fp16, without grouped-query attention
(appendix C); serving many users at once fills the GPU with caches — which is why the cache's layout, its
precision and its sharing are research topics of their own.
""")
ex("ch12.cache_update", 2, "Write a chunk's keys and values into the next free slots of each row (the rows may be "
   "at different lengths) and return views of the filled prefix of the layer, without copying.", "KVCache.update")
md("""
## Attention over the cache

The new chunk's $T$ queries attend over the slots of their row: the whole cached past, the new chunk causally, and
never a slot beyond their own. With `lengths[b]` tokens cached before the chunk, query $t$ of row $b$ (at position
`lengths[b] + t`) may look at slot $s$ exactly when $s \\le \\texttt{lengths}[b] + t$. One mask covers prefill
(`lengths = 0`, $T$ = prompt length: the causal mask of Chapter 4), decode ($T = 1$: everything cached) and rows of
different lengths in one batch:
""")
code("""
lengths_demo = torch.tensor([3, 1])  # row 0 has 3 cached tokens, row 1 has 1
T, L = 2, 6
t, s = torch.arange(T), torch.arange(L)
allowed = s[None, None, :] <= (lengths_demo[:, None, None] + t[None, :, None])  # (B, T, L)
fig, axes = plt.subplots(1, 2, figsize=(8, 2.2))
for b, ax in enumerate(axes):
    ax.imshow(allowed[b], cmap="Greens", vmin=0, vmax=1.3)
    ax.set_title(f"row {b}: {int(lengths_demo[b])} cached + {T} new")
    ax.set_xlabel("slot s"); ax.set_ylabel("new token t")
    ax.set_xticks(range(L)); ax.set_yticks(range(T))
    for j in range(L):
        kind = "cached" if j < lengths_demo[b] else "new" if j < lengths_demo[b] + T else "unused"
        ax.text(j, -0.75, kind, ha="center", fontsize=7, color="gray")
plt.tight_layout(); plt.show()
""")
ex("ch12.attention_cached", 3, "Scores $q k^\\top/\\sqrt{d}$ of the new queries against every slot, $-\\infty$ "
   "where the rule above forbids, softmax, and the weighted sum of the values. Write the math out (no "
   "`scaled_dot_product_attention`): the mask is the lesson.", "attention_cached")
md("""
## Prefill and decode

`forward_cached(model, idx, cache)` runs the model's own modules on $T$ new tokens a row: embed token and position
(position = `lengths[b] + t`), and in each block split `c_attn(ln_1(x))` into heads, write the keys and values
into the cache, attend, project, add; then the MLP. **Prefill** is one call with the whole prompt on an empty cache;
**decode** is one call per new token. The test of a cache is that it changes nothing: the logits of prefill +
decode equal those of the full forward pass.
""")
ex("ch12.forward_cached", 2, "The cached forward pass, as described above, with the model's own modules.",
   "forward_cached")
code("""
prompt = "Once upon a time, there was a little fox who"
ids = [eot, *tok.encode_ordinary(prompt)]
x = torch.tensor([ids])
with torch.no_grad():
    full, _ = model(x)
    cache = K.KVCache.for_model(model, 1, len(ids))
    pre = K.forward_cached(model, x[:, :5], cache)                      # prefill the first 5 tokens
    steps = [K.forward_cached(model, x[:, t : t + 1], cache) for t in range(5, len(ids))]  # then decode
cached = torch.cat([pre, *steps], dim=1)
print(f"{len(ids)} tokens: max |cached - full| = {(cached - full).abs().max():.2e}")

greedy_cached = list(K.generate_tokens(model, ids, 100, temperature=0.0))
with torch.no_grad():
    greedy_full = model.generate(x, 100, temperature=0.0)[0, len(ids):].tolist()
print("100 greedy tokens, cached == uncached:", greedy_cached == greedy_full)
""")
md("""
Prefill and decode are different kinds of work. Prefill multiplies a $T \\times 288$ block of activations by each
weight matrix: many flops per weight read, so the CPU's arithmetic is busy. Decode multiplies *one* row: every
weight ({glue:text}`weights_mib:.0f` MiB in fp32, printed above) is read from memory to do two flops with it, so
a decode step is bound by memory bandwidth, and a prefill of hundreds of tokens costs only as much as a handful
of decode steps. The cell below measures both.
""")
code("""
prefill_ms, decode_ms = [], []
with torch.no_grad():
    for n in lengths:
        c = K.KVCache.for_model(model, 1, n + 1)
        def prefill(n=n, c=c):
            c.reset(); K.forward_cached(model, idx[:, :n], c)
        prefill_ms.append(median_ms(prefill))
        def step(c=c):
            K.forward_cached(model, idx[:, :1], c); c.lengths -= 1  # decode one token, then forget it
        decode_ms.append(median_ms(step, repeats=20))
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
a1.plot(lengths, full_ms, "o-", label="no cache: one new token (full pass)")
a1.plot(lengths, decode_ms, "o-", label="cache: one decode step")
a1.set_xlabel("tokens in the context"); a1.set_ylabel("ms per new token"); a1.legend(); a1.set_ylim(bottom=0)
a2.plot(lengths, [n / p * 1e3 for n, p in zip(lengths, prefill_ms)], "o-", label="prefill (tokens of the prompt)")
a2.plot(lengths, [1e3 / d for d in decode_ms], "o-", label="decode (new tokens)")
a2.set_xlabel("tokens in the context"); a2.set_ylabel("tokens per second"); a2.set_yscale("log"); a2.legend()
plt.tight_layout(); plt.show()
for n, p, d in zip(lengths, prefill_ms, decode_ms):
    print(f"{n:3d} tokens: prefill {p:6.1f} ms ({n / p * 1e3:6.0f} tok/s) | a decode step after them {d:5.2f} ms")
""")
md("""
**The context window.** The storyteller learned position embeddings for positions 0…511 only, and a cached key has
its position baked in, so the cache cannot slide. Chapter 5's `generate` crops the context at every step (which
re-positions every token: with a cache that would mean recomputing everything, every step). `generate_tokens`
instead starts the cache again from the last half of the window when it is full: one prefill every 256 tokens. Up
to 512 tokens the cached and uncached stories are identical; beyond, they read slightly different contexts.
(Chapter 5's relative cousins, RoPE in appendix C and sliding-window caches, lift this restriction.)

## Sampling

Greedy decoding (always the most probable token) is reproducible and good for tests, but it is dull and loops. A
sampler reshapes the next-token distribution before drawing from it, in this order:

1. **repetition penalty** (Keskar et al. 2019): the logits of tokens already in the text are pushed down;
2. **temperature** $\\tau$: logits $/\\,\\tau$; $\\tau < 1$ sharpens, $\\tau > 1$ flattens, $\\tau = 0$ is greedy;
3. **top-k**: keep the $k$ most probable tokens;
4. **top-p** (nucleus, Holtzman et al. 2020): keep the smallest set of most probable tokens whose probability adds
   up to $p$ — few tokens where the model is sure, many where it is not.

A seeded `torch.Generator` makes the draw reproducible.
""")
ex("ch12.sample", 3, "`process_logits`: the four steps above on a batch of logits (`seen` marks the tokens that "
   "already occur in each row). `sample` draws from the result.", "process_logits")
code("""
ctx = [eot, *tok.encode_ordinary("Once upon a time, there was a little")]
with torch.no_grad():
    logits = model(torch.tensor([ctx]))[0][:, -1]
settings = [("temperature 1", dict(temperature=1.0)), ("temperature 0.5", dict(temperature=0.5)),
            ("temperature 1.5", dict(temperature=1.5)), ("top-k 5", dict(top_k=5)), ("top-p 0.9", dict(top_p=0.9))]
base = torch.softmax(logits[0], -1)
order = base.argsort(descending=True)[:14]
fig, axes = plt.subplots(1, len(settings), figsize=(15, 3.4), sharey=True)
for ax, (name, kw) in zip(axes, settings):
    p = torch.softmax(K.process_logits(logits, **kw)[0], -1)
    kept = int((p > 0).sum())
    ax.barh(range(len(order)), p[order].numpy(), color="tab:blue")
    ax.set_title(f"{name}\\n{kept} tokens possible", fontsize=9)
    ax.set_xlim(0, 1)
axes[0].set_yticks(range(len(order)))
axes[0].set_yticklabels([repr(tok.decode([int(i)])) for i in order], fontsize=8)
axes[0].invert_yaxis()
fig.suptitle("P(next token | '…there was a little'), the 14 most likely tokens", fontsize=10)
plt.tight_layout(); plt.show()
""")
code("""
for seed in (1, 2):
    text = "".join(K.generate_stream(model, tok, ctx, 40, temperature=0.9, top_p=0.9, seed=seed))
    print(f"seed {seed}: …there was a little{text}\\n")
def story(seed):
    return "".join(K.generate_stream(model, tok, ctx, 40, temperature=0.9, top_p=0.9, seed=seed))

print("the same seed, the same story:", story(1) == story(1))
""")
md("""
## Streaming text

A chat shows the story as it is written, piece by piece. Two things can go wrong between token ids and text on the
screen. A token is a run of *bytes*, not characters (Chapter 6): an emoji of 4 bytes may come in two tokens, and
decoding the first alone gives '�'. And a stop sequence (`"\\nUser:"`, say) may arrive over several tokens: once
its first characters are on the screen, they cannot be taken back. So the stream holds back the bytes of an
unfinished character, and any text that could still become a stop sequence, and releases them once they are
certain.
""")
ex("ch12.stream", 2, "`utf8_complete(data)`: how many leading bytes of `data` can be decoded now, holding back "
   "an unfinished multi-byte character at the end (look at its lead byte: `110xxxxx` starts 2 bytes, `1110xxxx` "
   "3, `11110xxx` 4).", "utf8_complete")
code("""
s = "The dragon 🐉 said «héllo»"
pieces = []
for t in tok.encode_ordinary(s):
    b = tok.vocab[t]
    pieces.append(b)
print("token bytes:", pieces)
print("decoding token by token, naively:", [p.decode("utf-8", errors="replace") for p in pieces])
dec = K.StreamDecoder(tok)
print("through the StreamDecoder:       ", [dec.push(t) for t in tok.encode_ordinary(s)] + [dec.flush()])
""")
ex("ch12.stop", 2, "`stop_scan(text, stops)`: cut at the earliest stop string; otherwise hold back the longest end "
   "of the text that is the beginning of a stop string.", "stop_scan")
code("""
dec = K.StreamDecoder(tok, stop_strings=["The end"])
shown = []
for t in tok.encode_ordinary("They played all day. The end. Then they"):
    shown.append(dec.push(t))
    if dec.stopped:
        break
print(shown, "stopped:", dec.stopped)
""")
md("""
`generate_stream(model, tok, prompt_ids, max_new_tokens, temperature=…, top_k=…, top_p=…, repetition_penalty=…,
stop=[…], seed=…)` puts it together: a Python generator of text pieces that stops at `<|endoftext|>`, `<|end|>`,
or a stop sequence. It is lazy — nothing runs until the next piece is asked for — so a chat's stop button only has
to stop asking (or call `.close()`).

## Batches

A server answers many users at once (Chapter 16). Decoding $B$ sequences together reads each weight once for all of
them: with decode bound by memory, $B$ rows cost little more than one. Prompts have different lengths, so the batch
is right-padded: row $b$'s prompt sits at slots $0 … \\ell_b - 1$, its new tokens follow, and the cache's `lengths`
keep each row at its own position. The mask of §12.3 makes sure no query ever reads a pad.
""")
ex("ch12.batch", 2, "In `generate_batch`: right-pad the prompts into one batch, prefill them together, take each "
   "row's logits at its own last prompt position, and set the cache's lengths so that each row decodes from there.",
   "generate_batch")
code("""
prompts = ["Once upon a time", "Tom had a red ball. One day,", "The cat"]
batch_ids = [[eot, *tok.encode_ordinary(p)] for p in prompts]
t0 = time.perf_counter()
together = K.generate_batch(model, batch_ids, 30, pad_id=tok.special_tokens["<|pad|>"])
t_batch = time.perf_counter() - t0
t0 = time.perf_counter()
alone = [list(K.generate_tokens(model, ids, 30)) for ids in batch_ids]
t_alone = time.perf_counter() - t0
print(f"batched == one by one: {together == alone}; {t_batch:.2f} s together, {t_alone:.2f} s one by one")
for p, out in zip(prompts, together):
    print(f"  {p}{tok.decode(out)!r}")
""")
md("""
## How much faster?

The timings above are single steps. A whole story is the sum of its steps, and the benchmark `bench/kvcache_speed.py`
times it: a storyteller writes a story greedily on the CPU, once with Chapter 5's `generate` and once with
`generate_tokens`, both in one run on two cores, for three lengths. Its result is committed in
`bench/results/kvcache_cpu.json` (rerun it with `OMP_NUM_THREADS=2 .venv/bin/python bench/kvcache_speed.py`):
""")
code("""
kv = json.loads(course_file("bench/results/kvcache_cpu.json").read_text())
m = kv["machine"]
print(kv["what"])
print(f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, {m['date'][:10]} (load average at start "
      f"{m['load_average_at_start']:.1f})")
for r in kv["decode"]:
    print(f"  {r['new_tokens']:5d} new tokens: no cache {r['no_cache_tokens_per_s']:6.1f} tok/s | cache "
          f"{r['cache_tokens_per_s']:6.1f} tok/s | {r['speedup']:5.1f}x")
fig, ax = plt.subplots(figsize=(6, 3.2))
n = [r["new_tokens"] for r in kv["decode"]]
w = 0.35
ax.bar(np.arange(len(n)) - w / 2, [r["no_cache_tokens_per_s"] for r in kv["decode"]], w, label="no cache")
ax.bar(np.arange(len(n)) + w / 2, [r["cache_tokens_per_s"] for r in kv["decode"]], w, label="KV cache")
ax.set_xticks(range(len(n)), [f"{x} tokens" for x in n]); ax.set_ylabel("tokens per second"); ax.legend()
for i, r in enumerate(kv["decode"]):
    ax.text(i + w / 2, r["cache_tokens_per_s"], f"{r['speedup']:.1f}x", ha="center", va="bottom", fontsize=9)
plt.tight_layout(); plt.show()
""")
md("""
The speed-up grows with the length of the story. Without the cache, token $n$ costs a pass over $\\min(n, W)$
tokens, $W$ being the window of the benchmark's model (its context, in the first line printed above); with the
cache, it costs one token. So the uncached loop slows down as the story grows, until the story fills the window
and every further token pays a full window's pass; the cached loop pays one decode step per token whatever the
length — a step bound, as §12.4 showed, by reading the weights from memory. Once the story is longer than the
window, the speed-up is the ratio of a full window's pass to a decode step. That is also why a smaller number
format for the weights (Chapter 13, quantization) speeds decoding up almost in proportion: fewer bytes to read
per step.

## The scoreboard

The KV cache changes how fast the storyteller writes, not what it predicts: the cached logits equal those of the
full pass (§12.4 printed their largest difference, at the level of float32 rounding), so every model keeps its
bits per byte, and this chapter adds no line to the board. Here it is, up to this chapter:
""")
code("""
from storylib import scoreboard

scoreboard.show_board(12)
""")
md("""
## Talk to the storyteller

The chat below runs on `generate_stream`: type the start of a story, and it streams the rest. **Continue** writes
more, **Refine** regenerates from an edited prompt or from a point you click in the story, **Stop** stops it
mid-sentence. In this static page no Python runs: it shows a story recorded when the book was built, then the
same model, compiled to WebAssembly (`storylib/web`), tells stories in your browser. Run it on your own code with
`make start` (the same widget opens from `storyteller.ipynb` in JupyterLab, where it starts in chat mode: Chapter 14
teaches the storyteller to take requests).
""")
code("""
from storylib.widgets import StoryChat

StoryChat(mode="story")
""")
md("""
## Your code tells the story

Here is the story that the reference `storylib` writes, greedily, after "Once upon a time". It is also in
`grading/tests/golden/`, and the last test of Chapter 12 asks your `storylib` for the same story, token for token.
When `llm101n check ch12` passes, every step between the prompt and this story is yours: your tokenizer (Chapter 6),
your GPT (Chapter 5), your cache, sampler and stream (this chapter). The last cell of
`exercises/ch12_kvcache.ipynb` shows it — and from then on, the storyteller in `make start` and in the chat runs
your code.
""")
code("""
story = K.golden_story()
print("Once upon a time" + story)
""")
md("""
## Summary

- Generation recomputes nothing if the keys and values of the past are kept: a KV cache of
  $2 \\cdot n_\\text{layer} \\cdot L \\cdot d$ numbers per sequence.
- Prefill processes the prompt in one compute-bound pass; decode adds one token per memory-bound step.
- One mask — slot $s$ visible to query $t$ iff $s \\le \\text{length} + t$ — serves prefill, decode and ragged
  batches.
- Sampling = repetition penalty, temperature, top-k, top-p, and a seeded draw; greedy is temperature 0.
- Streams release text only when it is certain: whole UTF-8 characters, and never the start of a stop sequence.
""")
print("wrote", write_notebook(nb, Path("book") / "ch12_kvcache.ipynb"))

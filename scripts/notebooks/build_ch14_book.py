"""Write book/ch14_sft.ipynb, the Chapter 14 page (the book executes it at build time).

    .venv/bin/python scripts/notebooks/build_ch14_book.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch14_sft")
md, code, ex = page.md, page.code, page.exercise

md("""
# Supervised finetuning: LoRA and chat

The storyteller of Chapters 5 to 12 has read thousands of children's stories and writes new ones fluently. Ask it
for something, though, and it does not *answer*: it carries on writing. This chapter teaches it to take requests,
"write a story about a cat named Tom, with the words key, rain and hug", and to refine what it wrote, "now call
the cat Max", "give it a title". That step, from a text model to an assistant, is **supervised finetuning** (SFT):
a little more training, on conversations, with the loss on the assistant's words only.

- **chat data made by rules** (`storylib/conversations.py`): requests made from stories, and answers the rules make
  *exactly* from the same stories, so every target is right by construction and every reply can be checked;
- the **masked loss** (`storylib/sft.py`): the model reads the whole conversation, but learns to write only the
  assistant's turns and the token that ends them;
- **LoRA** (`storylib/lora.py`): finetuning with a few percent of the parameters, written from scratch;
- an **SFT run** on the Chapter 7 trainer, here on two CPU cores, and the real one on a GPU;
- **evaluation by rules**: did the reply use the words asked for, rename the character everywhere, stop when done?
""")
code("""
import copy
import json
import math
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import HTML, display

from storylib import conversations as C
from storylib import lora as L
from storylib import sft
from storylib.chat_template import ROLE_TOKENS, chat_text, render_chat
from storylib.checkpoint import default_storyteller
from storylib.data import course_file, load_stories
from storylib.kvcache import generate_stream
from storylib.tokenizer import eot_id

torch.set_num_threads(2)  # the book is built on two CPU cores
base, tok = default_storyteller()
eot, end = eot_id(tok), tok.special_tokens["<|end|>"]
cfg = base.config
print(f"the base storyteller: {base.num_params() / 1e6:.1f}M parameters, {cfg.n_layer} layers, width {cfg.n_embd}, "
      f"context {cfg.block_size} tokens")
""")

# --------------------------------------------------------------------------------------------------- 14.1
md("""
## A base model continues, it does not answer

Give the base storyteller a request as plain text, the way it has seen every story begin (after `<|endoftext|>`),
and let it write greedily:
""")
code("""
def continue_text(model, text, max_tokens=160):
    return "".join(generate_stream(model, tok, [eot, *tok.encode_ordinary(text)], max_tokens, temperature=0.0))

for request, words in [("Write a story about a cat named Tom who finds a key.", ["Tom", "key"]),
                       ("Write a story with the words key, rain and hug.", ["key", "rain", "hug"])]:
    reply = continue_text(base, request)
    used = [w for w in words if w.lower() in reply.lower()]
    print(f"{request}\\n  -> {reply!r}\\n  asked for {words}, used {used}\\n")
""")
md("""
The first reply reads like a story about Tom, but look at how it starts: the model took the request for the *first
sentence of a story* and went on from there, and what the request was about drifts away. The second request shows
what that means: nothing in the training stories looks like "Write a story with the words …", so the model treats it
as ordinary text and writes whatever its statistics suggest (greedy decoding also makes it repeat itself). Nothing
forces the words asked for into the story. And the model never says it is done: it stops at the token limit or at
`<|endoftext|>`, its "this story is over".

Pretraining taught the model what stories *are*. Nothing taught it that some text is a request and the text after
it should fulfil that request. That is what this chapter adds, and it is why chat models are trained in two stages:
a long, cheap pretraining on raw text, and a short finetuning on conversations. The conversations need a format the
model can tell apart from stories, which we have had since Chapter 11: the chat template, with its special tokens
`<|user|>`, `<|assistant|>` and `<|end|>`. The base model has never seen them used:
""")
code("""
ids, _ = render_chat([{"role": "user", "content": "Write a story with the words key, rain and hug."}], tok,
                     add_generation_prompt=True)
print(chat_text([{"role": "user", "content": "Write a story with the words key, rain and hug."}],
                add_generation_prompt=True))
print(repr("".join(generate_stream(base, tok, ids, 120, temperature=0.0))))
""")

# --------------------------------------------------------------------------------------------------- 14.2
md("""
## Chat data made by rules

Chat models are finetuned on conversations written (or at least checked) by people: InstructGPT used about 13,000
prompts with answers written by labellers; later models mix human data with answers written by larger models. We
have neither, but we have something better suited to a course: **rules**. Every request is made *from* a story,
so the rules also know the right answer exactly.

- A **create** request describes a story by its features (Chapter 11's `story_features`: the main character and
  its name, a few of its content words, whether it has dialogue or a happy ending, its length): "Write a story
  about a cat named Tom. Use the words key, rain and hug." The target is the story itself.
- A **refine** request, as the second or third user turn, changes the story the assistant just wrote, and a rule
  makes the changed story: *rename* a character (every occurrence, possessives too, whole words only: renaming
  Tom must not touch Tommy), give it a *title*, *continue* it (the first turn showed only its first sentences),
  *shorten* it to its first sentences and an ending, *change a word* everywhere, add a *moral*.

Each conversation keeps, for every assistant turn, a **spec**: what was asked (the kind and its arguments). The
same spec later checks what a model answers (§14.6).
""")
code("""
t0 = time.perf_counter()
train_stories, valid_stories = load_stories("train"), load_stories("valid")
train_convs, dev_convs = C.split_conversations(train_stories, seed=0)
heldout_convs = C.build_conversations(valid_stories, seed=0)
print(f"{len(train_stories):,} training stories -> {len(train_convs):,} training conversations and "
      f"{len(dev_convs):,} dev conversations (from other stories); {len(valid_stories):,} validation stories -> "
      f"{len(heldout_convs):,} held-out conversations, in {time.perf_counter() - t0:.1f} s")

def clip(text, n=230):
    return text if len(text) <= n else text[:n] + " …"

conv = next(c for c in train_convs if len(c["specs"]) == 3 and c["messages"][0]["role"] == "system")
for m in conv["messages"]:
    print(f"{m['role']:>9}: " + textwrap.fill(clip(m["content"]), 105, subsequent_indent=" " * 11))
print("    specs:", *conv["specs"], sep="\\n      ")
""")
md("""
One turn of each kind (the request, and the start of the target the rules made):
""")
code("""
turns = {}
for c in train_convs:
    for t in C.assistant_turns(c):
        turns.setdefault(t["spec"]["kind"], t)
for kind, t in turns.items():
    print(f"{kind:>11}  user: {t['messages'][-1]['content']}")
    print(" " * 13 + textwrap.fill("assistant: " + clip(t["target"], 160), 105, subsequent_indent=" " * 24))
""")
md("""
The refine targets are made by functions of the story, and the rename is the one with the most traps: a name can
be followed by `'s`, can be a prefix of another word ("Tom" in "Tomato"), and must change in every sentence.
""")
ex("ch14.rename", "Replace every whole-word occurrence of the old name (possessives included, never inside a longer "
   "word) with the new one.")
code("""
story = "Tom saw Tommy. Tom's hat was red. \\"Tom!\\" said Mom, eating a tomato."
print(C.rename(story, "Tom", "Max"))
""")
md("""
How many conversations of each kind, how many turns, and how long are they in tokens? The storyteller's context is
512 tokens: enough, most of the time, for a request, a story, a refine request and the changed story. A longer
conversation is **windowed** by `fit_conversation`: its oldest whole turns are dropped (a system message, the last
request and the story it refers to are kept) until it fits, and training examples go through the same function as
the chat at serving time, so the model never trains on a format it will not see.
""")
code("""
stats = C.conversation_stats(train_convs)
print(f"{stats['conversations']:,} conversations, {stats['assistant_turns']:,} assistant turns, "
      f"{stats['with_system']:,} with a system prompt")
print("conversations by number of assistant turns:", stats["turns"])
print("create requests that ask for:", ", ".join(f"{k} {v:,}" for k, v in stats["create_asks"].items()))

lengths = [len(render_chat(c["messages"], tok)[0]) for c in train_convs]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 2]})
a1.barh(list(stats["kinds"]), list(stats["kinds"].values()), color="tab:orange")
a1.invert_yaxis(); a1.set_xlabel("assistant turns"); a1.set_title("turns by kind", fontsize=10)
a2.hist(lengths, bins=60, color="tab:blue")
a2.axvline(cfg.block_size, color="tab:red", ls="--", label=f"context: {cfg.block_size} tokens")
a2.set_xlabel("tokens in the rendered conversation"); a2.set_ylabel("conversations"); a2.legend()
a2.set_title("conversation lengths", fontsize=10)
plt.tight_layout(); plt.show()
over = np.mean(np.array(lengths) > cfg.block_size)
print(f"median {np.median(lengths):.0f} tokens, 90% under {np.percentile(lengths, 90):.0f}; "
      f"{over:.1%} are longer than the context and are windowed")
""")
md("""
The held-out conversations are made from the 1,000 **validation** stories, which neither pretraining nor SFT ever
trains on, so a model that merely remembered its training stories gets no credit. The dev conversations, made from
training stories the split sets aside *by story* (no story is in both), pick the best checkpoint during SFT.
""")
code("""
train_ids = {c["story_id"] for c in train_convs}
print("stories shared by training and dev conversations:", len(train_ids & {c["story_id"] for c in dev_convs}))
print("stories shared by training and held-out conversations:",
      len(train_ids & {c["story_id"] for c in heldout_convs}))
""")

# --------------------------------------------------------------------------------------------------- 14.3
md("""
## The masked loss

A conversation becomes one token sequence with the chat template (Chapter 11's `render_chat`), and the model learns
from it as from a story, by predicting every next token, with one difference: a **loss mask** says which
predictions count. Each assistant turn is one training example: the conversation up to that turn (windowed to fit
the context), the reply, and a mask that is 1 on the reply's tokens and on the `<|end|>` that closes it, 0 on
everything before (`storylib.conversations.training_examples`; earlier replies are context here, and are learned
in their own example). Here is the last turn of a short conversation, token by token; the tokens with a heavy
outline are the ones the model is trained to predict:
""")
code("""
def token_strip(ids, mask, width=34):
    role_of = {tok.special_tokens[t]: r for r, t in ROLE_TOKENS.items()}
    colors = {"special": "#d9d9d9", "system": "#e1bee7", "user": "#bbdefb", "assistant": "#ffe0b2"}
    role, parts = None, []
    for i in ids:
        if i in role_of:
            role = role_of[i]
        parts.append("special" if i in role_of or i == eot or (i == end and not mask[len(parts)]) else role)
        if i == end:
            role = None
    n = len(ids)
    rows = math.ceil(n / width)
    fig, ax = plt.subplots(figsize=(14, 0.42 * rows + 0.6))
    for k in range(n):
        r, c = divmod(k, width)
        text = tok.decode([ids[k]]).replace("\\n", "⏎")
        ax.add_patch(plt.Rectangle((c, -r), 0.94, 0.86, facecolor=colors[parts[k]],
                                   edgecolor="#e65100" if mask[k] else "none", linewidth=2 if mask[k] else 0))
        special = ids[k] in role_of or ids[k] in (eot, end)
        ax.text(c + 0.47, -r + 0.43, text if len(text) <= 7 or special else text[:6] + "…", ha="center",
                va="center", fontsize=4.5 if len(text) > 8 else 6.5, fontweight="bold" if mask[k] else "normal")
    ax.set_xlim(0, width); ax.set_ylim(-rows + 0.9, 1); ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in colors.values()]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#ffe0b2", edgecolor="#e65100", linewidth=2))
    ax.legend(handles, [*colors, "loss mask = 1"], ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              fontsize=8, frameon=False)
    plt.tight_layout(); plt.show()

short = min((c for c in train_convs[:3000] if [s["kind"] for s in c["specs"]] == ["create", "rename"]),
            key=lambda c: len(render_chat(c["messages"], tok)[0]))
ids, mask = C.training_examples(short, tok, cfg.block_size + 1)[-1]
token_strip(ids, mask)
print(f"{len(ids)} tokens, {sum(mask)} of them learned ({sum(mask) / len(ids):.0%})")
""")
md("""
Training reads pairs (input $x_t$, target $x_{t+1}$) as in every chapter since the first, and weighs each target by
its mask. With $m_{t+1} \\in \\{0, 1\\}$ the mask of the target,

$$
\\mathcal{L}(\\theta) = \\frac{\\sum_t m_{t+1} \\,\\bigl(-\\log p_\\theta(x_{t+1} \\mid x_{\\le t})\\bigr)}
  {\\sum_t m_{t+1}},
$$

the mean negative log-likelihood of the assistant's tokens only. The user's words are *context*: the model reads
them (they shape every prediction after them, through attention) but is never asked to predict them. Why not learn
them too? They are not what we want the model to write: a model trained on the requests as well would spend capacity
on imitating users, and, at serving time, would be as happy to write the user's next request as to answer.
Dividing by the number of learned tokens (not by all tokens) keeps the loss of a short reply from being diluted by
a long prompt.
""")
ex("ch14.masked_loss", "The formula above: cross-entropy at every position, weighed by the mask, divided by the "
   "number of positions the mask keeps.")
code("""
x = torch.tensor([ids[:-1]])
y = torch.tensor([ids[1:]])
m = torch.tensor([mask[1:]], dtype=torch.float32)
with torch.no_grad():
    logits, _ = base(x)
per_token = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="none")
print(f"the base model, mean nats per token: all tokens {per_token.mean():.3f}; the context before the reply "
      f"{per_token[m[0] == 0].mean():.3f}; the reply (the masked loss) {sft.masked_cross_entropy(logits, y, m):.3f}")
print(f"the <|end|> that closes the reply: {per_token[(y[0] == end) & (m[0] == 1)].item():.1f} nats")
""")
md("""
The base model already predicts the assistant's story better than the rest (it is a story, and an earlier turn of
the conversation holds most of it), but the `<|end|>` costs it more than any word: it has never seen one. The
`<|end|>` is the first thing SFT has to teach; the rules of §14.6 measure the rest.
""")

# --------------------------------------------------------------------------------------------------- 14.4
md("""
## LoRA: finetuning a low-rank update

Full finetuning updates every weight: for a large model that means a copy of all its weights per task, with their
gradients and the optimizer's two moments (AdamW keeps $m$ and $v$ per weight: three more copies in fp32). Hu et
al. (2021) observed that the *change* finetuning makes to a weight matrix has low "intrinsic rank", and proposed
**LoRA**, low-rank adaptation: freeze $W \\in \\mathbb{R}^{d_\\text{out} \\times d_\\text{in}}$ and learn the update as
a product of two thin matrices,

$$
h = W x + \\frac{\\alpha}{r} \\, B A x, \\qquad A \\in \\mathbb{R}^{r \\times d_\\text{in}}, \\;
B \\in \\mathbb{R}^{d_\\text{out} \\times r}, \\; r \\ll \\min(d_\\text{in}, d_\\text{out}).
$$

- $A$ starts random (Kaiming-uniform, like PyTorch's `nn.Linear`), $B$ starts at **zero**: at step 0 the product
  $BA$ is zero and the finetuned model *is* the base model, so training starts from what pretraining reached
  instead of from a random perturbation of it. (Both zero would not work: the gradient of $B$ is $\\propto A x$
  and that of $A$ is $\\propto B^\\top$: with both zero, neither would ever move.)
- The update $\\Delta W = \\frac{\\alpha}{r} BA$ has rank at most $r$ and costs $r\\,(d_\\text{in} + d_\\text{out})$
  parameters instead of $d_\\text{in}\\,d_\\text{out}$.
- The scale $\\alpha / r$ keeps the size of the update roughly independent of $r$, so a learning rate tuned at one
  rank works at another.
- After training, $\\Delta W$ can be **merged** into $W$: $W \\leftarrow W + \\frac{\\alpha}{r} BA$, and the model runs
  exactly as fast as before. Unmerging subtracts it again (to switch adapters, or keep training).

For the storyteller's four linear layers per block, the count:
""")
code("""
layers = {"attn.c_attn": base.transformer.h[0].attn.c_attn, "attn.c_proj": base.transformer.h[0].attn.c_proj,
          "mlp.c_fc": base.transformer.h[0].mlp.c_fc, "mlp.c_proj": base.transformer.h[0].mlp.c_proj}
print(f"{'layer':<12} {'d_in':>5} {'d_out':>5} {'d_in*d_out':>11} {'r=4':>7} {'r=16':>7}")
for name, lin in layers.items():
    d_in, d_out = lin.in_features, lin.out_features
    print(f"{name:<12} {d_in:>5} {d_out:>5} {d_in * d_out:>11,} {4 * (d_in + d_out):>7,} {16 * (d_in + d_out):>7,}")
full_w = sum(lin.in_features * lin.out_features for lin in layers.values()) * cfg.n_layer
for r in (4, 16):
    lora_w = sum(r * (lin.in_features + lin.out_features) for lin in layers.values()) * cfg.n_layer
    print(f"r = {r:>2}: {lora_w:,} LoRA parameters in {cfg.n_layer} blocks, {lora_w / full_w:.1%} of the "
          f"{full_w:,} weights they adapt")
""")
md("""
`LoRALinear` wraps an `nn.Linear` (kept as `.base`, frozen) and adds `lora_A`, `lora_B` and the scale;
`inject_lora` replaces the chosen linear layers of a model by wrapped ones; `mark_only_lora_trainable` freezes
everything else. Three exercises:
""")
ex("ch14.lora_forward", "`base(x)` plus the scaled low-rank path; skip the path when the weights are merged.")
ex("ch14.lora_merge", "Fold $\\frac{\\alpha}{r} BA$ into the base weight (and take it out again), keeping track of "
   "whether it is merged.")
ex("ch14.lora_inject", "Walk the model's modules, replace each `nn.Linear` whose name ends with a target by a "
   "`LoRALinear` around it, and name the ones replaced; then freeze all but the LoRA matrices.")
code("""
model = copy.deepcopy(base)
names = L.inject_lora(model, r=16, alpha=32)
L.mark_only_lora_trainable(model)
trainable, total = L.count_parameters(model)
print(f"{len(names)} layers wrapped ({names[0]}, {names[1]}, …); trainable {trainable:,} of {total:,} "
      f"({trainable / total:.2%})")

x = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    same = (model(x)[0] - base(x)[0]).abs().max().item()
    for mod in model.modules():  # pretend training moved B away from zero
        if isinstance(mod, L.LoRALinear):
            mod.lora_B.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    before = model(x)[0]
    L.merge_lora(model)
    merged = model(x)[0]
    L.unmerge_lora(model)
    after = model(x)[0]
w0, w1 = base.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.base.weight
print(f"at step 0 (B = 0) the LoRA model = the base model: max |difference| {same:.1e}")
print(f"merged vs unmerged logits: {(merged - before).abs().max():.1e}; after unmerging: "
      f"{(after - before).abs().max():.1e}; weight restored to {(w1 - w0).abs().max():.1e}")
""")
md("""
What does LoRA save? Here, on the CPU: one AdamW step of full finetuning and of LoRA at $r = 16$, on the same batch
of 8 sequences of 256 tokens.
""")
code("""
def step_cost(model, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    xb = torch.randint(0, 4096, (8, 257), generator=torch.Generator().manual_seed(0))
    x, y = xb[:, :-1].contiguous(), xb[:, 1:].contiguous()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in params)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return n, state, float(np.median(times[1:]))

full_model = copy.deepcopy(base).train()
lora_model = copy.deepcopy(base).train()
L.inject_lora(lora_model, r=16, alpha=32)
L.mark_only_lora_trainable(lora_model)
cost = {"full finetuning": step_cost(full_model), "LoRA r=16": step_cost(lora_model)}
del full_model, lora_model
for name, (n, state, secs) in cost.items():
    print(f"{name:<16} trainable {n:>10,} | gradients {4 * n / 2**20:6.2f} MiB | AdamW state {state / 2**20:6.2f} MiB"
          f" | {secs * 1e3:5.0f} ms a step")
""")
md("""
The memory for gradients and optimizer state shrinks by the ratio of the parameter counts. Time does not, or
hardly: the forward pass is the same (plus the thin LoRA path), and the backward pass still carries the gradient
through every layer down to the first LoRA matrices; only the weight gradients of the frozen matrices are skipped.
(Two busy CPU cores also make such timings noisy: compare them only within one run of this page.) For a model the
size of the storyteller none of this matters much. For a 7-*billion* parameter model, whose AdamW state alone is
56 GB in fp32, LoRA is the difference between one GPU and several, and an adapter of a few megabytes per task instead
of a full copy of the model.

The GPU run behind this chapter (`bench/sft.py`, one GPU call: §14.6 shows what it reached) trained all three:
""")
code("""
bench = json.loads(course_file("bench/results/sft_h100.json").read_text())
runs = bench["runs"]
metrics = {name: r["metrics"] for name, r in runs.items()}
print(f"{bench['card']}, torch {bench['torch']}, {bench['date'][:10]}; {bench['n_train_conversations']:,} training "
      f"conversations")
for name in ("full", "lora16", "lora4"):
    r = runs[name]
    print(f"  {name:<7} trainable {r['trainable_params']:>10,} ({r['trainable_params'] / r['total_params']:6.2%}) "
          f"| {r['steps']} steps in {r['train_seconds']:6.1f} s")
""")

# --------------------------------------------------------------------------------------------------- 14.5
md("""
## The SFT step

A batch of conversations is a batch of token rows like Chapter 7's, with two differences. The rows have different
lengths, so they are **padded** (with `<|pad|>`, never attended to by a real token: padding comes after it) to
one length. And the targets carry the mask: where a target is not learned (its mask is 0) or is padding, it is set
to $-100$, the value PyTorch's `cross_entropy` ignores (`ignore_index=-100`). The model's own loss,
`model(x, y)`, then *is* the masked loss of §14.3, and the Chapter 7 trainer can train on it unchanged.
""")
ex("ch14.sft_batch", "Each example is (ids, mask): inputs ids[:-1], targets ids[1:] with -100 where mask[1:] is 0; "
   "pad the inputs with pad_id and the targets with -100 up to block_size.")
code("""
examples = [ex for c in train_convs[:2] for ex in C.training_examples(c, tok, cfg.block_size + 1)]
xb, yb = sft.sft_batch(examples, cfg.block_size, tok.special_tokens["<|pad|>"])
print("x:", tuple(xb.shape), " y:", tuple(yb.shape), " targets learned per row:", (yb != -100).sum(1).tolist())
print("row 0, the first 24 targets:", yb[0, :24].tolist())
with torch.no_grad():
    logits, loss = base(xb, yb)
masked = sft.masked_cross_entropy(logits, yb, (yb != -100).float())
print(f"model(x, y): loss {loss:.4f};  masked_cross_entropy: {masked:.4f}")
""")
md("""
SFT is the Chapter 7 trainer with three settings: `init_from` (start from the base model's weights, not a random
init), `data = "chat"` (batches of conversations, `ChatSampler`; validation on the dev conversations' assistant
tokens), and `lora_rank` (0 for full finetuning).

One detail LoRA alone would get wrong here. The base model has never seen `<|system|>`, `<|user|>`, `<|assistant|>`
or `<|end|>`, so their rows of the token embedding are still the random numbers they started with, and the
embedding is also the output layer (GPT-2 ties them): the logit of `<|end|>` is the hidden state's dot product with
that random row. Frozen, it is a target the model can hardly learn to hit, and a model that cannot predict `<|end|>`
never stops. So a LoRA run also trains those rows (`storylib.sft.init_model`: the rest of the embedding stays
frozen), a handful of numbers next to the adapters:
""")
code("""
print("chat tokens whose embedding rows train:", sft.CHAT_ROLES, f"-> {len(sft.CHAT_ROLES) * cfg.n_embd:,} numbers")
""")
md("""
Here is `configs/sft_cpu.toml`, a run small enough for two CPU cores:
""")
code("""
print(course_file("configs/sft_cpu.toml").read_text())
""")
code("""
import tempfile

from storylib.train import load_config, train

out_dir = tempfile.mkdtemp(prefix="sft-cpu-")
cpu_cfg = load_config(course_file("configs/sft_cpu.toml"), overrides=[f"out_dir={out_dir}"])
t0 = time.perf_counter()
result = train(cpu_cfg)
cpu_seconds = time.perf_counter() - t0
log = [json.loads(line) for line in open(f"{out_dir}/train_log.jsonl")]
steps = [e for e in log if e["event"] == "train"]
evals = [e for e in log if e["event"] == "eval" and not e.get("final")]  # the periodic ones: same dev turns
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], label="training loss (assistant tokens)")
ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-",
        label=f"dev conversations ({evals[0]['val_stories']} turns)")
ax.set_xlabel("step"); ax.set_ylabel("masked loss, nats per token"); ax.legend()
plt.tight_layout(); plt.show()
print(f"{cpu_cfg.max_steps} steps in {cpu_seconds:.0f} s; dev loss {evals[0]['val_loss']:.3f} -> "
      f"{evals[-1]['val_loss']:.3f} nats per assistant token")
""")
md("""
What SFT has to teach is the *format*, answer after `<|assistant|>` and stop with `<|end|>`, and the link between a
request and its story; the stories themselves the model could already write. The run saved its best
checkpoint (on the dev conversations) as a plain model, the LoRA update merged in. Ask it for a story from a
held-out request:
""")
code("""
from storylib.checkpoint import load_model

def reply_to(model, messages, seed=0):
    # the reply after `messages`, sampled as the product samples, and whether the model closed it with <|end|>
    window = C.fit_conversation(messages, tok, cfg.block_size, reserve=200)
    ids, _ = render_chat(window, tok, add_generation_prompt=True)
    room, n = cfg.block_size - len(ids), []
    text = "".join(generate_stream(model, tok, ids, room, seed=seed, on_token=n.append, **sft.CHAT_SAMPLING))
    return text, len(n) < room

cpu_model, _ = load_model(result["best"])
request = [{"role": "user", "content": "Write a story about a dog named Max who finds a red ball."}]
text, closed = reply_to(cpu_model, request)
print(textwrap.fill(text, 116), f"\\n[{'closed with <|end|>' if closed else 'no <|end|>: cut at the context'}]")
del cpu_model
""")
md("""
The GPU run does the same with all the training conversations, for full finetuning and both LoRA ranks; §14.6 shows
how far it got.
""")

# --------------------------------------------------------------------------------------------------- 14.6
md("""
## Evaluation by rules

How good is a chat model? For open-ended chat this is hard (people compare answers, or a stronger model does). Our
requests were made by rules, so replies can be checked by rules, exactly and cheaply, on every held-out
conversation. `check_reply(spec, reply, previous)` returns the checks of one reply:

- **create**: are all the words asked for in the story (and what fraction of them), is the named character in it,
  is there dialogue when asked (a quoted sentence), a happy ending when asked (Chapter 11's `story_features`);
- **rename**: is the new name there and the old one gone; **title**: one short line; **shorten**: the sentence
  count; **change word**: old word gone, new word there; **moral**: a moral line;
- for every reply, the **repeated-n-gram rate**: the fraction of its 4-grams of words that repeat an earlier 4-gram.
  A model stuck in a loop ("She likes to read books and read books and read books") scores high.

`storylib.sft.evaluate` also checks that each reply ends with `<|end|>`, and measures the **response bits per
byte**: the cost of the gold reply under the model (the masked loss of §14.3, per byte).
""")
ex("ch14.repetition", "Split into words, count the n-grams that already occurred earlier in the text, divide by the "
   "number of n-grams (0 when there are none).")
code("""
print(C.repeated_ngram_rate("She likes to read books and read books and read books and read books."))
print(C.repeated_ngram_rate("Once upon a time, there was a cat named Tom who found a shiny key."))

""")
md("""
Here are the rules at work on one held-out conversation, a create request and a rename. The chat model is the one
the GPU run shipped (§14.7 says more); it samples as the product does (`sft.CHAT_SAMPLING`, with a seed). The base
model cannot take either request: it gets its best chance instead, a story *opening* made from the spec
(`story_prompt`: "Once upon a time, there was a cat named Tom.") to continue, checked by the same rules.
""")
code("""
chat, _ = sft.load_chat_model("models/storyteller-chat")

def brief(checks):
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in checks.items() if v is not None}

conv = next(c for c in heldout_convs if [s["kind"] for s in c["specs"]][:2] == ["create", "rename"])
create, rename_turn = C.assistant_turns(conv)[:2]
print("REQUEST:", create["messages"][-1]["content"], "\\nspec:", create["spec"])
opening = C.story_prompt(create["spec"])
base_story = opening + continue_text(base, opening, 300)
chat_story = reply_to(chat, create["messages"])[0]
print("\\nBASE (from the opening):", textwrap.fill(base_story, 116), "\\n  checks:",
      brief(C.check_reply(create["spec"], base_story)))
print("\\nCHAT:", textwrap.fill(chat_story, 116), "\\n  checks:", brief(C.check_reply(create["spec"], chat_story)))
print("\\nREQUEST:", rename_turn["messages"][-1]["content"])
renamed = reply_to(chat, rename_turn["messages"])[0]
print("CHAT:", textwrap.fill(renamed, 116), "\\n  checks:",
      brief(C.check_reply(rename_turn["spec"], renamed, rename_turn["previous"])))
""")
md("""
`storylib.sft.evaluate` does this for every assistant turn of every held-out conversation, in batches with the KV
cache, each turn after the *gold* history (the dataset's earlier replies, not the model's: each turn is judged on
its own). `bench/sft.py` ran it for every model on the GPU:
""")
code("""
names = [n for n in ("base", "lora4", "lora16", "full") if n in runs]
print(f"{bench['n_heldout_conversations']} held-out conversations, "
      f"{sum(runs['full']['by_kind']['counts'].values())} assistant turns; shipped: {bench['shipped']}\\n")
print(f"{'metric':<22}" + "".join(f"{n:>10}" for n in names))
for k in metrics["full"]:
    cells = [metrics[n].get(k) for n in names]
    print(f"{k:<22}" + "".join(f"{'n/a':>10}" if v is None else f"{v:>10.3f}" for v in cells))
""")
md("""
How to read it. The base model can only be given a story opening, so it has numbers in the create rows alone, and
there it has an advantage: its opening already names the character, so `character` is nearly free for it, while the
words asked for, the dialogue and the happy ending are luck. The refine rows have no baseline at all: a model that
only continues text has no way to be asked for a rename. `ends_with_end` says how often a reply was closed by the
model rather than cut off at the token limit; `response_bpb` is how well each model predicts the *gold* replies
(lower is better); `plain_val_bpb` is what SFT cost the storyteller on plain stories.

What we would want from a chat storyteller: all the words asked for in nearly every create request, nearly every
rename right, and its stories kept (plain-story bits per byte up by no more than a few hundredths: SFT should add a
skill, not cost the old one). Which runs manage each:
""")
code("""
g = bench["goals"]
print(f"wanted: create_all_words >= {g['create_all_words']:.0%}, rename_done >= {g['rename_done']:.0%}, "
      f"plain bits per byte at most {g['plain_bpb_rise']} above the base's {metrics['base']['plain_val_bpb']:.4f}")
for n in ("lora4", "lora16", "full"):
    met = runs[n]["goals_met"]
    print(f"  {n:<7} " + " | ".join(f"{k}: {'yes' if ok else 'not yet'}" for k, ok in met.items()))
""")
md("""
Look at the first row: **the chat models rarely use all the words they are asked for**, and they use only a few
more of them than the base model, which never saw the request. Renames, titles and continuations work most of the
time. A rule that fails this badly usually points at the data, and here the data had a real bug once. The first
version of the requests wrote the words in quotes. Here is what the model reads in each case:
""")
code("""
for text in ['the words "key", "shiny" and "hug".', "the words key, shiny and hug.", "Tom found a shiny key."]:
    print(f"{text!r:<40} ->", [tok.decode([i]) for i in tok.encode_ordinary(text)])
""")
md("""
In quotes, `"key"` is the tokens `' "'`, `'key'`, `'"'`, and `"shiny"` falls apart into `'sh'`, `'iny'`. In a story
the same words are the single tokens `' key'` and `' shiny'`, with their leading space. To use a quoted word, the
model would have to learn that `'sh'` `'iny'` after a quote *means* the token `' shiny'`, for thousands of words,
from a few thousand examples. A rename never had this problem: in "Call the cat Max." the token `' Max'` is exactly
the token the story needs, and copying a token from the context is what attention does best. The models trained on
quoted words used all of them almost never, so the requests now write words plainly (`storylib.datasets`, Chapter
11: "the words key, shiny and hug"; `storylib.conversations`: "Change the word box to truck"). Tokenization is never
just plumbing.

The table above was trained on the plain requests, and the words still do not come. So there is a second cause.
Renames work and words do not, though both ask for a token copied from the request. The difference is what the
model can get away with. The base model read each of its training stories many times; when a training request is
made from one of those stories, the model can recognise the story and *recall* it, words included, without reading
the request closely. A name is different: it changes from conversation to conversation (the varied copies rename
every character), so recall cannot supply it, and the model learns to copy it. The held-out stories are new, and
there recall fails.

If that is right, asking for words that recall cannot supply should help. The varied copies swap some nouns for
others ("ball" becomes "kite"), so a second run asked those copies for their swapped-in words first, with one more
varied copy per story and 2,000 steps instead of 1,200:
""")
code("""
second = json.loads(course_file("bench/results/sft_h100_prefer_words.json").read_text())
keys = ["create_all_words", "create_word_recall", "rename_done", "change_word_ok", "plain_val_bpb"]
print(f"{'run':<27}" + "".join(f"{k:>20}" for k in keys))
for label, b in [("shipped table", bench), ("swapped words first", second)]:
    for n in ("lora4", "full"):
        m = b["runs"][n]["metrics"]
        print(f"{label + ' ' + n:<27}" + "".join(f"{m[k]:>20.3f}" for k in keys))
""")
md("""
A little, and not nearly enough: a few more words (and, for the full finetune, more changed words), at the cost of
some renames and of more of the stories it knew. This is where the chat storyteller stands: with a few thousand
stories, a model this small learns the *form* of a conversation and the edits it can make by copying, but not yet
to write a new story around words it is given. Two levers would move it: more stories (the full TinyStories has
about two million) and a training signal that rewards the rule itself rather than one gold story. The second is
where the next chapter begins.
""")
code("""
lora_names = [n for n in ("lora4", "lora16", "full") if n in runs]
xs = [runs[n]["trainable_params"] for n in lora_names]
ticks = [f"{n}\\n{x / 1e6:.2f}M" for n, x in zip(lora_names, xs)]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
for k, label in [("create_all_words", "create: all words used"), ("create_word_recall", "create: words used"),
                 ("rename_done", "rename done"), ("ends_with_end", "ends with <|end|>")]:
    a1.plot(xs, [metrics[n][k] for n in lora_names], "o-", label=label)
    if metrics["base"].get(k) is not None:
        a1.axhline(metrics["base"][k], ls=":", color=a1.lines[-1].get_color())
a1.set_ylim(0, 1.02); a1.set_ylabel("fraction of held-out turns")
a1.set_title("rules passed (dotted: the base model, prompted)", fontsize=10); a1.legend(fontsize=8)
a2.plot(xs, [metrics[n]["plain_val_bpb"] for n in lora_names], "o-", color="tab:purple", label="after SFT")
a2.axhline(metrics["base"]["plain_val_bpb"], ls=":", color="tab:purple", label="base model")
a2.axhline(metrics["base"]["plain_val_bpb"] + bench["goals"]["plain_bpb_rise"], ls="--", color="gray",
           label="the budget")
a2.set_ylabel("bits per byte"); a2.set_title("plain validation stories: what SFT costs", fontsize=10)
a2.legend(fontsize=8)
for ax in (a1, a2):
    ax.set_xscale("log"); ax.set_xticks(xs, ticks); ax.minorticks_off()
    ax.set_xlabel("trainable parameters")
plt.tight_layout(); plt.show()
""")
md("""
Five held-out conversations from the run, turn by turn: the request, the base model's story (from its opening;
it has no way to take a refine request) and the shipped chat model's reply, each with the rules it failed:
""")
code("""
from html import escape

def cell(text, checks=None):
    failed = [k for k, v in (checks or {}).items() if v is False and k != "ok"]
    note = f"<br><i style='color:#b71c1c'>failed: {', '.join(failed)}</i>" if failed else ""
    return f"<td style='vertical-align:top;white-space:pre-wrap;font-size:12px'>{escape(text)}{note}</td>"

shipped = bench["shipped"]
rows = []
for s in bench["samples"][:5]:
    users = [m["content"] for m in s["messages"] if m["role"] == "user"]
    for t, request in enumerate(users):
        b = next((r for r in s["base"] if r["turn"] == t), None)
        c = next((r for r in s[shipped] if r["turn"] == t), None)
        rows.append("<tr>" + cell(request) + (cell(b["reply"], b["checks"]) if b else cell("n/a"))
                    + (cell(c["reply"], c["checks"]) if c else cell("(did not fit the context)")) + "</tr>")
display(HTML("<table><tr><th>request</th><th>base storyteller</th><th>chat storyteller</th></tr>"
             + "".join(rows) + "</table>"))
""")

# --------------------------------------------------------------------------------------------------- 14.7
md("""
## Talk to it

The chat model that `llm101n chat`, the chat widget of Chapter 12 and the web app of Chapter 16 use is the one the
GPU run shipped, in `models/storyteller-chat`. A full finetune ships as a whole model; a LoRA run ships its adapter
alone, next to the base model it adapts, and `sft.load_chat_model()` then loads the base the adapter names, injects
the adapter with *your* `storylib.lora` and merges it, so the chat model runs exactly as fast as the base.
""")
code("""
print(f"shipped: {bench['shipped']}")
for f in sorted(course_file("models/storyteller-chat").iterdir()):
    print(f"  models/storyteller-chat/{f.name:<22} {f.stat().st_size / 2**10:9.1f} KiB")
base_mib = course_file("models/storyteller/model.safetensors").stat().st_size / 2**20
print(f"  (the base model's weights: {base_mib:.1f} MiB)")
""")
md("""
Below, the same requests to both models, sampled as the product samples; in JupyterLab (`make start`) you can type
your own.
""")
code("""
from storylib.widgets import ReplyCompare

def base_reply(request):  # the request as the start of a text, continued
    ids = [eot, *tok.encode_ordinary(request)]
    return "".join(generate_stream(base, tok, ids, 250, seed=0, **sft.CHAT_SAMPLING))

def chat_reply(request):  # the request in the chat template, answered
    return reply_to(chat, [{"role": "user", "content": request}])[0]

ReplyCompare({"base storyteller (continues the text)": base_reply, "chat storyteller": chat_reply},
             requests=["Write a story with the words key, rain and hug.",
                       "Write a story about a dog named Max who is afraid of the dark. Include some dialogue.",
                       "Write a short story about a girl named Lily and a red balloon. It should have a happy ending."])
""")
md("""
Finally the yardstick every chapter reports: bits per byte on the first 100 validation stories, *plain stories*,
no chat template. SFT taught the model a new skill; did it forget some of its old one?
""")
code("""
plain = valid_stories[:100]
bpb = {"base storyteller": sft.plain_bpb(base, tok, plain), "chat storyteller": sft.plain_bpb(chat, tok, plain)}
for name, v in bpb.items():
    print(f"  {name:<18} {v:.4f} bits per byte on the first {len(plain)} validation stories")
print(f"SFT changed it by {bpb['chat storyteller'] - bpb['base storyteller']:+.4f}. On all 1,000 validation stories "
      f"(harder, on average, than the first 100) the GPU run measured {metrics['base']['plain_val_bpb']:.4f} -> "
      f"{metrics[bench['shipped']]['plain_val_bpb']:.4f}")
""")
md("""
## Summary

- A base model continues text; SFT on conversations teaches it that a request is to be answered, and when to stop.
- Chat data can be made by rules from plain stories: each request comes with a target the rules make exactly, and
  with a spec that checks any reply to it. Held-out conversations come from stories no training ever saw.
- The masked loss trains only the assistant's tokens and their `<|end|>`; in a batch, unlearned targets are $-100$.
- LoRA learns $\\Delta W = \\frac{\\alpha}{r} BA$ with $B = 0$ at the start: $r(d_\\text{in} + d_\\text{out})$
  parameters per matrix instead of $d_\\text{in} d_\\text{out}$, mergeable into $W$ for free inference.
- SFT is the pretraining loop with another data source, a mask and a starting point: the Chapter 7 trainer runs it.
- When a rule fails, look at the data first: how the request is tokenized, and whether the model could pass
  training by recalling instead of reading. A small model with a few thousand stories learns the edits it can make
  by copying long before it learns to write a story around words it is given.
""")
print("wrote", page.write())

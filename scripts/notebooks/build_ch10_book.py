"""Write book/ch10_distributed.ipynb, the Chapter 10 page (the book executes it at build time, on CPU).

    .venv/bin/python scripts/notebooks/build_ch10_book.py

The page runs its collectives on `LocalGroup` threads, and one real job of 2 gloo processes (`storylib.distributed
.launch`, ~10 s). The all-reduce timings on 2 and 4 gloo processes and the step time of each strategy are
bench/distributed_cpu.py's, loaded from bench/results/distributed_cpu.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch10_distributed")
md, code, ex = page.md, page.code, page.exercise

md("""
# Distributed training: DDP and ZeRO

One process trains the storyteller in Chapter 7. Bigger models are trained by many processes at once, one per GPU,
often thousands. They do not share memory: each holds its own tensors, and they cooperate only by sending each
other bytes. Two questions decide everything:

- **what is split**: the batch (data parallelism), and then the training state itself — optimizer moments,
  gradients, weights (ZeRO, FSDP);
- **which bytes move when**, through a handful of *collectives*: all-reduce, reduce-scatter, all-gather,
  broadcast.

This chapter builds PyTorch's `DistributedDataParallel` and the three stages of ZeRO from those collectives, in
`storylib/distributed.py`, and proves each one trains the storyteller exactly as a single process would. Everything
runs on CPU processes: `torch.distributed` with the **gloo** backend, the one that needs no GPU. On GPUs the
backend is NCCL and the bytes move over NVLink, but the code and the arithmetic are the same.

The functions take a *group*: its `rank` (0..N-1), `world_size` N, `send`/`recv` and the collectives. Two things
implement it: `TorchGroup` (real processes, gloo) and `LocalGroup` (N threads of this notebook passing tensors to
each other), which makes every step of a distributed algorithm something you can print.
""")
code("""
import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

from storylib import distributed as D
from storylib.data import course_file
from storylib.gpt2 import GPT, GPTConfig

torch.set_num_threads(2)  # the book is built on two CPU cores
bench = json.loads(course_file("bench/results/distributed_cpu.json").read_text())
print("bench/results/distributed_cpu.json:", bench["machine"]["cpu"], bench["machine"]["cores"], "cores,",
      "load average", round(bench["machine"]["load_average_at_start"], 1))
""")

md("""
## Collectives

Four ranks, each with a vector of four numbers (rank r holds r+1 in every place, to follow them). The four
collectives, run on `LocalGroup` threads:

- **all-reduce**: every rank ends with the sum of all vectors;
- **reduce-scatter**: the sum too, but cut in N pieces; rank r keeps piece r only;
- **all-gather**: every rank contributes a piece; every rank ends with all pieces, in rank order;
- **broadcast**: every rank ends with one rank's vector.

All-reduce = reduce-scatter followed by all-gather. That identity is the whole of the next section, and it
reappears in ZeRO.
""")
code("""
def show(name, fn):
    outs = D.run_local(fn, [(torch.full((4,), r + 1.0),) for r in range(4)])
    print(f"{name:15s}", "  ".join(f"rank {r}: {o.tolist()}" for r, o in enumerate(outs)))

def all_reduce(g, x):
    g.all_reduce(x)
    return x

def reduce_scatter(g, x):
    out = torch.empty(1)
    g.reduce_scatter(out, x)
    return out

def all_gather(g, x):
    out = torch.empty(4 * g.world_size)
    g.all_gather(out, x[:4] * 0 + g.rank + 1)
    return out

def broadcast(g, x):
    g.broadcast(x, src=2)
    return x

for name, fn in [("all-reduce", all_reduce), ("reduce-scatter", reduce_scatter), ("broadcast", broadcast)]:
    show(name, fn)
print("all-gather      every rank:", D.run_local(all_gather, [(torch.zeros(4),) for _ in range(4)])[0].tolist())
""")
code("""
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
colors = plt.cm.tab10(np.arange(4))
titles = ["before: rank r's vector", "after reduce-scatter", "after all-gather (= all-reduce)"]
for ax, title in zip(axes, titles):
    for r in range(4):
        for c in range(4):
            if title.startswith("before"):
                ax.add_patch(plt.Rectangle((c, 3 - r), 0.9, 0.9, color=colors[r]))
            elif title.startswith("after reduce") and c != r:
                continue  # rank r keeps only piece r ...
            else:
                for k in range(4):  # ... summed: a stripe of every rank's colour
                    ax.add_patch(plt.Rectangle((c + k * 0.225, 3 - r), 0.225, 0.9, color=colors[k]))
    ax.set_xlim(0, 4); ax.set_ylim(0, 4); ax.set_aspect("equal"); ax.set_title(title, fontsize=10)
    ax.set_xticks(np.arange(4) + 0.45, [f"piece {c}" for c in range(4)], fontsize=7)
    ax.set_yticks(np.arange(4) + 0.45, [f"rank {r}" for r in range(3, -1, -1)], fontsize=7)
plt.tight_layout(); plt.show()
""")

md("""
## The ring all-reduce

How should N processes sum their gradients? Sending everything to rank 0, which adds and sends the sum back,
makes rank 0 receive and send N−1 whole vectors: its link is the bottleneck, and it gets worse with every rank
added. The **ring** (Patarasuk & Yuan, 2009; Baidu's "ring all-reduce" for deep learning, 2017) puts the ranks on
a circle, cuts the vector into N chunks, and has every rank talk only to its two neighbours, all at the same time:

1. **reduce-scatter**, N−1 steps: at step s rank r sends chunk (r − s) mod N to the right and adds the chunk that
   arrives from the left into its own. After N−1 steps, rank r holds the complete sum of chunk (r + 1) mod N.
2. **all-gather**, N−1 steps: the completed chunks go around the ring once more, each rank overwriting its copy.

Every rank sends 2(N−1) chunks of B/N bytes:

$$\\text{bytes sent per rank} = \\frac{2(N-1)}{N}\\,B \\;<\\; 2B \\quad\\text{for any } N.$$

The cost per rank barely grows with N: that is why data parallelism scales. With a latency α per message and a
bandwidth β per link, the time is $t(N, B) = 2(N-1)\\,\\alpha + \\frac{2(N-1)}{N}\\frac{B}{\\beta}$.
""")
ex("ch10.ring_all_reduce", "Sum x over the ranks with `group.send` and `group.recv` only: the N−1 reduce-scatter "
   "steps, then the N−1 all-gather steps, chunks cut by `torch.tensor_split`.")
code("""
for p in (2, 3, 4, 8):
    xs = [torch.randn(1000) for _ in range(p)]
    outs, stats = D.run_local(D.ring_all_reduce, [(x.clone(),) for x in xs], stats=True)
    err = max((o - sum(xs)).abs().max().item() for o in outs)
    sent = stats[0]["sent_bytes"] / (4 * 1000)
    print(f"N={p}: error {err:.1e}, rank 0 sent {sent:.3f} B (the model: 2(N-1)/N = {2 * (p - 1) / p:.3f} B),"
          f" {stats[0]['sends']} messages, {stats[0]['collectives']} collectives")
""")
md("""
The frames below are the same algorithm on 4 ranks, one per step: each rank's four chunks, coloured by
which ranks' contributions they already hold.
""")
code("""
def ring_frames(p=4):
    have = [[{r} for _ in range(p)] for r in range(p)]  # have[r][c]: whose numbers chunk c of rank r holds
    frames = [copy.deepcopy(have)]
    for s in range(p - 1):
        sent = [set(have[r][(r - s) % p]) for r in range(p)]
        for r in range(p):
            have[(r + 1) % p][(r - s) % p] |= sent[r]
        frames.append(copy.deepcopy(have))
    for s in range(p - 1):
        sent = [set(have[r][(r + 1 - s) % p]) for r in range(p)]
        for r in range(p):
            have[(r + 1) % p][(r + 1 - s) % p] = sent[r]
        frames.append(copy.deepcopy(have))
    return frames

frames = ring_frames()
fig, axes = plt.subplots(1, len(frames), figsize=(2.1 * len(frames), 2.4))
for f, (ax, have) in enumerate(zip(axes, frames)):
    for r in range(4):
        for c in range(4):
            for k, who in enumerate(sorted(have[r][c])):
                w = 0.9 / len(have[r][c])
                ax.add_patch(plt.Rectangle((c + k * w, 3 - r), w, 0.9, color=colors[who]))
    ax.set_xlim(0, 4); ax.set_ylim(0, 4); ax.set_aspect("equal"); ax.axis("off")
    ax.set_title("start" if f == 0 else (f"RS step {f}" if f < 4 else f"AG step {f - 3}"), fontsize=9)
plt.tight_layout(); plt.show()
""")
md("""
The same function runs on real processes. `bench/distributed_cpu.py` timed an all-reduce of 4 KB to 16 MB on 2
and 4 gloo processes of this machine, gloo's own and ours, fitted α and β of the model to our ring on 2 processes,
and predicted 4:
""")
code("""
ar = bench["all_reduce"]
mb = np.array(ar["bytes"]) / 1e6
fig, ax = plt.subplots(figsize=(7, 4))
for p, style in (("2", "-"), ("4", "--")):
    ax.loglog(mb, np.array(ar["seconds"][p]["ring"]) * 1e3, "o" + style, color="C0", label=f"our ring, N={p}")
    ax.loglog(mb, np.array(ar["seconds"][p]["gloo"]) * 1e3, "s" + style, color="C1", label=f"gloo, N={p}")
model = ar["ring_model"]
for p, color in ((2, "C2"), (4, "C3")):
    t = [2 * (p - 1) * model["alpha_s"] + 2 * (p - 1) / p * b / model["beta_bytes_per_s"] for b in ar["bytes"]]
    ax.loglog(mb, np.array(t) * 1e3, ":", color=color, lw=2, label=f"ring model, N={p}")
ax.set_xlabel("MB all-reduced"); ax.set_ylabel("ms"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
plt.show()
big = -1
ratio = ar["seconds"]["4"]["ring"][big] / ar["seconds"]["2"]["ring"][big]
Markdown(f"Fitted on N=2: α = {model['alpha_s'] * 1e6:.0f} µs per message, β = {model['beta_bytes_per_s'] / 1e9:.2f} "
         f"GB/s. At {mb[big]:.0f} MB the model predicts N=4 to take (3/2)/(1) = 1.5× the time of N=2 (the bytes "
         f"term grows from B to 1.5 B); measured: {ratio:.2f}×. The model assumes every rank has a processor and a "
         f"link of its own; here {bench['machine']['cores']} cores, under a load average of "
         f"{bench['machine']['load_average_at_start']:.1f}, were shared by up to 4 processes, which then also wait "
         "for a core — most of all at the small sizes, where the latency term is the scheduler's.")
""")

md("""
## Data parallelism

Give each of N ranks a copy of the model and 1/N of the batch. Rank r computes the gradient of its mean loss $L_r$;
the loss of the whole batch is the mean of the ranks' (equal slices), so its gradient is the mean of theirs:

$$\\nabla L = \\frac{1}{N}\\sum_{r} \\nabla L_r .$$

All-reduce the gradients, divide by N, and every rank takes the same optimizer step from the same weights: the
copies never drift apart, as long as they start equal (broadcast rank 0's weights first).
""")
ex("ch10.average_gradients", "All-reduce every gradient and divide by the world size.")
code("""
torch.manual_seed(0)
cfg = GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=24)
tiny = GPT(cfg).double()
g = torch.Generator().manual_seed(1)
batches = [(torch.randint(0, 61, (4, 16), generator=g), torch.randint(0, 61, (4, 16), generator=g)) for _ in range(4)]
ref_losses, ref_params = D.train_reference(copy.deepcopy(tiny), batches, lr=1e-2, weight_decay=0.1)

def data_parallel(group, model):
    D.broadcast_parameters(group, model)
    opt = D.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    params = []
    for x, y in batches:
        _, loss = model(D.batch_slice(x, group), D.batch_slice(y, group))
        loss.backward()
        D.average_gradients(group, [p.grad for p in model.parameters()])
        opt.step(); opt.zero_grad()
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return params

for world in (2, 4):
    runs = D.run_local(data_parallel, [(copy.deepcopy(tiny),) for _ in range(world)])
    err = max((a - b).abs().max().item() for run in runs for a, b in zip(run, ref_params))
    print(f"N={world}: largest parameter difference from one process over {len(batches)} steps: {err:.1e}")
""")
md("""
Equal to float64 rounding, not bit for bit: one process sums the batch's gradient in one order, the all-reduce sums
the halves in another, and floating-point addition is not associative (Chapter 9). That is the only difference,
and the tests of `tests/test_distributed.py` hold every strategy to it (1e-10 in float64).
""")

md("""
## DDP: buckets, and overlapping communication with backward

Waiting for backward to finish and then all-reducing wastes time: the network is idle during backward, the
processors during the all-reduce. But backward produces the gradients of the *last* layers first, so their
all-reduce can start while earlier layers are still being differentiated. Sending every gradient on its own would
pay the latency α once per parameter; PyTorch's DDP groups them into **buckets** of ~25 MB, in reverse order, and
all-reduces a bucket as soon as its last gradient arrives (Li et al., *PyTorch Distributed*, 2020).

`storylib.distributed.DDP` does exactly that: a hook on every parameter (`register_post_accumulate_grad_hook`)
counts down its bucket; a full bucket is flattened and its all-reduce launched with `async_op=True` (buckets
launch in order, so all ranks issue the same collectives in the same order); when the autograd engine finishes,
a queued callback waits for every bucket and copies the averaged gradients back.
""")
ex("ch10.buckets", "Walk the parameters from last to first and close a bucket once it holds at least "
   "`bucket_bytes`.")
code("""
story_cfg = GPTConfig()  # storylib.gpt2's default shape
story = GPT(story_cfg)
names = [n for n, _ in story.named_parameters()]
sizes = [p.numel() * 4 for p in story.parameters()]
buckets = D.assign_buckets(sizes, 1 << 20)
print(f"{story.num_params() / 1e6:.2f} M parameters, {len(sizes)} tensors -> {len(buckets)} buckets of >= 1 MiB:")
for b in buckets:
    print(f"  {sum(sizes[i] for i in b) / 2**20:5.2f} MiB  {names[b[0]]} ... {names[b[-1]]}")
""")
md("""
**Gradient accumulation** (Chapter 7) with DDP: of k micro-batches, only the last needs the all-reduce; the others
just add into `.grad`. `with ddp.no_sync():` turns the hooks off; the backward after it reduces the accumulated
sum once. Both ways are checked against one process (and our DDP against PyTorch's `DistributedDataParallel`) in
10.8.
""")

md("""
## ZeRO-1 and ZeRO-2: shard the optimizer, then the gradients

With data parallelism, every rank holds a full copy of everything. In fp32 with AdamW, per parameter: 4 bytes of
weight, 4 of gradient, 8 of optimizer moments (m and v) — 16Ψ bytes for Ψ parameters, on *every* rank. Yet each
rank computes the *same* update of every weight: N-fold redundant work on N-fold redundant state.

**ZeRO** (Rajbhandari et al., 2020) removes the redundancy. Flatten all parameters into one vector, pad it to a
multiple of N, and give rank r the r-th slice. Rank r keeps AdamW's moments *only for its slice*
(stage 1, $P_{os}$) and, in stage 2 ($P_{os+g}$), only its slice of the gradient. A step:

1. **reduce-scatter** the gradient: rank r receives the sum of its slice over ranks (divide by N: the mean);
2. AdamW on the slice (Chapter 7's `AdamW`, unchanged: it updates whatever parameters it is given);
3. **all-gather** the updated slices: every rank has every weight again.

Reduce-scatter + all-gather is exactly the ring all-reduce: ZeRO-1 and -2 move the same bytes as DDP, and save
memory for free.

`storylib.distributed.ZeRO` keeps it simple: backward fills the full gradient as usual, and stage 2 frees it after
the step's reduce-scatter. DeepSpeed's stage 2 reduce-scatters bucket by bucket *during* backward (as DDP's
buckets do), so the full gradient never exists at once; the bytes held between steps, which the table below
measures, are the same.
""")
ex("ch10.shard_range", "The slice [start, stop) of a flat tensor that a rank owns: equal chunks of "
   "ceil(numel / N), clipped to numel.")
ex("ch10.zero_step", "Reduce-scatter the flat gradient, divide by N, step the optimizer on your shard, all-gather "
   "the parameters.")
md("""
## ZeRO-3 / FSDP: shard the weights too

Stage 3 ($P_{os+g+p}$, PyTorch's **FSDP**) shards the weights as well: between uses, each rank holds 1/N of every
layer. Just before a layer runs forward, its shards are all-gathered into the whole layer; right after, the whole
layer is freed. Backward needs the weights again, so they are gathered a second time before the layer's backward
and freed after it, when its gradients are reduce-scattered. At any moment only the layer being computed is whole.
Price: 1.5× DDP's communication (two all-gathers of the weights and one reduce-scatter, against one all-reduce =
one reduce-scatter + one all-gather).

In `storylib.distributed.FSDP` each transformer block is one `FSDPUnit`, whose parameters are views into one flat
buffer; *freeing* resizes the buffer's storage to 0 bytes (the views stay), *unsharding* gives the bytes back and
all-gathers into them. Module hooks do it at the right moments: `register_forward_pre_hook`, `register_forward_hook`,
`register_full_backward_pre_hook`, and a gradient hook that reduce-scatters a block once all its gradients are in.
""")
ex("ch10.unshard", "Resize the unit's storage back to its full size, then all-gather every rank's shard into it.")
md("""
Memory per rank, computed by the formula and measured: after a training step, the bytes of every tensor a rank
still holds (parameters, gradients, AdamW state; a freed layer counts 0), on `LocalGroup` ranks, fp32:
""")
code("""
def formula_table(n_params, worlds=(1, 2, 4)):
    rows = []
    for s in ("ddp", "zero1", "zero2", "zero3"):
        rows.append([s] + [sum(D.memory_formula(s, n_params, w).values()) for w in worlds])
    return rows

tiny32 = GPT(cfg)
n = tiny32.num_params()
lines = ["| strategy | N | params (formula / measured) | grads | AdamW state | total per rank |",
         "|---|---|---|---|---|---|"]
measured = {}
for s in ("ddp", "zero1", "zero2", "zero3"):
    for w in (1, 2, 4):
        run = D.run_local(lambda g, m: D.train_distributed(g, s, m, batches[:1], lr=1e-2),
                          [(copy.deepcopy(tiny32),) for _ in range(w)])[0]
        want, got = D.memory_formula(s, n, w), run["memory"]
        measured[s, w] = sum(got.values())
        cell = lambda k: f"{want[k]:,} / {got[k]:,}"
        lines.append(f"| {s} | {w} | {cell('params')} | {cell('grads')} | {cell('optimizer')} | "
                     f"{measured[s, w] / 2**10:.0f} KiB = {measured[s, w] / (16 * n):.3f} × 16Ψ |")
Markdown(f"The tiny model, Ψ = {n:,} parameters:\\n\\n" + "\\n".join(lines))
""")
md("""
Formula and measurement agree to the byte for DDP, ZeRO-1 and ZeRO-2; for ZeRO-3 each block is padded on its own,
a few bytes more than padding the whole model once. For large models the formula is all one needs:
""")
code("""
sizes_shown = (("GPTConfig()", story.num_params(), "MB", 1e6), ("a 7B model", 7_000_000_000, "GB", 1e9))
for name, psi, unit, scale in sizes_shown:
    print(f"{name}: {psi:,} parameters, bytes per rank")
    for s, *b in formula_table(psi, worlds=(1, 8, 64)):
        print(f"  {s:6s}" + "".join(f"  N={w:2d}: {v / scale:8.2f} {unit}" for w, v in zip((1, 8, 64), b)))
big = {s: gb for s, *gb in formula_table(7_000_000_000, worlds=(1, 8, 64))}
Markdown(f"A 7B model needs {big['ddp'][0] / 1e9:.0f} GB per rank under DDP, whatever N: more than an 80 GB GPU "
         f"holds before a single activation is stored. ZeRO-3 brings it to {big['zero3'][1] / 1e9:.0f} GB per rank "
         f"on 8 GPUs and {big['zero3'][2] / 1e9:.2f} GB on 64. That is the point of this chapter.")
""")

md("""
## Checkpoints: save shards, resume on a different number of ranks

Each ZeRO rank saves only its slice (`ZeRO.state_dict()`: parameters, m, v, the step count). To resume on M ranks
instead of N, **consolidate** (concatenate the N slices, drop the padding) and **reshard** (pad for M, cut in M).
""")
ex("ch10.reshard", "Concatenate the old shards, keep the first numel elements, pad with zeros to a multiple of the "
   "new world size and cut.")
code("""
def two_steps_then_save(group, model):
    zero = D.ZeRO(model, group, stage=2, lr=1e-2, weight_decay=0.1)
    for x, y in batches[:2]:
        zero.model(D.batch_slice(x, group), D.batch_slice(y, group))[1].backward()
        zero.step(); zero.zero_grad()
    return zero.state_dict()

def resume(group, model, shards):
    zero = D.ZeRO(model, group, stage=2, lr=1e-2, weight_decay=0.1)
    zero.load_state_dict(shards)
    for x, y in batches[2:]:
        zero.model(D.batch_slice(x, group), D.batch_slice(y, group))[1].backward()
        zero.step(); zero.zero_grad()
    return torch.cat([p.detach().reshape(-1) for p in zero.params])

shards = D.run_local(two_steps_then_save, [(copy.deepcopy(tiny),) for _ in range(2)])
print("saved by 2 ranks:", [s["param"].numel() for s in shards], "parameters each, of", shards[0]["numel"])
for world in (1, 4):
    out = D.run_local(resume, [(copy.deepcopy(tiny), shards) for _ in range(world)])
    print(f"resumed on {world} rank(s), 2 more steps: largest difference from one process "
          f"{(out[0] - ref_params[-1]).abs().max().item():.1e}")
""")

md("""
## On real processes

Everything above ran on threads. `D.launch(fn, N, ...)` starts N processes, joins them with gloo
(MASTER_ADDR=127.0.0.1 and a free port, as `torchrun` would set) and runs `fn(TorchGroup(), ...)` in each; a rank
that dies ends the job with its error instead of leaving the others waiting forever. The same training, 2 gloo
processes, every strategy, against one process:
""")
code("""
for s in ("ddp", "zero1", "zero2", "zero3"):
    runs = D.launch(D.train_distributed, 2, s, copy.deepcopy(tiny), batches, lr=1e-2, weight_decay=0.1, timeout=300)
    err = max((a - b).abs().max().item() for run in runs for a, b in zip(run["params"], ref_params))
    dl = max(abs(a - b) for a, b in zip(runs[0]["losses"], ref_losses))
    print(f"{s:6s} on 2 gloo processes: parameters within {err:.1e} of one process, losses within {dl:.1e}")
""")
md("""
`tests/test_distributed.py` adds the comparisons with PyTorch's own `DistributedDataParallel` and `fully_shard`
(FSDP2, which runs on CPU with gloo) and the job that loses a rank mid-step. Time per step of each strategy on 2
processes of this 2-core machine (bench/distributed_cpu.py, a small storyteller), and the share spent in
collectives:
""")
code("""
st = bench["strategies"]
rows = ["| strategy | ms per step | in collectives |", "|---|---|---|",
        f"| one process, the whole batch | {st['one_process_step_s'] * 1e3:.1f} | — |"]
for s, r in st["per_strategy"].items():
    rows.append(f"| {s}, 2 processes | {r['step_s'] * 1e3:.1f} | {r['comm_share']:.0%} |")
Markdown(f"Model: {st['model']['params']:,} parameters, global batch {st['global_batch']}.\\n\\n" + "\\n".join(rows))
""")
md("""
On two CPU cores the processes compete for the cores, so these times say little about speed-up; what they show is
the structure: by construction ZeRO-3 moves the most bytes (1.5× DDP's, in many smaller collectives), and DDP's
all-reduces partly hide behind backward. On GPUs, where compute is fast and NVLink moves hundreds of GB/s, the same
bookkeeping decides whether a step is bound by arithmetic or by the network.

## Summary

- Collectives: all-reduce = reduce-scatter + all-gather; the ring sends 2(N−1)/N of the bytes per rank, whatever N.
- Data parallelism: average the gradients; DDP overlaps the all-reduce with backward by buckets of gradients.
- ZeRO shards what DDP replicates: optimizer state (stage 1), gradients (2), weights (3, FSDP), down to 16Ψ/N bytes
  per rank, for the same (stages 1–2) or 1.5× (stage 3) communication.
- Every strategy trains exactly like one process, up to the order of floating-point sums.
""")

if __name__ == "__main__":
    print(page.write())

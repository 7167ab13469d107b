"""Write book/ch09_precision.ipynb, the Chapter 9 page (the book executes it at build time, on a CPU).

    .venv/bin/python scripts/notebooks/build_ch09_book.py

The page runs the reference storylib.precision, the shipped storyteller (models/storyteller) and the validation
stories; the FP8 speed table comes from the GPU survey bench/results/train_variants_h100.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch09_precision")
md, code, ex = page.md, page.code, page.exercise

md("""
# Precision: fp32, bf16, fp16, fp8

A trained storyteller is a few million numbers, and training it is mostly multiplying them. Every one of those
numbers is stored in some floating-point format, and the format decides three things at once: how much memory a
number takes, how fast the hardware multiplies it, and how wrong it is. A GPU multiplies 16-bit numbers several
times faster than 32-bit ones, and 8-bit ones faster still; today's large models are trained with most of their
arithmetic in bf16 or even fp8. This chapter shows what that costs and how training gets away with it:

- **floating point from the bits**: sign, exponent, mantissa, subnormals, infinities and NaN, rounding to nearest
  even, and the formats side by side (fp32, tf32, fp16, bf16, fp8 e4m3 and e5m2);
- **what goes wrong** in low precision: long sums that stop growing, a softmax that overflows, gradients that
  underflow to zero, and **stochastic rounding**;
- **mixed precision training**: autocast, fp32 master weights, and the bytes each recipe keeps per parameter;
- **dynamic loss scaling**, which makes fp16 training work;
- **FP8 with per-tensor scales**: current scaling, delayed scaling with an amax history, and the trainer's
  `Float8Linear`.

Everything you write lives in `storylib/precision.py`, next to the trainer's FP8 matmuls.
""")
code("""
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from myst_nb import glue

from storylib import precision as P
from storylib.checkpoint import default_storyteller
from storylib.data import course_file, load_stories
from storylib.fastbpe import encode_ordinary

torch.set_num_threads(2)  # the book is built on two CPU cores
t_page = time.perf_counter()
""")

# --------------------------------------------------------------------------------------------------- 9.1
md("""
## Floating point from the bits

Scientific notation writes a number as a sign, a few significant digits and a power of ten: $-6.02 \\times 10^{23}$.
A floating-point number is the same in base two, packed into a fixed number of bits:

| field | bits | holds |
|---|---|---|
| sign $s$ | 1 | 0 for +, 1 for − |
| exponent field $E$ | $e$ | the power of two, plus a **bias** $b = 2^{e-1} - 1$ so that it is never negative |
| mantissa field $M$ | $m$ | the binary digits after the point |

A **normal** number has a leading binary digit 1, which is therefore not stored (the "hidden bit"):

$$
x = (-1)^s \\times \\left(1 + \\frac{M}{2^m}\\right) \\times 2^{E - b}.
$$

Two exponent fields are special. $E = 0$ holds the **subnormal** numbers, $(-1)^s \\times \\frac{M}{2^m} \\times
2^{1-b}$, no hidden bit: they fill the gap between the smallest normal number and zero in even steps (and $M = 0$
gives $+0$ and $-0$). $E$ all ones holds $\\pm\\infty$ ($M = 0$) and NaN, "not a number" (any other $M$). Here is
the fp16 format ($e = 5$, $m = 10$, bias 15) spelling a few numbers, with the encoder you write below:
""")
code("""
def spell(x, fmt="fp16"):
    \"\"\"'s | exponent | mantissa' of the format value nearest to x, and that value.\"\"\"
    e, m, fn = P.FORMATS[fmt]
    bits = int(P.encode(torch.tensor([x], dtype=torch.float64), e, m, fn))
    s = format(bits, f"0{1 + e + m}b")
    value = float(P.decode(torch.tensor([bits]), e, m, fn))
    return f"{s[0]} | {s[1:1 + e]} | {s[1 + e:]}", value


for x in [1.0, -2.5, 0.1, 65504.0, 1e5, 6e-8, 1e-8]:
    bits, value = spell(x)
    print(f"{x:>10g}  ->  {bits}   = {value!r}")
""")
md("""
Read the lines: $1.0$ is $1.0 \\times 2^0$, exponent field $0 + 15 = 01111$, mantissa zero. $0.1$ has no finite
binary expansion, so fp16 keeps the nearest of its numbers, which is a little off. The largest fp16 number is
followed by $\\infty$: anything that rounds beyond it overflows. At the other end the smallest subnormal
(exponent field 0, mantissa 1) is the last stop before zero.

Writing numbers into bits needs **rounding**: a real number usually lies between two neighbours of the format, and
IEEE 754's default is to take the nearer one, and on an exact tie the one whose last mantissa bit is 0, "round to
nearest, ties to even" (always rounding ties up would drift upwards on average).
""")
ex("ch09.decode", "Turn bit patterns into values for any format given by its exponent and mantissa widths: sign, "
   "exponent field, mantissa field, the subnormals of $E = 0$, and $\\pm\\infty$/NaN at the top; in an `fn` format "
   "(`float8_e4m3fn`, no infinities) only the all-ones pattern is NaN. The test decodes every one of the 65,536 "
   "fp16 and bf16 patterns and the 256 of each fp8 format and compares them with torch's own reading.")
ex("ch09.encode", "The reverse: the pattern of the nearest value, ties to even, with subnormals, overflow to "
   "$\\pm\\infty$ (or saturation at the largest value in `fn` formats, as torch's `float8_e4m3fn` cast does), "
   "and exact from float64. The tests compare with torch's casts on random values, on every tie between "
   "neighbours and on the values just beside each tie, and with a brute-force search over all 256 fp8 values.")
md("""
With both, the formats can be compared by computing what defines them rather than quoting it. `format_info` gives
a format's largest value, its smallest normal and subnormal numbers and its **machine epsilon** $2^{-m}$, the gap
between 1 and the next number (the relative precision: about $m + 1$ significant bits). The cell checks them
against `torch.finfo` where torch has the format, and re-decodes every fp16/bf16/fp8 bit pattern against torch:
""")
code("""
rows = []
for name, (e, m, fn) in P.FORMATS.items():
    info = P.format_info(e, m, fn)
    dtype = P.DTYPES.get(name)
    if dtype is not None:
        fi = torch.finfo(dtype)
        assert (fi.max, fi.tiny, fi.eps) == (info["max"], info["min_normal"], info["eps"]), name
        if dtype.itemsize <= 2:
            width = torch.int16 if dtype.itemsize == 2 else torch.uint8
            pattern = torch.arange(2 ** info["bits"]).to(torch.int32).to(width)
            ref = pattern.view(dtype).double()
            mine = P.decode(torch.arange(2 ** info["bits"]), e, m, fn)
            assert ((mine == ref) | (mine.isnan() & ref.isnan())).all(), name
    rows.append((name, info["bits"], e, m, info["max"], info["min_normal"], info["min_subnormal"], info["eps"],
                 info["digits"]))
print(f"{'format':>9} {'bits':>4} {'exp':>3} {'man':>3} {'largest':>10} {'min normal':>10} {'min subnorm':>11} "
      f"{'epsilon':>9} {'digits':>6}")
for name, bits, e, m, mx, mn, sub, eps, digits in rows:
    print(f"{name:>9} {bits:>4} {e:>3} {m:>3} {mx:>10.3g} {mn:>10.3g} {sub:>11.3g} {eps:>9.3g} {digits:>6.1f}")
print("every fp16, bf16 and fp8 bit pattern decodes as torch reads it; the constants match torch.finfo")
""")
md("""
Two families stand out. **fp16** spends its bits on precision (10 mantissa bits) and has little range: its largest
number is small enough for a softmax or a sum of squares to exceed. **bf16** ("brain float", Google's TPU format)
is fp32 with the last 16 mantissa bits cut off: the same 8 exponent bits and the same range as fp32, but only
about two to three significant digits. **tf32** is not a storage format: it is what NVIDIA's tensor cores use
inside an "fp32" matmul when `torch.backends.cuda.matmul.allow_tf32` is on, fp32's range with bf16-like
precision. The two **fp8** formats of the H100 split 7 bits two ways: **e4m3** (more precision, and in its `fn`
variant no infinities, so the top exponent holds more numbers) and **e5m2** (more range).

Where the numbers lie is easiest to see. Floating-point numbers are spaced evenly within each power of two, and the
spacing doubles from one power of two to the next; so the *relative* gap between neighbours stays between
$2^{-m-1}$ and $2^{-m}$ over the whole normal range, and grows without bound among the subnormals:
""")
code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name in ["fp8_e4m3", "fp8_e5m2"]:
    e, m, fn = P.FORMATS[name]
    v = P.decode(torch.arange(2 ** (e + m)), e, m, fn)  # the non-negative half
    v = v[v.isfinite() & (v > 0)]
    axes[0].plot(v, np.full(len(v), 1 if "e4m3" in name else 0), "|", ms=14, label=name)
axes[0].set_xscale("log"); axes[0].set_yticks([0, 1], ["e5m2", "e4m3"]); axes[0].set_ylim(-0.7, 1.7)
axes[0].set_title("every positive fp8 value (log scale)", fontsize=10)
for name in ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]:
    e, m, fn = P.FORMATS[name]
    info = P.format_info(e, m, fn)
    x = torch.logspace(math.log10(info["min_subnormal"]) + 0.01, math.log10(info["max"]) - 0.01, 4000,
                       dtype=torch.float64)
    lo = P.round_to(x, e, m, fn)
    up = P.decode(P.encode(lo, e, m, fn) + 1, e, m, fn)  # the next value up
    axes[1].loglog(x, (up - lo) / x, label=name, lw=1)
axes[1].set_xlabel("x"); axes[1].set_ylabel("gap to the next value / x")
axes[1].set_title("relative spacing: flat over the normal range", fontsize=10); axes[1].legend(fontsize=8)
plt.tight_layout(); plt.show()
""")
md("""
Machine epsilon has a practical reading: adding anything smaller than half a gap to a number does nothing. In
fp16, $1 + 2^{-11}$ is a tie between 1 and $1 + 2^{-10}$ and rounds to even, to 1:
""")
code("""
for name in ["fp32", "bf16", "fp16"]:
    e, m, fn = P.FORMATS[name]
    half, more, eps = P.round_to(torch.tensor([1 + 2.0 ** -(m + 1), 1 + 2.0 ** -(m + 1) * 1.0001, 1 + 2.0**-m],
                                              dtype=torch.float64), e, m, fn).tolist()
    print(f"{name} (eps = 2**-{m}): 1 + eps/2 -> {half!r}, a hair more -> {more!r}, 1 + eps -> {eps!r}")
""")
md("""
Try it. Pick a format, type a number, and the explorer below shows the value the format keeps: its sign, exponent
and mantissa bits (click one to flip it), the formula that reads them, the values just below and just above it
(the arrow buttons, or the ↑ and ↓ keys in the box, step there), the spacing there, and how far the typed number
was rounded. A few to try: `0.1` in every format; `65519` and `65520` in fp16 (the last number below the
overflow, and the first above); `1e-8` in fp16 and then in bf16; `500` in fp8 e4m3 (no infinity: it saturates)
and in e5m2; then step down from `1` and watch the spacing halve. It runs in your browser, with the same rules as
the `encode` and `decode` you write.
""")
code("""
from storylib.widgets import FloatExplorer

FloatExplorer(value="0.1", format="fp16")
""")

# --------------------------------------------------------------------------------------------------- 9.2
md("""
## What goes wrong in low precision

Three failures, each on real numbers, are behind every rule of mixed-precision training.

### Long sums stop growing

Add a small number to a running total again and again. Once the total is so large that the small number is less
than half the gap between neighbouring values around it, each addition rounds back to the same total: the sum
**stagnates**. A loss averaged over many tokens, a gradient accumulated over many micro-batches, a norm over
millions of elements are all such sums. Here is $0.001$ added again and again (`n` times) with a total kept in each
format:
""")
code("""
n, step = 12_000, 1e-3
exact = np.arange(1, n + 1) * step
curves = {}
for name in ["fp32", "fp16", "bf16"]:
    dtype = P.DTYPES[name]
    total, s, inc = np.empty(n), torch.zeros((), dtype=dtype), torch.tensor(step, dtype=dtype)
    for i in range(n):
        s = s + inc  # one rounding per addition, in the format
        total[i] = s.item()
    curves[name] = total
g = torch.Generator().manual_seed(0)
s, total = torch.zeros(1, dtype=torch.float64), np.empty(n)
for i in range(n):
    s = P.stochastic_round(s + step, 8, 7, generator=g)  # bf16, rounded at random (below)
    total[i] = s.item()
curves["bf16, stochastic rounding"] = total
plt.figure(figsize=(7, 3.6))
plt.plot(exact, "k--", lw=1, label="exact")
for name, total in curves.items():
    plt.plot(total, label=f"{name}: {total[-1]:.2f}")
plt.xlabel("additions of 0.001"); plt.ylabel("running total"); plt.legend(fontsize=8)
plt.title("a running sum kept in each format", fontsize=10); plt.tight_layout(); plt.show()
for name in ["fp16", "bf16"]:
    e, m, fn = P.FORMATS[name]
    # a total in [2**k, 2**(k+1)) has gaps of 2**(k - m): it stalls from the first k where half a gap exceeds the step
    k = math.floor(math.log2(step)) + m + 2
    print(f"{name}: stalls at about 2**{k} = {2.0**k:g}; it ended at {curves[name][-1]:g} (exact: {exact[-1]:g})")
""")
md("""
fp32 has the 13 or 16 extra mantissa bits to keep going. This is why every framework accumulates sums and matmul
products in fp32 even when the inputs are 16-bit (the tensor cores do it in hardware), and why optimizer updates,
small changes added to large weights, are applied to fp32 **master weights**.

### Stochastic rounding

The fourth curve rounds each new total *at random* to one of its two neighbours, up with probability proportional
to how close it is: a total a quarter of the way to the next value rounds up one time in four. On average the
rounding error is zero, so the sum follows the exact one in expectation, although every value it holds is a bf16
number. Hardware for training in low precision (Graphcore's IPUs, some AWS accelerators) does this in silicon;
it is what lets bf16-only optimizer updates work.
""")
ex("ch09.stochastic_round", "Round each element to the format value just below or just above it, up with "
   "probability (x − lo) / (hi − lo), drawing one uniform number per element from the given generator. The test "
   "checks that every draw is one of the two neighbours and that the mean of thousands of draws lands on x within "
   "a few standard errors.")
md("""
### A softmax that overflows

The softmax exponentiates logits. In fp16, $e^{x}$ overflows to $\\infty$ once $x$ exceeds $\\ln(\\text{max})$,
and $\\infty / \\infty$ is NaN. Subtracting the row's maximum first (Chapter 4) makes every exponent $\\le 0$, and
the same softmax is exact in any format:
""")
code("""
logits = torch.tensor([3.0, 9.5, 11.0, 12.0], dtype=torch.float16)
naive = logits.exp() / logits.exp().sum()
stable = (logits - logits.max()).exp() / (logits - logits.max()).exp().sum()
print("ln(fp16 max) =", round(math.log(torch.finfo(torch.float16).max), 2))
print("exp in fp16:    ", logits.exp().tolist())
print("naive softmax:  ", naive.tolist())
print("minus the max:  ", stable.tolist())
print("fp32 reference: ", torch.softmax(logits.float(), -1).tolist())
""")
md("""
### Gradients that underflow

The storyteller's gradients are small numbers, and many are very small. Here are the gradients of its loss on a
few validation stories, computed in fp32, against the smallest numbers fp16 and bf16 can hold:
""")
code("""
model, tok = default_storyteller()
model.eval()  # (no dropout: the gradients are those of the loss as printed)
stories = load_stories("valid", limit=8)
block = model.config.block_size
ids = [encode_ordinary(tok, s)[: block + 1] for s in stories]
T = min(len(i) for i in ids) - 1
batch = torch.tensor([i[: T + 1] for i in ids])
_, loss = model(batch[:, :-1], batch[:, 1:].contiguous())
loss.backward()
grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
model.zero_grad(set_to_none=True)
nonzero = grads[grads != 0].abs()
fp16, bf16 = P.format_info(5, 10), P.format_info(8, 7)
lost16 = float((P.round_to(grads, 5, 10) == 0)[grads != 0].double().mean())
lost16_scaled = float((P.round_to(grads * 2**16, 5, 10) == 0)[grads != 0].double().mean())
lost_bf16 = float((P.round_to(grads, 8, 7) == 0)[grads != 0].double().mean())
plt.figure(figsize=(7, 3.4))
plt.hist(np.log2(nonzero.numpy()), bins=120, color="gray")
for x, label, c in [(fp16["min_subnormal"], "fp16 smallest subnormal", "C3"),
                    (fp16["min_normal"], "fp16 smallest normal", "C1"),
                    (bf16["min_normal"], "bf16 smallest normal", "C0")]:
    if x > nonzero.min() / 4:
        plt.axvline(math.log2(x), color=c, label=label)
plt.xlabel("log2 |gradient|"); plt.ylabel("count"); plt.legend(fontsize=8)
plt.title(f"{len(nonzero):,} gradients of the storyteller's loss, computed in fp32", fontsize=10)
plt.tight_layout(); plt.show()
print(f"loss {loss.item():.3f} on {batch.shape[0]} stories of {T} tokens")
print(f"gradients that become 0 in fp16:             {lost16:.2%}")
print(f"... in fp16 after multiplying them by 2**16: {lost16_scaled:.2%}")
print(f"gradients that become 0 in bf16:             {lost_bf16:.2%}")
glue("lost16", f"{lost16:.1%}", display=False)
""")
md("""
In fp16, {glue:text}`lost16` of this model's gradients would be exactly zero: whatever those weights should learn,
they do not. bf16 has fp32's exponent range and loses none, which is the main reason it replaced fp16 for training.
For fp16 the cure is the third line: multiply the loss, and with it every gradient, by a large constant before the
backward pass, and divide it back out in fp32. That is loss scaling, §9.4.

## Mixed precision training

The recipe that combines all of this (Micikevicius et al. 2018, "Mixed Precision Training") runs the *arithmetic*
in 16 bits and keeps the *state* in 32:

- the matmuls and convolutions run in bf16 or fp16 (that is where the time goes, and where tensor cores are fast),
  accumulating in fp32;
- reductions, softmax, layer norm and the loss run in fp32;
- the weights the optimizer updates, and its moments, are fp32.

PyTorch's `torch.autocast` does the first two per operation: inside `with torch.autocast("cuda",
dtype=torch.bfloat16):` a matmul casts its inputs to bf16 and a softmax runs in fp32, while the parameters stay
fp32 (they are cast on the fly, every step). Chapter 7's trainer trains this way. Other recipes keep the weights
themselves in 16 bits with a separate fp32 **master copy** for the optimizer, or drop fp32 altogether ("pure
bf16", which needs care, such as stochastic rounding, for the updates). What each keeps in memory, per parameter,
with AdamW and its two moments:
""")
ex("ch09.memory", "Bytes per parameter of a recipe: its weights, its gradients, `n_states` optimizer tensors and an "
   "optional master copy, each in its dtype. The test builds a small model in each recipe, takes an optimizer "
   "step, and counts the bytes the tensors really hold.")
code("""
shape = json.loads(course_file("bench/results/train_throughput.json").read_text())["shape"]  # GPT-2 small's
n_gpt2 = shape["params"]
glue("gpt2_params", f"{n_gpt2 / 1e6:.0f}M", display=False)
glue("gpt2_width", f"{shape['n_embd']}", display=False)
glue("gpt2_head", f"{shape['n_embd']} × {shape['vocab_size']:,}", display=False)
glue("gpt2_context", f"{shape['block_size']:,}", display=False)
print(f"{'recipe (AdamW)':40s} {'weights':>7} {'grads':>6} {'AdamW':>6} {'master':>6} {'total':>6} "
      f"{'GPT-2 small':>12}")
for name, kw in P.RECIPES.items():
    b = P.memory_per_parameter(**kw)
    print(f"{name:40s} {b['weights']:>7} {b['grads']:>6} {b['optimizer']:>6} {b['master']:>6} {b['total']:>6} "
          f"{b['total'] * n_gpt2 / 1e9:>9.2f} GB")
""")
md("""
Mixed precision saves no memory on the weights at all: with a master copy the total per parameter is the same as
fp32's, and the savings are elsewhere, in the activations kept for the backward pass (16-bit, and usually far larger
than the weights) and in time. Only dropping fp32 state halves the total. The FP8 recipe of §9.5 keeps the same
state as autocast: its 8-bit copies of the weights are made for each matmul and dropped.

Is the table right? `bench/precision_memory.py` checks it on a GPU: it trains GPT-2 small for two AdamW steps in
each recipe and asks the allocator what stays allocated afterwards (`torch.cuda.memory_allocated`, the activations
freed by then, cuBLAS's workspace counted before the model exists), per parameter, next to the table's prediction,
and the step's peak (`torch.cuda.max_memory_allocated`, activations included):
""")
code("""
mem = json.loads(course_file("bench/results/precision_memory_h100.json").read_text())
print(f"{mem['card']}, {mem['model']}, torch {mem['torch']}")
print(f"{'recipe (AdamW)':40s} {'predicted':>9} {'measured':>9} {'ratio':>6} {'peak':>9}")
for name, r in mem["recipes"].items():
    print(f"{name:40s} {r['predicted_bytes_per_param']['total']:>7} B {r['measured_bytes_per_param']:>7.2f} B "
          f"{r['ratio_measured_to_predicted']:>6.3f} {r['peak_GiB']:>5.2f} GiB")
worst = max(abs(r["ratio_measured_to_predicted"] - 1) for r in mem["recipes"].values())
glue("mem_worst", f"{worst:.0%}", display=False)
""")
md("""
What stays is the table's prediction to within {glue:text}`mem_worst`: a few small buffers the table does not
count (the optimizer's step counters, the allocator's rounding). The peak is where the recipes really differ: it
holds the activations of the forward pass, and in 16 bits they take fewer bytes.

Does bf16 autocast learn as well? A small GPT trained on training stories' tokens for a few hundred steps on
this CPU, once in fp32 and once under `torch.autocast("cpu", dtype=torch.bfloat16)`, from the same initialisation
and on the same batches:
""")
code("""
from storylib.gpt2 import GPT, GPTConfig

text_ids = torch.tensor([t for s in load_stories("train", limit=400) for t in encode_ordinary(tok, s)])
cfg = GPTConfig(block_size=48, vocab_size=model.config.vocab_size, n_layer=2, n_head=2, n_embd=64)


def train_small(autocast: bool, steps: int = 100, batch_size: int = 12, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    net = GPT(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(text_ids) - cfg.block_size - 1, (batch_size,), generator=g)
        xy = torch.stack([text_ids[s : s + cfg.block_size + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = net(xy[:, :-1], xy[:, 1:].contiguous())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


t0 = time.perf_counter()
runs = {"fp32": train_small(False), "bf16 autocast": train_small(True)}
plt.figure(figsize=(7, 3.4))
for name, losses in runs.items():
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
    plt.plot(smooth, label=f"{name}: last 20 steps {np.mean(losses[-20:]):.3f}")
plt.xlabel("step"); plt.ylabel("training loss (10-step mean)"); plt.legend(fontsize=8)
plt.title(f"a {GPT(cfg).num_params() / 1e6:.2f}M-parameter GPT, fp32 vs bf16 autocast", fontsize=10)
plt.tight_layout(); plt.show()
print(f"both runs: {time.perf_counter() - t0:.1f} s on this CPU")
""")
md("""
The bf16 curve follows the fp32 one closely, a little above it: rounding the matmuls' inputs to bf16 costs this
model a little per step, not its ability to learn. (On a CPU it is not faster: the speed of 16-bit arithmetic is a
property of GPU tensor cores.) These are training losses on a tiny model; the storyteller itself, measured in bf16
on the book's yardstick, closes the chapter.

## Dynamic loss scaling

fp16 has the precision but not the range: §9.2 showed some of the storyteller's gradients below its smallest
number, and many more among its subnormals, with fewer significant bits. By the chain rule, multiplying the loss by
$S$ multiplies every gradient by $S$, so

1. compute the loss, multiply it by the **scale** $S$, and run the backward pass in fp16: the gradients are now
   $S$ times larger and survive;
2. divide the gradients by $S$ in fp32 (the master weights' precision) before the optimizer step.

Which $S$? Too small and gradients underflow; too large and some gradient overflows to $\\infty$, and the step is
garbage. **Dynamic** loss scaling (the rule of `torch.amp.GradScaler`) finds it by trial: start large
($2^{16}$); whenever a step's gradients hold an inf or a NaN, *skip* that step and halve $S$; after a long run
of good steps (`growth_interval` of them) double $S$ and try again. A skipped step costs one batch; a sequence of
overflows walks the scale down in a few steps.
""")
ex("ch09.loss_scaler", "`LossScaler.step`: given the gradients of the scaled loss, skip the step (return None) and "
   "back off when any is not finite; otherwise return them divided by the scale in fp32, count the good step and "
   "grow the scale after `growth_interval` of them. The tests replay a sequence of overflows through "
   "`torch.amp.GradScaler` and yours and compare every decision, and train an fp16 model that learns only with it.")
code("""
def fp16_fit(scaler, steps=80):
    \"\"\"y = x·w* fitted with fp16 weights and fp16 arithmetic, fp32 master weights and Adam. The loss is divided by
    2**23, as a sum over millions of tokens divided by their count would be.\"\"\"
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 9, generator=g).half()
    y = (x.float() @ torch.randn(9, generator=g)).half()
    master = torch.zeros(9, requires_grad=True)
    opt = torch.optim.Adam([master], lr=0.05)
    losses, scales, nonzero = [], [], []
    for _ in range(steps):
        w = master.detach().half().requires_grad_()
        loss = (x @ w - y).square().mean() / 2**23  # in fp16
        losses.append(float((x.float() @ master.detach() - y.float()).square().mean()))
        (loss if scaler is None else scaler.scale_loss(loss)).backward()
        nonzero.append(int((w.grad != 0).sum()))
        grads = [w.grad] if scaler is None else scaler.step([w.grad])
        scales.append(None if scaler is None else scaler.scale)
        if grads is not None:
            master.grad = grads[0].float()
            opt.step()
            opt.zero_grad()
    return losses, scales, nonzero


plain, _, nz_plain = fp16_fit(None)
scaled, scales, nz_scaled = fp16_fit(P.LossScaler(init_scale=2.0**24, growth_interval=5))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].semilogy(plain, label="fp16, no scaling"); axes[0].semilogy(scaled, label="fp16, dynamic loss scaling")
axes[0].set_xlabel("step"); axes[0].set_ylabel("loss (undivided)"); axes[0].legend(fontsize=8)
axes[1].semilogy(scales, "C1"); axes[1].set_xlabel("step"); axes[1].set_ylabel("loss scale")
axes[1].set_title("grows ×2 every 5 good steps, halves on an overflow", fontsize=10)
plt.tight_layout(); plt.show()
print(f"without scaling: nonzero gradient elements per step {sorted(set(nz_plain))}, loss {plain[0]:.3f} -> "
      f"{plain[-1]:.3f}")
print(f"with scaling:    loss {scaled[0]:.3f} -> {scaled[-1]:.4f}, "
      f"{sum(s2 < s1 for s1, s2 in zip(scales, scales[1:]))} overflows skipped")
""")
md("""
Without scaling every gradient is exactly zero and nothing moves; with it the model fits, and the scale saw-tooths
just below the largest value that does not overflow. The same decisions as PyTorch's own `GradScaler`, on a random
sequence of good steps and overflows:
""")
code("""
g = torch.Generator().manual_seed(1)
ref = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=4)
mine = P.LossScaler(init_scale=2.0**12, growth_interval=4)
w = torch.nn.Parameter(torch.zeros(5))
opt = torch.optim.SGD([w], lr=1.0)
same, steps = True, 200
for t in range(steps):
    grad = torch.randn(5, generator=g)
    if torch.rand(1, generator=g) < 0.15:
        grad[0] = math.inf
    w.grad = grad.clone()
    before = w.detach().clone()
    ref.scale(torch.tensor(1.0)); ref.step(opt); ref.update()
    out = mine.step([grad])
    same &= (out is None) == torch.equal(before, w.detach()) and mine.scale == ref.get_scale()
print(f"{steps} steps: LossScaler and torch.amp.GradScaler took the same decisions and scales: {same}")
""")

# --------------------------------------------------------------------------------------------------- 9.5
md("""
## FP8 and per-tensor scaling

An H100 multiplies fp8 matrices at twice its bf16 rate. But fp8 holds very little: e4m3's numbers span from its
smallest subnormal to 448, with 3 mantissa bits, and a tensor whose values sit anywhere else is flushed to zero or
clipped. So each tensor gets its own **scale**: multiply it by $s$ so that its largest magnitude lands on the
format's largest value, cast, and divide the scale back out after the matmul:

$$
s = \\frac{\\text{fmax}}{\\text{amax}}, \\qquad \\text{amax} = \\max_i |x_i|, \\qquad x \\approx
\\frac{\\operatorname{fp8}(x \\cdot s)}{s}.
$$

Reading the amax from the tensor being cast is **current scaling**. The weights and activations of the forward pass
use e4m3 (precision); the gradients of the backward pass, whose magnitudes vary more, use e5m2 (range) (Micikevicius
et al. 2022, "FP8 Formats for Deep Learning").
""")
ex("ch09.fp8_scale", "`fp8_quantize`: scale by fmax / amax (the tensor's own, or a given one), clamp to ±fmax, cast "
   "to the fp8 dtype and back, divide by the scale. Tested against torch's fp8 casts, for both formats, with a "
   "stale amax that must saturate instead of overflowing.")
code("""
g = torch.Generator().manual_seed(0)
acts = torch.randn(256, 96, generator=g) * torch.exp(torch.randn(256, 96, generator=g)) * 1e-3  # small, spread out
for name, dtype in [("e4m3", P.E4M3), ("e5m2", P.E5M2)]:
    raw = acts.to(dtype).float()  # no scale
    scaled, scale = P.fp8_quantize(acts, dtype)
    for label, q in [("cast as is", raw), (f"scaled by {float(scale):.3g}", scaled)]:
        rel = ((q - acts).norm() / acts.norm()).item()
        print(f"{name} {label:>20}: relative error {rel:6.2%}, values flushed to zero {(q == 0).float().mean():6.2%}")
""")
md("""
Current scaling needs the amax *before* the cast: one extra pass over the tensor, which for the activations of a
large model costs real time. **Delayed scaling** (Transformer Engine's default) uses amaxes already known: it keeps
the amax of each of the last $H$ steps and scales this step's tensor by the largest of them, then records this
step's amax. Amaxes change slowly from one step to the next, so this is usually right; when a tensor suddenly grows,
its largest values saturate at fmax for that step, and the spike then sets the scale for the next $H$ steps.
""")
ex("ch09.amax_history", "`DelayedScaling.__call__`: quantize with the scale of the history's largest amax (on the "
   "first call, the tensor's own), then record the tensor's amax and keep the last `history_len`. Tested against a "
   "float64 simulation over a sequence with a spike, for history lengths 1 and 5.")
code("""
g = torch.Generator().manual_seed(2)
magnitudes = np.concatenate([np.linspace(1, 2, 20), [12.0], np.linspace(2, 1.5, 19)])
ds = P.DelayedScaling(history_len=8)
amax_now, amax_used, clipped = [], [], []
for s in magnitudes:
    x = torch.randn(4096, generator=g) * float(s)
    x_dq, scale = ds(x)
    amax_now.append(float(x.abs().max())); amax_used.append(448 / float(scale))
    clipped.append(float((x.abs() > amax_used[-1] * (1 + 1e-6)).float().mean()))
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(amax_now, "o-", ms=3, label="this step's amax"); ax.plot(amax_used, "s-", ms=3, label="amax the scale used")
ax.set_xlabel("step"); ax.set_ylabel("amax"); ax.legend(fontsize=8)
ax.set_title(f"delayed scaling, history of {ds.history_len} steps", fontsize=10)
plt.tight_layout(); plt.show()
spike = int(np.argmax(amax_now))
print(f"step {spike}: {clipped[spike]:.2%} of the tensor saturated; the spike set the scale for the "
      f"{sum(1 for a in amax_used[spike + 1:] if a == max(amax_used))} steps after it")
""")
md("""
### The trainer's FP8 matmuls

`storylib.precision.Float8Linear`, which Chapter 7's trainer switches on with `fp8`, is current scaling at work:
in training mode its forward casts the input and the weight to e4m3 with `to_float8` (the same computation as your
`fp8_quantize`), and its backward casts the incoming gradient to e5m2; all three matmuls accumulate in fp32
(`torch._scaled_mm` on the GPU, emulated on a CPU). On this CPU the emulation shows the numbers, if not the speed:
""")
code("""
torch.manual_seed(0)
lin = torch.nn.Linear(256, 192, bias=False)
f8 = P.Float8Linear.from_linear(lin).train()
x = torch.randn(64, 256, requires_grad=True)
y_ref, y8 = lin(x), f8(x)
y_ref.square().sum().backward(); gx_ref, gw_ref = x.grad.clone(), lin.weight.grad.clone()
x.grad = None; lin.weight.grad = None
y8.square().sum().backward()
rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
print(f"forward  y : relative error {rel(y8, y_ref):.2%}")
print(f"backward dx: relative error {rel(x.grad, gx_ref):.2%}")
print(f"backward dW: relative error {rel(lin.weight.grad, gw_ref):.2%}")
x8, inv = P.to_float8(x.detach(), P.E4M3)
print("to_float8 and fp8_quantize agree:", torch.allclose(x8.float() * inv, P.fp8_quantize(x.detach(), P.E4M3)[0]))
""")
md("""
A few percent of error per matmul, in exchange for twice the tensor-core rate. How much faster is one matmul, on a
GPU? `bench/fp8_matmul.py` multiplies two random matrices with `torch._scaled_mm`, e4m3 operands scaled by
`to_float8` (your `fp8_quantize`'s scale) and a bf16 result, and with `torch.mm` in bf16, fp32 and tf32, at square
sizes and at the shapes of the storyteller's and GPT-2 small's training matmuls (a batch of 16,384 tokens). It
times each with CUDA events (the median of many runs after a warm-up) and measures its error against a float64
product of the same matrices. "fp8 + casts" also counts what a training step pays before each FP8 matmul: the amax
and the scaled cast of both operands. The cell reads its result file,
`bench/results/fp8_matmul_h100.json`:
""")
code("""
from IPython.display import Markdown, display

try:
    fp8_file = course_file("bench/results/fp8_matmul_h100.json")
except FileNotFoundError:
    fp8_file = None
if fp8_file is None:
    display(Markdown("*FP8 matmul speed: not measured yet.* Run `python bench/fp8_matmul.py` on a GPU with FP8 "
                     "tensor cores (an H100) to write its result file; this cell then plots it."))
else:
    fp8 = json.loads(fp8_file.read_text())
    print(f"{fp8_file.name}: {fp8['card']}, torch {fp8['torch']}, CUDA {fp8['cuda']}")
    names = ["fp32", "tf32", "bf16", "fp8 e4m3", "fp8 e4m3 + casts"]
    rows8 = fp8["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    xs = np.arange(len(rows8))
    for i, name in enumerate(names):
        axes[0].bar(xs + (i - 2) * 0.16, [r["methods"][name]["tflops"] for r in rows8], 0.16, label=name)
    axes[0].set_xticks(xs, [f"{r['name']}\\n{r['M']}×{r['K']}×{r['N']}" for r in rows8], rotation=60, ha="right",
                       fontsize=7)
    axes[0].set_ylabel("TFLOP/s"); axes[0].legend(fontsize=8)
    axes[0].set_title(f"one matmul on the {fp8['card']}", fontsize=10)
    errs = [[r["methods"][name]["rel_error"] for r in rows8] for name in names]
    axes[1].boxplot(errs, tick_labels=names)
    axes[1].set_yscale("log"); axes[1].set_ylabel("relative error vs float64")
    axes[1].tick_params(axis="x", rotation=45, labelsize=8)
    axes[1].set_title("error, over all the shapes", fontsize=10)
    plt.tight_layout(); plt.show()
    big = max((r for r in rows8 if r["name"].startswith("square")), key=lambda r: r["M"])
    m = big["methods"]
    ratio = lambda r, name: r["methods"][name]["tflops"] / r["methods"]["bf16"]["tflops"]  # noqa: E731
    ours = [r for r in rows8 if r["name"].startswith("storyteller")]
    text = [f"On the {fp8['card']}, at {big['M']:,} × {big['M']:,} the FP8 matmul runs at "
            f"{m['fp8 e4m3']['tflops']:.0f} TFLOP/s, {ratio(big, 'fp8 e4m3'):.2f} times bf16's "
            f"{m['bf16']['tflops']:.0f}; with the two casts counted, {m['fp8 e4m3 + casts']['tflops']:.0f} TFLOP/s "
            f"({ratio(big, 'fp8 e4m3 + casts'):.2f} times)."]
    text.append(f"The storyteller's matmuls ({ours[0]['M']:,} tokens, width {ours[0]['K']}) are small: FP8 alone runs "
                f"them at {min(ratio(r, 'fp8 e4m3') for r in ours):.2f} to "
                f"{max(ratio(r, 'fp8 e4m3') for r in ours):.2f} times bf16's speed, and with the casts at "
                f"{min(ratio(r, 'fp8 e4m3 + casts') for r in ours):.2f} to "
                f"{max(ratio(r, 'fp8 e4m3 + casts') for r in ours):.2f} times.")
    text.append("The casts here are plain PyTorch operations, an absolute value, a max, a multiply, a clamp and a "
                "conversion for each operand, every one a pass over memory; a compiled training step fuses some of "
                "them, but the amax must still read the whole tensor before the cast can start. The fewer "
                "multiply-adds a matmul does per element it reads, the more these passes weigh.")
    med = {name: float(np.median(e)) for name, e in zip(names, errs)}
    text.append(f"The median relative errors: fp8 {med['fp8 e4m3']:.1%}, bf16 {med['bf16']:.2%}, tf32 "
                f"{med['tf32']:.3%}, fp32 {med['fp32']:.1e}, each below its format's epsilon (e4m3's 2**-3, bf16's "
                "2**-7, tf32's 2**-10): they come from rounding the inputs, since the sums are kept in fp32.")
    display(Markdown(" ".join(text)))
""")
md("""
Whether that pays in training depends on the matmul. The speed survey of GPT-2 small ({glue:text}`gpt2_params`
parameters, context {glue:text}`gpt2_context`, bf16 autocast, `torch.compile`) on an H100, with torchao's FP8
training applied to different sets of Linear layers, measured the median time of a training step:
""")
code("""
survey = json.loads(course_file("bench/results/train_variants_h100.json").read_text())
rows = survey["rows"]
labels = {"base": "bf16 autocast, no FP8", "ao_t": "FP8 every Linear (tensorwise)",
          "ao_r": "FP8 every Linear (rowwise)", "ao_t_nohead": "FP8 every Linear but lm_head",
          "ao_t_mlp": "FP8 the MLPs' Linears only",
          "ao_t_head": "FP8 lm_head only"}
base = rows["base"]["ms_step_gpu_median"]
print(f"{survey['card']}, torch {survey['torch']}, torchao {survey['torchao']}")
print(f"{'':32s} {'ms/step':>8} {'vs base':>8} {'peak GB':>8}")
for key, label in labels.items():
    r = rows[key]
    print(f"{label:32s} {r['ms_step_gpu_median']:>8.2f} {r['ms_step_gpu_median'] / base - 1:>+8.1%} "
          f"{r['peak_mem_gb']:>8.2f}")
glue("fp8_head", f"{1 - rows['ao_t_head']['ms_step_gpu_median'] / base:.1%}", display=False)
glue("fp8_all", f"{rows['ao_t']['ms_step_gpu_median'] / base - 1:.1%}", display=False)
""")
md("""
FP8 on every Linear made the step {glue:text}`fp8_all` *slower*; FP8 on the lm_head alone made it
{glue:text}`fp8_head` faster. Each FP8 matmul pays for its casts: an amax over the input, a scaled copy of it in
fp8, the same for the weight, and in the backward pass for the gradient. The transformer blocks of GPT-2 small are
{glue:text}`gpt2_width` wide: their matmuls are small enough that these extra passes over memory cost more than the
faster multiply saves. The lm_head is the exception, a {glue:text}`gpt2_head` weight, the largest matmul of the
model by far, where the arithmetic dominates and doubling its rate wins. That is why the trainer's `fp8` option
can be set to `lm_head`. At larger widths the balance tips and FP8 pays on every layer, which is how the largest
models are trained today.
""")
md("""
## The scoreboard

Does the storyteller lose anything when it runs in 16 bits? Its yardstick, bits per byte on all 1,000 validation
stories, computed here under `torch.autocast("cpu", dtype=torch.bfloat16)`: every matmul in bf16 (inputs rounded to
8 significant bits, sums in fp32), the softmax and the loss in fp32. The fp32 number beside it was measured by
Chapter 13's benchmark on the same stories, with the same code, on this kind of CPU
(`bench/results/quantize_cpu.json`). fp16 autocast is several times slower than bf16 on this CPU (the cell prints
the times), so fp16 is measured on the first 50 stories only, next to fp32 and bf16 on the same 50:
""")
code("""
from storylib import scoreboard
from storylib.gpt2 import bits_per_byte


def storyteller_bpb(stories, dtype=None):
    \"\"\"The storyteller's bits per byte on `stories`, under CPU autocast to `dtype` (None: plain fp32).\"\"\"
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return bits_per_byte(model, stories, encode_fn=tok.encode_ordinary, eot=tok.special_tokens["<|endoftext|>"])


yardstick = scoreboard.yardstick_stories()
t0 = time.perf_counter()
bpb_bf16 = storyteller_bpb(yardstick, torch.bfloat16)
t_bf16 = time.perf_counter() - t0
q = json.loads(course_file("bench/results/quantize_cpu.json").read_text())
bpb_fp32 = next(v["bpb"] for v in q["variants"] if v["variant"] == "fp32")
few, small = yardstick[:50], {}
for name, dtype in [("fp32", None), ("bf16 autocast", torch.bfloat16), ("fp16 autocast", torch.float16)]:
    t0 = time.perf_counter()
    small[name] = (storyteller_bpb(few, dtype), time.perf_counter() - t0)
print(f"all {len(yardstick):,} validation stories: fp32 {bpb_fp32:.4f} (quantize_cpu.json), bf16 autocast "
      f"{bpb_bf16:.4f} ({100 * (bpb_bf16 / bpb_fp32 - 1):+.3f}%, {t_bf16:.0f} s here)")
for name, (b, secs) in small.items():
    print(f"first {len(few)} stories, {name:14s} {b:.4f} ({100 * (b / small['fp32'][0] - 1):+.3f}%, {secs:.1f} s)")
glue("bf16_bpb", f"{bpb_bf16:.4f}", display=False)
glue("bf16_vs_fp32", f"{100 * (bpb_bf16 / bpb_fp32 - 1):+.3f}%", display=False)
""")
md("""
{glue:text}`bf16_bpb` bits per byte in bf16, {glue:text}`bf16_vs_fp32` from fp32: rounding every matmul's inputs to
bf16 costs the trained storyteller next to nothing, which is why it can be trained and served in 16 bits. Here is
its line on the board, up to this chapter:
""")
code("""
print(f"this page ran in {time.perf_counter() - t_page:.0f} s")
scoreboard.show(9, "storyteller, bf16 autocast (CPU)", bpb_bf16, page="ch09_precision.ipynb")
""")
md("""
## Summary

- A floating-point number is a sign, an exponent with a bias and a mantissa with a hidden bit; subnormals fill the
  gap to zero, infinities and NaN take the top exponent (except in `fn` formats, which saturate).
- The exponent width sets the range, the mantissa width the precision: fp16 trades range for precision, bf16 the
  reverse; e4m3 and e5m2 do the same at 8 bits.
- Low precision fails in known ways: sums stagnate, exponentials overflow, small gradients underflow. The fixes are
  fp32 accumulation and master weights, max-subtraction, loss scaling, per-tensor scales and stochastic rounding.
- Mixed precision keeps the state in fp32 and the arithmetic in 16 (or 8) bits; its memory per parameter is no
  smaller than fp32's, its speed is higher.
""")

if __name__ == "__main__":
    print(page.write())

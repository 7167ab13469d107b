"""Write book/ch13_quantization.ipynb, the Chapter 13 page (the book executes it at build time, on CPU).

    .venv/bin/python scripts/notebooks/build_ch13_book.py

The full measurement (7 variants on all 1,000 validation stories, decode speed) is bench/quantize.py's, loaded from
bench/results/quantize_cpu.json; the page computes its small examples itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch13_quantization")
md, code, ex = page.md, page.code, page.exercise

md("""
# Quantization

Chapter 12 found the storyteller's decode step bound by memory: to write one token, every weight is read from
memory once, to do two flops with it. If the weights were smaller, the reads would be shorter, the file would be
smaller and the model would fit on smaller machines. This chapter stores the storyteller's weights in 8 and in 4
bits instead of 32:

- **absmax** (symmetric) and **zero-point** (asymmetric) quantization: a float tensor becomes small integers and a
  scale;
- **granularity**: one scale per tensor, per output channel, or per group of 32 to 128 inputs, and why
  **outliers** decide which;
- **integer arithmetic**: int8 × int8 products summed in int32, the scales applied once at the end, and
  activations quantized as they arrive;
- **int4**, packed two values to a byte;
- **GPTQ**, which quantizes a layer column by column and corrects the columns not yet quantized for the error
  made so far;
- the **KV cache** in int8.

Everything lives in `storylib/quantize.py`; Chapters 5 and 12 are not touched: a quantized layer is a module that
takes the place of an `nn.Linear`, and a quantized cache is a subclass of Chapter 12's.
""")
code("""
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

from storylib import quantize as Q
from storylib.checkpoint import default_storyteller
from storylib.data import course_file
from storylib.gpt2 import bits_per_byte
from storylib.kvcache import GOLDEN_PROMPT, generate_stream
from storylib.scoreboard import yardstick_stories
from storylib.tokenizer import eot_id

torch.set_num_threads(2)  # the book is built on two CPU cores
model, tok = default_storyteller()
eot = eot_id(tok)
kv = json.loads(course_file("bench/results/kvcache_cpu.json").read_text())
bench = json.loads(course_file("bench/results/quantize_cpu.json").read_text())
fp32_bytes = Q.model_bytes(model, "fp32")
step_ms = kv["prefill_vs_decode"][-1]["decode_step_ms"]
print(f"the storyteller: {model.num_params() / 1e6:.1f}M parameters, {fp32_bytes / 1e6:.1f} MB in fp32")
print(f"one decode step (bench/results/kvcache_cpu.json, {kv['machine']['cpu']}, {kv['machine']['threads']} threads): "
      f"{step_ms:.1f} ms")
print(f"weights read per second in decode: {fp32_bytes / (step_ms / 1e3) / 1e9:.1f} GB/s")
""")
md("""
## 13.1 Why fewer bits

Decoding reads the whole model for every token (the cell above divides the model's bytes by the measured time of
a step). A prefill of hundreds of tokens reads the weights once for all of them, so it is not bound the same way;
decoding, one token at a time, is. Halve the bytes and, on a machine that waits for memory, a step can nearly
halve too — *if* the arithmetic can use the small numbers directly. The file shrinks in any case.

A weight in fp32 costs 4 bytes; fp16 (Chapter 9) costs 2. Below that, floating point runs out of useful bits, and
we switch to integers with a scale: $x \\approx s \\cdot q$, with $q$ an 8-bit or 4-bit integer and one float $s$
shared by many weights.

## 13.2 Absmax and zero-point

**Absmax** (symmetric): the largest magnitude maps to the largest integer $q_\\max = 2^{b-1} - 1$ (127 for int8):

$$
s = \\frac{\\max_i |x_i|}{q_\\max}, \\qquad q_i = \\operatorname{round}(x_i / s) \\in [-q_\\max, q_\\max],
\\qquad \\hat x_i = s\\, q_i, \\qquad |x_i - \\hat x_i| \\le s/2.
$$

**Zero-point** (asymmetric): the range $[\\min(x, 0), \\max(x, 0)]$ maps onto $0 \\dots 2^b - 1$, and an integer
$z$, the zero point, stands for $0.0$:

$$
s = \\frac{\\max - \\min}{2^b - 1}, \\qquad z = \\operatorname{round}(-\\min / s), \\qquad
q_i = \\operatorname{clamp}(\\operatorname{round}(x_i / s) + z,\\ 0,\\ 2^b - 1), \\qquad \\hat x_i = s\\,(q_i - z).
$$

Symmetric wastes half the integers on a one-sided tensor (after a GELU, most values are positive); asymmetric
spends one more number per scale and a subtraction. Weights are near-symmetric, so the storyteller's weights use
absmax.
""")
ex("ch13.absmax", "Quantize a tensor with one absmax scale, or one per slice along a dimension (kept, so it "
   "broadcasts); an all-zero slice must not divide by zero.")
ex("ch13.zeropoint", "Quantize onto $0 \\dots 2^b - 1$ with a scale and a zero point, the range always holding 0.")
code("""
x = torch.tensor([-1.2, -0.05, 0.0, 0.3, 0.9, 2.6])
q, s = Q.quantize_absmax(x, 4)
qz, sz, z = Q.quantize_zeropoint(x, 4)
print("x        ", x.tolist())
print("absmax   q =", q.tolist(), f" s = {float(s):.3f}  ->", [round(v, 3) for v in Q.dequantize(q, s).tolist()])
print("zero-pt  q =", qz.tolist(), f" s = {float(sz):.3f}, z = {int(z)}  ->",
      [round(v, 3) for v in Q.dequantize(qz, sz, z).tolist()])
""")
md("""
## 13.3 One scale for how many weights? Outliers

A scale is set by the largest magnitude it covers; every other weight under it is rounded on a grid of that
step. One large weight in a row makes the step large for the whole row. The storyteller has such weights: below,
the distribution of all of its matrix weights, and how far the largest lies from the typical one.
""")
code("""
mats = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
allw = torch.cat([w.flatten() for w in mats.values()])
std = float(allw.std())
ratio = {n: float(w.abs().max() / w.std()) for n, w in mats.items()}
worst = max(ratio, key=ratio.get)
fig, ax = plt.subplots(1, 2, figsize=(10, 3))
ax[0].hist(allw.numpy(), bins=400, log=True, color="#1565c0")
ax[0].set_xlabel("weight"); ax[0].set_ylabel("count (log)"); ax[0].set_title("every matrix weight of the storyteller")
ax[1].bar(range(len(ratio)), sorted(ratio.values()), color="#90a4ae")
ax[1].set_xlabel("matrix (sorted)"); ax[1].set_ylabel("max |w| / std(w)"); ax[1].set_title("outliers per matrix")
plt.tight_layout(); plt.show()
zero_frac = float((Q.quantize_absmax(mats[worst].float(), 4, dim=1)[0] == 0).float().mean())
gauss = float(torch.randn(allw.numel(), generator=torch.Generator().manual_seed(0)).abs().max())
Markdown(f"A Gaussian of {allw.numel():,} samples would reach about {gauss:.1f} "
         f"standard deviations; the storyteller's largest weight lies at {float(allw.abs().max()) / std:.1f}, and "
         f"in the worst matrix (`{worst}`) the largest weight is {ratio[worst]:.1f} times that matrix's standard "
         f"deviation. In int4 with one absmax scale per row (7 steps each side), {100 * zero_frac:.0f}% of that "
         f"matrix's weights round to 0.")
""")
md("""
Smaller models suffer more from this: a large model has many weights doing each job, so rounding noise averages
out, while a small model leans on each weight more, and its few outliers carry real work. The cure is more
scales: one per output channel (per row), or one per **group** of 32, 64 or 128 consecutive inputs of a row, so an
outlier spoils only its group. Each scale costs 2 bytes (fp16): a group of 32 int4 weights is 16 bytes of
integers and 2 of scale, 4.5 bits a weight.
""")
ex("ch13.groupwise", "One absmax scale per group of `group_size` consecutive inputs of each row; the last group "
   "may be shorter.")
code("""
sizes = [16, 32, 64, 128, 288]
err4 = [np.mean([Q.weight_error(w, 4, g) for w in mats.values()]) for g in sizes]
err8 = [np.mean([Q.weight_error(w, 8, g) for w in mats.values()]) for g in sizes]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(sizes, err4, "o-", label="int4"); ax.plot(sizes, err8, "o-", label="int8")
ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.set_xticks(sizes, [str(s) for s in sizes[:-1]] + ["288 (row)"])
ax.set_xlabel("group size (inputs per scale)"); ax.set_ylabel("relative RMS error"); ax.legend()
ax.set_title("the storyteller's matrices, round to nearest"); plt.tight_layout(); plt.show()
for g, e4, e8 in zip(sizes, err4, err8):
    print(f"group {g:3d}: int4 {100 * e4:5.2f}%   int8 {100 * e8:5.3f}%")
""")
md("""
## 13.4 Integer arithmetic, and quantized activations

Storing integers saves memory; computing with them saves time on hardware with integer units. A dot product of
a quantized activation row (scale $s_x$) and a quantized weight row (scale $s_w$) is

$$
\\sum_k x_k w_k \\approx \\sum_k (s_x q^x_k)(s_w q^w_k) = s_x s_w \\sum_k q^x_k q^w_k ,
$$

so the sum runs over integers — each product fits in 15 bits, a sum of thousands of them in 32 — and the two
scales are applied once, at the end. With groups, each group's integer sum gets its own $s_x s_w$. The weights'
scales are computed once; the activations are not known in advance, so they are quantized **dynamically**, per
token and group, as they arrive — what llama2.c's `runq.c` does in every matmul. *Weight-only* quantization
instead keeps activations in float and turns the weights back into floats on the fly: less gain in arithmetic, no
error from the activations.
""")
ex("ch13.int8_matmul", "$x w^\\top$ from int8 parts: sum the integer products in int32, then multiply by the two "
   "scales.")
code("""
g = torch.Generator().manual_seed(0)
xq = torch.randint(64, 128, (1, 4096), generator=g, dtype=torch.int8)  # large activations and weights, one sign
wq = torch.randint(64, 128, (1, 4096), generator=g, dtype=torch.int8)
exact = int((xq.long() * wq.long()).sum())
as_fp32 = float((xq.float() * wq.float()).cumsum(1)[0, -1])  # a float32 running sum has 24 bits
one = torch.ones(1, 1, dtype=torch.float64)
print(f"int32 sum {int(Q.int8_matmul(xq, one, wq, one)[0, 0])}, exact {exact}, a running fp32 sum {as_fp32:.0f}")
""")
md("""
## 13.5 Int4, two to a byte, and a quantized layer

No tensor type holds 4-bit integers, so two share a byte: the even-indexed value in the low four bits, the odd one
in the high four, each in two's complement ($-1$ is `1111`). Unpacking reads the nibbles back and turns 8…15 into
−8…−1.
""")
ex("ch13.pack_int4", "Pack signed 4-bit integers two per byte, low nibble first; pad an odd row with one 0.")
ex("ch13.unpack_int4", "Unpack them again: nibbles in order, 8…15 standing for −8…−1.")
md("""
`QuantLinear` holds a layer's integers (packed when int4), its fp16 scales and its bias; its forward pass
dequantizes the weight and runs the linear layer, and with `act_bits=8` quantizes the activations first (the
integer sums of §13.4, computed here through the equal float product). `quantize_model` swaps every block linear
and `lm_head` for one, and stores the token and position tables the same way (the token table shares its integers
with `lm_head`, as the float model shares its matrix).
""")
ex("ch13.qlinear", "The forward pass of a weight-only quantized linear layer: integers times their group's scale, "
   "then $x W^\\top + b$ in the input's dtype.")
code("""
ids = [eot, *tok.encode_ordinary(GOLDEN_PROMPT)]
for scheme in ("fp32", "int8", "int4-g32"):
    m = Q.quantize_model(model, scheme)
    story = "".join(generate_stream(m, tok, ids, 40, temperature=0.0))
    print(f"{scheme:9s} {Q.model_bytes(m, scheme) / 1e6:5.1f} MB  {GOLDEN_PROMPT}{story}".replace("\\n", " "))
""")
md("""
## 13.6 GPTQ: rounding that looks ahead

Round-to-nearest treats every weight alone. But what matters is a layer's *output*, $X W^\\top$ on the inputs the
layer actually sees, and errors in weights whose inputs move together can cancel. GPTQ (Frantar et al., 2022)
minimizes $\\lVert X W^\\top - X \\hat W^\\top \\rVert^2$ one column (input) at a time. For one output row the loss is
a quadratic with Hessian $H = 2 X^\\top X$, the same for every row. Quantizing column $i$ makes an error
$w_i - \\hat w_i$; the best change of the columns not yet quantized to make up for it is (Optimal Brain Surgeon)

$$
\\delta_{j} = -\\frac{w_i - \\hat w_i}{[H^{-1}]_{ii}}\\,[H^{-1}]_{ij} \\qquad (j > i),
$$

after which column $i$ is removed from $H^{-1}$ and the next column goes. GPTQ's observations: the order can be
fixed (left to right) for all rows at once; the rows of $H^{-1}$ needed, with the earlier columns removed, are
exactly the rows of $U$, the upper Cholesky factor of $H^{-1} = U^\\top U$, divided by their diagonal; and the
updates to far columns can wait and be applied a block of columns at a time (the "lazy batch"). $H$ is estimated
from calibration text — here the first training stories, never the validation stories we measure on.
""")
ex("ch13.gptq_block", "The inner loop of GPTQ over one block of columns: a group's scale when it starts, quantize "
   "column $i$, and spread its error $(w_i - \\hat w_i)/U_{ii}$ along row $i$ of $U$ to the later columns.")
code("""
from storylib.data import load_stories

calib = [[eot, *tok.encode_ordinary(s), eot][:256] for s in load_stories("train", limit=16)]
layer = model.transformer.h[4].mlp.c_fc
inputs = []
hook = layer.register_forward_hook(lambda m, a, o: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
with torch.no_grad():
    for c in calib:
        model(torch.tensor([c]))
hook.remove()
X = torch.cat(inputs).double()
W = layer.weight.detach().double()
_, _, w_gptq = Q.gptq(W, Q.hessian(X), 4, 32)
w_rtn = Q.dequantize_groupwise(*Q.quantize_groupwise(W, 4, 32), 32)
err = {name: float((X @ (W - w).T).pow(2).mean() / (X @ W.T).pow(2).mean()) for name, w in
       (("round to nearest", w_rtn), ("GPTQ", w_gptq))}
for name, e in err.items():
    print(f"{name:17s} relative output error of block 4's c_fc in int4, groups of 32: {100 * e:.3f}%")
print(f"({X.shape[0]} calibration tokens from {len(calib)} training stories)")
""")
md("""
## 13.7 The KV cache in int8

The cache of Chapter 12 grows with the context: two vectors per layer and token. `QuantKVCache` stores each new
key and value vector of a head as int8 with one fp16 absmax scale, and dequantizes the filled prefix when
attention reads it. Its sizes at the storyteller's full context:
""")
code("""
n = model.config.block_size
full, small = Q.kv_cache_bytes(model, n, False), Q.kv_cache_bytes(model, n, True)
print(f"{n} tokens: fp32 cache {full / 2**20:.2f} MiB, int8 cache {small / 2**20:.2f} MiB "
      f"({full / small:.2f}x smaller)")
kv8 = Q.greedy_tokens(model, ids, 60, Q.QuantKVCache)
kv32 = Q.greedy_tokens(model, ids, 60)
print("60 greedy tokens with the int8 cache, the same as with the float cache:", kv8 == kv32)
""")
md("""
For the storyteller the cache is small next to its weights; for a large model serving long contexts, it is the
cache that fills the memory, and halving or quartering it means more users or longer stories.

## 13.8 The storyteller in 8 and 4 bits, measured

`bench/quantize.py` quantizes the shipped storyteller every way above and measures, in one process, with fp32 as
the baseline: the size of the serialized tensors (packed integers, fp16 scales, everything else in fp16), bits
per byte on the validation stories (the course's yardstick), and greedy decoding speed on the CPU. Its results,
from `bench/results/quantize_cpu.json`:
""")
code("""
rows = bench["variants"]
base = rows[0]
assert base["variant"] == "fp32"
m = bench["machine"]
lines = ["| variant | size (MB) | smaller than fp32 | bits/byte | vs fp32 | decode tokens/s | golden story |",
         "|---|---|---|---|---|---|---|"]
for r in rows:
    same = "identical" if r["golden_identical"] else f"first {r['golden_same_chars']} of {r['golden_chars']} chars"
    lines.append(f"| {r['variant']} | {r['bytes'] / 1e6:.2f} | {base['bytes'] / r['bytes']:.2f}x | {r['bpb']:.4f} | "
                 f"{round(100 * (r['bpb'] / base['bpb'] - 1), 2) + 0.0:+.2f}% | {r['tokens_per_s']:.0f} | {same} |")
n_val = re.search(r"\\((\\d+) stories\\)", bench["what"]).group(1)
part = "" if n_val == "1000" else (f" (the first {n_val} of the yardstick's 1,000, a shorter run on a shared "
                                   "machine; `bench/quantize.py` with its defaults scores all 1,000)")
Markdown("\\n".join(lines) + f"\\n\\n{n_val} validation stories{part}; {m['cpu']}, threads: {m['threads']}, torch "
         f"{m['torch']}, {m['date'][:10]}. {bench['calibration']}. kv-int8: fp32 weights, int8 KV cache.")
""")
code("""
fig, ax = plt.subplots(1, 2, figsize=(11, 3.3))
names = [r["variant"] for r in rows]
ax[0].barh(names, [r["bytes"] / 1e6 for r in rows], color="#90a4ae")
ax[0].set_xlabel("MB (serialized)"); ax[0].invert_yaxis()
ax[1].barh(names, [100 * (r["bpb"] / base["bpb"] - 1) for r in rows], color="#1565c0")
ax[1].set_xlabel("bits/byte, % above fp32 (lower is better)"); ax[1].invert_yaxis()
ax[1].axvline(0.5, ls=":", c="gray"); ax[1].axvline(3.0, ls="--", c="gray")
plt.tight_layout(); plt.show()
""")
code("""
by = {r["variant"]: r for r in rows}
def pct(v): return round(100 * (by[v]["bpb"] / base["bpb"] - 1), 2) + 0.0  # + 0.0: no "-0.00"
def x(v): return base["bytes"] / by[v]["bytes"]
text = []
if "int8" in by:
    text.append(f"Int8 with one scale per row is {x('int8'):.2f}x smaller than fp32 and costs {pct('int8'):+.2f}% "
                f"bits per byte (the aim: at least 3.9x and within +0.5%).")
if "int4-g32" in by and "int4-gptq" in by:
    text.append(f"Int4 in groups of 32 is {x('int4-gptq'):.2f}x smaller; rounded to nearest it costs "
                f"{pct('int4-g32'):+.2f}%, with GPTQ {pct('int4-gptq'):+.2f}% (the aim: at least 7x and within +3%).")
def sp(v): return by[v]["tokens_per_s"] / base["tokens_per_s"]
speed = ", ".join(f"{r['variant']} {sp(r['variant']):.2f}x" for r in rows[1:])
load, cores = m["load_average_at_start"], m["cores"]
if load > cores:
    text.append(f"The machine was shared while the bench ran (load average {load:.1f} on {cores} cores), so its "
                "speeds are disturbed: a thread that waits for a busy core stalls every parallel step. The sizes and "
                "bits per byte do not depend on that; `bench/quantize.py` reruns the speeds on a quiet machine.")
text.append(f"Decode speed relative to fp32 ({base['tokens_per_s']:.0f} tokens/s): {speed}. PyTorch on the CPU "
            "has no int4 matmul here: every step dequantizes the weights back to fp32 first, which adds work "
            "instead of removing reads, and int4 also unpacks its nibbles every step. Reading fewer bytes pays off "
            "with kernels that compute on the integers (int8 dot products with int32 sums, §13.4), as a C program "
            "or llama.cpp does.")
if "fp16" in by:
    text.append(f"The fp16 variant runs exactly fp32's computation (its weights are widened to fp32 once, when "
                f"loaded), so its {sp('fp16'):.2f}x is a measure of how noisy these speeds are.")
Markdown(" ".join(text))
""")
md("""
Finally, the yardstick computed here on the first validation stories, so this page checks what the file says
(the full 1,000-story numbers are the table's):
""")
code("""
stories = yardstick_stories()[:40]
live = {s: bits_per_byte(Q.quantize_model(model, s), stories, encode_fn=tok.encode_ordinary, eot=eot)
        for s in ("fp32", "int8")}
for s, b in live.items():
    print(f"{s:5s} {b:.4f} bits/byte on the first {len(stories)} validation stories")
print(f"int8 vs fp32 here: {100 * (live['int8'] / live['fp32'] - 1):+.2f}%")
""")
md("""
## 13.9 The storyteller in one C file

The PyTorch modules above turn the integers back into floats at every step, so they read *more*, not less. To see
what the smaller weights buy, the storyteller is written out once more, by hand, in one C file:
`storylib/c/storyteller.c` (in the spirit of llama2.c's `run.c` and `runq.c`), with only the C library, its maths
library and, where the compiler has it, OpenMP to share each matmul's rows between the cores. It reads one binary
file that holds the model and its tokenizer, encodes a prompt with the same BPE as `storylib.tokenizer`, runs
Chapter 12's cached forward pass one token at a time, samples, and prints the story as it comes:

```bash
llm101n export-c models/storyteller story_int8.bin --dtype int8   # storylib/export_c.py
bash scripts/build_c.sh                           # cc -O3 -march=native -fopenmp -> build/storyteller
build/storyteller story_int8.bin -i "Once upon a time" -n 256 -t 0.8 -p 0.9 -s 42
```

**The file.** A 256-byte header (a magic string, a version, the dtype and group size, the model's shape and the
tokenizer's counts), then every tensor in a fixed order, each at a multiple of 64 bytes, then the tokenizer. The
int8 file is Chapter 13's `int8-g64-dyn`, made by `quantize_model` itself: int8 weights with one scale per group of
64 inputs. The program checks every size against the file's length before it reads anything, so a short or
foreign file is an error message, not a crash. Writing both files and reading one header back:
""")
code("""
import struct
import subprocess
import tempfile
from pathlib import Path

from storylib import export_c
from storylib.kvcache import generate_stream

work = Path(tempfile.mkdtemp(prefix="ch13_c_"))
files = {d: export_c.export(model, tok, work / f"story_{d}.bin", d) for d in ("fp32", "int8")}
head = files["int8"].read_bytes()[:64]
names = ("version", "dtype", "group", "n_layer", "n_head", "n_embd", "vocab_size", "block_size", "n_merges",
         "n_specials", "letter_ranges", "number_ranges", "space_ranges")
print(head[:8], dict(zip(names, struct.unpack("<13i", head[8:60]))))
for d, f in files.items():
    print(f"{d}: {f.stat().st_size / 1e6:.1f} MB")
""")
code("""
c_src = export_c.C_SOURCE.read_text()


def c_function(name, nth=0):
    \"\"\"A function of storyteller.c with the comment above it (nth: which of several definitions).\"\"\"
    lines = c_src.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^static [^;=]*\\b{name}\\(", line)]
    start = end = starts[nth]
    while start > 0 and lines[start - 1].startswith("//"):
        start -= 1
    while lines[end] != "}":
        end += 1
    return "\\n".join(lines[start : end + 1])


def show_c(*names):
    return Markdown("\\n\\n".join(f"```c\\n{c_function(*n) if isinstance(n, tuple) else c_function(n)}\\n```"
                                  for n in names))


show_c("forward")
""")
md("""
**The forward pass** above is `forward_cached` for one token, line for line: the two embeddings, then in every
block a LayerNorm, `c_attn`, the new key and value written into the cache at `pos`, each head's softmax over
positions 0 to `pos`, `c_proj`, and the MLP with GPT-2's tanh GELU; at the end `ln_f` and the tied `lm_head`.
Every matmul goes through `linear`, which picks the arithmetic by the file's dtype.

**The int8 matmul** is §13.4 in C. The input of each matmul is quantized as it arrives, one absmax scale per group
of 64 values (rounding half to even, as `torch.round`); each group's integer products are summed exactly in
int32, and only then multiplied by the two scales. `dot_i8` is that integer dot product: a plain loop that the
compiler vectorizes, or, on a CPU with AVX2, the instructions that multiply 32 pairs of bytes at a time.
""")
code("""
show_c("quantize_groups", "matmul_i8", ("dot_i8", 1))
""")
md("""
**Sampling** is Chapter 12's `sample`: temperature 0 is the argmax; otherwise the softmax of the logits divided
by the temperature, cut to the nucleus of the most probable tokens whose probabilities reach `top_p`, and a draw
from a seeded generator (xorshift, so the same seed tells the same story; not the same story as PyTorch's
generator, which draws differently).
""")
code("""
show_c("sample")
""")
md("""
Built and run: greedy decoding of Chapter 12's prompt, by the C program and by storylib, on the same weights (the
int8 storylib model is `export_c.c_model`, the very integers and scales of the file):
""")
code("""
binary = export_c.build(work / "storyteller")
n_new = 60
for d, f in files.items():
    c_text = subprocess.run([str(binary), str(f), "-i", GOLDEN_PROMPT, "-n", str(n_new), "-t", "0", "-q"],
                            capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1"}).stdout
    py_text = GOLDEN_PROMPT + "".join(generate_stream(export_c.c_model(model, d), tok, ids, n_new, temperature=0.0))
    print(f"{d}  C:       {c_text.strip()}".replace("\\n", " "))
    print(f"{d}  storylib: {py_text}".replace("\\n", " "))
    print(f"{d}  the same: {c_text == py_text + chr(10)}\\n")
""")
md("""
`tests/test_storyteller_c.py` checks this on several prompts, the logits of a random GPT with odd sizes and of the
storyteller (fp32 within 10⁻⁴; int8 within a few tenths, see below), the tokenizer on hard strings, corrupt and
truncated files, and a build with the address and undefined-behaviour sanitizers. In int8, C and PyTorch sum in
different orders, so an activation that lies almost exactly between two integers can round one way in C and the
other in PyTorch; from there on the logits differ by about a tenth. storylib's own prefill and token-by-token
decoding differ in the same way. Only where two tokens are that close can the greedy choices part.

### How fast, and what bounds it

`bench/c_speed.py` runs, in one go on the book's two CPU cores, storylib's PyTorch decoding (fp32, KV cache) and
the C program on the fp32 and int8 files, 256 greedy tokens each, and measures in the same run the machine's
memory bandwidth (copying a 256 MB array) and its fp32 matmul peak (`torch.mm`). A decode step reads every weight
once and does two flops with it, so each engine has two ceilings: bandwidth / bytes per token, and peak / flops
per token. From `bench/results/c_speed.json`:
""")
code("""
cs = json.loads(course_file("bench/results/c_speed.json").read_text())
eng = cs["engines"]
cm = cs["machine"]
lines = ["| engine | tokens/s | vs PyTorch | peak memory (MB) | model (MB) | bytes read / token (MB) | GB/s | "
         "ceiling: bandwidth | ceiling: matmul peak |", "|---|---|---|---|---|---|---|---|---|"]
for r in eng:
    lines.append(f"| {r['engine']} | {r['tokens_per_s']:.0f} | {r['speedup_vs_pytorch_fp32']:.1f}x | "
                 f"{r['peak_rss_bytes'] / 1e6:.0f} | {r['model_bytes'] / 1e6:.1f} | "
                 f"{r['bytes_read_per_token'] / 1e6:.1f} | "
                 f"{r['achieved_gb_s']:.1f} | {r['tokens_per_s_at_bandwidth']:.0f} tokens/s | "
                 f"{r['tokens_per_s_at_matmul_peak']:.0f} tokens/s |")
Markdown("\\n".join(lines) + f"\\n\\n{cm['cpu']}, {cm['threads']} threads, {cm['cc']}, torch {cm['torch']}, "
         f"{cm['date'][:10]}; memory bandwidth {cs['bandwidth_used_gb_s']:.1f} GB/s (copy), fp32 matmul peak "
         f"{cs['matmul_peak_gflop_s']:.0f} GFLOP/s; load average {cm['load_average_at_start']:.1f} at the start, "
         f"{cm['load_average_at_end']:.1f} at the end.")
""")
code("""
fig, ax = plt.subplots(1, 2, figsize=(11, 3.3))
names = [r["engine"] for r in eng]
ax[0].barh(names, [r["tokens_per_s"] for r in eng], color=["#90a4ae", "#1565c0", "#2e7d32"])
ax[0].scatter([r["tokens_per_s_at_bandwidth"] for r in eng], names, marker="|", s=400, c="k",
              label="ceiling: memory bandwidth")
ax[0].set_xlabel("tokens/s (greedy decode, 256 tokens)"); ax[0].invert_yaxis(); ax[0].legend(loc="lower right")
ax[1].barh(names, [r["peak_rss_bytes"] / 1e6 for r in eng], color="#90a4ae")
ax[1].set_xlabel("peak resident memory (MB)"); ax[1].invert_yaxis()
plt.tight_layout(); plt.show()
""")
code("""
by_e = {r["engine"]: r for r in eng}
c32, c8, pt = by_e["c-fp32"], by_e["c-int8"], by_e["pytorch-fp32"]
bw = cs["bandwidth_used_gb_s"]


def share(r, key):
    return 100 * r["tokens_per_s"] / r[key]


mem = [100 * r["peak_rss_bytes"] / pt["peak_rss_bytes"] for r in (c32, c8)]
text = [f"The C program writes {c32['speedup_vs_pytorch_fp32']:.1f}x as many tokens a second as PyTorch in fp32 "
        f"and {c8['speedup_vs_pytorch_fp32']:.1f}x in int8, in {mem[0]:.0f}% and {mem[1]:.0f}% of PyTorch's peak "
        "memory (PyTorch's includes the library itself). PyTorch runs the same arithmetic as many small operator "
        "calls a step, each with its own overhead; it reaches "
        f"{share(pt, 'tokens_per_s_at_bandwidth'):.0f}% of what the memory could deliver."]
for r in (c32, c8):
    if 0.95 * bw <= r["achieved_gb_s"] <= 1.05 * bw:
        text.append(f"{r['engine']} reads its {r['bytes_read_per_token'] / 1e6:.1f} MB a token at "
                    f"{r['achieved_gb_s']:.1f} GB/s, the machine's measured copy bandwidth: memory sets its speed "
                    f"(it uses {share(r, 'tokens_per_s_at_matmul_peak'):.0f}% of the compute ceiling).")
    elif r["achieved_gb_s"] > bw:
        text.append(f"{r['engine']} reads its {r['bytes_read_per_token'] / 1e6:.1f} MB a token at "
                    f"{r['achieved_gb_s']:.1f} GB/s, faster than the measured copy ({bw:.1f} GB/s): part of its "
                    "weights stay in the CPU's caches from one token to the next; it reaches "
                    f"{share(r, 'tokens_per_s_at_matmul_peak'):.0f}% of the compute ceiling.")
    else:
        text.append(f"{r['engine']} reads {r['bytes_read_per_token'] / 1e6:.1f} MB a token at "
                    f"{r['achieved_gb_s']:.1f} GB/s: {share(r, 'tokens_per_s_at_bandwidth'):.0f}% of its bandwidth "
                    f"ceiling and {share(r, 'tokens_per_s_at_matmul_peak'):.0f}% of its compute ceiling.")
if cm["load_average_at_start"] > cm["cores"]:
    text.append(f"The machine was shared while the bench ran (load average {cm['load_average_at_start']:.1f} on "
                f"{cm['cores']} cores): threads that wait for a busy core slow every engine, the C program's two "
                "threads, which meet at every matmul, most; a quiet machine gives steadier and higher speeds, "
                "and `python bench/c_speed.py` measures them again.")
Markdown(" ".join(text))
""")
md("""
## The scoreboard

Quantization changes what the storyteller predicts, a little: the int8 storyteller that the C program runs (int8
weights in groups of 64, int8 activations) scores the bits per byte of `bench/results/quantize_cpu.json` (§13.8,
all 1,000 validation stories), and joins the board:
""")
code("""
from storylib import scoreboard

scoreboard.show(13, "storyteller, int8 weights and activations (groups of 64)", by["int8-g64-dyn"]["bpb"],
                page="ch13_quantization.ipynb")
""")
md("""
## What we built

- absmax and zero-point quantization, per tensor, per channel and per group, with their error bound $s/2$;
- integer dot products with int32 sums and scales applied at the end; dynamic activation quantization;
- int4 packed two to a byte, and `QuantLinear`, which stands in for `nn.Linear`;
- GPTQ, from its Hessian to the column loop with error feedback through the Cholesky factor of $H^{-1}$;
- an int8 KV cache, and the storyteller measured in every form;
- the storyteller in one C file, fp32 and int8, with integer dot products: where the smaller weights finally buy
  speed.
""")

if __name__ == "__main__":
    print(page.write())

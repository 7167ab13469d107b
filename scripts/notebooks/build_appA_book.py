"""Write book/appendix_a_tensors.ipynb, Appendix A's page (the book executes it at build time, on CPU).

    .venv/bin/python scripts/notebooks/build_appA_book.py

Its exercises (storylib/strided.py, appA.*) are graded in exercises/appA_tensors.ipynb (build_appA_tensors.py).
The speed measurements of §A.8 run in the page itself, baselines in the same cell, in a few seconds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("appendix_a_tensors", notebook="appA_tensors")
md, code, ex = page.md, page.code, page.exercise

md("""
# Tensors: shapes, views and strides

Every chapter reshapes tensors. Chapter 4 splits the channels of a `(B, T, C)` tensor into heads with
`.view(B, T, n_head, head_size).transpose(1, 2)` and puts them back with `.transpose(1, 2).contiguous().view(B, T,
C)`; Chapter 3 indexes an embedding table with a whole tensor of ids; every bias is *broadcast* over a batch. When
one of these goes wrong, PyTorch says things like *"view size is not compatible with input tensor's size and
stride"*. This appendix opens the box: a tensor is a flat block of memory and three numbers that say how to read
it, and almost every reshaping operation changes only those numbers.

We build the box ourselves in `storylib/strided.py`: a tiny N-dimensional array over a Python list, with the same
rules as PyTorch, and check it against PyTorch as we go.
""")
code("""
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

from bench.machine import cpu_name
from storylib import strided as S
from storylib.widgets import StrideExplorer

torch.set_num_threads(2)  # the book is built on two CPU cores
""")
md("""
## A.1 A buffer and three numbers

`torch.arange(12).view(3, 4)` is twelve integers in one row of memory, its *storage*. The tensor on top of it
records a **shape** `(3, 4)`, a **stride** per dimension (how many elements to step in memory to move one index
along that dimension) and a **storage offset** (where element `[0, 0]` lives):
""")
code("""
x = torch.arange(12).view(3, 4)
print("shape", tuple(x.shape), " stride", x.stride(), " offset", x.storage_offset())
print("the storage:", x.untyped_storage().nbytes() // x.element_size(), "numbers:", x.flatten().tolist())
s = S.Strided.arange(3, 4)
print(s, " element [2, 1] =", s.item(2, 1), "=", int(x[2, 1]))
""")
md("""
Moving one row down skips 4 numbers, one column right skips 1. Below, try it yourself: pick a start shape and
apply views. The buffer holds `0, 1, 2, ...`, so each element's value *is* the position it reads (until a
`contiguous` or `reshape` copies); it gets a colour by its place in the tensor, row by row, and the buffer below
wears the same colours. Transpose, and the colours in the buffer scramble while the buffer does not move; expand,
and one position is read many times; slice with a step, and some positions are read by no one.
""")
code("""
StrideExplorer((3, 4), ops=[{"op": "transpose", "dims": [0, 1]}])
""")
md("""
## A.2 Strides and offsets

An element's address is a dot product of its index with the strides:

$$
\\operatorname{addr}(i_0, \\dots, i_{n-1}) = \\text{offset} + \\sum_{k=0}^{n-1} i_k\\, s_k .
$$

A freshly made tensor is **contiguous** (row-major, "C order"): the last index moves fastest, and each stride is
the product of the sizes after it,

$$
s_{n-1} = 1, \\qquad s_k = s_{k+1}\\, d_{k+1},
$$

so `(2, 3, 4)` has strides `(12, 4, 1)` and every address from 0 to 23 is used exactly once.
""")
ex("appA.strides", "The strides of a fresh row-major tensor of a given shape (a size-0 dimension counts as 1).")
ex("appA.offset", "Where element `index` lives: the offset plus each index times its dimension's stride.")
code("""
for shape in [(5,), (3, 4), (2, 3, 4), (4, 1, 3, 2)]:
    ours = S.contiguous_strides(shape)
    print(f"{str(shape):14} strides {str(ours):16} torch: {torch.empty(shape).stride()}")
t = torch.arange(24).view(2, 3, 4)
print("element [1, 2, 3] lives at", S.flat_index((1, 2, 3), t.stride()), "and holds", int(t[1, 2, 3]))
""")
md("""
## A.3 Transpose is a stride swap

To transpose a matrix, nothing needs to move: swap the two sizes and the two strides, and element `[j, i]` of the
new tensor reads what `[i, j]` of the old one read. `x.t()` shares `x`'s storage (the same `data_ptr`), and is no
longer contiguous: walking it row by row jumps through memory.

$$
\\text{shape } (3, 4),\\ \\text{strides } (4, 1) \\quad\\xrightarrow{\\ \\text{transpose}\\ }\\quad
\\text{shape } (4, 3),\\ \\text{strides } (1, 4).
$$

`permute` is the same for any reordering of the dimensions: Chapter 4's `(B, T, n_head, head_size)` →
`(B, n_head, T, head_size)` reorders strides, moves no number.
""")
ex("appA.transpose", "Swap two dimensions of a `Strided`: the same buffer and offset, sizes and strides swapped.")
code("""
xt = x.t()
print("x.t():", tuple(xt.shape), xt.stride(), " same storage:", xt.data_ptr() == x.data_ptr(),
      " contiguous:", xt.is_contiguous())
st = S.Strided.arange(3, 4).transpose(0, 1)
print("ours: ", st, " contiguous:", st.is_contiguous(), " equal:", st.tolist() == xt.tolist())
B, T, nh, hs = 2, 5, 3, 4
q = torch.empty(B, T, nh * hs).view(B, T, nh, hs)
print("heads: (B, T, nh, hs)", q.stride(), "-> transpose(1, 2)", q.transpose(1, 2).stride())
""")
md("""
## A.4 Slicing is an offset and a bigger stride

`x[1:, ::2]` starts at element `[1, 0]` (the offset moves 1 × 4 numbers) and steps two columns at a time (the column
stride doubles). Indexing with an integer, `x[1]`, moves the offset and drops the dimension. Still no copy.
""")
code("""
for key in [(slice(1, None), slice(None, None, 2)), (1,), (slice(None), 3)]:
    v, ours = x[key], S.Strided.arange(3, 4)[key]
    print(f"{str(key):42} shape {tuple(v.shape)!s:7} stride {v.stride()!s:8} offset {v.storage_offset()}   "
          f"ours: {ours.shape} {ours.strides} {ours.offset}")
""")
md("""
## A.5 `view` or `reshape`: when can a new shape share the memory?

`view` reinterprets the same elements, in the same row-major order, under a new shape, without copying. That
works when every new dimension can be given *one* stride that reaches its elements. PyTorch's rule: split the old
dimensions, from the right, into **chunks** — runs of neighbours whose memory has no gaps between them
($s_{k-1} = s_k\\, d_k$). A new shape is a view when its dimensions split or merge old ones only *within* a chunk;
a new dimension that would straddle two chunks would need two different steps, and no single stride can do it.
Size-1 dimensions never matter.

- `x.view(2, 6)`, `x.view(12)`: `x` is one chunk, anything goes.
- `x.t().view(12)`: the transpose's dimensions have strides `(1, 4)`; no chunk spans both, so flattening them
  is impossible. `x.t().reshape(12)` does what `view` cannot: it copies into a fresh contiguous buffer first.
- `x[:, :2].view(6)`: the rows are 4 apart but only 2 long — a gap; `x[:, :2].view(3, 2, 1)` is fine.
""")
ex("appA.view", "PyTorch's view rule: the strides of the new shape when it can be a view, else `None`.")
code("""
def try_view(t, shape):
    try:
        v = t.view(shape)
        return f"view: strides {v.stride()}"
    except RuntimeError:
        return "view impossible"

for name, t in [("x", x), ("x.t()", x.t()), ("x[:, :2]", x[:, :2]), ("x[::2]", x[::2])]:
    for shape in [(t.numel(),), (t.shape[0], -1, 1)]:
        ours = S.view_strides(t.shape, t.stride(), S.infer_shape(shape, t.numel()))
        print(f"{name:9} {tuple(t.shape)!s:7} {t.stride()!s:8} -> {shape!s:11} torch: {try_view(t, shape):24} "
              f"ours: {ours}")
r = x.t().reshape(12)
print("x.t().reshape(12) shares x's storage:", r.data_ptr() == x.data_ptr(), "(a copy)")
""")
md("""
## A.6 Broadcasting is a stride of 0

Adding a bias `b` of shape `(C,)` to activations of shape `(B, T, C)` works because both are *broadcast* to a
common shape: align the shapes on the right; in each position the sizes must agree or one of them be 1 (a missing
dimension counts as 1). The size-1 side is then read again and again — which, with strides, costs nothing: give
that dimension **stride 0**, and every index along it lands on the same address. `expand` does exactly this,
so `b.expand(B, T, C)` is a `(B, T, C)` tensor that still holds `C` numbers.
""")
ex("appA.expand", "The strides of `expand`: new leading dimensions and stretched size-1 dimensions read the same "
   "memory again (stride 0).")
code("""
b = torch.arange(4.0)
big = b.expand(1000, 50, 4)
print("expanded", tuple(big.shape), "strides", big.stride(), "storage", big.untyped_storage().nbytes(), "bytes,",
      "not", big.numel() * 4)
print("ours:", S.expand_strides((4,), (1,), (1000, 50, 4)))
print("broadcast_shapes((3, 1), (4,)) =", S.broadcast_shapes((3, 1), (4,)),
      " torch:", tuple(torch.broadcast_shapes((3, 1), (4,))))
""")
md("""
## A.7 `contiguous`: when the layout must change

`t.contiguous()` returns `t` itself when it is already row-major without gaps, and otherwise a **copy**: a new
buffer holding the elements in row-major order of their index, with fresh contiguous strides. Chapter 4's
`y.transpose(1, 2).contiguous().view(B, T, C)` needs it: after the transpose, a token's heads are no longer next
to each other in memory, so merging `(n_head, head_size)` into `C` is not a view (A.5) until the copy puts them
side by side. (`reshape` would copy for us; writing `.contiguous()` makes the copy visible.)
""")
ex("appA.contiguous", "`self` if already contiguous; else copy the elements in index order into a new buffer.")
code("""
y = torch.arange(2 * 3 * 5 * 4).view(2, 3, 5, 4)  # (B, n_head, T, head_size)
merged = y.transpose(1, 2)  # (B, T, n_head, head_size): not contiguous
print("after transpose:", merged.stride(), "contiguous:", merged.is_contiguous(), "| view as (B, T, C):",
      try_view(merged, (2, 5, 12)))
c = merged.contiguous()
print("after contiguous:", c.stride(), "| view as (B, T, C):", try_view(c, (2, 5, 12)))
ours = S.Strided.arange(2, 3, 5, 4).transpose(1, 2).contiguous().view(2, 5, 12)
print("ours equal torch's:", ours.tolist() == c.view(2, 5, 12).tolist())
""")
md("""
## A.8 What strides cost: cache lines

Strides make views free, but the *reads* are not: memory reaches the processor in **cache lines** of 64 bytes
(16 float32 numbers). Reading a contiguous row uses every number of every line fetched; reading a column of a
row-major matrix uses one number per line and throws the other 15 away. The cell below measures it on this
machine, on buffers larger than its caches:

1. the time per element to sum every $s$-th number of a 64 MB float32 buffer (`buf[::s].sum()`), for strides
   $s$ = 1, 2, 4, ..., 128;
2. a 4096 × 4096 matrix: summing every row, then every column, one at a time (`m[i].sum()` against
   `m[:, i].sum()`), and copying it into a contiguous tensor as it is, then transposed (`out.copy_(m.t())`).
""")
code("""
def best_of(fn, repeat=5):
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

buf = torch.randn(1 << 24)  # 64 MB
strides = [1, 2, 4, 8, 16, 32, 64, 128]
ns_per = [best_of(lambda v=buf[::s]: v.sum()) / buf[::s].numel() * 1e9 for s in strides]

m, out = torch.randn(4096, 4096), torch.empty(4096, 4096)
rows = best_of(lambda: [m[i].sum() for i in range(4096)], 3)
cols = best_of(lambda: [m[:, i].sum() for i in range(4096)], 3)
copy = best_of(lambda: out.copy_(m), 3)
copy_t = best_of(lambda: out.copy_(m.t()), 3)

fig, ax = plt.subplots(1, 2, figsize=(11, 3.3))
ax[0].plot(strides, ns_per, "o-", color="#1565c0")
ax[0].axvline(16, color="#999", ls="--")
ax[0].set_yscale("log")
ax[0].text(17, ns_per[0] * 1.5, "from here on,\\none 64-byte line\\nper element", fontsize=9)
ax[0].set_xscale("log", base=2); ax[0].set_xlabel("stride s (float32 elements)"); ax[0].set_ylabel("ns per element")
ax[0].set_title("buf[::s].sum() on a 64 MB buffer")
labels = ["4096 row sums", "4096 column sums", "copy m", "copy m.t()"]
ax[1].barh(labels, [1e3 * v for v in (rows, cols, copy, copy_t)], color=["#1565c0", "#e65100", "#1565c0", "#e65100"])
ax[1].set_xlabel("ms (best of 3)"); ax[1].set_title("a 4096 × 4096 float32 matrix")
plt.tight_layout(); plt.show()
Markdown(f"On this machine ({cpu_name()}, {torch.get_num_threads()} threads), an element read with stride 16 costs "
         f"{ns_per[4] / ns_per[0]:.0f} times as much as one read with stride 1, and with stride 128 "
         f"{ns_per[-1] / ns_per[0]:.0f} times. The column sums take {cols / rows:.1f} times as long as the row "
         f"sums, and copying the transpose {copy_t / copy:.1f} times as long as copying the matrix as it is: the same "
         "numbers, read in another order.")
""")
md("""
This is why layouts matter to the code that reads them. A matrix product in PyTorch accepts transposed inputs and
picks a loop order that reads them well, so `a @ b.t()` needs no `.contiguous()`. A kernel you write yourself
usually assumes contiguous rows: in [Chapter 8's first lab](lab01_map.ipynb) the threads of a warp read
neighbouring addresses so the GPU can serve them with one wide memory transaction (*coalescing*); hand such a kernel
a transposed view and each thread's read lands on its own cache line — or, if the kernel ignores strides, on the
wrong numbers. Calling `.contiguous()` before a custom kernel (or checking `is_contiguous()`) is the cheap
insurance: the copy costs one pass over memory, the price the right-hand bars measure.
""")

if __name__ == "__main__":
    print(page.write())

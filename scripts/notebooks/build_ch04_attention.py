"""Build solutions/ch04_attention.ipynb, the nbgrader source notebook of Chapter 4 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch04_attention", title="Chapter 4 — attention")
nb.markdown(
    """
    In this notebook you write the attention of `storylib/attention.py`, in the order of the book: a softmax
    that never overflows, the causal mask, scaled dot-product attention, the reshapes that split a tensor into
    heads and merge them back, multi-head attention, and sinusoidal positional encodings. Each graded cell runs
    the package tests of one exercise against *your* `storylib`; the book (Chapter 4) explains the ideas and
    the math.

    Shapes: B = batch, H = heads, T = time (positions), C = channels, D = C / H. Every try-it cell compares your
    function with PyTorch's own version where there is one; a difference around 1e-7 (float32) or 1e-15
    (float64) means they agree.
    """
)
nb.code(
    """
    import math

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    """,
    locked=True,
)
nb.exercise(
    "ch04.softmax",
    try_it="""
    x = torch.tensor([[1000.0, 999.0, 998.0], [1.0, float("-inf"), 2.0], [float("-inf")] * 3])
    print(softmax(x))  # no inf, no NaN: the last row is all zeros
    h = torch.tensor([12.0, 11.0, 9.0], dtype=torch.float16)
    print(softmax(h), "vs torch:", torch.softmax(h.double(), -1))
    """,
)
nb.question(
    "ch04_q_shift",
    points=1,
    prompt="""
    Softmax does not change when the same constant is added to every score. Using that, compute by hand (with
    `math.exp`, no torch) `p0`, the weight that softmax gives to the first of the three scores `[1000, 999, 998]`,
    as a Python float. (Naively, `math.exp(1000)` raises OverflowError.)
    """,
    solution="p0 = 1 / (1 + math.exp(-1) + math.exp(-2))",
    test="""
    assert isinstance(p0, float), "p0 should be a Python float"
    assert abs(p0 - torch.softmax(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64), 0)[0].item()) < 1e-12, \\
        "subtract 1000 from every score: softmax([0, -1, -2])[0]"
    """,
)
nb.exercise(
    "ch04.causal_mask",
    try_it="""
    print(causal_mask(5).int())
    """,
)
nb.exercise(
    "ch04.attention",
    try_it="""
    q, k, v = (torch.randn(3, 5, n, d, generator=g) for n, d in [(7, 13), (11, 13), (11, 6)])
    out, w = scaled_dot_product_attention(q, k, v)
    print(out.shape, w.shape, "max diff vs torch:", (out - F.scaled_dot_product_attention(q, k, v)).abs().max().item())
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g) for _ in range(3))
    out, w = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    print("causal, max diff vs torch:", (out - ref).abs().max().item())
    print("weights of query 2 (none for keys 3..8):", w[0, 0, 2].round(decimals=3))
    """,
)
nb.question(
    "ch04_q_scale",
    points=1,
    prompt="""
    The entries of a query q and a key k are independent, with mean 0 and variance 1, and there are D = 64 of
    each. Set `std_raw` to the standard deviation of their dot product q·k, and `std_scaled` to that of
    q·k / sqrt(D), as Python numbers.
    """,
    solution="""
    std_raw = math.sqrt(64)
    std_scaled = 1.0
    """,
    test="""
    assert abs(std_raw - 8) < 1e-9, "q·k is a sum of 64 independent products, each of variance 1"
    assert abs(std_scaled - 1) < 1e-9, "dividing by sqrt(D) divides the standard deviation by sqrt(D)"
    """,
)
nb.exercise(
    "ch04.split_heads",
    try_it="""
    x = torch.arange(12.0).view(1, 2, 6)
    heads = split_heads(x, 3)
    print(heads.shape, heads.stride())
    print(heads[0])  # head h holds channels 2h and 2h + 1 of both positions
    """,
)
nb.exercise(
    "ch04.merge_heads",
    try_it="""
    from storylib.attention import split_heads

    x = torch.randn(2, 5, 12, generator=g)
    print("round trip:", torch.equal(merge_heads(split_heads(x, 4)), x))
    """,
)
nb.exercise(
    "ch04.multihead",
    try_it="""
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 4)
    ref = nn.MultiheadAttention(24, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.qkv.weight)
        ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.proj.weight)
        ref.out_proj.bias.copy_(mha.proj.bias)
    x = torch.randn(2, 10, 24)
    y, w = mha(x, causal=False, need_weights=True)
    ry, _ = ref(x, x, x)
    print(y.shape, w.shape, "max diff vs nn.MultiheadAttention:", (y - ry).abs().max().item())
    """,
)
nb.exercise(
    "ch04.sinusoidal",
    try_it="""
    pe = sinusoidal_positions(50, 16)
    print(pe.shape, pe.dtype)
    print("PE[t]·PE[t+5] for t = 0, 10, 20:", [round(float(pe[t] @ pe[t + 5]), 4) for t in (0, 10, 20)])
    """,
)

if __name__ == "__main__":
    print(nb.write())

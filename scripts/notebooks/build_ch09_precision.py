"""Build solutions/ch09_precision.ipynb, the nbgrader source notebook of Chapter 9 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch09_precision", title="Chapter 9 — Precision: fp32, bf16, fp16, fp8")
nb.markdown(
    """
    In this notebook you write the Chapter 9 part of `storylib/precision.py`: floating-point formats read and
    written bit by bit (any format given by its exponent and mantissa widths, checked against every bit pattern of
    torch's fp16, bf16 and both fp8 formats), stochastic rounding, the memory a training recipe keeps per
    parameter, dynamic loss scaling as `torch.amp.GradScaler` does it, and FP8 casts with a per-tensor scale, from
    the tensor's own amax (current scaling) and from an amax history (delayed scaling).

    Everything runs on a CPU in a few seconds.
    """
)
nb.code(
    """
    import math

    import torch

    from storylib.precision import FORMATS, format_info
    """,
    locked=True,
)
nb.exercise(
    "ch09.decode",
    try_it="""
    # fp16's 0x3c00 is 1.0, 0x7bff its largest value, 0x0001 its smallest subnormal, 0xfc00 -inf
    bits = torch.tensor([0x3C00, 0x7BFF, 0x0001, 0xFC00, 0x7E00])
    print(decode(bits, 5, 10).tolist(), "(expected [1.0, 65504.0, 5.96e-08, -inf, nan])")
    print(decode(torch.tensor([0x7E, 0x7F]), 4, 3, fn=True).tolist(), "(e4m3fn: [448.0, nan])")
    """,
)
nb.exercise(
    "ch09.encode",
    try_it="""
    x = torch.tensor([1.0, 1 + 2**-11, 1 + 3 * 2**-11, 65520.0, -0.0, 1e-8], dtype=torch.float64)
    print([hex(b) for b in encode(x, 5, 10).tolist()])
    print("(expected 0x3c00, 0x3c00 (a tie: to even), 0x3c02, 0x7c00 (inf), 0x8000 (-0), 0x0 (underflow))")
    big = torch.tensor([500.0, math.inf], dtype=torch.float64)
    print(encode(big, 4, 3, fn=True).tolist(), "(e4m3fn saturates: [126, 126])")
    """,
)
nb.exercise(
    "ch09.stochastic_round",
    try_it="""
    x = torch.full((10_000,), 1 + 2**-9, dtype=torch.float64)  # a quarter of the way from 1 to bf16's next value
    r = stochastic_round(x, 8, 7, generator=torch.Generator().manual_seed(0))
    print(sorted(set(r.tolist())), "(expected [1.0, 1.0078125])")
    print(r.mean().item(), "(expected close to", 1 + 2**-9, ")")
    """,
)
nb.exercise(
    "ch09.memory",
    try_it="""
    from storylib.precision import RECIPES

    for name, kw in RECIPES.items():
        print(f"{name:40s}", memory_per_parameter(**kw))
    """,
)
nb.question(
    "ch09_q_adam_bytes",
    points=1,
    prompt="""
    GPT-2 small has 124 million parameters. Trained with AdamW with bf16 weights and gradients, an fp32 master
    copy and fp32 optimizer state, how many bytes do weights, gradients, optimizer state and master copy take
    together (activations not counted)? Set `training_bytes`.
    """,
    solution="training_bytes = 124_000_000 * (2 + 2 + 2 * 4 + 4)",
    test="assert training_bytes == 1_984_000_000, '2 (bf16 weight) + 2 (bf16 grad) + 8 (fp32 moments) + 4 (master)'",
)
nb.exercise(
    "ch09.loss_scaler",
    try_it="""
    scaler = LossScaler(init_scale=2.0**16, growth_interval=2)
    for grads in ([torch.ones(3)], [torch.tensor([1.0, math.inf])], [torch.ones(3)], [torch.ones(3)]):
        out = scaler.step(grads)
        print("skipped" if out is None else out[0].tolist(), "scale now", scaler.scale)
    """,
)
nb.exercise(
    "ch09.fp8_scale",
    try_it="""
    from storylib.precision import E4M3

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * 1e-3
    x_dq, scale = fp8_quantize(x, E4M3)
    normal = x.abs() * scale >= 2.0**-6  # scaled into e4m3's normal range (below it: subnormals, coarser)
    rel = ((x_dq - x).abs() / x.abs())[normal].max().item()
    print("scale", float(scale), " max relative error", rel, "(at most 1/16)")
    """,
)
nb.exercise(
    "ch09.amax_history",
    try_it="""
    ds = DelayedScaling(history_len=3)
    for s in [1.0, 1.0, 10.0, 1.0, 1.0, 1.0, 1.0]:
        x_dq, scale = ds(torch.randn(64) * s)
        print(f"size ×{s:4.1f}   scale {float(scale):8.2f}   amax history {[round(a, 2) for a in ds.history]}")
    """,
)

if __name__ == "__main__":
    print(nb.write())

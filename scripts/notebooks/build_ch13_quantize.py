"""Build solutions/ch13_quantize.ipynb, the nbgrader source notebook of Chapter 13 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch13_quantize", title="Chapter 13 — Quantization")
nb.markdown(
    """
    In this notebook you write `storylib/quantize.py`: symmetric (absmax) and asymmetric (zero-point)
    quantization, scales per group of inputs, an int8 matrix product that sums integers and scales afterwards,
    int4 packed two to a byte, a linear layer that holds integers and dequantizes them on the fly, and the heart of
    GPTQ, which quantizes a layer column by column and hands each column's rounding error to the columns not yet
    quantized.

    The cells use small random tensors (fast); the last cell quantizes the shipped storyteller with *your* code
    and lets it write.
    """
)
nb.code(
    """
    import torch

    torch.manual_seed(0)
    x = torch.randn(4, 10) * torch.randn(4, 10).exp()  # heavy tails, like trained weights
    """,
    locked=True,
)
nb.exercise(
    "ch13.absmax",
    try_it="""
    q, s = quantize_absmax(x, 8, dim=1)  # one scale per row
    print(q[0], s[0])
    print("max |x - s q| / (s / 2):", ((x - s * q) .abs() / (s / 2)).max().item(), "(expected <= 1)")
    """,
)
nb.exercise(
    "ch13.zeropoint",
    try_it="""
    from storylib.quantize import dequantize

    y = x.abs() + 1.0  # all positive: symmetric int8 would waste the negative half of its range
    q, s, z = quantize_zeropoint(y, 8, dim=1)
    print(q.min().item(), q.max().item(), z.flatten().tolist())
    print("max error / (s / 2):", ((y - dequantize(q, s, z)).abs() / (s / 2)).max().item())
    """,
)
nb.exercise(
    "ch13.groupwise",
    try_it="""
    w = torch.randn(8, 70)
    w[:, 3] *= 30  # an outlier input
    q, s = quantize_groupwise(w, 4, 32)
    print(q.shape, s.shape, "(expected (8, 70) and (8, 3))")
    """,
)
nb.exercise(
    "ch13.int8_matmul",
    try_it="""
    from storylib.quantize import quantize_absmax

    a, b = torch.randn(3, 64), torch.randn(5, 64)
    (aq, sa), (bq, sb) = quantize_absmax(a, 8, dim=1), quantize_absmax(b, 8, dim=1)
    print((int8_matmul(aq, sa, bq, sb) - a @ b.T).abs().max().item(), "(small)")
    """,
)
nb.exercise(
    "ch13.pack_int4",
    try_it="""
    print(pack_int4(torch.tensor([1, -1, 7], dtype=torch.int8)), "(expected [241, 7])")
    """,
)
nb.exercise(
    "ch13.unpack_int4",
    try_it="""
    print(unpack_int4(torch.tensor([241, 7], dtype=torch.uint8), 3), "(expected [1, -1, 7])")
    """,
)
nb.question(
    "ch13_q_int4_bytes",
    points=1,
    prompt="""
    A matrix of 288 × 1152 weights is stored as int4 in groups of 32 inputs, with one fp16 scale per group.
    How many bytes does it take? Set `int4_bytes`.
    """,
    solution="int4_bytes = 288 * 1152 // 2 + 288 * (1152 // 32) * 2",
    test="assert int4_bytes == 186_624, 'half a byte a weight, plus 2 bytes for every group of 32 weights'",
)
nb.exercise(
    "ch13.qlinear",
    try_it="""
    lin = torch.nn.Linear(40, 24)
    layer = QuantLinear.from_linear(lin, bits=4, group_size=8)
    x = torch.randn(5, 40)
    print("max |int4 - float|:", (layer(x) - lin(x)).abs().max().item(), " bytes:", layer.qweight.nbytes)
    """,
)
nb.exercise(
    "ch13.gptq_block",
    try_it="""
    from storylib.quantize import gptq, hessian, quantize_groupwise, dequantize_groupwise

    inputs = torch.randn(512, 64, dtype=torch.float64)
    inputs = inputs + 0.8 * inputs.roll(1, dims=1)  # neighbouring inputs move together
    w = torch.randn(16, 64, dtype=torch.float64)
    _, _, w_gptq = gptq(w, hessian(inputs), 4, 16)
    w_rtn = dequantize_groupwise(*quantize_groupwise(w, 4, 16), 16)
    for name, wq in (("round to nearest", w_rtn), ("GPTQ", w_gptq)):
        print(f"{name:17s} output error {(inputs @ (w - wq).T).pow(2).mean().item():.4f}")
    """,
)
nb.markdown(
    """
    ## Your code, the storyteller, 8 bits

    The shipped storyteller with every matrix in int8 (one scale per row), through your `quantize_groupwise`,
    `QuantLinear` and Chapter 12's cache: a quarter of the bytes. Does it still tell the reference story?
    """
)
nb.code(
    """
    from grading.notebook import golden_file
    from storylib.checkpoint import default_storyteller
    from storylib.kvcache import generate_stream
    from storylib.quantize import model_bytes, quantize_model
    from storylib.tokenizer import eot_id

    model, tok = default_storyteller()
    int8 = quantize_model(model, "int8")
    print(f"{model_bytes(model, 'fp32') / 1e6:.1f} MB in fp32, {model_bytes(int8, 'int8') / 1e6:.1f} MB in int8")
    story = "".join(generate_stream(int8, tok, [eot_id(tok), *tok.encode_ordinary("Once upon a time")], 60))
    print(story)
    print("\\nthe same story as the float storyteller's:", story == golden_file("ch12_once_upon_a_time.txt"))
    """,
    locked=True,
)

if __name__ == "__main__":
    print(nb.write())

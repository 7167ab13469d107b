# ruff: noqa: E501  (the strings below are notebook cells, wrapped as they read best in the notebook)
"""Build solutions/ch08_device.ipynb, the nbgrader source notebook of Chapter 8's cuda_labs (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch08_device", title="Chapter 8 — the device: GPU kernels in numba.cuda")
nb.markdown(
    """
    In this notebook you write the kernels of `cuda_labs/`, lab by lab: map and friends, reductions, softmax,
    layernorm, the matmul ladder, fused attention and fused AdamW. Without a GPU they run on numba's CUDA
    simulator (every thread a Python thread), so the cells use small, odd sizes; on a GPU the same code runs
    for real (`python -m cuda_labs.bench`). The graded cells run the package tests of one exercise against
    *your* `cuda_labs`.
    """
)
nb.code(
    """
    import numpy as np

    rng = np.random.default_rng(0)
    """,
    locked=True,
)
TRY = {
    "lab01.map": "x = rng.standard_normal(21).astype(np.float32); out = np.full_like(x, np.nan)\n"
                 "axpb_kernel[3, 8](x, np.float32(2), np.float32(1), out); print(out[:5], 2 * x[:5] + 1)",
    "lab01.zip": "x, y = rng.standard_normal((2, 21)).astype(np.float32); out = np.full_like(x, np.nan)\n"
                 "add_kernel[3, 8](x, y, out); print(np.abs(out - (x + y)).max())",
    "lab01.grid2d": "from cuda_labs.lab01_map import add_bias\n"
                    "X = rng.standard_normal((5, 7)).astype(np.float32); b = np.arange(7, dtype=np.float32)\n"
                    "out = np.full_like(X, np.nan); add_bias(X, b, out, block=(4, 4)); print(np.abs(out - (X + b)).max())",
    "lab01.gridstride": "from cuda_labs.lab01_map import gelu, gelu_reference\n"
                        "x = rng.standard_normal(37).astype(np.float32); out = np.full_like(x, np.nan)\n"
                        "gelu(x, out, blocks=2, threads=8); print(np.abs(out - gelu_reference(x)).max())",
    "lab02.shared_sum": "from cuda_labs.lab02_reduce import sum_shared\n"
                        "x = rng.standard_normal(29).astype(np.float32)\n"
                        "print(sum_shared(x, blocks=3, threads=8).copy_to_host(), x.sum())",
    "lab02.warp_sum": "from cuda_labs.lab02_reduce import sum_shuffle\n"
                      "x = rng.standard_normal(61).astype(np.float32)\n"
                      "print(sum_shuffle(x, blocks=1, threads=64).copy_to_host(), x.sum())",
    "lab02.scan": "from cuda_labs.lab02_reduce import prefix_sum\n"
                  "x = rng.standard_normal(29).astype(np.float32); out = np.full_like(x, np.nan)\n"
                  "prefix_sum(x, out, threads=8); print(np.abs(out - np.cumsum(x)).max())",
    "lab03.naive": "from cuda_labs.lab03_softmax import softmax_naive, softmax_reference\n"
                   "x = rng.standard_normal((5, 9)).astype(np.float32); out = np.full_like(x, np.nan)\n"
                   "softmax_naive(x, out, threads=4); print(np.abs(out - softmax_reference(x)).max())",
    "lab03.merge": "from cuda_labs.lab03_softmax import softmax_online, softmax_reference\n"
                   "x = rng.standard_normal((2, 29)).astype(np.float32); x[:, 5:] = -np.inf\n"
                   "out = np.full_like(x, np.nan); softmax_online(x, out, threads=32)\n"
                   "print(np.abs(out - softmax_reference(x)).max())",
    "lab03.online": "from cuda_labs.lab03_softmax import softmax_online, softmax_reference\n"
                    "x = rng.standard_normal((2, 150)).astype(np.float32); out = np.full_like(x, np.nan)\n"
                    "softmax_online(x, out, threads=32); print(np.abs(out - softmax_reference(x)).max())",
    "lab04.forward": "from cuda_labs.lab04_layernorm import layernorm_forward, layernorm_reference\n"
                     "x = rng.standard_normal((3, 29)).astype(np.float32); w = np.ones(29, np.float32)\n"
                     "b = np.zeros(29, np.float32); y = np.full_like(x, np.nan)\n"
                     "mean, rstd = np.zeros(3, np.float32), np.zeros(3, np.float32)\n"
                     "layernorm_forward(x, w, b, y, mean, rstd, threads=32)\n"
                     "print(np.abs(y - layernorm_reference(x, w, b)[0]).max())",
    "lab04.backward": "# see grading/tests/test_lab04_layernorm.py: dx is compared with torch.autograd in float64",
    "lab05.naive": "from cuda_labs.lab05_matmul import matmul_naive\n"
                   "A, B = rng.standard_normal((2, 9, 9)).astype(np.float32); C = np.full((9, 9), np.nan, np.float32)\n"
                   "matmul_naive(A, B, C, block=(4, 4)); print(np.abs(C - A @ B).max())",
    "lab05.coalesced": "from cuda_labs.lab05_matmul import matmul_coalesced\n"
                       "A, B = rng.standard_normal((2, 9, 9)).astype(np.float32); C = np.full((9, 9), np.nan, np.float32)\n"
                       "matmul_coalesced(A, B, C, block=(4, 4)); print(np.abs(C - A @ B).max())",
    "lab05.tiled": "from cuda_labs.lab05_matmul import matmul_tiled\n"
                   "A, B = rng.standard_normal((2, 9, 9)).astype(np.float32); C = np.full((9, 9), np.nan, np.float32)\n"
                   "matmul_tiled(A, B, C, tile=4); print(np.abs(C - A @ B).max())",
    "lab05.regblock": "from cuda_labs.lab05_matmul import matmul_regblock\n"
                      "A, B = rng.standard_normal((2, 19, 19)).astype(np.float32); C = np.full((19, 19), np.nan, np.float32)\n"
                      "matmul_regblock(A, B, C, BM=16, BN=16, BK=4, TM=4, TN=4); print(np.abs(C - A @ B).max())",
    "lab05.vectorized": "from cuda_labs.lab05_matmul import matmul_vectorized\n"
                        "A, B = rng.standard_normal((2, 19, 19)).astype(np.float32); C = np.full((19, 19), np.nan, np.float32)\n"
                        "matmul_vectorized(A, B, C, BM=16, BN=16, BK=4, TM=4, TN=4); print(np.abs(C - A @ B).max())",
    "lab06.scores": "# scores_kernel is launched by attention_naive; see grading/tests/test_lab06_attention.py",
    "lab06.flash": "from cuda_labs.lab06_attention import attention_flash, attention_reference\n"
                   "Q, K, V = rng.standard_normal((3, 1, 13, 8)).astype(np.float32); O = np.full_like(Q, np.nan)\n"
                   "attention_flash(Q, K, V, O, BR=8, BC=4); print(np.abs(O - attention_reference(Q, K, V)).max())",
    "lab07.adamw": "from cuda_labs.lab07_adamw import adamw_step\n"
                   "p, g = rng.standard_normal((2, 37)).astype(np.float32); m, v = np.zeros((2, 37), np.float32)\n"
                   "adamw_step(p, g, m, v, step=1, lr=0.01, threads=16); print(p[:4])",
}
for ex_id, try_it in TRY.items():
    nb.exercise(ex_id, try_it=try_it)
nb.question(
    "ch08_q_intensity",
    points=1,
    prompt="""
    An fp32 matmul of two n×n matrices does 2n³ flops and must move at least 3·4n² bytes. What is its arithmetic
    intensity (flop per byte) at n = 4096? Set `intensity`.
    """,
    solution="intensity = 2 * 4096**3 / (3 * 4 * 4096**2)",
    test="assert abs(intensity - 4096 / 6) < 1e-6, '2n³ / 12n² = n / 6'",
)
nb.write()

# ruff: noqa: E501  (the strings below are notebook cells, wrapped as they read best in the book)
"""Write book/ch08_device.ipynb and the lab pages book/lab0N_*.ipynb (unexecuted; the book build runs them).

    .venv/bin/python scripts/notebooks/build_ch08_book.py
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import write_notebook  # noqa: E402

SETUP = "%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt\nfrom cuda_labs import plots\nR = plots.load()"


def notebook(cells: list[tuple[str, str]], name: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata.update(kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
                       language_info={"name": "python"})
    for kind, text in cells:
        text = textwrap.dedent(text).strip()
        nb.cells.append(nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text))
    return write_notebook(nb, Path("book") / f"{name}.ipynb")


def exercise_box(ids: list[str], module: str) -> str:
    rows = "\n".join(f"- `{i}` — open `cuda_labs/{module}.py`, then `llm101n check {i}`" for i in ids)
    return (f":::{{admonition}} Exercises\n{rows}\n\nThe tests run your kernels on your GPU when you have one, else on "
            "numba's CUDA simulator (sizes up to ~32); `--simulator` forces the simulator.\n:::")


CH08 = [
    ("md", """
    # The device: CPU and GPU

    Training a language model is a few kinds of loops over big arrays. This chapter is about the machine that
    runs them: what a CPU core and a GPU streaming multiprocessor (SM) are, where the data lives, why a GPU is
    built for throughput rather than latency, how to time code that runs on it, and the one model — the
    roofline — that tells you whether a kernel is limited by arithmetic or by memory. Every number here was
    measured on an NVIDIA H100 by `cuda_labs/bench.py` and is read from `bench/results/cuda_labs_h100.json`;
    the labs that follow (§8.6–§8.12) write the kernels themselves, in Python, with `numba.cuda`.
    """),
    ("code", SETUP + "\nprint(R['card'], '|', R['sms'], 'SMs | torch', R['torch'], '| numba-cuda', R['numba_cuda'])"),
    ("md", """
    ## A CPU core and a GPU SM

    A CPU core runs one or two threads as fast as it can: deep pipelines, branch prediction, out-of-order
    execution and large caches all exist to cut the *latency* of one instruction stream. A GPU SM instead
    holds up to 2048 threads at once, in groups of 32 called **warps** that execute one instruction for all
    32 lanes together. When a warp waits for memory, the SM switches to another warp in a single cycle: the
    wait is hidden by other work, not avoided. An H100 has 132 SMs, each with 128 fp32 lanes and 4 tensor
    cores; a CPU core has 2 to 4 vector units of 8 or 16 lanes.

    | | CPU core | GPU SM (H100) |
    |---|---|---|
    | threads in flight | 1–2 | up to 2048 (64 warps) |
    | fp32 lanes | 16–32 (AVX-512 FMA) | 128, + tensor cores |
    | switch between threads | OS, microseconds | every cycle, free |
    | fast memory per unit | L1 48 KB, L2 1–2 MB | registers 256 KB, L1/shared 256 KB |

    A kernel is written for **one thread**; the launch `kernel[blocks, threads](...)` says how many copies run.
    Threads of a block share an SM and its shared memory and can meet at a barrier; blocks are independent.
    """),
    ("md", """
    ## The memory hierarchy

    Registers (per thread), shared memory (per block, on the SM), the L2 cache (50 MB, shared by all SMs) and
    HBM device memory (80 GB at ~3 TB/s). Each level down is larger and slower. The rule of all the labs:
    **move each byte from device memory once**, and when threads need the same data, stage it in shared memory
    or registers. Memory moves in 32-byte sectors: when the 32 threads of a warp read 32 consecutive floats
    the hardware needs 4 sectors (*coalesced*); when they read 32 floats a row apart it needs 32.
    """),
    ("md", """
    ## Latency and throughput

    Copying a buffer from device memory to device memory: below about a megabyte the time hardly changes — it
    is the fixed cost of starting a kernel and the latency of memory — and only past tens of megabytes does the
    copy reach the bandwidth of the memory. Small work cannot fill a GPU.
    """),
    ("code", """
    copy = R["device"]["copy"]
    size = np.array([c["bytes"] for c in copy]); ms = np.array([c["ms"] for c in copy]); bw = np.array([c["GBps"] for c in copy])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.loglog(size, ms * 1e3, "o-"); a.set_xlabel("bytes copied"); a.set_ylabel("time (µs)"); a.set_title("time of a device copy")
    b.semilogx(size, bw, "o-"); b.set_xlabel("bytes copied"); b.set_ylabel("GB/s (read + write)"); b.set_title("bandwidth reached")
    b.axhline(R["device"]["copy_GBps"], ls="--", c="k"); fig.tight_layout(); plt.show()
    print(f"peak device-to-device copy: {R['device']['copy_GBps']:,.0f} GB/s (bytes read + bytes written)")
    """),
    ("md", """
    ## Timing device code

    A launch returns to Python before the kernel has run, so `time.perf_counter()` around a launch measures the
    launch. Three rules (`cuda_labs/_timing.py`): **warm up** first (the first call compiles the kernel and
    loads it), time with **CUDA events** recorded into the same stream as the work (or synchronize before
    reading a host clock), and take the **median** of many runs. The launch itself costs microseconds — which
    is why a model made of many small kernels is slow, and why CUDA graphs (replaying recorded launches) help.

    Events bracketing *one* launch on an idle GPU time that launch too: the start event fires at once, then the
    GPU waits while Python prepares the kernel (numba: ~20 µs). To time the kernel alone, queue the start event,
    many launches and the end event behind a GPU busy-wait (`torch.cuda._sleep`), so the kernels run back to
    back as in a training step (`time_queued_ms`, which every lab's benchmark uses; if the host were slower than
    the kernels, the number would come out lower, never higher). Each lab also times a copy of its own size
    that way, and "% of copy" divides by the faster of the two copies.
    """),
    ("code", """
    l = R["lab04"]
    print(f"layernorm forward {l['rows']}×{l['cols']}, v3: one launch timed alone {l['expert_forward_one_launch_GBps']:,.0f} GB/s,"
          f" launches queued {l['expert_forward_GBps']:,.0f} GB/s")
    """),
    ("code", """
    d = R["device"]
    labels = ["numba launch", "torch op launch", "launch + synchronize", "CUDA graph replay"]
    vals = [d["launch_numba_us"], d["launch_torch_us"], d["launch_sync_roundtrip_us"], d["launch_graph_us"]]
    fig, ax = plt.subplots(figsize=(7, 2.5)); ax.barh(labels, vals); ax.invert_yaxis(); ax.set_xlabel("µs per launch")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.1f} µs", va="center")
    ax.set_title("the cost of launching a kernel that does nothing"); fig.tight_layout(); plt.show()
    """),
    ("md", """
    ## Arithmetic intensity and the roofline

    A kernel does F flops and must move at least B bytes; its **arithmetic intensity** is I = F / B. With peak
    compute P and bandwidth W, its time is at least max(F / P, B / W), so the best rate it can reach is
    min(P, I · W): a roof with a slanted part (memory-bound) and a flat part (compute-bound), meeting at the
    ridge I = P / W. Elementwise kernels (softmax, layernorm, AdamW) have I below 1 flop/byte and live far on
    the slanted part: their measure is GB/s against a copy. An n×n matmul has I = 2n³ / (3·4n²) = n/6 in fp32:
    at n = 4096 it is ~680, far right of the ridge: its measure is TFLOP/s against cuBLAS.
    """),
    ("code", """
    mm = R["device"]["matmul"]; W = R["device"]["copy_GBps"] * 1e9
    fig, ax = plt.subplots(figsize=(7, 4.5)); I = np.logspace(-1, 4, 200)
    for dt, c in (("fp32", "tab:blue"), ("tf32", "tab:orange"), ("bf16", "tab:green")):
        pts = [m for m in mm if m["dtype"] == dt]; P = R["device"][f"{dt}_TFLOPs"] * 1e12
        ax.loglog(I, np.minimum(P, I * W) / 1e12, c=c, alpha=0.4)
        ax.loglog([m["intensity"] for m in pts], [m["TFLOPs"] for m in pts], "o", c=c, label=f"{dt} matmul n=256..8192")
    l5 = R["lab05"]; ax.loglog([4096 / 6], [l5["v6_expert_TFLOPs"]], "k*", ms=12, label="our best numba matmul (lab 5)")
    ax.set_xlabel("arithmetic intensity (flop / byte)"); ax.set_ylabel("TFLOP/s"); ax.legend(fontsize=8); ax.set_title("roofline of an H100 (measured)")
    plt.show()
    print({k: round(R["device"][f"{k}_TFLOPs"], 1) for k in ("fp32", "tf32", "bf16")}, "TFLOP/s at best")
    """),
    ("md", """
    The tensor cores (tf32, bf16) raise the roof 8 to 15 times above plain fp32, which is why training runs in
    bf16 (Chapter 9). The labs below climb toward the fp32 roof and the copy bandwidth with kernels you write.

    | lab | kernels | measure (H100, same run) |
    |---|---|---|
    | §8.6 map | map, zip, 2-D, grid-stride | GB/s vs copy |
    | §8.7 reduce | shared-memory tree, warp shuffles, scan | GB/s vs `torch.sum` |
    | §8.8 softmax | naive 3-pass, online, row in registers (*) | GB/s vs copy (target 70%) |
    | §8.9 layernorm | forward, backward; warp per row, fused backward (*); expert, no atomics (*) | GB/s vs copy (target 70%) |
    | §8.10 matmul | naive → coalesced → tiled → register-blocked → vectorised → expert (*) | TFLOP/s vs cuBLAS (target 50%) |
    | §8.11 attention | naive three kernels, flash | ms (target flash ≥ 3× naive) |
    | §8.12 AdamW | fused update | GB/s vs copy (target 70%) |

    (*) reference-only top rungs (read them, no exercise): what it takes to reach the targets in numba.
    """),
    ("code", """
    for k, v in R["summary"].items():
        print(f"{k:>26}: {v:6.1f}")
    """),
]


def lab_page(title, intro, module, ids, picture, contract, ladder, run):
    return [
        ("md", f"# {title}\n\n{textwrap.dedent(intro).strip()}"),
        ("code", SETUP),
        ("md", "## The memory-access picture"),
        ("code", picture),
        ("md", f"## Performance contract\n\n{textwrap.dedent(contract).strip()}\n\n" + exercise_box(ids, module)),
        ("md", "## Run it (CUDA simulator here: small sizes)"),
        ("code", run),
        ("md", "## The ladder on an H100"),
        ("code", ladder),
    ]


LABS = {
    "lab01_map": lab_page(
        "Lab: map, zip, guards and blocks",
        """One thread per element. A thread finds its element from its block and thread index,
        `i = blockIdx.x · blockDim.x + threadIdx.x`, and must check `i < n` because the grid is rounded up to
        whole blocks. In 2-D, make `x` — the coordinate that changes fastest between neighbouring threads —
        walk the *columns*, so a warp reads a contiguous piece of a row. A grid-stride loop lets any number of
        blocks cover any n.""",
        "lab01_map", ["lab01.map", "lab01.zip", "lab01.grid2d", "lab01.gridstride"],
        """
        n, T = 20, 8
        owner = np.arange(n) // T  # block of the thread that owns element i
        guard = np.arange(3 * T); guard[guard >= n] = -1
        plots.access_picture("map over n = 20 with blocks of 8: block 0, 1, 2 (last block: 4 idle threads)",
                             [("x", owner), ("threads", np.where(guard >= 0, guard // T, -1))]); plt.show()
        """,
        "Read each input element once, write each output once, consecutive threads on consecutive addresses.",
        """
        l = R["lab01"]
        plots.bars(["map a·x+b", "zip x+y", "2-D bias", "grid-stride GELU"], [l["map_GBps"], l["zip_GBps"], l["grid2d_GBps"],
                   l["gridstride_GBps"]], l["copy_GBps"], "device copy", "GB/s", "lab 1 on an H100"); plt.show()
        """,
        """
        from cuda_labs import lab01_map as lab
        x = np.random.default_rng(0).standard_normal(21).astype(np.float32); out = np.full_like(x, np.nan)
        lab.gelu(x, out, blocks=2, threads=8)
        print(np.abs(out - lab.gelu_reference(x)).max())
        """,
    ),
    "lab02_reduce": lab_page(
        "Lab: reductions and scans",
        """A sum needs the threads to talk. In a block they meet in **shared memory**: each thread posts a partial
        sum, then half the threads add the other half's values, with a barrier between rounds (log₂ B rounds).
        Inside a warp they can read each other's registers with **shuffles** (`shfl_xor_sync`): five rounds, no
        shared memory, no barrier. A **prefix sum** (scan) keeps every partial result: Hillis–Steele scans
        each block, the block totals are scanned in turn, and each block adds its offset.""",
        "lab02_reduce", ["lab02.shared_sum", "lab02.warp_sum", "lab02.scan"],
        """
        B = 16; rounds = []
        half = B // 2
        while half:
            rounds.append(np.where(np.arange(B) < half, np.arange(B), -1)); half //= 2
        plots.access_picture("tree reduction in shared memory: threads still adding in each round",
                             [(f"round {k}", r) for k, r in enumerate(rounds)]); plt.show()
        """,
        "Read each input element once; per block only one number goes back to device memory.",
        """
        l = R["lab02"]
        plots.bars(["shared-memory tree", "warp shuffles", "scan (3 kernels)", "torch.cumsum"],
                   [l["shared_sum_GBps"], l["shuffle_sum_GBps"], l["scan_GBps"], l["torch_cumsum_GBps"]],
                   l["torch_sum_GBps"], "torch.sum", "GB/s", "lab 2 on an H100"); plt.show()
        """,
        """
        from cuda_labs import lab02_reduce as lab
        x = np.random.default_rng(0).standard_normal(29).astype(np.float32); out = np.full_like(x, np.nan)
        lab.prefix_sum(x, out, threads=8)
        print(np.abs(out - lab.prefix_sum_reference(x)).max(), float(lab.sum_shuffle(x, 1, 32).copy_to_host()[0]), x.sum())
        """,
    ),
    "lab03_softmax": lab_page(
        "Lab: softmax, naive and online",
        """The naive kernel gives each row to one thread and walks it three times (max, sum, write): few
        threads, and a warp's 32 threads read 32 different rows — uncoalesced. The **online softmax** keeps a
        running max m and a running sum d of exp(x − m), rescaling d when m grows, so max and sum come from one
        pass; a whole block takes a row, its threads read consecutive columns, and the per-thread states are
        merged with shuffles. The top rung, **registers** (reference only), reads the row once into the
        registers of its block — each thread issues all its loads before using any — so max, sum and write
        need no second read.""",
        "lab03_softmax", ["lab03.naive", "lab03.merge", "lab03.online"],
        """
        R_, C, W = 4, 16, 4
        naive = np.tile(np.arange(R_)[:, None], (1, C))          # thread r reads row r
        online = np.tile(np.arange(C) % W, (R_, 1))              # block r, thread t reads columns t, t+W, ...
        plots.access_picture("which thread reads each x[r, c]: naive (one thread per row) vs online (a block per row)",
                             [("naive", naive.reshape(1, -1)), ("online", online.reshape(1, -1))]); plt.show()
        """,
        "Read x from device memory once (the second pass hits the cache) and write once: target 70% of a copy.",
        """
        l = R["lab03"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["naive 3-pass", "online (256 threads)", "online (128)", "registers* (best block)", "torch.softmax"],
                   [l["naive_GBps"], l["online_GBps"], l["online_128_GBps"], l["registers_GBps"], l["torch_GBps"]],
                   copy, "device copy",
                   "GB/s", f"softmax {l['rows']}×{l['cols']} on an H100", target=0.7 * copy); plt.show()
        """,
        """
        from cuda_labs import lab03_softmax as lab
        x = (np.random.default_rng(0).standard_normal((3, 29)) * 5).astype(np.float32); out = np.full_like(x, np.nan)
        lab.softmax_online(x, out, threads=32)
        print(np.abs(out - lab.softmax_reference(x)).max())
        """,
    ),
    "lab04_layernorm": lab_page(
        "Lab: layernorm forward and backward",
        """A block per row: a block sum gives the mean, a second the variance, then each thread writes its
        columns and thread 0 saves mean and rstd for the backward. The backward of x is
        dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)) with g = dy · w: two more block sums per row. The weight and
        bias gradients sum over rows, so a second kernel gives threads consecutive columns and adds chunks of
        rows with atomics. The reference-only **v2** keeps a row in the registers of one warp (reductions are
        shuffles: no barrier) and fuses the backward: each warp adds dy·x̂ and dy for its columns over all its
        rows in registers, so dy and x are read once for dx, dw and db together. The reference-only **v3
        (expert)** indexes with unsigned 32-bit numbers (half v2's instructions) and gives the backward a block
        per row that keeps w and its dw, db sums in registers and writes per-block partial sums, which a second
        small kernel adds: no atomics, so dw and db come out bit-identical on every run.
        The ladder is timed with the launches queued back to back (Chapter 8, *Timing device code*): timed one
        launch at a time, numba's ~20 µs of Python per launch would sit inside the events.""",
        "lab04_layernorm", ["lab04.forward", "lab04.backward"],
        """
        R_, C, W = 4, 16, 4
        fwd = np.tile(np.arange(C) % W, (R_, 1)); dw = np.tile(np.arange(C), (R_, 1))
        plots.access_picture("forward/backward: threads of a block stride along a row; dw/db: a thread per column",
                             [("row kernels", fwd.reshape(1, -1)), ("dw, db", dw.reshape(1, -1))]); plt.show()
        """,
        """Forward: read x, w, b once, write y, mean, rstd once. Backward: read dy, x, mean, rstd, w once, write dx,
        and add into dw, db. GB/s = those bytes (`layernorm_bytes`) / time, so any extra traffic (v1's second
        read of dy and x, v3's partial sums) counts against a kernel. Target 70% of a copy.""",
        """
        l = R["lab04"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["forward v1", "forward v2*", "forward v3*", "torch forward", "backward v1", "backward v2* (fused)",
                    "backward v3* (no atomics)", "torch backward"],
                   [l["forward_v1_GBps"], l["warp_forward_GBps"], l["expert_forward_GBps"], l["torch_forward_GBps"],
                    l["backward_v1_GBps"], l["warp_backward_GBps"], l["expert_backward_GBps"], l["torch_backward_GBps"]], copy,
                   "device copy", "GB/s", f"layernorm {l['rows']}×{l['cols']} on an H100", target=0.7 * copy); plt.show()
        """,
        """
        from cuda_labs import lab04_layernorm as lab
        rng = np.random.default_rng(0); x = rng.standard_normal((3, 29)).astype(np.float32)
        w, b = np.ones(29, np.float32), np.zeros(29, np.float32); y = np.full_like(x, np.nan)
        mean, rstd = np.zeros(3, np.float32), np.zeros(3, np.float32)
        lab.layernorm_forward(x, w, b, y, mean, rstd, threads=32)
        print(np.abs(y - lab.layernorm_reference(x, w, b)[0]).max())
        """,
    ),
    "lab05_matmul": lab_page(
        "Lab: the matmul ladder",
        """Five rungs. **Naive**: a thread per C[i, j] with the warp walking down a column — strided reads of A.
        **Coalesced**: the warp walks along a row. **Tiled**: a block stages TILE×TILE tiles of A and B in
        shared memory, so each element loaded from device memory is used TILE times. **Register blocking**: each
        thread computes an 8×8 sub-tile of a 128×128 block tile, so per k it reads 16 numbers from shared memory
        and does 64 multiply-adds. **Vectorised**: runs of 4 consecutive floats per load, A transposed in shared
        memory and each thread's columns strided across the tile so a warp's reads hit different banks.
        The sixth rung, **expert** (reference only), is what the compiler's output asked for: numba indexes with
        signed 64-bit numbers that may be negative, costing ~40 integer instructions per k beside 64 FMAs;
        with uint32 indices, runs of 4 rows/columns read as one 16-byte shared load, two k per loop turn and the
        next tile's global loads in flight during the FMAs, the hot loop is 85% FMAs.""",
        "lab05_matmul", ["lab05.naive", "lab05.coalesced", "lab05.tiled", "lab05.regblock", "lab05.vectorized"],
        """
        n, T = 16, 4
        tile_owner = (np.arange(n)[:, None] // T) * (n // T) + np.arange(n)[None, :] // T
        sub = (np.arange(n)[:, None] // 2) * (n // 2) + np.arange(n)[None, :] // 2
        plots.grid_picture("who computes each C[i, j] of a 16×16 C",
                           [("tiled: a block per 4×4 tile", tile_owner, T),
                            ("register blocking: a thread per 2×2 sub-tile", sub, 2)]); plt.show()
        """,
        "Load each element of A and B from device memory once per block tile; keep the multiply-adds fed from registers. Target: 50% of cuBLAS SGEMM (TF32 off) at 4096².",
        """
        l = R["lab05"]; names = ["v1_naive", "v2_coalesced", "v3_tiled", "v4_regblock", "v5_vectorized", "v6_expert"]
        plots.bars(names, [l[f"{k}_TFLOPs"] for k in names], l["cublas_sgemm_TFLOPs"], "cuBLAS SGEMM", "TFLOP/s",
                   "4096² fp32 matmul on an H100", target=0.5 * l["cublas_sgemm_TFLOPs"]); plt.show()
        """,
        """
        from cuda_labs import lab05_matmul as lab
        rng = np.random.default_rng(0); A = rng.standard_normal((19, 29)).astype(np.float32); B = rng.standard_normal((29, 23)).astype(np.float32)
        C = np.full((19, 23), np.nan, np.float32)
        lab.matmul_vectorized(A, B, C, BM=16, BN=16, BK=4, TM=4, TN=4)
        print(np.abs(C - lab.matmul_reference(A, B)).max())
        """,
    ),
    "lab06_attention": lab_page(
        "Lab: fused attention (flash-style forward)",
        """The naive attention writes the T×T score matrix to device memory, softmaxes it in place and reads
        it back to multiply by V: three kernels and T/D times more bytes than Q, K, V. The fused kernel never
        writes scores: a block takes 64–128 query rows, K and V stream through shared memory in tiles, and each
        thread keeps its output row with lab 3's running max and sum, rescaling when the max grows.""",
        "lab06_attention", ["lab06.scores", "lab06.flash"],
        """
        T, BR, BC = 16, 4, 4
        i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
        tiles = np.where(j <= i + (BR - 1 - i % BR), (i // BR) * (T // BC) + j // BC, -1)
        plots.access_picture("(query tile, key tile) pairs the fused kernel visits (causal: upper tiles skipped)",
                             [(f"q rows {r}", tiles[r]) for r in range(0, T, BR)]); plt.show()
        """,
        "Read Q, K, V once per query tile and write O once; the scores stay on chip. Target: ≥ 3× the naive three kernels at T = 1024, D = 64.",
        """
        l = R["lab06"]
        plots.bars(["naive (3 kernels)", "flash 64×64", "flash 128×32", "flash 128×64", "torch SDPA"],
                   [l["naive_ms"], l["flash_64x64_ms"], l["flash_128x32_ms"], l["flash_128x64_ms"], l["torch_sdpa_ms"]],
                   l["naive_ms"], "naive", "ms (lower is better)", f"causal attention, {l['bh']} heads, T={l['T']}, D={l['D']}"); plt.show()
        print(f"flash is {l['flash_speedup_vs_naive']:.1f}x faster than naive")
        """,
        """
        from cuda_labs import lab06_attention as lab
        rng = np.random.default_rng(0); Q, K, V = (rng.standard_normal((1, 13, 8)).astype(np.float32) for _ in range(3))
        O = np.full_like(Q, np.nan); lab.attention_flash(Q, K, V, O, BR=8, BC=4)
        print(np.abs(O - lab.attention_reference(Q, K, V)).max())
        """,
    ),
    "lab07_adamw": lab_page(
        "Lab: the fused AdamW update",
        """An optimizer step is elementwise: for each parameter read p, g, m, v and write p, m, v. Written as
        separate tensor operations each one reads and writes whole tensors; fused, one thread does the whole
        update for its parameter, 28 bytes per parameter, the least there is.""",
        "lab07_adamw", ["lab07.adamw"],
        """
        n = 12
        plots.access_picture("one thread per parameter, the same index in all four arrays",
                             [(a, np.arange(n)) for a in ("p", "g", "m", "v")]); plt.show()
        """,
        "Read p, g, m, v once and write p, m, v once (7 × 4 bytes a parameter). Target 70% of a copy.",
        """
        l = R["lab07"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["fused (ours)", "torch foreach", "torch fused"], [l["fused_GBps"], l["torch_foreach_GBps"],
                   l["torch_fused_GBps"]], copy, "device copy", "GB/s", "AdamW on 64 M parameters, H100", target=0.7 * copy); plt.show()
        """,
        """
        from cuda_labs import lab07_adamw as lab
        rng = np.random.default_rng(0); p, g = (rng.standard_normal(37).astype(np.float32) for _ in range(2))
        m, v = np.zeros(37, np.float32), np.zeros(37, np.float32)
        lab.adamw_step(p, g, m, v, step=1, lr=0.01, threads=16); print(p[:4])
        """,
    ),
}

if __name__ == "__main__":
    chapter = notebook(CH08, "ch08_device")
    for name, cells in LABS.items():
        notebook(cells, name)
    print("wrote", chapter, "and", len(LABS), "lab pages")

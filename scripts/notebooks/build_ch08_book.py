# ruff: noqa: E501  (the strings below are notebook cells, wrapped as they read best in the book)
"""Write book/ch08_device.ipynb and the lab pages book/lab0N_*.ipynb (unexecuted; the book build runs them).

    .venv/bin/python scripts/notebooks/build_ch08_book.py
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import write_notebook  # noqa: E402

SETUP = "%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt\nfrom cuda_labs import plots\nR = plots.load()  # bench/results/cuda_labs_h100.json: one run of python -m cuda_labs.bench on an H100"


def notebook(cells: list[tuple[str, str]], name: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata.update(kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
                       language_info={"name": "python"})
    for kind, text in cells:
        text = inspect.cleandoc(text)  # cleandoc, not dedent: a first line right after the quotes has no indent
        nb.cells.append(nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text))
    return write_notebook(nb, Path("book") / f"{name}.ipynb")


def exercise_box(ids: list[str], module: str) -> str:
    rows = "\n".join(f"- `{i}` — open `cuda_labs/{module}.py`, then `llm101n check {i}`" for i in ids)
    return (f":::{{admonition}} Exercises\n:class: tip\n{rows}\n\nThe tests run your kernels on your GPU when you have one, else on "
            "numba's CUDA simulator (sizes up to ~32); `--simulator` forces the simulator. Where the point of a kernel is "
            "*how* it touches memory, the tests also run it under a log of which thread read or wrote which address "
            "(`cuda_labs/_trace.py`) and check the pattern, not only the result.\n:::")


CH08 = [
    ("md", """
    # The device: CPU and GPU

    Chapters 1 to 7 wrote every model as a few kinds of loops over big arrays — matrix multiplications,
    softmaxes, layer norms, optimizer updates — and let PyTorch run them. This chapter opens the box. Where
    does a tensor live, and what happens when you call `x @ w` on a GPU? What is a *kernel*, how do thousands
    of threads share the work, and why is the answer almost always "it depends on how you touch memory"?
    We build the picture in five steps — devices in PyTorch, the kernel launch, the execution model, the
    memory hierarchy, and the roofline — measuring what we can on the CPU in front of you and reading the
    rest from one run of `cuda_labs/bench.py` on an NVIDIA H100, stored in
    `bench/results/cuda_labs_h100.json`. Then the labs (§8.6–§8.12) have you write the kernels yourself, in
    Python, with `numba.cuda`, and climb from a naive version to one that runs near the machine's limit.
    """),
    ("code", SETUP + "\nprint(R['card'], '|', R['sms'], 'SMs | torch', R['torch'], '| numba-cuda', R['numba_cuda'])"),
    ("md", """
    ## Where a tensor lives

    Every PyTorch tensor has a **device**: `cpu`, or `cuda` (`cuda:0`, `cuda:1`, … when there are several
    GPUs). An operation runs on the device of its operands, and its result is born there. `.to(device)`
    copies a tensor (or, for a module, all its parameters and buffers) to another device; when it is already
    there, `.to` returns the same tensor and copies nothing. The rule that trips everyone once: the operands
    of one operation must live on the same device — PyTorch does not move data behind your back, because a
    copy between CPU memory and GPU memory crosses the PCIe bus, tens of times slower than either memory.
    So a training script picks the device once and moves the model and each batch to it.
    """),
    ("code", """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"   # the idiom of every training script
    x = torch.randn(256, 256)
    y = x.to(device)
    print("x on", x.device, "| y on", y.device, "| x.to('cpu') is x:", x.to("cpu") is x)
    model = torch.nn.Linear(256, 10).to(device)                 # moves the parameters
    print("model's weight on", model.weight.device, "| output on", model(y).device)
    try:  # two devices in one operation: an error, never a silent copy ('meta' stands in for a GPU here)
        torch.ones(2, device="meta") + torch.ones(2)
    except RuntimeError as e:
        print("RuntimeError:", e)
    """),
    ("md", """
    ## What a kernel launch is

    On a GPU, each operation — one `@`, one `softmax`, one elementwise `+` — becomes one or more **kernels**:
    functions that run on the GPU, thousands of copies at once. Python never runs on the GPU. The CPU
    *launches* a kernel by putting a command on a queue (a CUDA **stream**): "run this function, with these
    arguments, with this many threads". The call returns at once, long before the kernel has finished, and
    the CPU goes on to queue the next one. The GPU works through the queue in order. Two consequences
    shape everything that follows:

    - **A launch has a fixed cost**, a few microseconds of CPU work and GPU start-up, however little the
      kernel does. A model made of many tiny operations spends its time launching, not computing; that is
      why fused kernels (one launch doing the work of many) and CUDA graphs (replaying a recorded sequence
      of launches) matter.
    - **The host clock lies.** `time.perf_counter()` around `y = x @ w` measures the launch. To time the
      work you must wait for the queue (`torch.cuda.synchronize()`) or use CUDA events recorded into the
      same stream (§8.5).

    In `numba.cuda` — the labs' language — you write the function for **one thread** and choose the number
    of threads at the launch: `kernel[blocks, threads_per_block](args)`. Inside, each copy asks who it is
    (`cuda.grid(1)` = `blockIdx.x · blockDim.x + threadIdx.x`) and does that element's work. Without a GPU,
    numba's **CUDA simulator** runs every thread as a Python thread: slow, but exact, and enough to check a
    kernel on a few dozen elements, as here.
    """),
    ("code", """
    from cuda_labs import lab01_map

    x = np.arange(10, dtype=np.float32); out = np.full_like(x, np.nan)
    lab01_map.axpb_kernel[2, 8](x, np.float32(2.0), np.float32(1.0), out)   # 2 blocks × 8 threads = 16 threads, 10 elements
    print(out)   # 2·x + 1; the 6 threads past the end found i >= n and did nothing
    d = R["device"]
    labels = ["numba launch", "torch op launch", "launch + synchronize", "CUDA graph replay"]
    vals = [d["launch_numba_us"], d["launch_torch_us"], d["launch_sync_roundtrip_us"], d["launch_graph_us"]]
    fig, ax = plt.subplots(figsize=(7, 2.5)); ax.barh(labels, vals); ax.invert_yaxis(); ax.set_xlabel("µs per launch")
    for yy, v in enumerate(vals):
        ax.text(v, yy, f" {v:.1f} µs", va="center")
    ax.set_title("H100: the cost of launching a kernel that does nothing"); fig.tight_layout(); plt.show()
    """),
    ("md", """
    The bars are one H100's: a numba launch costs tens of microseconds of Python, a PyTorch launch a few, a
    launch followed by a wait for its end more still, and replaying launches from a CUDA graph about one.
    In one microsecond an H100 could have done some 50 million floating-point operations.

    ## The execution model: grid, block, warp

    A launch creates a **grid** of **blocks**, each of the same number of **threads** (up to 1,024). The
    hardware is a set of **streaming multiprocessors** (SMs; 132 on an H100). Each block is placed whole on
    one SM and stays there until it finishes; an SM runs several blocks at once when their registers and
    shared memory fit. Blocks never wait for each other — they may run in any order, at the same time or
    one after another — so a kernel must never depend on one block seeing another's writes. Threads *of a
    block* can cooperate: they share the SM's fast **shared memory** and can meet at a barrier,
    `cuda.syncthreads()`.

    Inside the SM, a block is cut into **warps** of 32 consecutive threads (threads 0–31, 32–63, …; for a
    2-D block, x varies fastest). A warp is the unit that executes: one instruction is fetched and all 32
    lanes carry it out together, each on its own data — *single instruction, multiple threads* (**SIMT**).
    When lanes of a warp take different sides of an `if`, the warp runs both sides one after the other with
    the lanes of the other side switched off (**divergence**): correct, but the idle lanes are wasted.

    Why so many threads? A read from device memory takes around 500 cycles. A CPU core hides that with large
    caches and by running ahead of the stalled instruction; an SM instead keeps up to 64 warps resident and,
    every cycle, issues from one that is ready. While some warps wait for memory, others compute. The
    fraction of the 64 warp slots that are filled is the **occupancy**. It is limited by what each block
    asks for: an SM has 65,536 32-bit registers, 2,048 thread slots and about 228 KB of shared memory, and a
    block is only placed when all of its threads' registers and its shared memory fit.
    """),
    ("code", """
    from matplotlib.patches import Rectangle

    fig, (g, b, s) = plt.subplots(1, 3, figsize=(12, 3.4))
    for bx in range(4):                        # a grid of 4 × 2 blocks
        for by in range(2):
            g.add_patch(Rectangle((bx, by), 0.9, 0.9, color="tab:blue" if (bx, by) != (1, 0) else "tab:orange", alpha=0.6))
            g.text(bx + 0.45, by + 0.45, f"block\\n({bx},{by})", ha="center", va="center", fontsize=8)
    g.set_xlim(0, 4); g.set_ylim(2, 0); g.set_title("a grid of blocks (blockIdx)"); g.axis("off")
    for t in range(128):                       # block (1, 0): 128 threads = 4 warps of 32 lanes
        w, lane = divmod(t, 32)
        b.add_patch(Rectangle((lane, w), 0.9, 0.9, color=plt.cm.tab10(w), alpha=0.7))
    b.set_xlim(0, 32); b.set_ylim(4, 0); b.set_yticks(np.arange(4) + 0.45, [f"warp {w}" for w in range(4)])
    b.set_xlabel("lane = threadIdx.x % 32"); b.set_title("one block: 128 threads, 4 warps"); b.set_xticks([])
    for slot in range(64):                     # an SM's 64 warp slots, filled by two blocks of 8 warps
        used = slot < 16
        s.add_patch(Rectangle((slot % 16, slot // 16), 0.9, 0.9, color="tab:green" if used else "lightgrey"))
    s.set_xlim(0, 16); s.set_ylim(4, 0); s.axis("off"); s.set_title("an SM's 64 warp slots: 16 filled = 25% occupancy")
    fig.tight_layout(); plt.show()
    """),
    ("code", """
    def blocks_per_sm(threads, registers, shared_bytes=0):
        \"\"\"How many blocks of a kernel fit on one H100 SM at once (registers are given out per warp, 256 at a time).\"\"\"
        warps = -(-threads // 32)
        per_warp = -(-registers * 32 // 256) * 256
        limits = [65536 // (per_warp * warps), 2048 // threads, 32]
        if shared_bytes:
            limits.append(228 * 1024 // shared_bytes)
        return min(limits)

    regs = np.arange(32, 256)
    occ = [blocks_per_sm(256, r) * 8 / 64 for r in regs]
    fig, ax = plt.subplots(figsize=(7, 3)); ax.step(regs, occ, where="post")
    l5 = R["lab05"]
    for name, c in (("v4_regblock", "tab:red"), ("v5_vectorized", "tab:green")):
        r = l5[f"{name}_registers"]
        ax.axvline(r, c=c, ls="--", label=f"lab 5 {name}: {r} registers → {blocks_per_sm(256, r)} block(s) per SM")
    ax.set_xlabel("registers per thread (blocks of 256 threads)"); ax.set_ylabel("occupancy"); ax.legend(fontsize=8)
    ax.set_title("occupancy falls in steps as a kernel needs more registers"); fig.tight_layout(); plt.show()
    """),
    ("md", """
    The staircase is the arithmetic of the paragraph above, for blocks of 256 threads: up to 32 registers a
    thread, eight blocks fit (all 2,048 thread slots); past 128 registers only one block fits, and the SM
    runs 8 warps of its 64. The dashed lines are two kernels of lab 5 as the H100 run compiled them (the
    register counts are in the result file). Low occupancy is not always slow — a kernel with plenty of
    independent work in each thread can keep the SM busy with few warps — but one block per SM has a
    particular cost: at every barrier, and while that block waits for its next tiles from memory, the SM has
    nothing else to run. Lab 5 measures exactly that.

    ## The memory hierarchy

    Each thread has **registers** (the fastest storage, private, a few hundred bytes). Each SM has **shared
    memory** and an L1 cache (256 KB together on an H100), fast and shared by the threads of a block. All
    SMs share an **L2 cache** (50 MB), and behind it sits **device memory** (HBM, 80 GB at about 3 TB/s).
    Each level down is larger and slower. A CPU has the same ladder with other numbers: registers, L1 and
    L2 per core, an L3 shared by the cores, then DRAM.

    You can see the ladder on the machine in front of you. The cell below copies arrays of growing size
    with numpy and reports the bandwidth (bytes read + bytes written per second). Small copies are
    dominated by the fixed cost of the call — the CPU's version of a launch. While source and destination
    fit in a core's caches the copy is fast; once they outgrow the last cache level, every byte comes from
    DRAM and the bandwidth falls to what the memory can deliver. Next to it: the H100's device-to-device
    copy from the result file, over the same sizes. The dotted lines mark this CPU's cache sizes (where the
    system lists them), halved: a copy needs its source and its destination in the cache.
    """),
    ("code", """
    import time

    def copy_GBps(nbytes, traffic=1e8):
        \"\"\"Best of 5 timings of np.copyto between two arrays of nbytes each: (read + write) bytes per second.\"\"\"
        src = np.ones(nbytes // 4, np.float32); dst = np.empty_like(src)
        reps = max(2, int(traffic // nbytes)); best = float("inf")
        for _ in range(5):   # the best of several: other programs on the machine only ever slow a run down
            t = time.perf_counter()
            for _ in range(reps):
                np.copyto(dst, src)
            best = min(best, (time.perf_counter() - t) / reps)
        return 2 * nbytes / best / 1e9

    sizes = 2 ** np.arange(12, 28)   # 4 KB .. 128 MB per array
    cpu = np.array([copy_GBps(int(n)) for n in sizes])
    gpu = R["device"]["copy"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.semilogx(sizes, cpu, "o-", label="this machine's CPU: np.copyto")
    ax.semilogx([c["bytes"] for c in gpu], [c["GBps"] for c in gpu], "s-", label=f"{R['card']}: device copy (stored)")
    from pathlib import Path
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):  # Linux lists its caches here
        if (d / "type").read_text().strip() != "Instruction":
            text = (d / "size").read_text().strip()   # e.g. 48K, 2048K
            size = int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
            ax.axvline(size / 2, c="grey", ls=":"); ax.text(size / 2, cpu.max(), f" L{(d / 'level').read_text().strip()}", fontsize=8)
    ax.set_yscale("log"); ax.set_xlabel("bytes per array"); ax.set_ylabel("GB/s (read + write)"); ax.legend(fontsize=8)
    ax.set_title("copy bandwidth against size"); fig.tight_layout(); plt.show()
    print(f"CPU: best {cpu.max():.0f} GB/s at {sizes[cpu.argmax()] / 1024:.0f} KB, {cpu[-1]:.0f} GB/s at {sizes[-1] >> 20} MB")
    print(f"H100: {gpu[0]['GBps']:.1f} GB/s at {gpu[0]['bytes'] >> 10} KB, {R['device']['copy_GBps']:.0f} GB/s at {gpu[-1]['bytes'] >> 20} MB")
    """),
    ("md", """
    Read the two curves for their shape (the exact CPU numbers depend on your machine and on what else runs
    on it). The CPU's peaks where its caches hold the data and drops by several times where DRAM takes over.
    The GPU's curve is the mirror image: tiny copies reach almost nothing — the time is all launch and
    latency — and only copies of tens of megabytes fill the memory system and reach its bandwidth, far
    above what the CPU gets from its DRAM (the cell prints both). Small work cannot fill a GPU: that is
    why models train in large batches.

    **Memory moves in pieces, not bytes.** A CPU fetches 64-byte cache lines; a GPU moves 32-byte sectors.
    Read one float and you pay for the whole piece. The next cell sums every s-th float of a 64 MB array.
    At stride 1, sixteen floats share each 64-byte line; the time per float read grows with the stride, and
    from s = 16 on every float brings in a line of its own (past that, the prefetcher and the address
    translation add their own effects, and a busy machine adds noise).
    """),
    ("code", """
    x = np.ones(1 << 24, np.float32)   # 64 MB: larger than the caches
    strides = [1, 2, 4, 8, 16, 32, 64]
    ns = []
    for s in strides:
        v = x[::s]; best = float("inf")
        for _ in range(5):
            t = time.perf_counter(); v.sum(); best = min(best, time.perf_counter() - t)
        ns.append(1e9 * best / v.size)
    for s, t in zip(strides, ns):
        print(f"stride {s:2d} floats: {t:5.2f} ns per float read")
    """),
    ("md", """
    On a GPU the same law has a name, **coalescing**. The 32 threads of a warp issue a load together. If they
    read 32 consecutive floats (128 bytes), the hardware fetches 4 sectors and every byte fetched is used.
    If they read 32 floats a row apart — thread t reading `A[t, k]` of a row-major matrix — it fetches 32
    sectors and uses one float of each: an eighth of the bandwidth. So the first question about any kernel
    is **which thread reads which address**, and the rule of all the labs follows: *make neighbouring threads
    touch neighbouring addresses, move each byte from device memory once, and when threads need the same
    data, stage it in shared memory or registers*.

    ## Timing device code, and the roofline

    ### Timing

    A launch returns to Python before the kernel has run, so `time.perf_counter()` around a launch measures
    the launch. Three rules (`cuda_labs/_timing.py`): **warm up** first (the first call compiles the kernel
    and loads it), time with **CUDA events** recorded into the same stream as the work (or synchronize
    before reading a host clock), and take the **median** of many runs.

    Events bracketing *one* launch on an idle GPU time the launch too: the start event fires at once, then
    the GPU waits while Python prepares the kernel (numba: about 20 µs). To time the kernel alone, the labs
    queue the start event, many launches and the end event behind a GPU busy-wait (`torch.cuda._sleep`), so
    the kernels run back to back as they would inside a training step (`time_queued_ms`). Each lab also
    times a copy of its own size the same way, and "% of copy" divides by the faster of the two copies. The
    cell prints one layernorm kernel timed both ways.
    """),
    ("code", """
    l = R["lab04"]
    print(f"layernorm forward {l['rows']}×{l['cols']}, v3: one launch timed alone {l['expert_forward_one_launch_GBps']:,.0f} GB/s,"
          f" launches queued {l['expert_forward_GBps']:,.0f} GB/s")
    """),
    ("md", """
    ### Arithmetic intensity and the roofline

    A kernel does F floating-point operations and must move at least B bytes; its **arithmetic intensity** is
    I = F / B. With peak compute P and memory bandwidth W its time is at least max(F / P, B / W), so the best
    rate it can reach is min(P, I · W): a roof with a slanted part (memory-bound) and a flat part
    (compute-bound), meeting at the ridge I = P / W. Elementwise kernels — softmax, layernorm, AdamW — do a
    handful of operations per 4-byte float: I is below 1 flop/byte, far on the slanted part, and their
    measure is GB/s against a copy. An n×n matmul does 2n³ operations on 3·4n² bytes in fp32, I = n / 6: at
    n = 4096 about 680, far right of the ridge, and its measure is TFLOP/s against cuBLAS, NVIDIA's own.
    """),
    ("code", """
    mm = R["device"]["matmul"]; W = R["device"]["copy_GBps"] * 1e9
    fig, ax = plt.subplots(figsize=(7, 4.5)); I = np.logspace(-1, 4, 200)
    for dt, c in (("fp32", "tab:blue"), ("tf32", "tab:orange"), ("bf16", "tab:green")):
        pts = [m for m in mm if m["dtype"] == dt]; P = R["device"][f"{dt}_TFLOPs"] * 1e12
        ax.loglog(I, np.minimum(P, I * W) / 1e12, c=c, alpha=0.4)
        ax.loglog([m["intensity"] for m in pts], [m["TFLOPs"] for m in pts], "o", c=c, label=f"{dt} matmul n=256..8192")
    l5 = R["lab05"]; ax.loglog([4096 / 6], [l5["v6_expert_TFLOPs"]], "k*", ms=12, label="the best numba matmul of lab 5")
    ax.set_xlabel("arithmetic intensity (flop / byte)"); ax.set_ylabel("TFLOP/s"); ax.legend(fontsize=8); ax.set_title("roofline of an H100 (measured)")
    plt.show()
    print({k: round(R["device"][f"{k}_TFLOPs"], 1) for k in ("fp32", "tf32", "bf16")}, "TFLOP/s at best")
    """),
    ("md", """
    The small matmuls sit on the slanted part or below it (too little work to fill 132 SMs), the large ones
    reach the flat roof. The tensor cores (tf32, bf16) raise the roof by the factors printed above, which is
    why training runs in bf16 (Chapter 9). The labs climb toward the fp32 roof and the copy bandwidth with
    kernels you write; each lab page names its yardstick and a goal for your kernel.

    | lab | kernels | yardstick (H100, same run) |
    |---|---|---|
    | §8.6 map | map, zip, 2-D, grid-stride | GB/s vs copy |
    | §8.7 reduce | shared-memory tree, warp shuffles, scan | GB/s vs `torch.sum` |
    | §8.8 softmax | naive 3-pass, online, row in registers (*) | GB/s vs copy |
    | §8.9 layernorm | forward, backward; warp per row, fused backward (*); no atomics (*) | GB/s vs copy |
    | §8.10 matmul | naive → coalesced → tiled → register-blocked → vectorised → expert (*) | TFLOP/s vs cuBLAS |
    | §8.11 attention | naive three kernels, flash | ms vs the naive version |
    | §8.12 AdamW | fused update | GB/s vs copy |

    (*) reference-only top rungs: read them, no exercise. The best rung of each lab on the H100:
    """),
    ("code", """
    names = {"matmul_best_pct_cublas": "matmul, % of cuBLAS", "softmax_pct_copy": "softmax, % of copy",
             "layernorm_fwd_pct_copy": "layernorm forward, % of copy", "layernorm_bwd_pct_copy": "layernorm backward, % of copy",
             "adamw_pct_copy": "AdamW, % of copy", "flash_speedup_vs_naive": "flash attention, × faster than naive"}
    for k, v in R["summary"].items():
        print(f"{names.get(k, k):>38}: {v:6.1f}")
    """),
    ("md", """
    ## The scoreboard

    This chapter trains no model, so the board below is the one Chapter 7 left. Chapter 8 changes how fast
    the models train, not what they can learn: a kernel computes the same numbers as the loop it replaces,
    only sooner. It shows in Chapter 7's storyteller row, the model trained on a GPU: the same model trained
    for the same steps on a CPU would reach the same bits per byte, only many times later. What speed buys is
    more steps, more data and bigger models in the same hour — and that is where the later rows come from.
    """),
    ("code", """
    from storylib import scoreboard

    scoreboard.show_board(8)
    """),
]


def lab_page(title, idea, module, ids, picture_md, picture, naive, fix, run, ladder_md, ladder, pitfalls, extra=()):
    clean = inspect.cleandoc
    return [
        ("md", f"# {title}\n\n{clean(idea)}"),
        ("code", SETUP),
        ("md", f"## The picture\n\n{clean(picture_md)}"),
        ("code", picture),
        ("md", f"## The naive kernel, and what is wrong with it\n\n{clean(naive)}"),
        ("md", f"## The fix\n\n{clean(fix)}\n\n" + exercise_box(ids, module)),
        ("md", "## Run it (the CUDA simulator here: small sizes)"),
        ("code", run),
        ("md", f"## The ladder on an H100\n\n{clean(ladder_md)}"),
        ("code", ladder),
        *extra,
        ("md", f"## Pitfalls\n\n{clean(pitfalls)}"),
    ]


LABS = {
    "lab01_map": lab_page(
        "Lab: map, zip, guards and blocks",
        """
        The simplest kernels give each thread one element and no one to talk to: `out[i] = a·x[i] + b` (a
        *map*), `out[i] = x[i] + y[i]` (a *zip*), a bias added to every row of a matrix, GELU of every element.
        They are most of the operations of a network that are not matmuls, and they teach the three things
        every kernel needs: how a thread finds its element, what to do with the threads that have none, and
        which thread should take which element so that memory is used well.

        A thread finds its element from its block and thread index: `i = blockIdx.x · blockDim.x +
        threadIdx.x`, which numba writes `cuda.grid(1)`. The grid is made of whole blocks, so for n elements
        and blocks of T threads we launch ⌈n / T⌉ blocks, and the last block has threads past the end.
        """,
        "lab01_map", ["lab01.map", "lab01.zip", "lab01.grid2d", "lab01.gridstride"],
        """
        Below: n = 20 elements, blocks of 8 threads. Three blocks cover 24 threads; the colour says which block
        owns each element, and the grey cells of the last block are threads with no element.
        """,
        """
        n, T = 20, 8
        owner = np.arange(n) // T  # block of the thread that owns element i
        guard = np.arange(3 * T); guard[guard >= n] = -1
        plots.access_picture("map over n = 20 with blocks of 8: block 0, 1, 2 (last block: 4 idle threads)",
                             [("x", owner), ("threads", np.where(guard >= 0, guard // T, -1))]); plt.show()
        """,
        """
        The first version everyone writes forgets the **guard**: thread 23 computes `out[23]`, past the end of
        a 20-element array. On a GPU that is not an exception but a write into whatever lies there — another
        tensor, or nothing, or a crash later in an unrelated kernel. Every kernel that maps threads to
        elements starts with `if i < n:`.

        The second mistake is subtler, and only shows in 2-D. For a matrix X of R rows and C columns stored
        row-major, element (r, c) is at address r·C + c. A 2-D launch gives each thread `(x, y) =
        cuda.grid(2)`, and the 32 threads of a warp have consecutive x. Writing `r, c = cuda.grid(2)` puts x
        on the *rows*: the warp reads 32 elements C floats apart, 32 separate memory sectors for 32 useful
        floats. The result is right and the kernel is several times slower than it should be.
        """,
        """
        Put x, the fast coordinate, on the **columns**: `c, r = cuda.grid(2)`. Now a warp reads 32 consecutive
        floats of one row, four 32-byte sectors, every byte used (Chapter 8, *The memory hierarchy*), and
        writes them the same way. Guard both coordinates.

        When you do not control the size of the grid — or want a fixed number of blocks, say a few per SM,
        whatever n is — use a **grid-stride loop**: thread i handles i, i + S, i + 2S, … with S the total
        number of threads in the grid (`cuda.gridsize(1)`). Neighbouring threads still touch neighbouring
        elements on every turn of the loop, and any grid covers any n.

        **Your goal**: every kernel of this lab reads each input once and writes each output once, with
        neighbouring threads on neighbouring addresses — within reach of a plain copy.
        """,
        """
        from cuda_labs import lab01_map as lab
        x = np.random.default_rng(0).standard_normal(21).astype(np.float32); out = np.full_like(x, np.nan)
        lab.gelu(x, out, blocks=2, threads=8)   # 16 threads for 21 elements: the grid-stride loop covers the rest
        print(np.abs(out - lab.gelu_reference(x)).max())
        """,
        """
        Each kernel, on 2²⁶ floats, against a device-to-device copy of the same size timed in the same run
        (`bench/results/cuda_labs_h100.json`, key `lab01`). The bar's label is GB/s and its share of the copy.
        """,
        """
        l = R["lab01"]
        plots.bars(["map a·x+b", "zip x+y", "2-D bias", "grid-stride GELU"], [l["map_GBps"], l["zip_GBps"], l["grid2d_GBps"],
                   l["gridstride_GBps"]], l["copy_GBps"], "device copy", "GB/s", "lab 1 on an H100"); plt.show()
        """,
        """
        - **No guard**: out-of-bounds writes are silent on a GPU. The tests poison the slots past the end with
          NaN and check they stay NaN.
        - **x on the rows**: correct and slow. The tests run your 2-D kernel under a log of which thread touched
          which address (`cuda_labs/_trace.py`) and require neighbouring x to touch neighbouring addresses.
        - **Grid-stride with the wrong stride**: the stride is the whole grid, `cuda.gridsize(1)`, not
          `blockDim.x`; with the block size, blocks would redo each other's elements.
        - **Too few threads**: a GPU needs tens of thousands of threads in flight to hide memory latency; a
          grid of a few blocks leaves most SMs idle however good the kernel.
        """,
    ),
    "lab02_reduce": lab_page(
        "Lab: reductions and scans",
        """
        A map needs no communication between threads; a **reduction** — a sum, a max, a norm — is all
        communication: n numbers become one. Softmax needs a max and a sum per row, layernorm a mean and a
        variance, the loss a sum over the batch. This lab writes the sum three ways and then its big sibling,
        the **prefix sum** (scan), where every partial result is kept: `out[i] = x[0] + … + x[i]`.

        Threads of a block talk through **shared memory** and meet at **barriers**; threads of one warp can read
        each other's registers directly with **shuffles**. Different blocks cannot talk during a kernel at all:
        each block writes its partial result, and a second step adds those up.
        """,
        "lab02_reduce", ["lab02.shared_sum", "lab02.warp_sum", "lab02.scan"],
        """
        The tree reduction in shared memory, for a block of 16 threads: in round 0 the first 8 threads add the
        values of threads 8–15 to their own; in round 1 the first 4 add the next 4; and so on. log₂ 16 = 4
        rounds, each followed by a barrier, and thread 0 holds the block's sum.
        """,
        """
        B = 16; rounds = []
        half = B // 2
        while half:
            rounds.append(np.where(np.arange(B) < half, np.arange(B), -1)); half //= 2
        plots.access_picture("tree reduction in shared memory: threads still adding in each round",
                             [(f"round {k}", r) for k, r in enumerate(rounds)]); plt.show()
        """,
        """
        The naive sum gives one thread the whole array — one thread of the tens of thousands the GPU could run.
        The next naive idea gives every thread an element and has them all add into one total with an atomic
        addition: correct, but the atomics to one address are serialised, one after another. The tree does
        the same additions in log₂ B parallel rounds.

        The tree itself has two classic mistakes. Pairing thread t with thread 2t (*interleaved addressing*)
        leaves every other lane of each warp idle and makes warps diverge; pairing t with t + half keeps the
        active threads packed in the first warps, so whole warps retire. And forgetting the barrier between
        rounds lets a thread read its partner's slot before the partner has written it — a **race**, which
        usually gives the right answer on small inputs and a wrong one on a loaded GPU.
        """,
        """
        Three steps, each removing a cost:

        1. **Grid-stride partial sums, then a tree.** Launch a few blocks per SM, not one thread per element:
           each thread first adds its elements (a grid-stride loop, coalesced) in a register, posts that one
           number to shared memory, and only then the block runs the tree. Each input element is read once.
        2. **Warp shuffles.** Within a warp, `cuda.shfl_xor_sync(mask, v, offset)` gives each lane the value
           of lane `lane XOR offset`. Five rounds (offsets 16, 8, 4, 2, 1) — a *butterfly* — leave every lane
           holding the warp's sum, with no shared memory and no barrier: the 32 lanes execute in step.
           Shared memory is then only needed to combine the warps of a block.
        3. **Scan** (Hillis–Steele): in round k every thread adds the value 2ᵏ places to its left, reading one
           buffer and writing the other (reading and writing one buffer in the same round is a race). After
           log₂ B rounds each block holds its inclusive scan; the block totals are scanned in turn, and a third
           kernel adds each block's offset.

        **Your goal**: the shuffle sum within reach of `torch.sum`, which reads each element once as well.
        """,
        """
        from cuda_labs import lab02_reduce as lab
        x = np.random.default_rng(0).standard_normal(29).astype(np.float32); out = np.full_like(x, np.nan)
        lab.prefix_sum(x, out, threads=8)
        print(np.abs(out - lab.prefix_sum_reference(x)).max(), float(lab.sum_shuffle(x, 1, 32).copy_to_host()[0]), x.sum())
        """,
        """
        The sums against `torch.sum` on 2²⁶ floats (key `lab02` of `bench/results/cuda_labs_h100.json`). The
        two sums sit close to it: both read each element once, and the rest is a rounding error in time. The
        scan is lower because it reads and writes the array more than once across its three kernels, and each
        block's tree does log₂ B rounds of work per element instead of one; `torch.cumsum` uses a single-pass
        scan that passes block totals along as it goes.
        """,
        """
        l = R["lab02"]
        plots.bars(["shared-memory tree", "warp shuffles", "scan (3 kernels)", "torch.cumsum"],
                   [l["shared_sum_GBps"], l["shuffle_sum_GBps"], l["scan_GBps"], l["torch_cumsum_GBps"]],
                   l["torch_sum_GBps"], "torch.sum", "GB/s", "lab 2 on an H100"); plt.show()
        """,
        """
        - **A missing barrier** between tree rounds or scan rounds: a race. It may pass on the simulator and
          fail on a GPU, or the other way round.
        - **A barrier inside a branch** that not all threads of the block take (`if t < half:
          syncthreads()`): the threads that skip it never arrive, and the block hangs or misbehaves. Keep
          barriers where every thread reaches them.
        - **Shuffles with missing lanes**: every lane named in the mask must execute the shuffle. Do not
          return early from threads past the end of the array; let them contribute 0.
        - **Uninitialised shared memory**: shared arrays start with whatever the last block left. A thread
          with no element must still write its 0 before the tree reads it.
        - **Float sums are not associative**: a tree adds in a different order than a loop, so the result
          differs in the last bits. Compare with a float64 reference and a tolerance, as the tests do.
        """,
    ),
    "lab03_softmax": lab_page(
        "Lab: softmax, naive and online",
        """
        Softmax turns a row of scores into probabilities: `exp(x_c − m) / Σ exp(x_c' − m)`, with m the row's
        max subtracted so that exp never overflows. Every attention layer computes it on every row of its score
        matrix, and the output layer on every position. It is a memory-bound kernel: a few operations per
        float, so its measure is GB/s against a copy. The ideal reads the row once and writes it once.
        """,
        "lab03_softmax", ["lab03.naive", "lab03.merge", "lab03.online"],
        """
        Which thread reads each x[r, c] of a 4 × 16 matrix: the naive kernel gives row r to thread r (a warp's
        threads sit in *different rows*), the online kernel gives a row to a block of 4 threads, thread t
        reading columns t, t + 4, t + 8, … (a warp's threads sit *side by side* in one row).
        """,
        """
        R_, C, W = 4, 16, 4
        naive = np.tile(np.arange(R_)[:, None], (1, C))          # thread r reads row r
        online = np.tile(np.arange(C) % W, (R_, 1))              # block r, thread t reads columns t, t+W, ...
        plots.access_picture("which thread reads each x[r, c]: naive (one thread per row) vs online (a block per row)",
                             [("naive", naive.reshape(1, -1)), ("online", online.reshape(1, -1))]); plt.show()
        """,
        """
        The naive kernel is the formula in a loop: one thread per row walks the row three times — the max, the
        sum of exponentials, then the write. Three things are wrong. It has few threads (8,192 rows give 8,192
        threads, far too few to hide memory latency on 132 SMs). Its loads are uncoalesced: at each step the 32
        threads of a warp read 32 different rows, 32 sectors for 32 floats. And it reads the row three times.
        """,
        """
        **A block per row**, its threads striding along the row: coalesced, and 4,096 columns give each block
        plenty of threads. Then **the online softmax** (Milakov & Gimelshein, 2018) merges the first two
        passes. Keep a running pair (m, d): the max so far and the sum of exp(x − m) so far. A new value x
        updates it to m' = max(m, x), d' = d·exp(m − m') + exp(x − m'): when the max grows, the sum so far is
        rescaled to the new max. Two pairs merge the same way, so each thread builds its pair over its columns
        in one pass, and the block merges the pairs (shuffles inside warps, shared memory between them). A
        second pass writes exp(x − m) / d; it reads the row again, mostly from the L2 cache.

        The reference-only top rung, **registers**, reads the row once into the registers of its block —
        each thread issues all its loads before using any, so they are all in flight together — and takes the
        max, the sum and the write from registers.

        **Your goal**: your online kernel at 70% of a copy or more.
        """,
        """
        from cuda_labs import lab03_softmax as lab
        x = (np.random.default_rng(0).standard_normal((3, 29)) * 5).astype(np.float32); out = np.full_like(x, np.nan)
        lab.softmax_online(x, out, threads=32)
        print(np.abs(out - lab.softmax_reference(x)).max())
        """,
        """
        An 8,192 × 4,096 softmax (key `lab03` of `bench/results/cuda_labs_h100.json`). The naive kernel reaches
        a small fraction of the copy; a block per row with the online pair jumps most of the way; the block
        size matters, and the best one depends on the row length; holding the row in registers closes the gap.
        """,
        """
        l = R["lab03"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["naive 3-pass", "online (256 threads)", "online (128)", "registers* (best block)", "torch.softmax"],
                   [l["naive_GBps"], l["online_GBps"], l["online_128_GBps"], l["registers_GBps"], l["torch_GBps"]],
                   copy, "device copy",
                   "GB/s", f"softmax {l['rows']}×{l['cols']} on an H100", goal=0.7 * copy); plt.show()
        """,
        """
        - **The empty state**: a thread with no columns holds (m, d) = (−∞, 0). Merging it naively computes
          exp(−∞ − (−∞)) = exp(NaN). The merge must treat m = −∞ as "nothing here" (the `lab03.merge` tests
          feed rows of −∞).
        - **Forgetting to rescale**: adding exp(x − m') to a d built against an older, smaller m gives a sum
          that is too large; the output no longer sums to 1.
        - **Reusing the shared scratch without a barrier**: the block merge writes per-warp results to shared
          memory; a second merge (or the write pass reading the result) before every thread has passed a
          barrier reads half-updated values.
        - **Subtracting no max**: exp(90) overflows float32. The naive formula without the max works in tests
          with small scores and fails on real logits.
        """,
    ),
    "lab04_layernorm": lab_page(
        "Lab: layernorm forward and backward",
        """
        Layer normalisation (Chapter 5) rescales each row to mean 0 and variance 1, then applies a learned
        scale w and shift b: `y = (x − mean) · rstd · w + b`, rstd = 1 / √(var + ε). Its backward pass is
        where the work is. With x̂ = (x − mean)·rstd and g = dy·w,

        dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)),  dw = Σ_rows dy · x̂,  db = Σ_rows dy.

        dx needs two reductions *along each row*; dw and db need a reduction *down each column*, over all rows.
        Both directions in one lab: the point is choosing which threads own which direction.
        """,
        "lab04_layernorm", ["lab04.forward", "lab04.backward"],
        """
        Forward and the dx part of the backward: a block per row, its threads striding along it (colour =
        thread). dw and db: a thread per column, walking down the rows, so a warp reads 32 neighbouring columns
        of one row at each step — coalesced in the other direction.
        """,
        """
        R_, C, W = 4, 16, 4
        fwd = np.tile(np.arange(C) % W, (R_, 1)); dw = np.tile(np.arange(C), (R_, 1))
        plots.access_picture("forward/backward: threads of a block stride along a row; dw/db: a thread per column",
                             [("row kernels", fwd.reshape(1, -1)), ("dw, db", dw.reshape(1, -1))]); plt.show()
        """,
        """
        The exercise version (v1) is already the reasonable first design: the forward is a block per row with
        two block sums (lab 2's `block_sum`), one for the mean and one for the variance, then a pass that writes
        y; thread 0 saves mean and rstd for the backward. The backward's dx kernel does the same with two sums,
        of g and of g·x̂; a second kernel computes dw and db with a thread per column, each thread adding a
        chunk of rows and then adding its result into dw and db with an atomic.

        What costs time: the forward reads each row three times (the second and third reads mostly hit the
        cache, but not all); each block sum is a round of shared memory and barriers; and the backward reads
        dy and x twice, once for dx and once for dw and db. For rows of 1,024 floats, one block per row also
        means many small blocks, each spending a large part of its life in barriers.
        """,
        """
        The reference-only **v2** keeps a row of up to 32·V columns in the registers of **one warp** (lane l
        holds columns l + 32·i), so every reduction is five shuffles, with no shared memory and no barrier, and
        the row is read once. Its backward is **fused**: each warp walks its rows and adds dy·x̂ and dy for its
        columns into registers as it computes dx, so dy and x are read once for dx, dw and db together; the
        warps of a block combine their sums in shared memory and add them to dw and db with one atomic per
        column. The reference-only **v3** indexes with unsigned 32-bit numbers (half v2's instructions) and
        replaces the atomics with per-block partial sums that a small second kernel adds in a fixed order, so
        dw and db come out bit-identical on every run.

        The ladder is timed with the launches queued back to back (Chapter 8, §8.5): timed one launch at a
        time, numba's ~20 µs of Python per launch would sit inside the events. GB/s counts the bytes the
        operation must move (`layernorm_bytes`), so any extra traffic counts against a kernel.

        **Your goal**: forward and backward at 70% of a copy.
        """,
        """
        from cuda_labs import lab04_layernorm as lab
        rng = np.random.default_rng(0); x = rng.standard_normal((3, 29)).astype(np.float32)
        w, b = np.ones(29, np.float32), np.zeros(29, np.float32); y = np.full_like(x, np.nan)
        mean, rstd = np.zeros(3, np.float32), np.zeros(3, np.float32)
        lab.layernorm_forward(x, w, b, y, mean, rstd, threads=32)
        print(np.abs(y - lab.layernorm_reference(x, w, b)[0]).max())
        """,
        """
        65,536 rows of 1,024 (key `lab04` of `bench/results/cuda_labs_h100.json`), forward and backward, each
        against a copy. Read the two groups of bars separately: each step up removes one of the costs named
        above, and PyTorch's own kernels sit beside them.
        """,
        """
        l = R["lab04"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["forward v1", "forward v2*", "forward v3*", "torch forward", "backward v1", "backward v2* (fused)",
                    "backward v3* (no atomics)", "torch backward"],
                   [l["forward_v1_GBps"], l["warp_forward_GBps"], l["expert_forward_GBps"], l["torch_forward_GBps"],
                    l["backward_v1_GBps"], l["warp_backward_GBps"], l["expert_backward_GBps"], l["torch_backward_GBps"]], copy,
                   "device copy", "GB/s", f"layernorm {l['rows']}×{l['cols']} on an H100", goal=0.7 * copy); plt.show()
        """,
        """
        - **Two block sums, one scratch array, no barrier between them**: the second sum overwrites the shared
          slots the first is still reading. Either a barrier after reading the first result, or two arrays.
        - **Who writes mean and rstd**: every thread knows them, but only one should store them; 256 threads
          writing the same address is wasted traffic (and a race if they computed slightly different values).
        - **Atomics and reproducibility**: float atomics add in whatever order the blocks finish, so dw differs
          in the last bits from run to run. Fine for training; v3 shows the deterministic alternative.
        - **The biased variance**: PyTorch divides by C, not C − 1. The tests compare with PyTorch.
        """,
    ),
    "lab05_matmul": lab_page(
        "Lab: the matmul ladder",
        """
        Matrix multiplication is most of the arithmetic of a transformer (Chapter 3). `C = A @ B`
        for A of M × K and B of K × N does 2·M·N·K operations on 4·(MK + KN + MN) bytes: at 4,096² the
        arithmetic intensity is about 680 flop/byte (Chapter 8, §8.5), far right of the roofline's ridge. So
        unlike every other lab, a good matmul is limited by arithmetic, not by memory — *if* it reuses each
        loaded number enough. The whole ladder is about reuse: where each number of A and B is kept between its
        uses, and who reads it from where. Each rung removes the bottleneck of the one before; Simon Boehm's
        "How to optimize a CUDA matmul kernel for cuBLAS-like performance" (2022) climbs the same ladder in C.
        """,
        "lab05_matmul", ["lab05.naive", "lab05.coalesced", "lab05.tiled", "lab05.regblock", "lab05.vectorized"],
        """
        Who computes each C[i, j] of a 16 × 16 C. Left, the tiled kernel: a block per 4 × 4 tile (colour =
        block), a thread per element. Right, register blocking: a thread per 2 × 2 sub-tile (colour = thread),
        so each thread reuses each number it loads for two outputs instead of one.
        """,
        """
        n, T = 16, 4
        tile_owner = (np.arange(n)[:, None] // T) * (n // T) + np.arange(n)[None, :] // T
        sub = (np.arange(n)[:, None] // 2) * (n // 2) + np.arange(n)[None, :] // 2
        plots.grid_picture("who computes each C[i, j] of a 16×16 C",
                           [("tiled: a block per 4×4 tile", tile_owner, T),
                            ("register blocking: a thread per 2×2 sub-tile", sub, 2)]); plt.show()
        """,
        """
        **v1, naive**: a thread per C[i, j], looping over k: `acc += A[i, k] · B[k, j]`. With `i, j =
        cuda.grid(2)`, x — the coordinate that differs along a warp — is the *row* i. At each k the warp reads
        A[i, k] for 32 different rows, K floats apart: 32 sectors for 32 floats. That is lab 1's mistake again.

        **v2, coalesced**: `j, i = cuda.grid(2)`. Now the warp shares one row i: it reads one A[i, k] (a
        broadcast: one sector serves all 32 threads), 32 consecutive B[k, j], and writes 32 consecutive
        C[i, j]. Better — and still hopeless. Every thread reads 2K numbers from device memory to do K
        multiply-adds: an arithmetic intensity of a quarter flop per byte, where the matrix offers 680. The
        caches catch some of the reuse, but not nearly enough: v2 runs at a few percent of cuBLAS.
        """,
        """
        **v3, tiled.** A block of TILE × TILE threads computes a TILE × TILE tile of C. For each slice of TILE
        values of k, the threads first copy one TILE × TILE tile of A and one of B into **shared memory** —
        each thread one element of each, coalesced — then wait at a barrier, then each thread does its TILE
        multiply-adds from shared memory, then waits again before the next tiles overwrite these. Each number
        loaded from device memory is now used TILE times.

        **v4, register blocking.** Shared memory is fast, but v3 still does two shared loads per multiply-add.
        Give each thread a TM × TN sub-tile of a BM × BN block tile instead: at each k it loads TM numbers of
        A's column and TN numbers of B's row into registers and does their outer product, TM·TN multiply-adds
        for TM + TN loads — with 8 × 8, 64 multiply-adds for 16 loads.

        **v5, vectorised.** v4 with better-shaped memory traffic: each thread moves runs of 4 consecutive
        floats (one 16-byte load), the A tile is stored *transposed* in shared memory so that a thread's TM
        numbers for one k sit side by side, and a thread's TN columns are strided across the tile so that the
        32 lanes of a warp read 32 different **banks** (see the pitfalls). The reference-only **v6** is v5 as
        the compiler wants it: unsigned 32-bit indices (numba's signed ones cost a sign test per access), two k
        per loop turn, and the next tiles' loads in flight while the multiply-adds run. It keeps *two* pairs of
        shared tiles, computing from one while it fills the other, so one barrier per k-tile suffices instead
        of two; it shapes each warp as 8 × 4 threads instead of 16 × 2, so that per k a warp reads 32 numbers
        of A and 64 of B from shared memory rather than 16 and 128 (fewer bytes through the same banks); it
        gives each thread four numbers of a row of the B tile that lie BN/4 columns apart instead of side by
        side, so that a warp's 32 lanes load 32 neighbouring numbers and store them into 32 different banks
        (runs of 4 put the 32 lanes on 8 banks, a 4-way conflict on every store); and it visits the blocks in
        groups of 16 block-rows, so that the blocks running at the same time share rows of A and columns of B in
        the L2 cache. (Doing the same to A, whose tile is stored transposed, makes each load instruction read
        from 32 rows, and `bench/lab05_sweep.py` measures that slower.)

        **Your goal**: each rung faster than the one before it.
        """,
        """
        from cuda_labs import lab05_matmul as lab
        rng = np.random.default_rng(0); A = rng.standard_normal((19, 29)).astype(np.float32); B = rng.standard_normal((29, 23)).astype(np.float32)
        C = np.full((19, 23), np.nan, np.float32)
        lab.matmul_vectorized(A, B, C, BM=16, BN=16, BK=4, TM=4, TN=4)
        print(np.abs(C - lab.matmul_reference(A, B)).max())
        """,
        """
        4,096² fp32, every rung against cuBLAS SGEMM (`torch.mm` with TF32 off) in the same run — key `lab05` of
        `bench/results/cuda_labs_h100.json`. Naive and coalesced are a rounding error; shared-memory tiles
        multiply the rate several times; register blocking nearly doubles it again, vectorised loads add a
        little more, and the expert rung more than doubles it again. Each rung beats the one before, and even the
        best stays short of cuBLAS, whose kernels are written in the GPU's assembly by people who do nothing else.
        """,
        """
        l = R["lab05"]; names = ["v1_naive", "v2_coalesced", "v3_tiled", "v4_regblock", "v5_vectorized", "v6_expert"]
        plots.bars(names, [l[f"{k}_TFLOPs"] for k in names], l["cublas_sgemm_TFLOPs"], "cuBLAS SGEMM", "TFLOP/s",
                   "4096² fp32 matmul on an H100"); plt.show()
        """,
        extra=[
            ("md", """
            ### What register blocking needs

            The result file also records what the compiler made of v4 and v5 (128 × 128 block tiles, 8 × 8 per
            thread, 256 threads a block). The cell turns their registers per thread into blocks per SM with the
            occupancy arithmetic of Chapter 8, §8.3.
            """),
            ("code", """
            def blocks_per_sm(threads, registers):   # Chapter 8, §8.3: 65,536 registers an SM, 256 per warp at a time
                return min(65536 // (-(-registers * 32 // 256) * 256 * (threads // 32)), 2048 // threads)

            for k in ("v3_tiled", "v4_regblock", "v5_vectorized"):
                regs = l.get(f"{k}_registers")
                print(f"{k:14} {l[f'{k}_TFLOPs']:5.1f} TFLOP/s", "" if regs is None else
                      f"| {regs} registers a thread → {blocks_per_sm(256, regs)} block(s) of 256 threads per SM")
            """),
            ("md", """
            Register blocking is easy to make *slower* than plain tiling, and a first version of v4 was. Two
            things decide it.

            **Occupancy.** That first v4 let numba's 64-bit index arithmetic for the copy loops, whose trip count
            the compiler could not see, push it far past 128 registers a thread, on top of the 64 accumulators
            and the 16 loaded values. At that size only one block of 256 threads fits on an SM. Each k-tile is a
            short burst of compute between two barriers around a load from device memory; with one block per
            SM, nothing runs while that block waits for its next tiles. v3's small threads fit two blocks of
            1,024 per SM, so one block's loads hide behind the other's arithmetic. The kernel in
            `cuda_labs/lab05_matmul.py` gives its copy loops a constant trip count (`for l in range(BM * BK //
            NT)`) and asks the compiler to stay within 128 registers (`max_registers=128` in its `cuda.jit`):
            the cell above prints what this run's compiler made of it, two blocks per SM, and v4 now beats v3.

            **Bank conflicts.** Shared memory is split into 32 **banks**, 4-byte words assigned round-robin; in
            one cycle each bank serves one word (all lanes asking for the *same* word share it, a broadcast). In
            v4, lane tx reads `Bs[k, 8·tx + j]`: lanes 0, 4, 8 and 12 all hit bank j with different words, so
            every read of B takes four rounds; the reads of A (`As[8·ty + i, k]`, two rows 64 words apart) take
            two. v5's strided columns `Bs[k, tx + 16·j]` put the 16 lanes on 16 different banks, one reason v5 is
            faster than v4. The picture shows the bank each lane reads for j = 0.
            """),
            ("code", """
            lanes = np.arange(32); tx = lanes % 16
            plots.access_picture("shared-memory bank read by each lane of a warp (colour = bank), B tile, j = 0",
                                 [("v4: Bs[k, 8·tx]", (8 * tx) % 32), ("v5: Bs[k, tx]", tx % 32)],
                                 note="v4: 4 banks for 16 different words (4-way conflict); v5: 16 banks, one word each"); plt.show()
            """),
        ],
        pitfalls="""
        - **The second barrier.** In the tiled loop, the barrier *after* the multiply-adds is the one people
          drop: without it a fast thread starts copying the next tiles over the ones its neighbours are still
          reading. The result is wrong only sometimes.
        - **Uninitialised or stale shared memory at the edges.** When M, N or K is not a multiple of the tile,
          the threads past the edge must still write 0 into their slot of the tile; otherwise the multiply-adds
          read what the previous tile — or the previous block — left there. The tests use odd sizes like
          19 × 29 × 23 for this reason.
        - **Bank conflicts**: a warp reading a column of a row-major shared tile (stride = the tile width, a
          multiple of 32) puts all 32 lanes on one bank: 32 rounds for one load. Transpose the tile, stride the
          threads, or pad the row by one word.
        - **Registers spill**: `cuda.local.array` lives in registers only while every index into it is a
          compile-time constant (fully unrolled loops over TM and TN). A computed index sends it to local
          memory, which is device memory.
        - **Grading**: the tests log which thread reads which address (`cuda_labs/_trace.py`): the coalesced
          rung must have neighbouring threads on neighbouring B and C addresses, the tiled rungs must read each
          element of A and B once per block, and the vectorised rung in runs of 4.
        """,
    ),
    "lab06_attention": lab_page(
        "Lab: fused attention (flash-style forward)",
        """
        Causal self-attention (Chapter 4) for one head: S = Q Kᵀ · scale, masked so that query i sees keys
        j ≤ i, P = softmax(S) row by row, O = P V. Q, K, V and O are T × D; S and P are T × T. At T = 1,024
        and D = 64, S is sixteen times larger than Q, K and V together. Whether S ever touches device memory
        decides the speed: this lab writes attention both ways.
        """,
        "lab06_attention", ["lab06.scores", "lab06.flash"],
        """
        The fused kernel cuts the T × T score matrix into tiles: a block takes a tile of query rows and visits
        the key tiles one by one (colour = the (query tile, key tile) pair). Under causality, tiles entirely
        above the diagonal are never visited: those queries cannot see those keys.
        """,
        """
        T, BR, BC = 16, 4, 4
        i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
        tiles = np.where(j <= i + (BR - 1 - i % BR), (i // BR) * (T // BC) + j // BC, -1)
        plots.access_picture("(query tile, key tile) pairs the fused kernel visits (causal: upper tiles skipped)",
                             [(f"q rows {r}", tiles[r]) for r in range(0, T, BR)]); plt.show()
        """,
        """
        The naive version is three kernels, each simple: one computes S (a thread per score, `lab06.scores`,
        −∞ above the diagonal), one runs lab 3's softmax on each row of S in place, one multiplies P by V.
        Each is reasonable on its own. Together they write S to device memory, read it back, write P, and read
        it again: for every head, four passes over T² floats where the inputs are 3·T·D. The work is memory
        traffic that the answer never needed.
        """,
        """
        **Never write S.** A block takes BR query rows of one head and keeps, for each row, its output row o,
        and lab 3's online-softmax pair (m, l) — the running max and the running sum of exponentials — in
        registers. K and V stream through shared memory in tiles of BC keys: load a tile (coalesced), barrier,
        and each thread, for each key j ≤ i of the tile, computes its score s = q · k_j, updates m and l, and
        adds exp(s − m)·v_j into o, **rescaling o** by exp(m_old − m_new) whenever the max grows (the same
        rescaling as l); barrier; next tile. At the end o / l is the output row. Scores exist only in registers,
        one at a time. This is FlashAttention's forward pass (Dao et al., 2022).

        **Your goal**: your fused kernel at least 3× faster than the three naive kernels at T = 1,024, D = 64.
        """,
        """
        from cuda_labs import lab06_attention as lab
        rng = np.random.default_rng(0); Q, K, V = (rng.standard_normal((1, 13, 8)).astype(np.float32) for _ in range(3))
        O = np.full_like(Q, np.nan); lab.attention_flash(Q, K, V, O, BR=8, BC=4)
        print(np.abs(O - lab.attention_reference(Q, K, V)).max())
        """,
        """
        Time per call for all heads at T = 1,024, D = 64 (key `lab06` of `bench/results/cuda_labs_h100.json`;
        lower is better), for several tile shapes, with PyTorch's `scaled_dot_product_attention` beside them.
        Larger query tiles reuse each K and V tile for more rows; the best shape is printed with the speed-up.
        """,
        """
        l = R["lab06"]
        plots.bars(["naive (3 kernels)", "flash 64×64", "flash 128×32", "flash 128×64", "torch SDPA"],
                   [l["naive_ms"], l["flash_64x64_ms"], l["flash_128x32_ms"], l["flash_128x64_ms"], l["torch_sdpa_ms"]],
                   l["naive_ms"], "naive", "ms (lower is better)", f"causal attention, {l['bh']} heads, T={l['T']}, D={l['D']}"); plt.show()
        print(f"flash is {l['flash_speedup_vs_naive']:.1f}x faster than naive")
        """,
        """
        - **Rescale o too.** Updating l for a new max but not o leaves o built against the old max: the output
          is silently wrong whenever a later key has a larger score.
        - **The causal mask inside a tile.** Skipping whole tiles above the diagonal is an optimisation; the
          diagonal tile itself is half visible, and each thread must still stop at j ≤ i.
        - **A row with no visible key yet**: before the first key, m = −∞ and l = 0; exp(s − m) must not be
          computed from −∞ − (−∞). Treat m = −∞ as "nothing yet", as lab 3's merge does.
        - **Shared tiles and the barriers**: as in lab 5, the barrier after using a K/V tile keeps fast threads
          from loading the next tile over it.
        - **Ragged ends**: T need not be a multiple of BR or BC; threads past the end load zeros (or nothing)
          and must not write O.
        """,
    ),
    "lab07_adamw": lab_page(
        "Lab: the fused AdamW update",
        """
        The optimizer step of Chapter 7 touches every parameter once per step:
        m = β₁·m + (1 − β₁)·g, v = β₂·v + (1 − β₂)·g², then p moves by lr·(m̂ / (√v̂ + ε) + wd·p) with the bias
        corrections m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ). A handful of operations per parameter and four arrays
        to read: as memory-bound as a kernel gets. Its cost is the bytes it moves.
        """,
        "lab07_adamw", ["lab07.adamw"],
        """
        One thread per parameter, the same index in all four arrays: thread i reads p[i], g[i], m[i], v[i] and
        writes p[i], m[i], v[i]. Neighbouring threads, neighbouring addresses, in every array.
        """,
        """
        n = 12
        plots.access_picture("one thread per parameter, the same index in all four arrays",
                             [(a, np.arange(n)) for a in ("p", "g", "m", "v")]); plt.show()
        """,
        """
        Written as tensor operations — `m.mul_(β₁).add_(g, alpha=1 − β₁)`, `v.mul_(β₂).addcmul_(g, g, value=1 − β₂)`,
        then the update of p in a few more — each operation is its own kernel, and each reads and writes whole
        tensors. A parameter's m is read and written twice, v twice, p several times, and the temporaries
        (√v̂ + ε, the ratio) are written out and read back. PyTorch's `foreach` implementation launches one
        kernel per operation for a whole list of tensors, which saves launches but not bytes.
        """,
        """
        **Fuse.** One kernel, one thread per parameter, everything in registers: read p, g, m, v once, compute,
        write p, m, v once. 7 × 4 = 28 bytes per parameter, the least any implementation can move. The bias
        corrections depend only on the step t, so compute them once on the host and pass them in.

        **Your goal**: 70% of a copy or more.
        """,
        """
        from cuda_labs import lab07_adamw as lab
        rng = np.random.default_rng(0); p, g = (rng.standard_normal(37).astype(np.float32) for _ in range(2))
        m, v = np.zeros(37, np.float32), np.zeros(37, np.float32)
        lab.adamw_step(p, g, m, v, step=1, lr=0.01, threads=16); print(p[:4])
        """,
        """
        64 M parameters (key `lab07` of `bench/results/cuda_labs_h100.json`): the fused kernel, PyTorch's
        `foreach` AdamW (several kernels over lists of tensors) and PyTorch's own fused AdamW, against a copy.
        The foreach bar is what the extra bytes cost.
        """,
        """
        l = R["lab07"]; copy = max(R["device"]["copy_GBps"], l["copy_GBps"])
        plots.bars(["fused (ours)", "torch foreach", "torch fused"], [l["fused_GBps"], l["torch_foreach_GBps"],
                   l["torch_fused_GBps"]], copy, "device copy", "GB/s", "AdamW on 64 M parameters, H100", goal=0.7 * copy); plt.show()
        """,
        """
        - **Weight decay on the old p or the new one**: the decay term, like the Adam term, uses the p read at
          the start of the step; decaying the already-updated p is a different optimizer.
        - **The step count**: t starts at 1; with t = 0 the bias corrections divide by zero.
        - **float64 on the device**: a Python float constant in a numba kernel is a float64; mixing it into
          float32 arithmetic makes the whole expression float64, which on most GPUs is far slower. Cast
          constants (`float32(...)`) or pass them as float32 arguments.
        - **Reading a value twice**: `m[i]` written and then read again goes back to memory (the compiler
          cannot prove that p, m and v do not overlap). Read each array into a local variable once.
        """,
    ),
}

if __name__ == "__main__":
    chapter = notebook(CH08, "ch08_device")
    for name, cells in LABS.items():
        notebook(cells, name)
    print("wrote", chapter, "and", len(LABS), "lab pages")

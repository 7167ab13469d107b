"""Build solutions/ch10_distributed.ipynb, the nbgrader source notebook of Chapter 10 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch10_distributed", title="Chapter 10 — Distributed training: DDP and ZeRO")
nb.markdown(
    """
    In this notebook you write the heart of `storylib/distributed.py`: an all-reduce built from nothing but send
    and receive (the ring), gradient averaging, DDP's gradient buckets, the slice of a flat parameter each rank
    owns, one ZeRO step (reduce-scatter, AdamW on my shard, all-gather), FSDP's gather-before-use around a layer,
    and resharding a checkpoint for a different number of ranks.

    Your functions take a *group*: its `rank`, `world_size`, `send`, `recv` and the collectives. Here the group is
    a `LocalGroup`: `run_local(fn, per_rank)` runs `fn(group, *args)` on one thread per rank, and the threads pass
    tensors to each other. The same functions run unchanged over `torch.distributed` (gloo) processes; the book
    page does that.
    """
)
nb.code(
    """
    import torch

    from storylib.distributed import run_local

    _ = torch.manual_seed(0)
    """,
    locked=True,
)
nb.exercise(
    "ch10.ring_all_reduce",
    try_it="""
    xs = [torch.randn(10) for _ in range(4)]
    out, stats = run_local(ring_all_reduce, [(x.clone(),) for x in xs], stats=True)
    print("max error:", (out[2] - sum(xs)).abs().max().item(), "(expected ~1e-7)")
    print("rank 0 sent", stats[0]["sent_bytes"], "bytes of 40: 2(p-1)/p = 1.5 of them")
    """,
)
nb.question(
    "ch10_q_ring_bytes",
    points=1,
    prompt="""
    8 ranks all-reduce 1 GB of gradients with a ring. How many GB does each rank send? Set `gb_sent`.
    """,
    solution="gb_sent = 2 * (8 - 1) / 8 * 1.0",
    test="assert abs(gb_sent - 1.75) < 1e-9, 'reduce-scatter sends (p-1)/p of the bytes, all-gather as much again'",
)
nb.exercise(
    "ch10.average_gradients",
    try_it="""
    grads = [[torch.full((2,), float(r))] for r in range(3)]  # rank r's gradient is all r
    print(run_local(average_gradients, [(g,) for g in grads]), "(expected 1.0 everywhere)")
    """,
)
nb.exercise(
    "ch10.buckets",
    try_it="""
    from storylib.gpt2 import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, block_size=16))
    sizes = [p.numel() * 4 for p in model.parameters()]
    for b in assign_buckets(sizes, 16_000):
        print(b, sum(sizes[i] for i in b), "bytes")
    """,
)
nb.exercise(
    "ch10.shard_range",
    try_it="""
    print([shard_range(10, r, 4) for r in range(4)], "(expected [(0, 3), (3, 6), (6, 9), (9, 10)])")
    """,
)
nb.exercise(
    "ch10.zero_step",
    try_it="""
    from storylib.distributed import zero_demo

    flat = torch.randn(12)
    grads = [torch.randn(2, 12) for _ in range(3)]  # 3 ranks, 2 steps
    out = run_local(zero_demo, [(flat.clone(), grads[r], 0.1, 0.0) for r in range(3)])
    print("every rank has the same parameters:", all(torch.equal(o["flat"], out[0]["flat"]) for o in out))
    print("AdamW state per rank:", out[0]["exp_avg"].numel(), "of", flat.numel())
    """,
)
nb.exercise(
    "ch10.unshard",
    try_it="""
    from storylib.distributed import unshard_demo

    w, b, x = torch.randn(3, 4), torch.randn(3), torch.randn(2, 4)
    out = run_local(unshard_demo, [(w, b, x)] * 2)
    print("bytes held sharded / whole / freed:", out[0]["sharded_bytes"], out[0]["whole_bytes"], out[0]["freed_bytes"])
    print("output error:", (out[0]["y"] - (x @ w.T + b)).abs().max().item())
    """,
)
nb.exercise(
    "ch10.reshard",
    try_it="""
    shards = [torch.arange(0, 4.0), torch.arange(4, 8.0), torch.tensor([8.0, 0, 0, 0])]  # 9 numbers on 3 ranks
    print(reshard(shards, 9, 2), "(expected [0..4], [5..8, 0])")
    """,
)
nb.markdown(
    """
    ## Your code trains the storyteller on 2 ranks

    A tiny storyteller trained three steps by one process, and by 2 ranks with each strategy, all built on your
    functions: the parameters after every step agree to float64 rounding.
    """
)
nb.code(
    """
    import copy

    from storylib import distributed as D
    from storylib.gpt2 import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=24)).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 61, (4, 16), generator=g), torch.randint(0, 61, (4, 16), generator=g))
               for _ in range(3)]
    _, ref = D.train_reference(copy.deepcopy(model), batches, lr=1e-2)
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        runs = D.run_local(lambda grp, m: D.train_distributed(grp, strategy, m, batches, lr=1e-2),
                           [(copy.deepcopy(model),) for _ in range(2)])
        err = max((a - b).abs().max().item() for a, b in zip(runs[0]["params"], ref))
        print(f"{strategy}: largest difference from one process {err:.1e}")
    """,
    locked=True,
)

if __name__ == "__main__":
    print(nb.write())

"""Chapter 10 on CPU processes (gloo): the ring all-reduce against its cost model, and each strategy's step time.

    python bench/distributed_cpu.py [--out bench/results/distributed_cpu.json]

(a) All-reduce of 2^10 .. 2^22 float32 numbers (4 KB .. 16 MB) on 2 and 4 gloo processes of this machine, two
implementations: gloo's own `dist.all_reduce`, and `storylib.distributed.ring_all_reduce` (send/recv only). The
model of a ring: t(p, B) = 2(p - 1) · α + 2(p - 1)/p · B / β (α: the latency of one message, β: the bandwidth of
one link). α and β are fitted to the ring's times on 2 processes (least squares of the relative error), and
predict the 4-process times. (b) Each strategy (DDP, ZeRO-1, -2, -3) trains a small storyteller on 2 processes:
median seconds per step and the share of it spent in collectives, waits for the slower rank included
(`storylib.distributed.TimedGroup`), and one process on the same global batch. Each process runs one thread;
the machine's load average is recorded (this machine is shared: rerun it quietly).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402
from storylib import distributed as D  # noqa: E402
from storylib.gpt2 import GPT, GPTConfig  # noqa: E402

SIZES = [2**k for k in range(10, 23, 2)]  # float32 elements
CFG = GPTConfig(block_size=64, vocab_size=257, n_layer=4, n_head=4, n_embd=96)
BATCH, STEPS = 8, 6


def time_all_reduce(group, sizes: list[int], repeats: int) -> dict:
    """Seconds of gloo's all-reduce and of our ring, per size: the fastest of `repeats` (on a shared machine the
    others measure the neighbours), the slowest rank's."""
    out = {"gloo": [], "ring": []}
    for n in sizes:
        x = torch.randn(n)
        for name, fn in (("gloo", lambda t: dist.all_reduce(t)), ("ring", lambda t: D.ring_all_reduce(group, t))):
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                dist.barrier()
                t0 = time.perf_counter()
                fn(x.clone())
                times.append(time.perf_counter() - t0)
            t = torch.tensor([min(times[1:])], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the collective is done when the slowest rank is
            out[name].append(t.item())
    return out


def fit_ring(sizes: list[int], seconds: list[float], p: int) -> tuple[float, float]:
    """Least squares of the relative error for t = 2(p-1)·α + 2(p-1)/p · bytes / β, α >= 0: (α s, β bytes/s)."""
    t = torch.tensor(seconds, dtype=torch.float64)[:, None]
    a = torch.tensor([[2.0 * (p - 1), 2 * (p - 1) / p * 4 * n] for n in sizes], dtype=torch.float64)
    alpha, inv_beta = torch.linalg.lstsq(a / t, torch.ones_like(t)).solution.flatten().tolist()
    if alpha < 0:  # noise at the small sizes: latency 0, bandwidth alone
        alpha, inv_beta = 0.0, (torch.linalg.lstsq(a[:, 1:] / t, torch.ones_like(t)).solution.item())
    return alpha, 1.0 / inv_beta


def strategies(group, batches, rounds: int = 3) -> dict:
    """Median step time and communication time of each strategy; the strategies take turns for `rounds` rounds
    (a neighbour's burst then hurts one round, not one strategy) and the fastest round counts."""
    out = {}
    for _ in range(rounds):
        for s in ("ddp", "zero1", "zero2", "zero3"):
            torch.manual_seed(0)
            r = D.train_distributed(group, s, GPT(CFG), batches, bucket_bytes=1 << 20, record_params=False, lr=1e-3)
            step, comm = statistics.median(r["step_seconds"][1:]), statistics.median(r["comm_seconds"][1:])
            if s not in out or step < out[s]["step_s"]:
                out[s] = {"step_s": step, "comm_s": comm}
    return out


def one_process(batches, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        torch.manual_seed(0)
        model = GPT(CFG)
        opt = D.AdamW(model.parameters(), lr=1e-3)
        for x, y in batches:
            t0 = time.perf_counter()
            model(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
    return min(statistics.median(times[k * len(batches) + 1 : (k + 1) * len(batches)]) for k in range(rounds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed_cpu.json"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = {}
    for p in (2, 4):
        rows[p] = D.launch(time_all_reduce, p, SIZES, args.repeats, timeout=600)[0]
        print(f"p={p}: gloo {[f'{t * 1e3:.2f}' for t in rows[p]['gloo']]} ms")
        print(f"p={p}: ring {[f'{t * 1e3:.2f}' for t in rows[p]['ring']]} ms")
    alpha, beta = fit_ring(SIZES, rows[2]["ring"], 2)
    predicted = [2 * (4 - 1) * alpha + 2 * (4 - 1) / 4 * 4 * n / beta for n in SIZES]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, CFG.vocab_size, (BATCH, CFG.block_size), generator=g),
                torch.randint(0, CFG.vocab_size, (BATCH, CFG.block_size), generator=g)) for _ in range(STEPS)]
    torch.set_num_threads(1)
    single = one_process(batches)
    strat = D.launch(strategies, 2, batches, timeout=600)[0]
    for s, r in strat.items():
        print(f"{s}: {r['step_s'] * 1e3:.1f} ms/step, {r['comm_s'] / r['step_s']:.0%} in communication")
    result = {
        "what": "Chapter 10: all-reduce on gloo (2 and 4 CPU processes) vs the ring model; time per training step "
                "of each strategy on 2 processes (bench/distributed_cpu.py)",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_per_process": 1,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()[0],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "all_reduce": {"elements": SIZES, "bytes": [4 * n for n in SIZES],
                       "seconds": {str(p): rows[p] for p in rows},
                       "ring_model": {"alpha_s": alpha, "beta_bytes_per_s": beta, "fitted_on": "ring, p=2",
                                      "predicted_p4_s": predicted}},
        "strategies": {"model": {"n_layer": CFG.n_layer, "n_embd": CFG.n_embd, "block_size": CFG.block_size,
                                 "params": GPT(CFG).num_params()},
                       "global_batch": BATCH, "world_size": 2, "one_process_step_s": single,
                       "per_strategy": {s: {**r, "comm_share": r["comm_s"] / r["step_s"]} for s, r in strat.items()}},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The storyteller in one C file (storylib/c/storyteller.c) against storylib's PyTorch decoding, in one run.

    python bench/c_speed.py [--tokens 256] [--repeats 5] [--threads 2] [--out bench/results/c_speed.json]

Engines, each in a process of its own (so each one's peak resident memory is its own), greedy from <|endoftext|>,
--tokens new tokens (no stop), --threads threads, interleaved --repeats times, the median kept:
- pytorch-fp32: storylib.quantize.greedy_tokens (Chapter 12's KV cache), torch.set_num_threads(threads);
- c-fp32, c-int8: build/storyteller on files from storylib.export_c (int8: groups of 64, int8 activations,
  int32 sums), OMP_NUM_THREADS=threads; tokens/s as the program reports it (after loading the file: the prompt
  and the new tokens, the same span PyTorch's timer covers).
What bounds each: a decode step reads every weight once (the bytes of the file's tensors) and does two flops a
weight plus attention over the cache. The machine's limits are measured in the same run: memory bandwidth by
copying a 256 MB array (bytes read + written per second; numpy, one thread, and torch, --threads threads) and
fp32 matmul peak (torch.mm of 2048 x 2048, --threads threads). tokens/s at the bandwidth = bandwidth / bytes per
token; at the peak = peak / flops per token. int8 arithmetic has no separate peak measured here; its flops are
counted like fp32's.
The machine may be shared: the load average at the start and the end is recorded; rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402
from storylib import export_c  # noqa: E402
from storylib.checkpoint import default_storyteller  # noqa: E402

TORCH_CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
from storylib.checkpoint import default_storyteller
from storylib.quantize import greedy_tokens
from storylib.tokenizer import eot_id
model, tok = default_storyteller()
eot = eot_id(tok)
greedy_tokens(model, [eot], 8)  # warm up
t = time.perf_counter()
ids = greedy_tokens(model, [eot], {tokens})
print(json.dumps({{"tokens_per_s": {tokens} / (time.perf_counter() - t), "ids": ids}}))
"""


def run_child(cmd: list[str], env: dict) -> tuple[str, str, int]:
    """stdout, stderr and the peak resident set (bytes) of one child process, as /usr/bin/time measures it (a
    process forked from this one would count this process's memory in its own peak)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], capture_output=True, text=True,
                              env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout, proc.stderr, int(rss.read().split()[-1]) * 1024  # KiB


def copy_bandwidth(threads: int, mb: int = 256) -> dict:
    """Bytes read + written per second copying an mb-MB float32 array: numpy (one thread) and torch (threads)."""
    n = mb * 2**20 // 4
    src, dst = np.random.default_rng(0).random(n, dtype=np.float32), np.empty(n, np.float32)
    best_np = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    torch.set_num_threads(threads)
    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
    best_torch = min(_timed(lambda: td.copy_(ts)) for _ in range(5))
    moved = 2 * n * 4
    return {"array_mb": mb, "numpy_1_thread_gb_s": moved / best_np / 1e9,
            f"torch_{threads}_threads_gb_s": moved / best_torch / 1e9}


def matmul_peak(threads: int, n: int = 2048) -> float:
    """fp32 flops per second of torch.mm (n x n), the best of 5."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n**3 / min(_timed(lambda: torch.mm(a, b)) for _ in range(5))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def per_token_costs(model, n_tokens: int) -> dict:
    """Weights read and flops of one decode step, averaged over positions 0 .. n_tokens - 1."""
    c = model.config
    matrix_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n)
    mean_context = (n_tokens + 1) / 2  # the step at position p attends over p + 1 keys
    attention_flops = 2 * 2 * c.n_layer * c.n_embd * mean_context  # q·k and the weighted sum of v
    kv_bytes = 2 * c.n_layer * c.n_embd * 4 * mean_context  # the fp32 cache read back every step
    return {"matrix_params": matrix_params, "flops_per_token": 2 * matrix_params + attention_flops,
            "kv_cache_bytes_per_token": kv_bytes}


def first_difference(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy runs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--out", default="bench/results/c_speed.json")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]
    model, tok = default_storyteller()
    tmp = Path(tempfile.mkdtemp(prefix="c_speed_"))
    binary = export_c.build(tmp / "storyteller")
    files = {d: export_c.export(model, tok, tmp / f"story_{d}.bin", d, args.group) for d in ("fp32", "int8")}
    tok_bytes = len(export_c.tokenizer_bytes(tok)[0])
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    engines = {
        "pytorch-fp32": [sys.executable, "-c", TORCH_CHILD.format(threads=args.threads, tokens=args.tokens)],
        **{f"c-{d}": [str(binary), str(f), "-n", str(args.tokens), "-t", "0", "--ids", "--no-stop"]
           for d, f in files.items()},
    }
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(args.repeats):  # interleaved: a busy moment hurts every engine alike
        for name, cmd in engines.items():
            out, err, rss = run_child(cmd, env)
            if name.startswith("pytorch"):
                r = json.loads(out)
                speed, ids = r["tokens_per_s"], r["ids"]
            else:
                speed = float(err.rsplit(" tokens/s", 1)[0].rsplit(" ", 1)[1])
                ids = [int(t) for t in out.split()]
            runs[name].append({"tokens_per_s": speed, "peak_rss_bytes": rss, "ids": ids})
            print(f"{name:13s} {speed:7.1f} tokens/s  peak RSS {rss / 2**20:6.1f} MiB", flush=True)
    bandwidth = copy_bandwidth(args.threads)
    bw = max(v for k, v in bandwidth.items() if k.endswith("gb_s")) * 1e9
    peak = matmul_peak(args.threads)
    costs = per_token_costs(model, args.tokens)
    base_ids = runs["pytorch-fp32"][0]["ids"]
    rows = []
    for name, rs in runs.items():
        dtype = name.split("-")[1]
        if name.startswith("c-"):  # the file's tensors (with their alignment padding), not its tokenizer
            weight_bytes = files[dtype].stat().st_size - tok_bytes
        else:  # the parameters (the tied lm_head once), fp32
            weight_bytes = sum(p.numel() * 4 for p in model.parameters())
        speed = statistics.median(r["tokens_per_s"] for r in rs)
        read = weight_bytes + costs["kv_cache_bytes_per_token"]
        rows.append({
            "engine": name, "dtype": dtype, "threads": args.threads, "tokens_per_s": speed,
            "tokens_per_s_runs": [r["tokens_per_s"] for r in rs],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "model_bytes": files[dtype].stat().st_size if name.startswith("c-") else weight_bytes,
            "bytes_read_per_token": read, "flops_per_token": costs["flops_per_token"],
            "tokens_per_s_at_bandwidth": bw / read, "tokens_per_s_at_matmul_peak": peak / costs["flops_per_token"],
            "achieved_gb_s": speed * read / 1e9, "achieved_gflop_s": speed * costs["flops_per_token"] / 1e9,
            "same_greedy_tokens_as_pytorch_fp32": rs[0]["ids"] == base_ids,
            "greedy_tokens_before_parting_from_pytorch_fp32": first_difference(rs[0]["ids"], base_ids),
        })
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_pytorch_fp32"] = r["tokens_per_s"] / base
        r["bound"] = "memory" if r["tokens_per_s_at_bandwidth"] < r["tokens_per_s_at_matmul_peak"] else "compute"
    doc = {
        "what": f"greedy decode of the shipped storyteller, {args.tokens} new tokens from <|endoftext|>, "
                f"{args.threads} threads, median of {args.repeats} interleaved runs, each engine in its own process: "
                "storylib's PyTorch KV-cache decode (fp32) vs storylib/c/storyteller.c (fp32; int8 weights in groups "
                f"of {args.group} with int8 activations and int32 sums)",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "cc": cc, "load_average_at_start": load_start,
                    "load_average_at_end": os.getloadavg()[0],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "memory_bandwidth": bandwidth, "bandwidth_used_gb_s": bw / 1e9, "matmul_peak_gflop_s": peak / 1e9,
        "per_token": costs, "engines": rows,
        "goals": "c-fp32 >= 5x and c-int8 >= 6x pytorch-fp32 tokens/s (issue #23)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        print(f"{r['engine']:13s} {r['tokens_per_s']:7.1f} tokens/s ({r['speedup_vs_pytorch_fp32']:.1f}x), "
              f"{r['achieved_gb_s']:.1f} GB/s of {bw / 1e9:.1f}, {r['achieved_gflop_s']:.1f} GFLOP/s of "
              f"{peak / 1e9:.0f}: {r['bound']}-bound")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

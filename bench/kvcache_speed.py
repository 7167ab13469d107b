"""Decode speed of the shipped storyteller on the CPU, with and without the KV cache (Chapter 12), in one run.

    OMP_NUM_THREADS=2 python bench/kvcache_speed.py [--tokens 128 512 1024] [--out bench/results/kvcache_cpu.json]

(a) without the cache: Chapter 5's `GPT.generate`, which runs the whole context (cropped to 256 tokens) again for
every new token; (b) with it: `storylib.kvcache.generate_tokens`. Both greedy, from <|endoftext|>, fp32, the same
threads. Also prefill against decode: the time to prefill prompts of several lengths in one forward pass, and the
time of one decode step with that many tokens in the cache. Target (issue #6): cache ≥ 10× at 1,024 tokens.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402
from storylib.checkpoint import default_storyteller  # noqa: E402
from storylib.kvcache import KVCache, decode_speed, forward_cached  # noqa: E402
from storylib.tokenizer import eot_id  # noqa: E402


@torch.no_grad()
def prefill_vs_decode(model, lengths: list[int], repeats: int = 5) -> list[dict]:
    """Median ms to prefill n tokens at once, and of one decode step with n tokens already cached."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in lengths:
        idx = torch.randint(0, 4096, (1, n), generator=g)
        cache = KVCache.for_model(model, 1, n + 1)
        pre, dec = [], []
        for _ in range(repeats + 1):  # the first of each is a warm-up
            cache.reset()
            t = time.perf_counter()
            forward_cached(model, idx, cache)
            pre.append(time.perf_counter() - t)
            t = time.perf_counter()
            forward_cached(model, idx[:, :1], cache)
            dec.append(time.perf_counter() - t)
        p, d = statistics.median(pre[1:]) * 1e3, statistics.median(dec[1:]) * 1e3
        rows.append({"tokens": n, "prefill_ms": p, "prefill_tokens_per_s": n / p * 1e3, "decode_step_ms": d})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--prefill", type=int, nargs="+", default=[16, 64, 128, 255])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "kvcache_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok = default_storyteller()
    model.eval()
    eot = eot_id(tok)
    decode_speed(model, 16, use_cache=True, prompt_ids=[eot])  # warm-up
    rows = []
    for n in args.tokens:
        slow = decode_speed(model, n, use_cache=False, prompt_ids=[eot])
        fast = decode_speed(model, n, use_cache=True, prompt_ids=[eot])
        speedup = fast["tokens_per_s"] / slow["tokens_per_s"]
        rows.append({"new_tokens": n, "no_cache_tokens_per_s": slow["tokens_per_s"],
                     "cache_tokens_per_s": fast["tokens_per_s"], "speedup": speedup})
        print(f"{n:5d} new tokens: no cache {slow['tokens_per_s']:7.1f} tok/s | cache {fast['tokens_per_s']:7.1f} "
              f"tok/s | speed-up {rows[-1]['speedup']:5.1f}x", flush=True)
    pre = prefill_vs_decode(model, args.prefill)
    for r in pre:
        print(f"prefill {r['tokens']:4d} tokens: {r['prefill_ms']:7.1f} ms ({r['prefill_tokens_per_s']:7.0f} tok/s) | "
              f"one decode step after them: {r['decode_step_ms']:5.2f} ms")
    result = {
        "what": "shipped storyteller (11.3M params, fp32, context 256): greedy decoding with and without the KV cache",
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()[0],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "decode": rows,
        "prefill_vs_decode": pre,
        "target": "cache >= 10x faster than no cache at 1024 new tokens",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

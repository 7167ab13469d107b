"""Load test of `llm101n serve` on loopback: a grid of batch sizes (--max-batch) × numbers of concurrent streaming
clients, one fresh server process per batch size, to find the batch size that serves a class best on this machine.

Each client loops: POST /v1/chat/completions with stream=true and a short story prompt, read the SSE stream to
[DONE], count the reply's tokens (usage, stream_options.include_usage), go again. Reported per cell: requests,
errors (any non-200, broken stream or missing [DONE]), p50/p99 time to first token (request sent -> first
content chunk, queueing included), aggregate generated tokens/s (tokens of requests finished in the window /
window), **goodput** (the same, counting only requests whose first token came within --slo seconds: a reply
that starts after the reader gave up is not served), the server's own mean batch size (/metrics). The batch size
with the most goodput under the heaviest load is `best_max_batch`: storylib.serve.DEFAULT_MAX_BATCH follows it
(a test checks). Results JSON with the machine in bench/results/serve_load.json.

    PYTHONPATH=. python bench/serve_load.py                      # the full grid, 30 s a cell (~12 min)
    PYTHONPATH=. python bench/serve_load.py --clients 4 --seconds 3 --modes 32 --out /tmp/x.json   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Tell me a story about a brave little cat.", "Once upon a time, there was a dog named Max.",
           "Write a story about a red ball.", "Lily and Tom went to the park.", "A story about a kind dragon.",
           "The little bird could not fly.", "Sam found a big box in the garden.", "Tell me about a happy frog."]


async def stream_once(host: str, port: int, body: dict, timeout: float = 120) -> dict:
    """One streaming request over a raw HTTP/1.1 connection (light on the client's CPU). Returns
    {"ok", "ttft", "tokens", "status", "error"}; times from just before the request is written."""
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    out = {"ok": False, "ttft": None, "tokens": 0, "status": None, "error": None}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        out["error"] = f"connect: {e}"
        return out
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (host.encode(), port, len(payload))
                     + payload)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        out["status"] = int(status_line.split()[1])
        while (await asyncio.wait_for(reader.readline(), timeout)) not in (b"\r\n", b""):
            pass  # headers
        if out["status"] != 200:
            out["error"] = f"HTTP {out['status']}: {(await reader.read(300)).decode(errors='replace')}"
            return out
        done = False
        async for line in _lines(reader, timeout):  # chunked transfer: size lines interleave; keep data: lines
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                out["error"] = chunk["error"]["message"]
                return out
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c["delta"].get("content") and out["ttft"] is None:
                    out["ttft"] = time.perf_counter() - t0
        out["ok"] = done
        if not done:
            out["error"] = "the stream ended without [DONE]"
    except (OSError, TimeoutError, ValueError, IndexError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        writer.close()
    return out


async def _lines(reader: asyncio.StreamReader, timeout: float):
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return
        yield line


async def run_load(host: str, port: int, clients: int, seconds: float, max_tokens: int = 64, seed: int = 0,
                   slo: float = 1.0) -> dict:
    """`clients` loops of streaming requests for `seconds`; only requests started inside the window count.
    goodput: tokens/s of the requests whose first token came within `slo` seconds."""
    rng = random.Random(seed)
    results: list[dict] = []
    t_end = time.perf_counter() + seconds

    async def client(i: int) -> None:
        while time.perf_counter() < t_end:
            body = {"model": "storyteller", "stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": max_tokens,
                    "temperature": 0.8, "seed": rng.randrange(2**31)}
            r = await stream_once(host, port, body)
            r["finished"] = time.perf_counter()
            results.append(r)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)

    def pct(q: float) -> float | None:
        return ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else None

    return {"clients": clients, "seconds": seconds, "wall_s": wall, "requests": len(results), "ok": len(ok),
            "errors": len(results) - len(ok), "first_errors": [r["error"] for r in results if not r["ok"]][:5],
            "ttft_p50_s": pct(0.50), "ttft_p99_s": pct(0.99),
            "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
            "tokens": sum(r["tokens"] for r in ok), "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "slo_s": slo, "goodput_tokens_per_s": sum(r["tokens"] for r in ok if (r["ttft"] or 1e9) <= slo) / wall}


def metrics(host: str, port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("llm101n_") and "{" not in line}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    import torch

    from bench.machine import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads_server": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def best_batch(grid: dict) -> int:
    """The --max-batch with the most goodput at the largest number of clients (ties: the smaller batch). Batches
    larger than that number of clients are left out: they decode the same rows, so they differ only by noise."""
    heaviest = max(grid, key=int)
    sizes = [int(b) for b in grid[heaviest] if int(b) <= int(heaviest)]
    return min(sizes, key=lambda b: (-grid[heaviest][str(b)]["goodput_tokens_per_s"], b))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32, 64], help="concurrent clients of each cell")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--slo", type=float, default=1.0, help="seconds to first token that count as served (goodput)")
    p.add_argument("--modes", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128],
                   help="--max-batch of each server (1: no batching)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import tempfile

    from storylib.service import start_server_subprocess

    fmt = lambda x: "n/a" if x is None else f"{x:.2f} s"  # noqa: E731
    grid: dict[str, dict[str, dict]] = {str(c): {} for c in args.clients}
    for max_batch in args.modes:
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            proc, _ = start_server_subprocess(port, args=["--max-batch", str(max_batch), "--max-queue",
                                                          str(max(64, *args.clients)), "--db", f"{tmp}/c.sqlite3"])
            try:
                for clients in args.clients:
                    print(f"max_batch {max_batch}: {clients} clients for {args.seconds:.0f} s ...", flush=True)
                    before = metrics("127.0.0.1", port)
                    r = asyncio.run(run_load("127.0.0.1", port, clients, args.seconds, args.max_tokens, slo=args.slo))
                    m = metrics("127.0.0.1", port)
                    steps = m["llm101n_decode_steps_total"] - before["llm101n_decode_steps_total"]
                    rows = m["llm101n_decode_rows_total"] - before["llm101n_decode_rows_total"]
                    r["mean_batch"] = rows / max(1, steps)
                    r["server_requests_cancelled"] = (m["llm101n_requests_cancelled_total"]
                                                      - before["llm101n_requests_cancelled_total"])
                    grid[str(clients)][str(max_batch)] = r
                    print(f"  requests {r['requests']}, errors {r['errors']}, TTFT p50 {fmt(r['ttft_p50_s'])} p99 "
                          f"{fmt(r['ttft_p99_s'])}, {r['tokens_per_s']:.1f} tokens/s (goodput "
                          f"{r['goodput_tokens_per_s']:.1f}), mean batch {r['mean_batch']:.1f}", flush=True)
                    if r["errors"]:
                        print(f"  first errors: {r['first_errors']}", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    out = {"what": "bench/serve_load.py: concurrent streaming chat clients on loopback, one server process per "
                   "--max-batch; grid[clients][max_batch]; tokens/s = generated tokens of finished requests / wall "
                   f"time; goodput counts only requests whose first token came within {args.slo} s",
           "max_tokens": args.max_tokens, "seconds": args.seconds, "slo_s": args.slo, "machine": machine(),
           "grid": grid, "best_max_batch": best_batch(grid)}
    heaviest = grid[str(max(args.clients))]
    if "1" in heaviest and len(heaviest) > 1:
        a, b = heaviest[str(out["best_max_batch"])], heaviest["1"]
        out["ratio_tokens_per_s"] = a["tokens_per_s"] / max(b["tokens_per_s"], 1e-9)
        out["ratio_ttft_p50"] = (b["ttft_p50_s"] or 0) / max(a["ttft_p50_s"] or 1e-9, 1e-9)
        print(f"continuous batching (max_batch {out['best_max_batch']}) vs none, {max(args.clients)} clients: "
              f"{out['ratio_tokens_per_s']:.1f}x tokens/s, p50 time to first token "
              f"{out['ratio_ttft_p50']:.1f}x shorter")
    print(f"most goodput at {max(args.clients)} clients: --max-batch {out['best_max_batch']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for row in grid.values() for r in row.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

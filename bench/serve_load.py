"""Load test of `llm101n serve` on loopback: N concurrent streaming clients for S seconds, with continuous
batching (--max-batch 64, and 32, the server's default) and without it (--max-batch 1), each mode against a fresh
server process.

Each client loops: POST /v1/chat/completions with stream=true and a short story prompt, read the SSE stream to
[DONE], count the reply's tokens (usage, stream_options.include_usage), go again. Reported per mode: requests,
errors (any non-200, broken stream or missing [DONE]), p50/p99 time to first token (request sent -> first
content chunk, queueing included), aggregate generated tokens/s (tokens of requests finished in the window /
window), the server's own mean batch size (/metrics). Then the ratio of the largest batch to no batching. Results
JSON with the machine in bench/results/serve_load.json.

    PYTHONPATH=. python bench/serve_load.py                      # 64 clients, 60 s each mode (the full run)
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


async def run_load(host: str, port: int, clients: int, seconds: float, max_tokens: int = 64, seed: int = 0) -> dict:
    """`clients` loops of streaming requests for `seconds`; only requests started inside the window count."""
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
            "tokens": sum(r["tokens"] for r in ok), "tokens_per_s": sum(r["tokens"] for r in ok) / wall}


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

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads_server": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--modes", type=int, nargs="+", default=[64, 32, 1],
                   help="--max-batch of each run (1: no batching)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import tempfile

    from storylib.service import start_server_subprocess

    runs = {}
    for max_batch in args.modes:
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            proc, _ = start_server_subprocess(port, args=["--max-batch", str(max_batch), "--max-queue",
                                                          str(max(64, args.clients)), "--db", f"{tmp}/c.sqlite3"])
            try:
                print(f"max_batch {max_batch}: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
                r = asyncio.run(run_load("127.0.0.1", port, args.clients, args.seconds, args.max_tokens))
                m = metrics("127.0.0.1", port)
                r["mean_batch"] = m["llm101n_decode_rows_total"] / max(1, m["llm101n_decode_steps_total"])
                r["server_requests_cancelled"] = m["llm101n_requests_cancelled_total"]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        runs[str(max_batch)] = r
        fmt = lambda x: "n/a" if x is None else f"{x:.2f} s"
        print(f"  requests {r['requests']}, errors {r['errors']}, TTFT p50 {fmt(r['ttft_p50_s'])} p99 "
              f"{fmt(r['ttft_p99_s'])}, {r['tokens_per_s']:.1f} tokens/s, mean batch {r['mean_batch']:.1f}",
              flush=True)
        if r["errors"]:
            print(f"  first errors: {r['first_errors']}", flush=True)
    out = {"what": "bench/serve_load.py: concurrent streaming chat clients on loopback, one server process per "
                   "mode (--max-batch); tokens/s = generated tokens of finished requests / wall time",
           "max_tokens": args.max_tokens, "machine": machine(), "runs": runs}
    if "1" in runs and len(runs) > 1:
        batched = max((k for k in runs if k != "1"), key=int)
        a, b = runs[batched], runs["1"]
        out["ratio_tokens_per_s"] = a["tokens_per_s"] / max(b["tokens_per_s"], 1e-9)
        out["ratio_ttft_p50"] = (b["ttft_p50_s"] or 0) / max(a["ttft_p50_s"] or 1e-9, 1e-9)
        print(f"continuous batching (max_batch {batched}) vs none: {out['ratio_tokens_per_s']:.1f}x tokens/s, "
              f"p50 time to first token {out['ratio_ttft_p50']:.1f}x shorter")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

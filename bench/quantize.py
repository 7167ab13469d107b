"""The shipped storyteller quantized (Chapter 13): size, validation bits per byte and CPU decode speed, in one run.

    OMP_NUM_THREADS=2 python bench/quantize.py [--stories 1000] [--threads 2] [--out bench/results/quantize_cpu.json]

Variants (storylib.quantize.quantize_model): fp32 (the baseline, measured in the same process), fp16, int8 per
channel, int8 groups of 64 with dynamic int8 activations, int4 groups of 32 round-to-nearest, int4 groups of 32
GPTQ (calibrated on the first TRAINING stories only), and fp32 weights with the int8 KV cache (QuantKVCache).
- size: bytes of the serialized tensors (packed integers + fp16 scales + everything else in fp16; fp32 for fp32);
- bits/byte: storylib.gpt2.bits_per_byte on the validation stories (the course's yardstick, 1,000 stories);
- decode: greedy tokens/s from <|endoftext|>, 2 threads, PyTorch, weights dequantized on the fly every step
  (no integer kernels: this measures what dequantize-on-the-fly costs in PyTorch, not what int8 kernels gain);
  the median of --repeats runs, every variant in the same process as fp32;
- the golden story: greedy continuation of Chapter 12's prompt, compared with grading/tests/golden/.
The JSON is rewritten after every variant, so an interrupted run keeps what it measured.
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
from storylib import quantize as Q  # noqa: E402
from storylib.checkpoint import default_storyteller  # noqa: E402
from storylib.data import load_stories  # noqa: E402
from storylib.gpt2 import bits_per_byte  # noqa: E402
from storylib.kvcache import GOLDEN_PROMPT, GOLDEN_TOKENS, KVCache, generate_stream  # noqa: E402
from storylib.scoreboard import yardstick_stories  # noqa: E402
from storylib.tokenizer import eot_id  # noqa: E402

ORDER = ("fp32", "int8", "int4-g32", "int4-gptq", "int8-g64-dyn", "kv-int8", "fp16")


def golden() -> str:
    text = (ROOT / "grading" / "tests" / "golden" / "ch12_once_upon_a_time.txt").read_text(encoding="utf-8")
    return text.partition("\n---\n")[2][:-1]


def calibration_windows(tok, n_stories: int, block: int) -> list[list[int]]:
    eot = eot_id(tok)
    return [[eot, *tok.encode_ordinary(s), eot][:block] for s in load_stories("train", limit=n_stories)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stories", type=int, default=1000, help="validation stories scored (the yardstick: 1000)")
    p.add_argument("--calib", type=int, default=128, help="training stories for GPTQ's Hessians")
    p.add_argument("--decode-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(ORDER), choices=ORDER)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/quantize_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = default_storyteller()
    eot = eot_id(tok)
    stories = yardstick_stories()[: args.stories]
    doc = {
        "what": "shipped storyteller (models/storyteller) quantized with storylib.quantize: serialized size, "
                f"validation bits/byte ({len(stories)} stories), greedy CPU decode tokens/s "
                f"({args.decode_tokens} tokens from <|endoftext|>, median of {args.repeats}, {args.threads} threads; "
                "weights dequantized on "
                "the fly in PyTorch, no integer kernels); every variant measured in the same process as fp32",
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()[0],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "calibration": f"GPTQ Hessians from the first {args.calib} TRAINING stories (each cut to "
                       f"{model.config.block_size} tokens); never the validation stories",
        "kv_cache_bytes_512_tokens": {"fp32": Q.kv_cache_bytes(model, 512, False),
                                      "int8": Q.kv_cache_bytes(model, 512, True)},
        "variants": [],
    }
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")

    hessians = None
    if "int4-gptq" in args.variants:
        t = time.perf_counter()
        hessians = Q.calibration_hessians(model, calibration_windows(tok, args.calib, model.config.block_size))
        doc["calibration_seconds"] = round(time.perf_counter() - t, 1)
    reference = golden()
    ids = [eot, *tok.encode_ordinary(GOLDEN_PROMPT)]
    base_bytes = None
    for name in [v for v in ORDER if v in args.variants]:
        t0 = time.perf_counter()
        scheme = "fp32" if name == "kv-int8" else name
        qm = Q.quantize_model(model, scheme, hessians)
        quantize_s = time.perf_counter() - t0
        cache_cls = Q.QuantKVCache if name == "kv-int8" else KVCache
        scored = Q.CachedScorer(qm, cache_cls) if name == "kv-int8" else qm
        speeds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            Q.greedy_tokens(qm, [eot], args.decode_tokens, cache_cls)
            speeds.append(args.decode_tokens / (time.perf_counter() - t))
        if name == "kv-int8":
            story = tok.decode(Q.greedy_tokens(qm, ids, GOLDEN_TOKENS, cache_cls))
        else:
            story = "".join(generate_stream(qm, tok, ids, GOLDEN_TOKENS, temperature=0.0))
        same = next((i for i, (a, b) in enumerate(zip(story, reference, strict=False)) if a != b),
                    min(len(story), len(reference)))
        t = time.perf_counter()
        bpb = bits_per_byte(scored, stories, encode_fn=tok.encode_ordinary, eot=eot)
        eval_s = time.perf_counter() - t
        size = Q.model_bytes(qm, scheme)
        base_bytes = base_bytes or size
        row = {"variant": name, "bytes": size, "bpb": bpb, "tokens_per_s": statistics.median(speeds),
               "tokens_per_s_runs": speeds, "golden_same_chars": same, "golden_chars": len(reference),
               "golden_identical": story == reference, "story": story, "quantize_seconds": round(quantize_s, 1),
               "eval_seconds": round(eval_s, 1)}
        if name == "kv-int8":
            row["bytes_note"] = "weights as fp32; the int8 is the KV cache (kv_cache_bytes_512_tokens)"
        doc["variants"].append(row)
        print(f"{name:13s} {size / 1e6:7.2f} MB  {bpb:.4f} bits/byte  {row['tokens_per_s']:6.1f} tok/s  "
              f"golden {same}/{len(reference)} chars  ({eval_s:.0f} s)", flush=True)
        save()
    base = doc["variants"][0]
    for row in doc["variants"]:
        row["smaller_than_fp32"] = base["bytes"] / row["bytes"]
        row["bpb_vs_fp32_percent"] = 100 * (row["bpb"] / base["bpb"] - 1)
        row["speed_vs_fp32"] = row["tokens_per_s"] / base["tokens_per_s"]
    doc["goals"] = "int8 >= 3.9x smaller than fp32 within +0.5% bits/byte; int4 >= 7x smaller within +3% (GPTQ)"
    save()
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

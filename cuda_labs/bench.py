"""Benchmark every lab on a real GPU against PyTorch / cuBLAS measured in the same run, plus the Chapter 8
device numbers (copy bandwidth, matmul rates, launch overhead). Writes one JSON with the card and versions.

    python -m cuda_labs.bench --out bench/results/cuda_labs_h100.json

Targets (issue #8): best matmul rung >= 50 % of cuBLAS SGEMM (TF32 off) at 4096²; softmax, layernorm and
AdamW >= 70 % of the measured device-to-device copy bandwidth; flash >= 3x naive attention at T=1024, D=64.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

from cuda_labs._compat import cuda
from cuda_labs._timing import gbps, tflops, time_ms


def device_numbers() -> dict:
    """Chapter 8's measurements: copy bandwidth by size, matmul rates by size and dtype, launch overhead."""
    import torch

    res: dict = {}
    copy = []
    for log2 in range(12, 31, 2):  # 4 KiB .. 1 GiB
        n = (1 << log2) // 4
        x = torch.randn(n, device="cuda")
        y = torch.empty_like(x)
        ms = time_ms(lambda x=x, y=y: y.copy_(x), reps=50 if log2 < 26 else 10)
        copy.append({"bytes": 4 * n, "ms": ms, "GBps": gbps(2 * 4 * n, ms)})  # read + write
        del x, y
    res["copy"] = copy
    res["copy_GBps"] = max(c["GBps"] for c in copy)

    matmul = []
    for dtype_name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                    ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n in (256, 512, 1024, 2048, 4096, 8192):
            a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
            ms = time_ms(lambda a=a, b=b: a @ b, reps=20 if n < 8192 else 5)
            elt = a.element_size()
            matmul.append({"dtype": dtype_name, "n": n, "ms": ms, "TFLOPs": tflops(2.0 * n**3, ms),
                           "intensity": 2.0 * n**3 / (3 * elt * n * n)})  # flop per byte, each matrix moved once
    torch.backends.cuda.matmul.allow_tf32 = False
    res["matmul"] = matmul
    for d in ("fp32", "tf32", "bf16"):
        res[f"{d}_TFLOPs"] = max(m["TFLOPs"] for m in matmul if m["dtype"] == d)

    @cuda.jit
    def empty_kernel(x):
        pass

    x = cuda.device_array(1)
    empty_kernel[1, 1](x)
    cuda.synchronize()
    n = 2000
    res["launch_numba_us"] = 1e3 * time_ms(lambda: [empty_kernel[1, 1](x) for _ in range(n)], 1, 5) / n
    t = torch.zeros(1, device="cuda")
    res["launch_torch_us"] = 1e3 * time_ms(lambda: [t.add_(1) for _ in range(n)], 1, 5) / n
    rt = []
    for _ in range(200):  # launch, then wait for it: the round trip a host clock sees
        s = time.perf_counter()
        empty_kernel[1, 1](x)
        cuda.synchronize()
        rt.append(time.perf_counter() - s)
    res["launch_sync_roundtrip_us"] = 1e6 * sorted(rt)[len(rt) // 2]
    g = torch.cuda.CUDAGraph()  # the same launches replayed from a CUDA graph
    with torch.cuda.graph(g):
        for _ in range(100):
            t.add_(1)
    res["launch_graph_us"] = 1e3 * time_ms(g.replay, 3, 10) / 100
    return res


def main() -> None:
    import numba
    import numpy as np
    import torch

    from cuda_labs import (
        lab01_map,
        lab02_reduce,
        lab03_softmax,
        lab04_layernorm,
        lab05_matmul,
        lab06_attention,
        lab07_adamw,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/cuda_labs_h100.json")
    ap.add_argument("--only", nargs="*", help="lab names (lab05 ...) or 'device'")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    try:
        import importlib.metadata as md

        numba_cuda = md.version("numba-cuda")
    except Exception:
        numba_cuda = None
    result = {
        "card": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
        "memory_GiB": props.total_memory / 2**30, "torch": torch.__version__, "numba": numba.__version__,
        "numba_cuda": numba_cuda, "numpy": np.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    parts = {"device": device_numbers, "lab01": lab01_map.bench, "lab02": lab02_reduce.bench,
             "lab03": lab03_softmax.bench, "lab04": lab04_layernorm.bench, "lab05": lab05_matmul.bench,
             "lab06": lab06_attention.bench, "lab07": lab07_adamw.bench}
    for name, fn in parts.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            result[name] = fn()
        except Exception:
            result[name] = {"error": traceback.format_exc()[-2000:]}
        result[name]["seconds"] = time.perf_counter() - start
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
        torch.cuda.empty_cache()

    copy = result.get("device", {}).get("copy_GBps") or result.get("lab01", {}).get("copy_GBps")
    summary = {}
    if "lab05" in result and "cublas_sgemm_TFLOPs" in result["lab05"]:
        r = result["lab05"]
        summary["matmul_best_pct_cublas"] = max(r[f"{k}_pct_cublas"] for k in lab05_matmul.LADDER)
    if copy:
        for key, lab, field in (("softmax", "lab03", "best_GBps"), ("layernorm_fwd", "lab04", "forward_GBps"),
                                ("layernorm_bwd", "lab04", "backward_GBps"), ("adamw", "lab07", "fused_GBps")):
            if field in result.get(lab, {}):
                # each lab also times a copy of its own size the way it times its kernels: divide by the larger
                ref = max(copy, result[lab].get("copy_GBps", 0.0))
                summary[f"{key}_pct_copy"] = 100 * result[lab][field] / ref
    if "flash_speedup_vs_naive" in result.get("lab06", {}):
        summary["flash_speedup_vs_naive"] = result["lab06"]["flash_speedup_vs_naive"]
    result["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    for name in parts:
        if name in result and "error" in result[name]:
            print(f"--- {name} failed:\n{result[name]['error']}")
    print("summary:", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

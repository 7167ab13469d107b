"""Lab 5's expert matmul (v6) over tile shapes, warp layouts, block grouping and register caps, against cuBLAS
SGEMM (TF32 off), in the same run.

    python bench/lab05_sweep.py          (on a GPU; prints one line per configuration, best last)
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from cuda_labs import lab05_matmul as lab  # noqa: E402
from cuda_labs._timing import tflops, time_ms  # noqa: E402


def main(n: int = 4096) -> None:
    (A, B, C), (dA, dB, dC), ref = lab.gpu_operands(n)
    flops = 2.0 * n**3
    cublas = tflops(flops, time_ms(lambda: torch.mm(A, B, out=C)))
    rows = []
    shapes = [(128, 128, 16, 8, 8)]
    layouts = [(8, 8, 2), (8, 16, 2)]  # (WX, GROUP, UNROLL)
    maps = [(False, False), (True, False), (False, True), (True, True)]  # (AMAP, BMAP): conflict-free tile stores
    for shape, (WX, GROUP, UNROLL), (AMAP, BMAP), exact, cap in itertools.product(shapes, layouts, maps, (True,),
                                                                                  (128,)):
        lab.REGISTER_CAP = {"max_registers": cap}
        lab.expert_kernel.cache_clear()
        BM, BN, BK, TM, TN = shape
        cfg = dict(BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, WX=WX, GROUP=GROUP, UNROLL=UNROLL, AMAP=AMAP, BMAP=BMAP)
        try:
            kernel = lab.expert_kernel(BM, BN, BK, TM, TN, WX, GROUP, UNROLL, exact, AMAP, BMAP)
            grid = (lab.cdiv(n, BN), lab.cdiv(n, BM))
            ms = time_ms(lambda k=kernel, g=grid: k[g, k.threads](dA, dB, dC))
        except Exception as e:  # a shape the kernel's asserts or the GPU refuse
            print(f"{cfg} cap {cap}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            continue
        err = float((C.double() - ref).norm() / ref.norm())
        regs = kernel.get_regs_per_thread()
        regs = int(next(iter(regs.values()))) if isinstance(regs, dict) else int(regs)
        t = tflops(flops, ms)
        row = {**cfg, "EXACT": exact, "cap": cap, "regs": regs, "TFLOPs": t, "pct_cublas": 100 * t / cublas,
               "rel_err": err}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["TFLOPs"])
    print("cublas", cublas, "best", json.dumps(best))
    Path(os.environ.get("OUT", "/tmp"), "lab05_sweep.json").write_text(json.dumps(
        {"card": torch.cuda.get_device_name(), "n": n, "cublas_sgemm_TFLOPs": cublas, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Timing device code correctly (Chapter 8.4): warm up, bracket with CUDA events, take the median.

A kernel launch returns before the kernel has run, so a host clock read right after it measures the
launch, not the work. CUDA events are recorded into the stream and timed by the GPU itself.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20, warm_s: float = 0.1) -> float:
    """Median milliseconds of one call of `fn` on the GPU (needs torch with CUDA; numba and torch share stream 0).

    Warm-up: `warmup` calls (compilation, module load, caches), then more calls until `warm_s` seconds have
    passed: an idle GPU runs at a low clock and needs a moment of load to reach its working clock.
    """
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < warm_s:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12

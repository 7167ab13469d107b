"""Timing device code correctly (Chapter 8.4): warm up, bracket with CUDA events, take the median.

A kernel launch returns before the kernel has run, so a host clock read right after it measures the
launch, not the work. CUDA events are recorded into the stream and timed by the GPU itself.

    time_ms         one call at a time on an idle GPU: what a lone call costs, launch latency included
    time_queued_ms  calls queued back to back behind a GPU spin: the kernel's own time, as in a training step
                    (the labs' benchmarks report this; numba's ~20 µs of Python per launch would otherwise sit
                    inside the events and hide a third of a bandwidth-bound kernel's speed)
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


SLEEP_CYCLES = 4_000_000  # ~2 ms of GPU busy-wait at H100 clocks


def time_queued_ms(fn: Callable[[], object], reps: int = 20, rounds: int = 7) -> float:
    """Median GPU milliseconds per call of `fn`, with the host's launch time hidden.

    `time_ms` brackets ONE call with events on an idle GPU, so the ~20 µs numba needs to launch a kernel
    (argument typing, in Python) runs while the GPU waits, and is timed. Here the GPU first spins for ~2 ms
    (torch.cuda._sleep) while the host queues start event, `reps` calls and end event behind the spin: the
    events then time back-to-back kernels. If queueing took longer than the spin the GPU would idle and the
    number would come out LOWER, never higher.
    """
    import torch

    time_ms(fn, reps=3)  # warm-up: compilation, module load, the GPU's clock
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12

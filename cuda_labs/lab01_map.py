"""Lab 1 — map, zip, guards, 2-D indexing, many blocks (book §8.6).

The first kernels: one GPU thread per output element. A launch `kernel[blocks, threads](args)` starts
blocks × threads copies of the function; each finds its element from its coordinates

    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x      (= cuda.grid(1))

and must check `i < n` (the guard): the grid is rounded up to whole blocks, so the last block has
threads with no element. Performance contract of every kernel here: read each input element once,
write each output element once, consecutive threads touch consecutive addresses (coalesced).

    python -m cuda_labs.lab01_map     # benchmark on a GPU: bandwidth of each kernel vs a device copy
"""

from __future__ import annotations

import math

import numpy as np

from cuda_labs._compat import cuda

THREADS = 256  # threads per block for the 1-D kernels (a multiple of the 32-thread warp)


# ----------------------------------------------------------------------------- references (NumPy, float64)


def axpb_reference(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * x.astype(np.float64) + b


def add_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) + y.astype(np.float64)


def add_bias_reference(X: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return X.astype(np.float64) + bias.astype(np.float64)[None, :]


def gelu_reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# ----------------------------------------------------------------------------- kernels


@cuda.jit
def axpb_kernel(x, a, b, out):
    """Map: out[i] = a * x[i] + b for every i < len(x), one thread per element.  (exercise lab01.map)

    x, out: 1-D float32 device arrays of the same length n; a, b: floats. Launched with at least n threads;
    threads with i >= n must not touch memory.
    """
    ### BEGIN SOLUTION lab01.map (§8.6, 1 pt): one thread per element; the grid is rounded up to whole blocks
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = a * x[i] + b
    ### END SOLUTION


@cuda.jit
def add_kernel(x, y, out):
    """Zip: out[i] = x[i] + y[i], one thread per element, guarded.  (exercise lab01.zip)"""
    ### BEGIN SOLUTION lab01.zip (§8.6, 1 pt): the map, with two inputs
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = x[i] + y[i]
    ### END SOLUTION


@cuda.jit
def add_bias_kernel(X, bias, out):
    """2-D: out[r, c] = X[r, c] + bias[c] for an (R, C) matrix, one thread per element.  (exercise lab01.grid2d)

    Launched on a 2-D grid of 2-D blocks. Make the *x* coordinate walk the columns c: threads of a warp
    then read consecutive addresses of a row (row-major storage), which the memory system coalesces.
    Both coordinates need a guard.
    """
    ### BEGIN SOLUTION lab01.grid2d (§8.6, 2 pts): which coordinate differs along a warp? which way does a row run?
    c, r = cuda.grid(2)
    if r < X.shape[0] and c < X.shape[1]:
        out[r, c] = X[r, c] + bias[c]
    ### END SOLUTION


@cuda.jit
def gelu_kernel(x, out):
    """GELU (tanh form) of every element with a grid-stride loop.  (exercise lab01.gridstride)

    The grid may have fewer threads than elements (any number of blocks must work): thread i handles
    i, i + stride, i + 2·stride, ... with stride = the total number of threads (cuda.gridsize(1)).
    """
    ### BEGIN SOLUTION lab01.gridstride (§8.6, 2 pts): the grid-stride loop: any grid, any n
    c = math.sqrt(2.0 / math.pi)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        out[i] = 0.5 * v * (1.0 + math.tanh(c * (v + 0.044715 * v * v * v)))
    ### END SOLUTION


# ----------------------------------------------------------------------------- launchers


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Enough blocks of `threads` threads to cover n elements (rounded up)."""
    return (n + threads - 1) // threads


def axpb(x, a: float, b: float, out, threads: int = THREADS) -> None:
    axpb_kernel[blocks_for(x.shape[0], threads), threads](x, np.float32(a), np.float32(b), out)


def add(x, y, out, threads: int = THREADS) -> None:
    add_kernel[blocks_for(x.shape[0], threads), threads](x, y, out)


def add_bias(X, bias, out, block: tuple[int, int] = (32, 8)) -> None:
    R, C = X.shape
    grid = (blocks_for(C, block[0]), blocks_for(R, block[1]))
    add_bias_kernel[grid, block](X, bias, out)


def gelu(x, out, blocks: int | None = None, threads: int = THREADS) -> None:
    gelu_kernel[blocks or blocks_for(x.shape[0], threads), threads](x, out)


# ----------------------------------------------------------------------------- benchmark (real GPU)


def bench(n: int = 1 << 26) -> dict:
    """GB/s of each kernel at n float32 elements, against torch's device-to-device copy in the same run
    (_timing.time_queued_ms: launches back to back, the host's launch time hidden, for torch too)."""
    import torch

    from cuda_labs._timing import gbps, time_queued_ms

    x, y = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    dx, dy, dout = (cuda.as_cuda_array(t, sync=False) for t in (x, y, out))
    side = int(math.isqrt(n))
    X, bias = x[: side * side].view(side, side), y[:side]
    dX, dbias, dO = cuda.as_cuda_array(X, sync=False), cuda.as_cuda_array(bias, sync=False), cuda.as_cuda_array(
        out[: side * side].view(side, side), sync=False)
    nb = 4 * n
    results = {"n": n, "copy_GBps": gbps(2 * nb, time_queued_ms(lambda: out.copy_(x)))}
    results["map_GBps"] = gbps(2 * nb, time_queued_ms(lambda: axpb(dx, 2.0, 1.0, dout)))
    results["zip_GBps"] = gbps(3 * nb, time_queued_ms(lambda: add(dx, dy, dout)))
    results["grid2d_GBps"] = gbps(2 * 4 * side * side, time_queued_ms(lambda: add_bias(dX, dbias, dO)))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results["gridstride_GBps"] = gbps(2 * nb, time_queued_ms(lambda: gelu(dx, dout, blocks=8 * sms)))
    return results


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>18}: {v:,.1f}")

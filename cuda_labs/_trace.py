"""Which thread touches which element: run a kernel on the CUDA simulator with its arrays wrapped, and log every
read and write of device memory. The lab tests use it to grade HOW a kernel accesses memory (coalesced reads,
each element loaded once per block), not only what it computes.

    log = trace(kernel, grid, block, A, B, C)   # the kernel runs; A, B, C are changed in place as usual
    log["B"]    # one row per access: block x, y, z, thread x, y, z, the thread's access number, address, write?
    neighbour_steps(log["B"])                   # {1}: threads next to each other in x read neighbouring floats
    most_reads_per_block(log["A"])              # 1: each block read each element of A once

The address is the element's position in row-major order (what a GPU's memory system sees, in floats). Shared
and local arrays are not logged: they are not device memory. On a machine with a GPU the kernel's Python
function still runs on the simulator here, so the log is the same everywhere.
"""

from __future__ import annotations

import threading

import numpy as np

import cuda_labs._compat  # noqa: F401  (numba set up: the simulator where there is no GPU)

COLUMNS = ("bx", "by", "bz", "tx", "ty", "tz", "seq", "address", "write")


class Traced:
    """A device array as the simulator's kernel sees it, logging each access with the thread that made it."""

    def __init__(self, array: np.ndarray, log: list, counts: dict):
        self.array, self.log, self.counts = array, log, counts
        self.shape, self.ndim, self.dtype, self.size = array.shape, array.ndim, array.dtype, array.size

    def _record(self, idx, write: bool) -> None:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != self.ndim or not all(isinstance(i, (int, np.integer)) for i in idx):
            raise TypeError(f"index one element at a time with {self.ndim} integers, got {idx!r}")
        address = int(np.ravel_multi_index(tuple(int(i) % n for i, n in zip(idx, self.shape, strict=True)),
                                           self.shape))
        me = threading.current_thread()
        key = (tuple(me.blockIdx), tuple(me.threadIdx))
        seq = self.counts.get(key, 0)  # the thread's n-th access to this array
        self.counts[key] = seq + 1
        self.log.append((*me.blockIdx, *me.threadIdx, seq, address, int(write)))

    def __getitem__(self, idx):
        self._record(idx, False)
        return self.array[idx]

    def __setitem__(self, idx, value):
        self._record(idx, True)
        self.array[idx] = value

    def __len__(self) -> int:
        return len(self.array)


def _is_dispatcher(obj) -> bool:
    return hasattr(obj, "py_func") and not hasattr(obj, "fn")  # a compiled kernel, not the simulator's


def _on_simulator(fn, memo: dict):
    """`fn` with every compiled device function it calls (by a global or closure name) swapped for the
    simulator's version of it, recursively: on a GPU machine the simulated kernel must not call real ones."""
    import types

    from numba.cuda.simulator.kernel import FakeCUDAKernel

    def swap(obj):
        if not _is_dispatcher(obj):
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = FakeCUDAKernel(_on_simulator(obj.py_func, memo), device=True)
        return memo[id(obj)]

    names = dict(fn.__globals__)
    names.update({n: swap(names[n]) for n in fn.__code__.co_names if n in names})
    closure = tuple(types.CellType(swap(c.cell_contents)) for c in fn.__closure__ or ()) or None
    return types.FunctionType(fn.__code__, names, fn.__name__, fn.__defaults__, closure)


def _simulated(kernel):
    """The kernel as the simulator runs it: itself in the simulator, its Python function on a GPU machine."""
    if _is_dispatcher(kernel):
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        cuda_labs._compat.patch_simulator()  # warp shuffles and aligned arrays, as in the simulator proper
        return FakeCUDAKernel(_on_simulator(kernel.py_func, {}), device=False)
    return kernel


def trace(kernel, grid, block, *arrays: np.ndarray, names: str = "ABCDEFGH") -> dict[str, np.ndarray]:
    """Launch `kernel[grid, block](*arrays)` on the simulator; {name: int64 array (accesses, 9), COLUMNS order}.

    The array arguments are named A, B, C, ... in order (or by the letters of `names`); other arguments pass
    through unlogged."""
    logs, args = {}, []
    for a in arrays:
        if isinstance(a, np.ndarray):
            name = names[len(logs)]
            logs[name] = []
            args.append(Traced(a, logs[name], {}))
        else:
            args.append(a)
    _simulated(kernel)[grid, block](*args)
    return {name: np.array(log, np.int64).reshape(-1, len(COLUMNS)) for name, log in logs.items()}


def neighbour_steps(log: np.ndarray, write: bool | None = None) -> set[int]:
    """Address steps between threads next to each other in x making the same access (same block, same thread y
    and z, same access number; reads and writes both unless `write` picks one): {1} is a coalesced access,
    {0} a broadcast, anything larger a strided one."""
    if write is not None:
        log = log[log[:, 8] == int(write)]
    key = [0, 1, 2, 4, 5, 6]
    s = log[np.lexsort([log[:, 3]] + [log[:, c] for c in reversed(key)])]
    next_in_x = (s[1:, key] == s[:-1, key]).all(1) & (s[1:, 3] == s[:-1, 3] + 1)
    return set((s[1:, 7] - s[:-1, 7])[next_in_x].tolist())


def most_reads_per_block(log: np.ndarray) -> int:
    """The largest number of times one block read one element (0 when nothing was read)."""
    reads = log[log[:, 8] == 0]
    if not len(reads):
        return 0
    return int(np.unique(reads[:, [0, 1, 2, 7]], axis=0, return_counts=True)[1].max())


__all__ = ["COLUMNS", "trace", "neighbour_steps", "most_reads_per_block"]

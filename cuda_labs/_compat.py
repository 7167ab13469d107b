"""The one place where cuda_labs imports numba.cuda. Everything else does `from cuda_labs._compat import cuda`.

1. A GPU here (/dev/nvidiactl): kernels run on it. None: they run on the CUDA simulator (NUMBA_ENABLE_CUDASIM=1),
   each thread a Python thread — slow but exact, good for sizes up to ~32. Set NUMBA_ENABLE_CUDASIM yourself to
   choose (1: the simulator, 0: the GPU or an error). The grader asks numba itself (`python cuda_labs/_compat.py`
   prints the GPU it finds) and sets the variable for its processes (grading/harness.py).
2. NumPy >= 2.5 removed `np.row_stack`, which numba-cuda 0.30 still calls at import: alias it to `np.vstack`.
3. Two simulators, the same gaps: numba's built-in numba.cuda and the numba-cuda package (which takes over
   `numba.cuda` when installed) have no warp shuffles; we add `shfl_down_sync`, `shfl_xor_sync` and `shfl_sync`
   built on the block barrier. So in the simulator every thread of the block must reach each shuffle (on a GPU,
   every lane of the warp named by the mask must: write kernels that satisfy both).
4. Neither simulator's `cuda.shared.array` / `cuda.local.array` takes `alignment=` (numba's has no such argument,
   numba-cuda's raises on it), which the GPU's do: accept and ignore it.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback

import numpy as np

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
if "numba" in sys.modules and "numba.cuda" not in sys.modules:  # numba read its config before we set it
    from numba.core import config as _numba_config

    _numba_config.reload_config()

if not hasattr(np, "row_stack"):  # NumPy 2.5 removed it; numba-cuda 0.30 still uses it
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402

try:  # numba-cuda keeps its settings apart from numba's
    from numba.cuda.core import config as _config
except ImportError:  # numba's built-in numba.cuda
    from numba.core import config as _config

SIMULATOR: bool = bool(_config.ENABLE_CUDASIM)  # True: kernels run as Python threads on the CPU
WARP = 32


def device_name() -> str:
    """What the kernels run on: the GPU's name, or "CUDA simulator"."""
    if SIMULATOR:
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def _shuffle(value, source_lane):
    """Simulator shuffle: every thread posts its value, a block barrier, read the source lane's, a barrier."""
    me = threading.current_thread()
    posted = me._manager.__dict__.setdefault("_shuffle_slots", {})
    posted[me.thread_id] = value
    me.syncthreads()
    lane = me.thread_id % WARP
    src = source_lane(lane)
    out = posted.get(me.thread_id - lane + src, value) if 0 <= src < WARP else value
    me.syncthreads()
    return out


def _local_array(self, shape, dtype, alignment=None):
    if isinstance(dtype, _sim.types.Type):
        dtype = _sim.numpy_support.as_dtype(dtype)
    return np.empty(shape, dtype)


def _shared_array(self, shape, dtype, alignment=None):
    """The simulator's shared array, one per source line of the kernel (as the simulator's own, which this replaces:
    it looks one frame up, and called through a wrapper it would hand every array of a kernel the same memory)."""
    if shape == 0:
        return _sim_shared_array(self, shape, dtype)
    caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # (file, line) of the kernel's call
    if caller not in self._allocations:
        self._allocations[caller] = _local_array(self, shape, dtype)
    return self._allocations[caller]


def patch_simulator() -> None:
    """Fill the simulator's gaps (3 and 4 above). Done at import in the simulator; cuda_labs._trace calls it on a
    GPU machine too, where it still runs kernels on the simulator to log their accesses."""
    global _sim, _sim_shared_array
    from numba.cuda.simulator import kernelapi as _sim

    if _sim.FakeCUDAShared.array.__name__ != "_shared_array":  # once, even where this file is loaded twice
        _sim_shared_array = _sim.FakeCUDAShared.array
        _sim.FakeCUDAShared.array, _sim.FakeCUDALocal.array = _shared_array, _local_array

    if not hasattr(_sim.FakeCUDAModule, "shfl_down_sync"):
        _sim.FakeCUDAModule.shfl_down_sync = lambda self, mask, v, delta: _shuffle(v, lambda lane: lane + delta)
        _sim.FakeCUDAModule.shfl_xor_sync = lambda self, mask, v, lane_mask: _shuffle(v, lambda lane: lane ^ lane_mask)
        _sim.FakeCUDAModule.shfl_sync = lambda self, mask, v, src_lane: _shuffle(v, lambda lane: src_lane)


if SIMULATOR:
    patch_simulator()

__all__ = ["cuda", "SIMULATOR", "WARP", "device_name", "patch_simulator"]

if __name__ == "__main__":  # what the grader asks (with NUMBA_ENABLE_CUDASIM=0): the GPU numba can use, if any
    print(device_name() if SIMULATOR or cuda.is_available() else "")

"""The one place where cuda_labs imports numba.cuda. Everything else does `from cuda_labs._compat import cuda`.

1. No GPU here (no /dev/nvidiactl): run kernels on numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), each
   thread a Python thread — slow but exact, good for sizes up to ~32. Set NUMBA_ENABLE_CUDASIM=0 to refuse it.
2. NumPy >= 2.5 removed `np.row_stack`, which numba-cuda 0.30 still calls at import: alias it to `np.vstack`.
3. The simulator of numba 0.68 has no warp shuffles; we add `shfl_down_sync`, `shfl_xor_sync` and
   `shfl_sync` built on the block barrier. So in the simulator every thread of the block must reach each
   shuffle (on a GPU, every lane of the warp named by the mask must: write kernels that satisfy both).
4. Its `cuda.shared.array` / `cuda.local.array` take no `alignment=` (numba-cuda's do): accept and ignore it.
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
    from numba.core import config as _config

    _config.reload_config()

if not hasattr(np, "row_stack"):  # NumPy 2.5 removed it; numba-cuda 0.30 still uses it
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402
from numba.core import config as _config  # noqa: E402
from numba.core import types  # noqa: E402
from numba.np import numpy_support  # noqa: E402

SIMULATOR: bool = bool(_config.ENABLE_CUDASIM)  # True: kernels run as Python threads on the CPU
WARP = 32


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
    return np.empty(shape, numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype)


def _shared_array(self, shape, dtype, alignment=None):
    """The simulator's shared array, one per source line of the kernel (as numba's own, which this replaces:
    it looks one frame up, and called through a wrapper it would hand every array of a kernel the same memory)."""
    if shape == 0:
        return _SIM_SHARED_ARRAY(self, shape, dtype)
    caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # (file, line) of the kernel's call
    if caller not in self._allocations:
        self._allocations[caller] = _local_array(self, shape, dtype)
    return self._allocations[caller]


if SIMULATOR:
    from numba.cuda.simulator.kernelapi import FakeCUDALocal, FakeCUDAModule, FakeCUDAShared

    if "alignment" not in FakeCUDAShared.array.__code__.co_varnames:
        _SIM_SHARED_ARRAY = FakeCUDAShared.array
        FakeCUDAShared.array, FakeCUDALocal.array = _shared_array, _local_array

    if not hasattr(FakeCUDAModule, "shfl_down_sync"):
        FakeCUDAModule.shfl_down_sync = lambda self, mask, v, delta: _shuffle(v, lambda lane: lane + delta)
        FakeCUDAModule.shfl_xor_sync = lambda self, mask, v, lane_mask: _shuffle(v, lambda lane: lane ^ lane_mask)
        FakeCUDAModule.shfl_sync = lambda self, mask, v, src_lane: _shuffle(v, lambda lane: src_lane)

__all__ = ["cuda", "SIMULATOR", "WARP"]

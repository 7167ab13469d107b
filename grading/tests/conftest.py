"""Shared set-up of the graded tests.

cuda_labs kernels run on numba's CUDA simulator here: NUMBA_ENABLE_CUDASIM must be set before numba is
first imported, and this conftest is read before any test module of this folder is imported. The grading
harness sets it too (grading/harness.py). Set NUMBA_ENABLE_CUDASIM=0 yourself to run the lab tests on a GPU.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

"""Shared set-up of the graded tests.

Run by the grader, the learner's code lives in a worker process (grading/remote.py): `worker` is the connection
to it, for the few tests whose objects must live there, and `storage_ptr` tells which memory a tensor of the
learner's lives in. Run directly on the reference (`make unit`), `worker` is None.

cuda_labs kernels run on the GPU when this machine has one, else on numba's CUDA simulator: cuda_labs/_compat.py
chooses (set NUMBA_ENABLE_CUDASIM=1 yourself to force the simulator). The grader asks numba which and tells both
of its processes the same (grading/harness.py; `llm101n check --simulator` forces the simulator).
"""

import pytest


@pytest.fixture
def worker(request):
    """The learner's worker process (`worker.module(name)`, `worker.shared(tensor)`), or None when the tests import
    storylib directly."""
    return getattr(request.config, "llm101n_worker", None)


@pytest.fixture
def storage_ptr(worker):
    """Which memory a tensor lives in, where the learner's code made it: a view shares its base's."""
    if worker is None:
        return lambda t: t.untyped_storage().data_ptr()
    return worker.storage_ptr


@pytest.fixture
def repeat(worker):
    """repeat(n, fn, *args, **kwargs): the results of n calls, in order (in the worker: one request, not n)."""
    if worker is None:
        return lambda n, fn, *args, **kwargs: [fn(*args, **kwargs) for _ in range(n)]
    return worker.repeat

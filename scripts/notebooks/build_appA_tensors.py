"""Build solutions/appA_tensors.ipynb, the nbgrader source notebook of Appendix A (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("appA_tensors", title="Appendix A — Tensors: shapes, views and strides")
nb.markdown(
    """
    In this notebook you write `storylib/strided.py`: a tiny N-dimensional array over a flat Python list, kept as
    a shape, strides and an offset, with PyTorch's rules for strides, transpose, view, expand and contiguous. Each
    cell below checks your code against `torch` on a few examples; the graded cells run the full tests (random
    shapes and random sequences of views, compared with PyTorch).
    """
)
nb.code(
    """
    import torch

    x = torch.arange(24).view(2, 3, 4)
    """,
    locked=True,
)
nb.exercise(
    "appA.strides",
    try_it="""
    for shape in [(2, 3, 4), (5,), (3, 1, 2)]:
        print(shape, contiguous_strides(shape), "torch:", torch.empty(shape).stride())
    """,
)
nb.exercise(
    "appA.offset",
    try_it="""
    print(flat_index((1, 2, 3), x.stride()), "(expected", int(x[1, 2, 3]), ")")
    """,
)
nb.exercise(
    "appA.transpose",
    try_it="""
    t = Strided.arange(2, 3, 4).transpose(0, 2)
    print(t, "torch:", x.transpose(0, 2).stride(), t.tolist() == x.transpose(0, 2).tolist())
    """,
)
nb.exercise(
    "appA.view",
    try_it="""
    print(view_strides((3, 2), (1, 3), (6,)), "(expected None: a transpose cannot be flattened)")
    print(view_strides((2, 3, 4), (12, 4, 1), (6, 4)), "torch:", x.view(6, 4).stride())
    """,
)
nb.exercise(
    "appA.expand",
    try_it="""
    print(expand_strides((3, 1), (1, 1), (2, 3, 5)), "torch:", torch.arange(3).view(3, 1).expand(2, 3, 5).stride())
    """,
)
nb.question(
    "appA_q_expand_bytes",
    points=1,
    prompt="""
    A bias of 768 float32 numbers is expanded to shape (64, 256, 768). How many bytes does the expanded tensor's
    storage hold? Set `expanded_bytes`.
    """,
    solution="expanded_bytes = 768 * 4",
    test="assert expanded_bytes == 3072, 'expand copies nothing: stride 0 reads the same 768 numbers again'",
)
nb.exercise(
    "appA.contiguous",
    try_it="""
    t = Strided.arange(2, 3, 4).transpose(1, 2)
    c = t.contiguous()
    print(c, c.tolist() == x.transpose(1, 2).contiguous().tolist())
    """,
)

if __name__ == "__main__":
    print(nb.write())

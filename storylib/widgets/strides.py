"""A stride explorer for Appendix A: start from arange, apply views, see the strides and the memory they read.

    from storylib.widgets import StrideExplorer
    StrideExplorer((3, 4), ops=[{"op": "transpose", "dims": [0, 1]}])

The reader picks a start shape and applies transpose, permute, slice, select, expand, view, reshape or contiguous;
the widget shows the shape, strides, offset and whether the result is contiguous, the tensor (each element showing
the buffer position it reads, coloured by its row-major index) and the flat buffer (each position coloured by the
element that reads it, grey when none does, ×k when k elements do, as after expand).

All the stride arithmetic is in js/strides.js (the rules of storylib/strided.py), so the widget works the same in
the static book, where no kernel runs; tests/test_strides_widget.py runs that JavaScript under node against torch.
An op is a dict: {"op": "transpose"|"permute", "dims"}, {"op": "select", "dim", "index"},
{"op": "slice", "dim", "start", "stop", "step"}, {"op": "expand"|"view"|"reshape", "shape"}, {"op": "contiguous"}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import anywidget
import traitlets

from storylib.widgets import front_end

OP_FIELDS = {"transpose": {"dims"}, "permute": {"dims"}, "select": {"dim", "index"},
             "slice": {"dim", "start", "stop", "step"}, "expand": {"shape"}, "view": {"shape"},
             "reshape": {"shape"}, "contiguous": set()}
MAX_ELEMENTS = 256  # the start tensor: enough to see a layout, few enough to draw every element


class StrideExplorer(anywidget.AnyWidget):
    """A tensor over a flat buffer, and what views do to its strides (see the module docstring)."""

    _esm = front_end("strides")
    _css = Path(__file__).parent / "js" / "strides.css"
    shape = traitlets.List(traitlets.Int()).tag(sync=True)  # the start: arange(prod(shape)).view(shape)
    ops = traitlets.List(traitlets.Dict()).tag(sync=True)  # applied in order

    def __init__(self, shape: Sequence[int] = (3, 4), ops: Sequence[dict] = (), **kwargs) -> None:
        shape = [int(s) for s in shape]
        if not shape or min(shape) < 1 or math.prod(shape) > MAX_ELEMENTS:
            raise ValueError(f"the start shape needs sizes >= 1 and at most {MAX_ELEMENTS} elements, got {shape}")
        for op in ops:
            if op.get("op") not in OP_FIELDS or set(op) - {"op"} - OP_FIELDS[op["op"]]:
                raise ValueError(f"not an op: {op} (see storylib.widgets.strides)")
        super().__init__(shape=shape, ops=[dict(op) for op in ops], **kwargs)

"""Appendix A — a tensor is a flat block of memory plus three numbers that say how to read it.

A tensor of shape (d0, d1, ..., dn-1) over a flat buffer keeps strides (s0, ..., sn-1) and an offset: element
[i0, ..., in-1] lives at buffer[offset + i0*s0 + ... + in-1*sn-1]. Everything below changes only those numbers
(a *view*: no element is copied), except `contiguous` and a `reshape` that cannot be a view.

    contiguous_strides   the strides of a fresh row-major tensor                      (exercise appA.strides)
    flat_index           where element [i0, ..., in-1] lives in the buffer            (exercise appA.offset)
    Strided.transpose    swap two dimensions: swap their sizes and strides            (exercise appA.transpose)
    Strided.permute, .select, .slice, t[...]   more views: reorder, pick one index, keep every k-th
    view_strides         PyTorch's rule for when a new shape can be a view, and its strides
                                                                                      (exercise appA.view)
    Strided.view, .reshape   a view, else an error (view) or a copy (reshape)
    expand_strides       broadcasting: a size-1 dimension read again and again has stride 0
                                                                                      (exercise appA.expand)
    broadcast_shapes     the shape two broadcast tensors share
    Strided.is_contiguous, .contiguous   row-major without gaps? else copy it so   (exercise appA.contiguous)

The buffer is a Python list (or `array.array`) shared by a tensor and all its views, as a torch.Tensor's storage
is; the graded tests compare every result with torch (`torch.as_strided`, `.view`, `.expand`, `.contiguous`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import MutableSequence, Sequence

# ----------------------------------------------------------------------------- strides and offsets


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides of a row-major (C order) tensor of this shape: the last dimension has stride 1, and each one
    before it steps over a whole block of the dimensions after it: strides[i] = strides[i+1] * shape[i+1].

    A dimension of size 0 counts as size 1 here (as in PyTorch), so (2, 0, 3) has strides (3, 3, 1).
    Example: (2, 3, 4) -> (12, 4, 1). An empty shape (a scalar) -> ()."""
    ### BEGIN SOLUTION appA.strides (§A.2, 1 pt): from the last dimension back: stride 1, then times each size
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)
    ### END SOLUTION


def flat_index(index: Sequence[int], strides: Sequence[int], offset: int = 0) -> int:
    """Where element `index` lives in the buffer: offset + sum of index[k] * strides[k].

    index must name every dimension (len(index) == len(strides)), each entry non-negative; raises ValueError
    when the lengths differ."""
    ### BEGIN SOLUTION appA.offset (§A.2, 1 pt): the offset plus each index times its dimension's stride
    if len(index) != len(strides):
        raise ValueError(f"an index of {len(index)} numbers for a tensor of {len(strides)} dimensions")
    return offset + sum(i * s for i, s in zip(index, strides, strict=True))
    ### END SOLUTION


def _check_dim(dim: int, ndim: int) -> int:
    if not -ndim <= dim < ndim:
        raise IndexError(f"dimension {dim} out of range for a tensor of {ndim} dimensions")
    return dim % ndim


# ----------------------------------------------------------------------------- view: PyTorch's rule


def view_strides(shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The strides of `new_shape` viewing the same elements as (shape, strides), or None when no strides can.

    PyTorch's rule (ATen's computeStride): split the old dimensions into *chunks*, runs of neighbours where each
    stride is the next one's stride times its size (memory without gaps inside the run). A new shape is a view
    when its dimensions, read from the right, split and merge only inside a chunk; each new dimension then gets
    the stride of the chunk's innermost dimension times the sizes of the new dimensions to its right within the
    chunk. Old dimensions of size 1 never end a chunk; a new dimension of size 1 joins the chunk on its right
    (the one being filled when it is reached, from the right). Both shapes hold the same number of elements, at
    least one (scalars: shape ()). Example: a transposed (3, 2) with strides (1, 3) cannot become (6,), but
    (3, 2, 1) with strides (1, 3, 3) can be viewed as (3, 2)."""
    if math.prod(shape) != math.prod(new_shape):
        raise ValueError(f"shape {tuple(new_shape)} is invalid for {math.prod(shape)} elements")
    ### BEGIN SOLUTION appA.view (§A.5, 3 pts): chunks of old dims without gaps; new dims must tile each chunk exactly
    if len(shape) == 0:
        return (1,) * len(new_shape)
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    chunk_base_stride = strides[-1]  # the stride of the innermost dimension of the current chunk
    tensor_numel = view_numel = 1
    for d in range(len(shape) - 1, -1, -1):
        tensor_numel *= shape[d]
        # the chunk ends at d when the dimension before it does not continue it without a gap
        if d == 0 or (shape[d - 1] != 1 and strides[d - 1] != tensor_numel * chunk_base_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * chunk_base_stride
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:  # a new dimension straddles two chunks: no strides read it
                return None
            if d > 0:
                chunk_base_stride, tensor_numel, view_numel = strides[d - 1], 1, 1
    return tuple(new_strides) if view_d == -1 else None
    ### END SOLUTION


def infer_shape(shape: Sequence[int], numel: int) -> tuple[int, ...]:
    """`shape` with its one -1 (if any) replaced by what makes numel elements."""
    shape = tuple(shape)
    if shape.count(-1) > 1:
        raise ValueError("only one dimension can be -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if rest == 0 or numel % rest:
            raise ValueError(f"shape {shape} is invalid for {numel} elements")
        shape = tuple(numel // rest if s == -1 else s for s in shape)
    if math.prod(shape) != numel:
        raise ValueError(f"shape {shape} is invalid for {numel} elements")
    return shape


# ----------------------------------------------------------------------------- broadcasting


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy's and PyTorch's rule: align the shapes on the right; in each column the sizes must agree or be 1
    (a missing dimension counts as 1), and the result takes the size that is not 1. (3, 1) and (4,) -> (3, 4)."""
    n = max((len(s) for s in shapes), default=0)
    out = []
    for column in zip(*[(1,) * (n - len(s)) + tuple(s) for s in shapes], strict=True):
        sizes = {c for c in column if c != 1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast: sizes {sorted(sizes)}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def expand_strides(shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]) -> tuple[int, ...]:
    """The strides of (shape, strides) expanded to new_shape without copying (torch.Tensor.expand).

    Align the shapes on the right. A size of -1 keeps the old size; a size equal to the old one keeps the old
    stride; an old size of 1 stretched to any other size gets stride 0 (the same element again for each index).
    new_shape may add dimensions on the left: they act as old dimensions of size 1 whose stride is the size times
    the stride of the new dimension to their right (1 for the last) — so one of size 1 keeps that stride (it is
    never stepped: PyTorch's choice), any other gets 0. Anything else raises ValueError, as do a new dimension
    given as -1 and a new_shape with fewer dimensions than shape. Work from the last dimension to the first."""
    ### BEGIN SOLUTION appA.expand (§A.6, 2 pts): right to left; a stretched size-1 dim (or a new one) gets stride 0
    extra = len(new_shape) - len(shape)
    if extra < 0:
        raise ValueError(f"cannot expand {len(shape)} dimensions to {len(new_shape)}")
    sizes, out = [0] * len(new_shape), [0] * len(new_shape)
    for k in range(len(new_shape) - 1, -1, -1):
        if k >= extra:
            old, stride = shape[k - extra], strides[k - extra]
        else:
            old, stride = 1, sizes[k + 1] * out[k + 1] if k + 1 < len(new_shape) else 1
        size = new_shape[k]
        if size == -1:
            if k < extra:
                raise ValueError(f"a new dimension cannot be -1 (dimension {k})")
            size = old
        if size != old:
            if old != 1:
                raise ValueError(f"cannot expand size {old} to {size} (dimension {k}): only size-1 dimensions stretch")
            stride = 0  # read the one element again for every index
        sizes[k], out[k] = size, stride
    return tuple(out)
    ### END SOLUTION


# ----------------------------------------------------------------------------- the tensor


class Strided:
    """A tensor over a flat buffer: buffer[offset + sum(index[k] * strides[k])] is element `index`.

    Views (transpose, permute, select, slice, t[...], view, expand) share `buffer`; writes through one are seen by
    all. `strides=None` means contiguous_strides(shape)."""

    def __init__(self, buffer: MutableSequence, shape: Sequence[int], strides: Sequence[int] | None = None,
                 offset: int = 0) -> None:
        self.buffer = buffer
        self.shape = tuple(int(s) for s in shape)
        self.strides = tuple(int(s) for s in strides) if strides is not None else contiguous_strides(self.shape)
        self.offset = int(offset)
        if len(self.strides) != len(self.shape):
            raise ValueError(f"{len(self.shape)} sizes but {len(self.strides)} strides")

    @classmethod
    def arange(cls, *shape: int) -> Strided:
        """0, 1, 2, ... in a fresh buffer, shaped: the value of each element is where it lives."""
        return cls(list(range(math.prod(shape))), shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Strided(shape={self.shape}, strides={self.strides}, offset={self.offset})"

    # reading

    def _at(self, index: Sequence[int]) -> int:
        for i, n in zip(index, self.shape, strict=True):
            if not 0 <= i < n:
                raise IndexError(f"index {tuple(index)} out of range for shape {self.shape}")
        return flat_index(index, self.strides, self.offset)

    def item(self, *index: int):
        return self.buffer[self._at(index)]

    def positions(self) -> list[int]:
        """Where each element lives in the buffer, in row-major order of the index (what the widget colours)."""
        return [flat_index(ix, self.strides, self.offset) for ix in itertools.product(*map(range, self.shape))]

    def tolist(self):
        """The elements as nested lists (a scalar for shape ())."""
        def nest(prefix: tuple[int, ...]):
            if len(prefix) == self.ndim:
                return self.buffer[flat_index(prefix, self.strides, self.offset)]
            return [nest((*prefix, i)) for i in range(self.shape[len(prefix)])]
        return nest(())

    # views that reorder or pick

    def transpose(self, dim0: int, dim1: int) -> Strided:
        """The view with dimensions dim0 and dim1 swapped (negative dims count from the end): the same buffer and
        offset, their sizes and strides swapped. Raises IndexError for a dimension out of range."""
        ### BEGIN SOLUTION appA.transpose (§A.3, 1 pt): no element moves: swap the two sizes and the two strides
        d0, d1 = _check_dim(dim0, self.ndim), _check_dim(dim1, self.ndim)
        shape, strides = list(self.shape), list(self.strides)
        shape[d0], shape[d1] = shape[d1], shape[d0]
        strides[d0], strides[d1] = strides[d1], strides[d0]
        return Strided(self.buffer, shape, strides, self.offset)
        ### END SOLUTION

    @property
    def T(self) -> Strided:  # noqa: N802 (torch's name)
        """All dimensions reversed (a matrix's transpose)."""
        return self.permute(*reversed(range(self.ndim)))

    def permute(self, *dims: int) -> Strided:
        dims = tuple(_check_dim(d, self.ndim) for d in dims)
        if sorted(dims) != list(range(self.ndim)):
            raise ValueError(f"permute needs each of the {self.ndim} dimensions once, got {dims}")
        return Strided(self.buffer, [self.shape[d] for d in dims], [self.strides[d] for d in dims], self.offset)

    def select(self, dim: int, i: int) -> Strided:
        """Index i of dimension dim, which goes away: move the offset i strides along it."""
        dim = _check_dim(dim, self.ndim)
        if not -self.shape[dim] <= i < self.shape[dim]:
            raise IndexError(f"index {i} out of range for dimension {dim} of size {self.shape[dim]}")
        i %= self.shape[dim]
        keep = [k for k in range(self.ndim) if k != dim]
        return Strided(self.buffer, [self.shape[k] for k in keep], [self.strides[k] for k in keep],
                       self.offset + i * self.strides[dim])

    def slice(self, dim: int, start: int | None = None, stop: int | None = None, step: int = 1) -> Strided:
        """Indices start, start+step, ... below stop of dimension dim (Python's rules, step > 0): move the offset to
        start, multiply the stride by step."""
        dim = _check_dim(dim, self.ndim)
        if step <= 0:
            raise ValueError("slice step must be positive (as in PyTorch)")
        start, stop, step = slice(start, stop, step).indices(self.shape[dim])
        shape, strides = list(self.shape), list(self.strides)
        shape[dim] = len(range(start, stop, step))
        strides[dim] *= step
        return Strided(self.buffer, shape, strides, self.offset + start * self.strides[dim])

    def __getitem__(self, key) -> Strided:
        """t[1], t[:, ::2], t[1:3, 0]: ints select, slices slice, from the first dimension on."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim:
            raise IndexError(f"{len(key)} indices for a tensor of {self.ndim} dimensions")
        out, dim = self, 0
        for k in key:
            if isinstance(k, slice):
                out, dim = out.slice(dim, k.start, k.stop, 1 if k.step is None else k.step), dim + 1
            else:
                out = out.select(dim, int(k))
        return out

    # views that reshape

    def _view_strides(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if self.numel() == 0:  # no elements: any strides read them all (PyTorch keeps them for the same shape)
            return self.strides if shape == self.shape else contiguous_strides(shape)
        return view_strides(self.shape, self.strides, shape)

    def view(self, *shape: int) -> Strided:
        """The same elements as `shape`, without copying; ValueError when no strides can (see view_strides)."""
        shape = infer_shape(shape, self.numel())
        strides = self._view_strides(shape)
        if strides is None:
            raise ValueError(f"view {shape} of a tensor with shape {self.shape} and strides {self.strides} is "
                             "impossible: its dimensions span gaps in memory (use .reshape(...), which copies)")
        return Strided(self.buffer, shape, strides, self.offset)

    def reshape(self, *shape: int) -> Strided:
        """A view when one exists, else a contiguous copy viewed as `shape` (torch.reshape)."""
        shape = infer_shape(shape, self.numel())
        strides = self._view_strides(shape)
        if strides is None:
            return self.contiguous().view(*shape)
        return Strided(self.buffer, shape, strides, self.offset)

    def expand(self, *shape: int) -> Strided:
        return Strided(self.buffer, [s if s != -1 else self.shape[k - len(shape) + self.ndim] for k, s in
                                     enumerate(shape)], expand_strides(self.shape, self.strides, shape), self.offset)

    # memory order

    def is_contiguous(self) -> bool:
        """Row-major without gaps: each stride equals contiguous_strides' (dimensions of size 1 do not matter, and
        a tensor with no elements is contiguous), as torch.Tensor.is_contiguous."""
        if self.numel() == 0:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if size != 1:
                if stride != expected:
                    return False
                expected *= size
        return True

    def contiguous(self) -> Strided:
        """self when already contiguous; else a copy: a new buffer holding the elements in row-major order of the
        index, with contiguous strides and offset 0."""
        ### BEGIN SOLUTION appA.contiguous (§A.7, 2 pts): contiguous already? else read in index order into a new list
        if self.is_contiguous():
            return self
        return Strided([self.buffer[p] for p in self.positions()], self.shape)
        ### END SOLUTION

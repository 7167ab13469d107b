"""Appendix A — tensors as a flat buffer with shape, strides and offset: storylib/strided.py against PyTorch.

Oracle: torch itself. Random tensors are made by random sequences of views (permute, slice with a step, select,
expand, view, reshape) of `torch.arange`, replayed on a `Strided` over `list(range(n))`, so each element's value is
where it lives and comparing values compares memory layouts. hypothesis draws the shapes and the sequences,
derandomized (the same examples on every run, none stored on disk).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storylib import strided as S

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@st.composite
def factorization(draw, n: int) -> tuple[int, ...]:
    """A random shape with n elements: n's prime factors shuffled into groups, with some 1s mixed in."""
    primes, m, p = [], n, 2
    while m > 1:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    primes = draw(st.permutations(primes))
    cuts = sorted(draw(st.lists(st.integers(0, len(primes)), max_size=3)))
    groups = [math.prod(primes[a:b]) for a, b in zip([0, *cuts], [*cuts, len(primes)], strict=True)]
    for _ in range(draw(st.integers(0, 2))):
        groups.insert(draw(st.integers(0, len(groups))), 1)
    return tuple(groups) or (1,)


@st.composite
def op_sequences(draw, max_ops: int = 4, reshape: bool = True):
    """(start shape, [op, ...]): views that are legal on the tensor they are applied to (torch checks as we go)."""
    shape = draw(shapes)
    t = torch.arange(math.prod(shape)).view(shape)
    ops = []
    for _ in range(draw(st.integers(1, max_ops))):
        kinds = ["transpose", "permute", "slice", "expand"] + (["select"] if t.dim() > 1 else [])
        kinds += ["view", "reshape"] if reshape else []
        kind = draw(st.sampled_from(kinds))
        nd = t.dim()
        if kind == "transpose":
            op = (kind, draw(st.integers(-nd, nd - 1)), draw(st.integers(-nd, nd - 1)))
        elif kind == "permute":
            op = (kind, tuple(draw(st.permutations(range(nd)))))
        elif kind == "select":
            d = draw(st.integers(0, nd - 1))
            op = (kind, d, draw(st.integers(-t.shape[d], t.shape[d] - 1)))
        elif kind == "slice":
            d = draw(st.integers(0, nd - 1))
            start = draw(st.integers(0, t.shape[d] - 1))
            op = (kind, d, start, draw(st.integers(start + 1, t.shape[d] + 2)), draw(st.integers(1, 3)))
        elif kind == "expand":
            lead = draw(st.lists(st.integers(1, 3), max_size=4 - nd if nd < 4 else 0))
            op = (kind, (*lead, *[draw(st.sampled_from([-1, 1, 2, 3])) if n == 1 else draw(st.sampled_from([n, -1]))
                                  for n in t.shape]))
        else:
            new = draw(factorization(t.numel()))
            if kind == "view" and torch_view(t, new) is None:
                kind = "reshape"  # keep the sequence legal; test_view covers the failures
            op = (kind, new)
        t = apply_torch(t, op)
        ops.append(op)
    return shape, ops


def torch_view(t: torch.Tensor, shape):
    try:
        return t.view(shape)
    except RuntimeError:
        return None


def apply_torch(t: torch.Tensor, op) -> torch.Tensor:
    kind, *args = op
    if kind == "slice":
        d, a, b, k = args
        return t[(slice(None),) * d + (slice(a, b, k),)]
    if kind in ("permute", "expand", "view", "reshape"):
        return getattr(t, kind)(*args[0])
    return getattr(t, kind)(*args)


def apply_strided(s, op):
    kind, *args = op
    if kind == "slice":
        return s.slice(*args)
    if kind in ("permute", "expand", "view", "reshape"):
        return getattr(s, kind)(*args[0])
    return getattr(s, kind)(*args)


def replay(shape, ops):
    t = torch.arange(math.prod(shape)).view(shape)
    s = S.Strided(list(range(math.prod(shape))), shape)
    for op in ops:
        t, s = apply_torch(t, op), apply_strided(s, op)
    return t, s


def assert_same(s, t: torch.Tensor, what: str = "") -> None:
    assert tuple(s.shape) == tuple(t.shape), f"{what}: shape"
    assert tuple(s.strides) == t.stride(), f"{what}: strides {tuple(s.strides)}, torch's {t.stride()}"
    assert s.offset == t.storage_offset(), f"{what}: offset {s.offset}, torch's {t.storage_offset()}"
    assert s.tolist() == t.tolist(), f"{what}: elements"


# ----------------------------------------------------------------------------- appA.strides


@pytest.mark.exercise("appA.strides")
@SETTINGS
@given(st.lists(st.integers(0, 7), max_size=5))
def test_contiguous_strides_equal_torch(shape):
    assert tuple(S.contiguous_strides(shape)) == torch.empty(shape).stride()


@pytest.mark.exercise("appA.strides")
def test_contiguous_strides_walk_memory_in_order():
    shape = (3, 1, 4, 5)
    strides = S.contiguous_strides(shape)
    flat = [sum(i * s for i, s in zip(ix, strides, strict=True))
            for ix in ((a, b, c, d) for a in range(3) for b in range(1) for c in range(4) for d in range(5))]
    assert flat == list(range(60)), "row-major: the last index moves fastest, and no address is skipped"


# ----------------------------------------------------------------------------- appA.offset


@pytest.mark.exercise("appA.offset")
@SETTINGS
@given(st.data())
def test_flat_index_equals_as_strided(data):
    shape = data.draw(shapes)
    strides = data.draw(st.lists(st.integers(0, 40), min_size=len(shape), max_size=len(shape)))
    offset = data.draw(st.integers(0, 17))
    index = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    base = torch.arange(offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1)
    want = int(torch.as_strided(base, shape, strides, offset)[index])
    assert S.flat_index(index, strides, offset) == want


@pytest.mark.exercise("appA.offset")
def test_flat_index_rejects_a_short_index():
    assert S.flat_index((2, 1), (7, 3), 5) == 5 + 14 + 3
    with pytest.raises(ValueError):
        S.flat_index((1,), (4, 1))


# ----------------------------------------------------------------------------- appA.transpose


@pytest.mark.exercise("appA.transpose")
@SETTINGS
@given(op_sequences(max_ops=2, reshape=False), st.data())
def test_transpose_equals_torch(seq, data):
    t, s = replay(*seq)
    d0, d1 = data.draw(st.integers(-t.dim(), t.dim() - 1)), data.draw(st.integers(-t.dim(), t.dim() - 1))
    assert_same(s.transpose(d0, d1), t.transpose(d0, d1), f"transpose({d0}, {d1})")


@pytest.mark.exercise("appA.transpose")
def test_transpose_is_a_view():
    s = S.Strided(list(range(40)), (5, 6), offset=3)
    tt = s.transpose(0, 1)
    assert tt.shape == (6, 5) and tt.strides == (1, 6), "the sizes and the strides swap"
    assert tt.offset == 3, "no copy: the same buffer, read from the same place"
    assert tt.tolist() == torch.arange(40)[3:33].view(5, 6).t().tolist()
    with pytest.raises(IndexError):
        s.transpose(0, 2)


# ----------------------------------------------------------------------------- appA.view


@pytest.mark.exercise("appA.view")
@SETTINGS
@given(op_sequences(max_ops=3, reshape=False), st.data())
def test_view_strides_equal_torch(seq, data):
    t, _ = replay(*seq)
    new = data.draw(factorization(t.numel()))
    want = torch_view(t, new)
    got = S.view_strides(t.shape, t.stride(), new)
    if want is None:
        assert got is None, f"{tuple(t.shape)} with strides {t.stride()} cannot be viewed as {new}"
    else:
        assert got is not None and tuple(got) == want.stride(), f"{tuple(t.shape)}, {t.stride()} -> {new}"


@pytest.mark.exercise("appA.view")
@pytest.mark.parametrize("shape, strides, new", [
    ((3, 2), (1, 3), (6,)),  # a transpose: its rows are not in a row of memory
    ((4, 3), (6, 1), (12,)),  # every other row of a (8, 3): a gap after each row
    ((4, 3), (6, 1), (2, 2, 3)),  # ... but splitting the rows is fine
    ((2, 3, 4), (12, 4, 1), (4, 6)),
    ((2, 1, 5), (1, 7, 2), (10,)),  # the size-1 dimension does not matter; (2, 5) with strides (1, 2) is no chunk
    ((2, 1, 5), (1, 7, 2), (2, 5, 1)),
    ((3, 4), (0, 1), (3, 2, 2)),  # expanded rows: splitting the contiguous last dimension is fine
    ((3, 4), (0, 1), (12,)),
])
def test_view_strides_cases(shape, strides, new):
    base = torch.arange(100)
    want = torch_view(torch.as_strided(base, shape, strides), new)
    got = S.view_strides(shape, strides, new)
    assert (got is None) == (want is None) and (want is None or tuple(got) == want.stride())


@pytest.mark.exercise("appA.view")
def test_view_and_reshape_methods():
    s = S.Strided.arange(4, 6).transpose(0, 1)  # (6, 4), strides (1, 6)
    with pytest.raises(ValueError):
        s.view(24)
    r = s.reshape(24)
    assert r.strides == (1,) and r.tolist() == torch.arange(24).view(4, 6).t().reshape(24).tolist()
    v = s.view(3, 2, 4)
    assert v.strides == (2, 1, 6) and v.tolist() == torch.arange(24).view(4, 6).t().view(3, 2, 4).tolist()


# ----------------------------------------------------------------------------- appA.expand


@pytest.mark.exercise("appA.expand")
@SETTINGS
@given(op_sequences(max_ops=2), st.data())
def test_expand_strides_equal_torch(seq, data):
    t, _ = replay(*seq)
    lead = data.draw(st.lists(st.integers(1, 4), max_size=2))
    tail = [data.draw(st.sampled_from([n, -1, 1, 3] if n == 1 else [n, -1, n + 1])) for n in t.shape]
    new = (*lead, *tail)
    try:
        want = t.expand(new).stride()
    except RuntimeError:
        with pytest.raises(ValueError):
            S.expand_strides(t.shape, t.stride(), new)
        return
    assert tuple(S.expand_strides(t.shape, t.stride(), new)) == want


@pytest.mark.exercise("appA.expand")
def test_expand_broadcasts_like_torch_addition():
    col = S.Strided.arange(3, 1)  # a column
    row = S.Strided([10, 20, 30, 40], (4,))
    shape = S.broadcast_shapes(col.shape, row.shape)
    a, b = col.expand(*shape), row.expand(*shape)
    assert a.strides == (1, 0) and b.strides == (0, 1), "the repeated direction has stride 0"
    total = [[x + y for x, y in zip(r1, r2, strict=True)] for r1, r2 in zip(a.tolist(), b.tolist(), strict=True)]
    assert total == (torch.arange(3).view(3, 1) + torch.tensor([10, 20, 30, 40])).tolist()
    with pytest.raises(ValueError):
        S.expand_strides((3,), (1,), (4,))
    with pytest.raises(ValueError):
        S.expand_strides((2, 3), (3, 1), (3,))


# ----------------------------------------------------------------------------- appA.contiguous


@pytest.mark.exercise("appA.contiguous")
@SETTINGS
@given(op_sequences(max_ops=4))
def test_op_sequence_then_contiguous_equals_torch(seq):
    t, s = replay(*seq)
    assert_same(s, t, f"after {seq[1]}")
    assert s.is_contiguous() == t.is_contiguous()
    c, tc = s.contiguous(), t.contiguous()
    assert tuple(c.strides) == tc.stride() and c.tolist() == tc.tolist() and c.is_contiguous()
    if t.is_contiguous():
        assert c.offset == tc.storage_offset(), "already contiguous: the same tensor, no copy"
    else:
        assert c.offset == 0 and len(c.buffer) == t.numel(), "a copy holds exactly the elements, in order"


@pytest.mark.exercise("appA.contiguous")
def test_contiguous_copies_an_expanded_tensor():
    s = S.Strided([5, 6, 7], (3,)).expand(2, 3)
    c = s.contiguous()
    assert list(c.buffer) == [5, 6, 7, 5, 6, 7], "a new buffer: the repeated row written out twice"
    assert c.strides == (3, 1) and c.offset == 0 and c.tolist() == [[5, 6, 7], [5, 6, 7]]


def test_slicing_and_select_equal_torch():
    t = torch.arange(7 * 5 * 3).view(7, 5, 3)
    s = S.Strided.arange(7, 5, 3)
    for key in [(1,), (slice(1, 6, 2),), (slice(None), 4), (2, slice(None, None, 3), 1), (slice(5, None), -1)]:
        assert_same(s[key], t[key], str(key))
    assert S.broadcast_shapes((5, 1, 3), (4, 1), ()) == torch.broadcast_shapes((5, 1, 3), (4, 1), ())

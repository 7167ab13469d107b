"""The grader's wire (grading/wire.py) and what the trusted side accepts from the worker (grading/remote.py)."""

from __future__ import annotations

import math
import random
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from grading import remote, wire
from grading.harness import COURSE_ROOT, check


def round_trip(value):
    refs = []
    enc = wire.Encoder(lambda obj: refs.append(obj) or {"$": "ref", "id": len(refs)})
    data = enc(value)
    return wire.Decoder(enc.blobs, lambda v, dec: ("ref", v["id"]))(data), refs


def test_values_travel_by_value():
    Point = namedtuple("Point", "x y")
    g = torch.Generator().manual_seed(5)
    value = {
        "ints": [1, -2**70, True, None], "floats": (0.5, math.inf, -math.inf), "text": "Zoé 🐉\udc80",
        "bytes": b"\x00\xff", "tensor": torch.randn(3, 4, generator=g, dtype=torch.float64)[:, ::2],
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16), "empty": torch.empty(0, 3, dtype=torch.int64),
        "array": np.arange(7, dtype=np.float32)[::3], "scalar": np.float32(1.5), "dtype": torch.float16,
        "size": torch.Size([2, 3]), "slice": slice(1, None, 2), "set": {3, 4}, "point": Point(1, 2.5),
        "path": Path("/x/y"), (1, 2): "tuple key", "complex": 1 - 2j, "meta": torch.empty(2, 7, device="meta"),
    }
    got, refs = round_trip(value)
    assert refs == [], "nothing here should travel as a reference"
    for key in value:
        if isinstance(value[key], torch.Tensor) and value[key].device.type != "meta":
            assert torch.equal(got[key], value[key]) and got[key].dtype == value[key].dtype, key
        elif isinstance(value[key], np.ndarray):
            assert np.array_equal(got[key], value[key]) and got[key].dtype == value[key].dtype, key
        elif key == "meta":
            assert got[key].device.type == "meta" and got[key].shape == (2, 7)
        else:
            assert got[key] == value[key] and type(got[key]) is not object, key


def test_generators_travel_as_their_state():
    for g in (torch.Generator().manual_seed(9), random.Random(9)):
        got, _ = round_trip(g)
        if isinstance(g, random.Random):
            assert got.random() == g.random()
        else:
            assert torch.equal(torch.rand(4, generator=got), torch.rand(4, generator=g))


def test_anything_else_is_a_reference_never_an_object():
    class Sneaky:
        def __eq__(self, other):
            return True

    got, refs = round_trip([Sneaky(), lambda: 1])
    assert got == [("ref", 1), ("ref", 2)] and len(refs) == 2
    with pytest.raises(wire.WireError):
        round_trip(np.array([object()]))


def test_the_decoder_builds_only_what_it_knows():
    dec = wire.Decoder([], lambda v, d: pytest.fail("no reference here"))
    for bad in ({"$": "pickle", "b": 0}, {"not": "tagged"}, {"$": "tensor", "dtype": "float32", "shape": [2], "b": 3},
                {"$": "torchattr", "name": "load"}, {"$": "dtype", "name": "os.system"}):
        with pytest.raises((wire.WireError, KeyError, TypeError)):
            dec(bad)


def test_learner_exceptions_become_local_classes_with_their_data():
    info = wire.describe_error(type("RequestError", (ValueError,), {})("bad temperature"))
    e = remote.local_exception({**info, "attrs": {"status": 400, "param": "temperature"}})
    assert isinstance(e, ValueError) and type(e).__name__ == "RequestError" and e.status == 400
    e = remote.local_exception(wire.describe_error(KeyboardInterrupt("stop")))
    assert isinstance(e, remote.LearnerInterrupt) and not isinstance(e, KeyboardInterrupt)


def test_an_instructors_hidden_tests_run_with_the_public_ones():
    report = check(["ch01.counts"], COURSE_ROOT, hidden=COURSE_ROOT / "grading" / "hidden_tests", seed=None)
    tests = report["ch01.counts"].tests
    assert report.seed and any("hidden/" in t.nodeid for t in tests) and report["ch01.counts"].passed
    assert len(tests) > len(check(["ch01.counts"], COURSE_ROOT)["ch01.counts"].tests)

"""Appendix A's StrideExplorer without a browser: its traits, and its stride arithmetic (JavaScript, under node)
against torch on random sequences of views of arange."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess

import pytest
import torch

from storylib.widgets import StrideExplorer, front_end


def random_ops(rng: random.Random, shape: tuple[int, ...], n: int) -> list[dict]:
    """n ops on arange(shape), each legal on torch except, now and then, a view that is not."""
    t = torch.arange(math.prod(shape)).view(shape)
    ops = []
    for _ in range(n):
        d = rng.randrange(t.dim()) if t.dim() else 0
        kind = rng.choice(["transpose", "permute", "slice", "expand", "view", "reshape", "contiguous"]
                          + (["select"] if t.dim() > 1 else []))
        if kind == "transpose":
            op = {"op": kind, "dims": [rng.randrange(-t.dim(), t.dim()), rng.randrange(-t.dim(), t.dim())]}
        elif kind == "permute":
            op = {"op": kind, "dims": rng.sample(range(t.dim()), t.dim())}
        elif kind == "select":
            op = {"op": kind, "dim": d, "index": rng.randrange(-t.shape[d], t.shape[d])}
        elif kind == "slice":
            op = {"op": kind, "dim": d, "start": rng.choice([None, 0, 1, -2]), "stop": rng.choice([None, 2, 5, -1]),
                  "step": rng.randint(1, 3)}
        elif kind == "expand":
            op = {"op": kind, "shape": [*([rng.randint(1, 3)] * rng.randint(0, 1)),
                                        *[rng.choice([2, 3, -1]) if s == 1 else rng.choice([s, -1]) for s in t.shape]]}
        elif kind in ("view", "reshape"):
            numel, new = t.numel(), []
            while numel > 1:
                f = rng.choice([f for f in range(2, numel + 1) if numel % f == 0][:3])
                new.append(f)
                numel //= f
            new = new or [1]
            rng.shuffle(new)
            op = {"op": kind, "shape": [*new[:-1], rng.choice([new[-1], -1])]}
        else:
            op = {"op": kind}
        try:
            t = torch_apply(t, op)
        except RuntimeError:
            ops.append(op)  # an illegal view ends the sequence: the widget must refuse it too
            return ops
        ops.append(op)
    return ops


def torch_apply(t: torch.Tensor, op: dict) -> torch.Tensor:
    kind = op["op"]
    if kind in ("transpose", "permute"):
        return getattr(t, kind)(*op["dims"])
    if kind == "select":
        return t.select(op["dim"], op["index"])
    if kind == "slice":
        return t[(slice(None),) * op["dim"] + (slice(op["start"], op["stop"], op["step"]),)]
    if kind == "contiguous":
        return t.contiguous()
    return getattr(t, kind)(*op["shape"])


NODE_MAIN = """
import fs from "node:fs";
const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
console.log(JSON.stringify(cases.map(({ shape, ops }) => {
  let t = arange(shape);
  try {
    for (const op of ops) t = applyOp(t, op);
  } catch (e) {
    return { error: String(e.message) };
  }
  return { shape: t.shape, strides: t.strides, offset: t.offset, contiguous: isContiguous(t),
           values: positions(t).map((p) => t.buffer[p]) };
})));
"""


def test_javascript_strides_equal_torch(tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    rng = random.Random(11)
    cases = []
    for _ in range(400):
        shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 4)))
        cases.append({"shape": list(shape), "ops": random_ops(rng, shape, rng.randint(1, 5))})
    script = tmp_path / "strides.mjs"
    script.write_text(front_end("strides") + NODE_MAIN)
    data = tmp_path / "cases.json"
    data.write_text(json.dumps(cases))
    proc = subprocess.run(["node", str(script), str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"node failed:\n{proc.stderr[-2000:]}"
    refused = 0
    for case, got in zip(cases, json.loads(proc.stdout), strict=True):
        t = torch.arange(math.prod(case["shape"])).view(case["shape"])
        try:
            for op in case["ops"]:
                t = torch_apply(t, op)
        except RuntimeError:
            assert "error" in got, f"torch refuses {case}, the widget does not"
            refused += 1
            continue
        assert "error" not in got, f"{case}: the widget says {got.get('error')}"
        assert got["shape"] == list(t.shape) and got["strides"] == list(t.stride()), case
        assert got["values"] == t.flatten().tolist() and got["contiguous"] == t.is_contiguous(), case
        assert got["offset"] == t.storage_offset(), case
    assert 5 < refused < 200, "the draw includes some views torch refuses"


def test_traits_and_bad_arguments():
    w = StrideExplorer((2, 3, 4), ops=[{"op": "transpose", "dims": [0, 2]}, {"op": "contiguous"}])
    assert w.shape == [2, 3, 4] and w.ops[0] == {"op": "transpose", "dims": [0, 2]}
    assert "applyOp" in w._esm and "function el(" in w._esm, "the module carries _dom.js and the stride arithmetic"
    with pytest.raises(ValueError):
        StrideExplorer((0, 3))
    with pytest.raises(ValueError):
        StrideExplorer((20, 20))
    with pytest.raises(ValueError):
        StrideExplorer((3, 4), ops=[{"op": "flip", "dims": [0]}])

"""The wire between the trusted grader and the learner's worker: values by value, never pickled.

A message is a JSON document plus raw byte blobs (tensor and array contents). Only the shapes listed in
`encode` cross the wire: plain Python values, tensors, arrays and a few torch/numpy descriptors. Anything
else stays where it lives and crosses as a *reference* (`{"$": "ref", "id": n}`) that the other side can
only pass back or operate on remotely, so nothing the worker returns can carry behaviour into the grader.

This file is copied next to the worker (grading/worker.py), so it imports only the standard library,
numpy and torch (both optional).
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from collections.abc import Callable
from pathlib import PurePath
from types import SimpleNamespace

try:
    import numpy as np
except ImportError:  # pragma: no cover - the course always has numpy
    np = None
try:
    import torch
except ImportError as e:  # pragma: no cover
    torch, TORCH_IMPORT_ERROR = None, e
else:
    TORCH_IMPORT_ERROR = None


def _import_context() -> str:
    """Where this process looked for torch (an intermittent failure in CI's sandbox is to be explained by it)."""
    import os
    import sys

    dirs = [p for p in sys.path if p.endswith("site-packages")]
    seen = {d: (os.path.isdir(os.path.join(d, "torch")), os.access(d, os.R_OK | os.X_OK)) for d in dirs}
    return (f"executable {sys.executable}, prefix {sys.prefix}, numpy {'ok' if np is not None else 'missing'}, "
            f"site-packages (torch/ there, readable): {seen}, sys.path {sys.path}")


def require_torch():
    """torch, or a RuntimeError that says why this process could not import it (not a later AttributeError)."""
    if torch is None:
        raise RuntimeError(f"this process could not import torch: {TORCH_IMPORT_ERROR!r} ({_import_context()})")
    return torch

MAX_HEADER = 256 << 20  # a JSON header above this is a protocol error, not a memory hog
MAX_BLOBS = 4 << 30
_HEAD = struct.Struct("<II")  # header length, number of blobs
_BLOB = struct.Struct("<Q")


class WireError(RuntimeError):
    """A malformed message, or a value that may not cross the wire."""


# ------------------------------------------------------------------------------------------- framing


def send(fd: int, header: dict, blobs: list[bytes]) -> None:
    data = json.dumps(header, allow_nan=True).encode()
    parts = [_HEAD.pack(len(data), len(blobs)), data]
    for b in blobs:
        parts += [_BLOB.pack(len(b)), b]
    _write_all(fd, b"".join(parts))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 22))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd: int) -> tuple[dict, list[bytes]]:
    size, count = _HEAD.unpack(_read_exact(fd, _HEAD.size))
    if size > MAX_HEADER or count > 1 << 20:
        raise WireError(f"message header of {size} bytes and {count} blobs refused")
    header = json.loads(_read_exact(fd, size))
    if not isinstance(header, dict):
        raise WireError("a message must be a JSON object")
    blobs, total = [], 0
    for _ in range(count):
        (n,) = _BLOB.unpack(_read_exact(fd, _BLOB.size))
        total += n
        if total > MAX_BLOBS:
            raise WireError("message blobs too large")
        blobs.append(_read_exact(fd, n))
    return header, blobs


# ------------------------------------------------------------------------------------------- values


class Encoder:
    """Turns a value into JSON + blobs. `special(obj)` may claim any non-plain value first (returns JSON or None);
    `as_ref(obj)` is called for whatever may not travel by value and returns the JSON for a reference (or raises
    WireError); `track(obj, json)` is told of every mutable value sent (tensor, array, generator, list, dict), so
    the receiver's in-place changes can be written back."""

    def __init__(self, as_ref: Callable[[object], dict], track: Callable[[object, dict], None] | None = None,
                 special: Callable[[object, Encoder], dict | None] | None = None):
        self.as_ref, self.track, self.special, self.blobs = as_ref, track, special, []
        self._seen: dict[int, tuple[object, dict]] = {}

    def blob(self, data: bytes) -> int:
        self.blobs.append(data)
        return len(self.blobs) - 1

    def __call__(self, v, depth: int = 0):  # noqa: C901 - one flat table of the shapes that travel
        if depth > 64:
            raise WireError("value nested too deeply")
        if v is None or isinstance(v, bool | str):
            return v
        if type(v) is int:
            return v
        if type(v) is float:
            return v if math.isfinite(v) else {"$": "float", "v": repr(v)}
        if self.special is not None and (claimed := self.special(v, self)) is not None:
            return claimed
        if np is not None and isinstance(v, np.generic):
            return {"$": "npscalar", "dtype": v.dtype.str, "b": self.blob(v.tobytes())} if v.dtype != object \
                else self._ref(v)
        if isinstance(v, int):  # int subclasses (IntEnum...) travel as plain ints
            return int(v)
        if isinstance(v, float):
            return self(float(v), depth)
        if isinstance(v, complex):
            return {"$": "complex", "re": v.real, "im": v.imag}
        if isinstance(v, bytes | bytearray):
            return {"$": "bytes", "b": self.blob(bytes(v))}
        if torch is not None and issubclass(type(v), torch.Tensor):  # type, not isinstance: proxies pose as tensors
            return self._tensor(v)
        if np is not None and isinstance(v, np.ndarray):
            return self._array(v)
        if torch is not None and isinstance(v, torch._C.Generator):  # not torch.Generator: seeds.py replaces it
            return self._generator(v)
        if torch is not None and isinstance(v, torch.Size):
            return {"$": "size", "items": [int(x) for x in v]}
        if torch is not None and isinstance(v, torch.dtype):
            return {"$": "dtype", "name": str(v).removeprefix("torch.")}
        if torch is not None and isinstance(v, torch.device):
            return {"$": "device", "name": str(v)}
        if np is not None and isinstance(v, np.dtype):
            return {"$": "npdtype", "str": v.str}
        if torch is not None and isinstance(v, torch.layout | torch.memory_format):
            return {"$": "torchattr", "name": str(v).removeprefix("torch.")}
        if isinstance(v, random.Random):
            version, internal, gauss = v.getstate()
            return self._tracked(v, {"$": "pyrandom", "state": [version, list(internal), gauss]})
        if isinstance(v, tuple) and hasattr(type(v), "_fields"):
            return {"$": "namedtuple", "name": type(v).__name__, "fields": list(type(v)._fields),
                    "items": [self(x, depth + 1) for x in v]}
        if isinstance(v, list):
            items = [self(x, depth + 1) for x in v]
            return self._tracked(v, {"$": "list", "items": items}) if self.track and depth <= 2 else items
        if isinstance(v, tuple):
            return {"$": "tuple", "items": [self(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            out = {"$": "dict", "items": [[self(k, depth + 1), self(x, depth + 1)] for k, x in v.items()]}
            return self._tracked(v, out) if depth <= 2 else out  # an argument, or one inside *args/**kwargs
        if isinstance(v, set | frozenset):
            return {"$": "frozenset" if isinstance(v, frozenset) else "set", "items": [self(x, depth + 1) for x in v]}
        if isinstance(v, slice):
            return {"$": "slice", "items": [self(v.start), self(v.stop), self(v.step)]}
        if v is Ellipsis:
            return {"$": "ellipsis"}
        if isinstance(v, range):
            return {"$": "range", "items": [v.start, v.stop, v.step]}
        if isinstance(v, PurePath):
            return {"$": "path", "s": str(v)}
        if type(v) is SimpleNamespace:
            return {"$": "namespace", "items": [[k, self(x, depth + 1)] for k, x in vars(v).items()]}
        return self._ref(v)

    def _ref(self, v) -> dict:
        return self.as_ref(v)

    def _tracked(self, v, out: dict) -> dict:
        if self.track:
            self.track(v, out)
        return out

    def raw_tensor(self, t) -> dict:
        """A tensor's value, untracked."""
        data = t.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        return {"$": "tensor", "dtype": str(data.dtype).removeprefix("torch."), "shape": list(data.shape),
                "b": self.blob(raw), "rg": bool(t.requires_grad), "device": str(t.device),
                "sid": t.untyped_storage().data_ptr()}  # which memory it lives in, for tests of views

    def _tensor(self, t) -> dict:
        if t.device.type == "meta":  # no data: its dtype and shape are the whole value
            return {"$": "meta", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if t.is_sparse or t.is_quantized:
            return self._ref(t)
        key = id(t)
        if key in self._seen and self._seen[key][0] is t:  # the same tensor twice in one message stays one tensor
            return self._seen[key][1]
        out = self.raw_tensor(t)
        self._seen[key] = (t, out)  # holding t keeps its id from being reused within this message
        if self.track:
            self.track(t, out)
        return out

    def _array(self, a) -> dict:
        if a.dtype == object or a.dtype.fields is not None:
            raise WireError(f"a numpy array of dtype {a.dtype} cannot cross the grader's wire")
        key = id(a)
        if key in self._seen and self._seen[key][0] is a:
            return self._seen[key][1]
        out = {"$": "ndarray", "dtype": a.dtype.str, "shape": list(a.shape), "b": self.blob(np.ascontiguousarray(a)
                                                                                             .tobytes())}
        self._seen[key] = (a, out)
        if self.track:
            self.track(a, out)
        return out

    def _generator(self, g) -> dict:
        out = {"$": "generator", "device": str(g.device), "b": self.blob(g.get_state().numpy().tobytes())}
        if self.track:
            self.track(g, out)
        return out


_DTYPES = {}


def torch_dtype(name: str):
    if not _DTYPES:
        _DTYPES.update({str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)})
    if name not in _DTYPES:
        raise WireError(f"unknown torch dtype {name!r}")
    return _DTYPES[name]


class Decoder:
    """JSON + blobs back to values. `from_ref(json)` turns a reference into a local object (a proxy on the trusted
    side, the object itself on the worker); `on_value(json, value)` is told of every tensor/array/generator built."""

    def __init__(self, blobs: list[bytes], from_ref: Callable[[dict, Decoder], object],
                 on_value: Callable[[dict, object], None] | None = None):
        self.blobs, self.from_ref, self.on_value = blobs, from_ref, on_value

    def _blob(self, i) -> bytes:
        if not isinstance(i, int) or not 0 <= i < len(self.blobs):
            raise WireError("a value refers to a missing blob")
        return self.blobs[i]

    def __call__(self, v, depth: int = 0):  # noqa: C901
        if depth > 64:
            raise WireError("value nested too deeply")
        if v is None or isinstance(v, bool | int | float | str):
            return v
        if isinstance(v, list):
            return [self(x, depth + 1) for x in v]
        if not isinstance(v, dict) or not isinstance(v.get("$"), str):
            raise WireError(f"not a value: {str(v)[:80]}")
        tag = v["$"]
        items = v.get("items")
        if tag == "tuple":
            return tuple(self(x, depth + 1) for x in items)
        if tag == "list":
            return self._done(v, [self(x, depth + 1) for x in items])
        if tag == "iter":
            return iter([self(x, depth + 1) for x in items])
        if tag == "dict":
            return self._done(v, {self(k, depth + 1): self(x, depth + 1) for k, x in items})
        if tag == "pyrandom":
            rng = random.Random()
            version, internal, gauss = v["state"]
            rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
            return self._done(v, rng)
        if tag == "torchattr":
            value = getattr(torch, str(v["name"]), None)
            if not isinstance(value, torch.layout | torch.memory_format):
                raise WireError(f"unknown torch attribute {v['name']!r}")
            return value
        if tag in ("set", "frozenset"):
            made = {self(x, depth + 1) for x in items}
            return made if tag == "set" else frozenset(made)
        if tag == "namedtuple":
            from collections import namedtuple

            cls = namedtuple(str(v["name"]), [str(f) for f in v["fields"]])
            return cls(*(self(x, depth + 1) for x in items))
        if tag == "namespace":
            return SimpleNamespace(**{str(k): self(x, depth + 1) for k, x in items})
        if tag == "float":
            return float(v["v"])
        if tag == "complex":
            return complex(v["re"], v["im"])
        if tag == "bytes":
            return self._blob(v["b"])
        if tag == "slice":
            return slice(*(self(x, depth + 1) for x in items))
        if tag == "ellipsis":
            return Ellipsis
        if tag == "range":
            return range(*(int(x) for x in items))
        if tag == "path":
            from pathlib import Path

            return Path(str(v["s"]))
        if tag == "size":
            return torch.Size([int(x) for x in items])
        if tag == "dtype":
            return torch_dtype(str(v["name"]))
        if tag == "device":
            return torch.device(str(v["name"]))
        if tag == "npdtype":
            return np.dtype(str(v["str"]))
        if tag == "npscalar":
            return np.frombuffer(self._blob(v["b"]), dtype=np.dtype(str(v["dtype"])))[0]
        if tag == "tensor":
            return self._done(v, self._tensor(v))
        if tag == "meta":
            return torch.empty([int(x) for x in v["shape"]], dtype=torch_dtype(str(v["dtype"])), device="meta")
        if tag == "ndarray":
            dtype = np.dtype(str(v["dtype"]))
            if dtype.hasobject or dtype.fields is not None:
                raise WireError("object arrays do not cross the wire")
            arr = np.frombuffer(self._blob(v["b"]), dtype=dtype).reshape([int(s) for s in v["shape"]]).copy()
            return self._done(v, arr)
        if tag == "generator":
            g = torch.Generator(device=str(v["device"]))
            g.set_state(torch.frombuffer(bytearray(self._blob(v["b"])), dtype=torch.uint8))
            return self._done(v, g)
        if tag in ("ref", "callback", "arg", "module", "view"):
            return self.from_ref(v, self)
        raise WireError(f"unknown value tag {tag!r}")

    def _tensor(self, v):
        dtype = torch_dtype(str(v["dtype"]))
        shape = [int(s) for s in v["shape"]]
        raw = self._blob(v["b"])
        if raw:
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
        else:
            t = torch.empty(shape, dtype=dtype)
        device = str(v.get("device", "cpu"))
        if device != "cpu" and torch.cuda.is_available() and device.startswith("cuda"):
            t = t.to(device)
        return t.requires_grad_(bool(v.get("rg"))) if t.is_floating_point() or t.is_complex() else t

    def _done(self, v, value):
        if self.on_value:
            replaced = self.on_value(v, value)
            return value if replaced is None else replaced
        return value


# ------------------------------------------------------------------------------------------- the peer


def describe_error(e: BaseException) -> dict:
    """An exception as data: its type's name and module, its builtin ancestors, message and traceback text."""
    import traceback

    builtin_bases = [c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"]
    tb = "".join(traceback.format_exception(e)[-12:])
    attrs = {k: v for k, v in vars(e).items() if isinstance(v, str | int | float | bool | type(None))
             and not k.startswith("_")}
    return {"type": type(e).__name__, "module": type(e).__module__, "bases": builtin_bases,
            "message": str(e)[:20000], "traceback": tb[-8000:], "attrs": attrs}


class Peer:
    """One end of the channel. `request` sends a request and serves the other side's nested requests (callbacks)
    until its reply arrives; `serve` answers requests until the channel closes. Subclasses implement
    `handle(header, blobs) -> (json, blobs)`, `encoder()` and `decoder(blobs)`."""

    def __init__(self, fd_in: int, fd_out: int):
        self.fd_in, self.fd_out = fd_in, fd_out

    def wait_readable(self) -> None:
        """Block until a message can be read (the trusted side adds a deadline here)."""

    def request(self, header: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        send(self.fd_out, {"kind": "req", **header}, blobs)
        while True:
            self.wait_readable()
            msg, got = recv(self.fd_in)
            if msg.get("kind") == "rep":
                return msg, got
            self._answer(msg, got)

    def serve(self) -> None:
        while True:
            try:
                msg, got = recv(self.fd_in)
            except EOFError:
                return
            self._answer(msg, got)

    def _answer(self, msg: dict, blobs: list[bytes]) -> None:
        try:
            reply, out = self.handle(msg, blobs)
        except BaseException as e:  # the request failed: the error travels back as data
            reply, out = {"error": describe_error(e)}, []
        send(self.fd_out, {"kind": "rep", **reply}, out)

    def handle(self, msg: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        raise NotImplementedError

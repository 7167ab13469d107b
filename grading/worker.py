"""The worker: the only process that runs the learner's code.

The trusted grader (grading/remote.py) starts it in a sandbox (grading/sandbox.py) and sends it requests:
import a module, get or set an attribute, call something, apply an operator. The worker answers with values
(grading/wire.py: plain data, tensors and arrays, by value) or with references to the objects it keeps, and
writes back the tensors and arrays it was given when the learner's code changed them in place. It never sees
the tests, the oracles or the report.

    python -I worker.py LIB FD_IN FD_OUT

LIB holds copies of the learner's `storylib/` and `cuda_labs/` and nothing else; it goes *last* on sys.path,
after the standard library and the installed packages.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import operator
import os
import random
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder off sys.path
import wire  # noqa: E402

# What the trusted side may apply to objects. Nothing here can reach the file system or the grader.
OPERATORS = {name: getattr(operator, name) for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lshift", "rshift", "and_", "or_", "xor",
    "neg", "pos", "invert", "abs", "eq", "ne", "lt", "le", "gt", "ge", "contains", "getitem", "setitem", "delitem",
    "truth", "index", "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul", "iand", "ior",
    "ixor", "ilshift", "irshift")}
OPERATORS.update(len=len, repr=repr, str=str, iter=iter, next=next, float=float, int=int, complex=complex,
                 round=round, format=format, dir=dir, hash=hash, reversed=reversed, isinstance=isinstance,
                 issubclass=issubclass, callable=callable, list=list, divmod=divmod)


def _kind(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return "exception_class"
    if isinstance(obj, type):
        return "class"
    if wire.torch is not None and isinstance(obj, wire.torch.Tensor):
        return "tensor"
    if hasattr(type(obj), "__next__"):
        return "iterator"
    return "object"


class Worker(wire.Peer):
    def __init__(self, fd_in: int, fd_out: int):
        super().__init__(fd_in, fd_out)
        self.objects: dict[int, object] = {}
        self.next_id = 1
        self.described: set[type] = set()
        self.ref_of: dict[int, int] = {}  # id(object) -> its reference
        self.mirrors: dict[int, list] = {}  # id -> [tensor, version, grad key]: the test's parameters, shared
        self.mirror_ids: dict[int, int] = {}  # id(tensor) -> id
        self.args: dict[int, tuple[int, object]] = {}  # id(arg) -> (token, arg) during one request
        self.new_mirrors: list[list[int]] = []  # [token, id] of the parameters first shared in this request
        self.pending: dict[int, object] = {}  # token -> tensor, for those

    # ------------------------------------------------------------------ references

    def as_ref(self, obj) -> dict:
        oid = self.ref_of.get(id(obj))
        if oid is not None and self.objects.get(oid) is obj:  # the same object keeps its reference
            return {"$": "ref", "id": oid, "kind": _kind(obj), "callable": callable(obj), "tkey": id(type(obj))}
        oid = self.next_id
        self.next_id += 1
        self.objects[oid] = obj
        self.ref_of[id(obj)] = oid
        ref = {"$": "ref", "id": oid, "kind": _kind(obj), "callable": callable(obj),
               "type": f"{type(obj).__module__}.{type(obj).__qualname__}"}
        if type(obj) not in self.described:  # once per type: its methods, so a call is one request, not two
            self.described.add(type(obj))
            ref["methods"] = _methods(type(obj))
        ref["tkey"] = id(type(obj))
        if ref["kind"] == "module":
            ref["name"] = obj.__name__
        if ref["kind"] == "exception_class":
            ref["name"], ref["module"] = obj.__name__, obj.__module__
            ref["bases"] = [c.__name__ for c in obj.__mro__ if c.__module__ == "builtins"]
        return ref

    def from_ref(self, v: dict, dec: wire.Decoder):
        if v["$"] == "callback":
            return self.callback(int(v["id"]))
        if v["$"] == "module":  # a torch module of the test, pickled by the trusted side; its parameters are mirrors
            import pickle

            tensors = [dec(t) for t in v["tensors"]]

            class Unpickler(pickle.Unpickler):
                def persistent_load(self, pid):
                    return tensors[int(pid)]

            import io

            return Unpickler(io.BytesIO(dec.blobs[int(v["b"])])).load()
        if "module" in v:  # one of the learner's modules, by name
            return importlib.import_module(str(v["module"]))
        oid = v.get("id")
        if isinstance(oid, int) and oid < 0:  # a parameter first shared earlier in this same message
            return self.pending[-oid]
        if oid not in self.objects:
            raise wire.WireError(f"reference {oid} is not held by this worker (stale)")
        return self.objects[oid]

    def callback(self, cid: int):
        def call(*args, **kwargs):
            enc = self.encoder()
            head = {"op": "callback", "id": cid, "args": enc(list(args)), "kwargs": enc(kwargs)}
            reply, blobs = self.request(head, enc.blobs)
            return self.result(reply, blobs)

        return call

    def result(self, reply: dict, blobs: list[bytes]):
        if "error" in reply:
            info = reply["error"]
            base = next((getattr(builtins, b) for b in info.get("bases", []) if b in _SAFE), RuntimeError)
            raise base(info.get("message", ""))
        return wire.Decoder(blobs, self.from_ref)(reply.get("ok"))

    def encoder(self) -> wire.Encoder:
        enc = wire.Encoder(self.as_ref, special=self.special)
        plain_tensor = enc._tensor

        def tensor(t):  # a tensor in an autograd graph stays here: its graph cannot travel
            return self.as_ref(t) if t.requires_grad else self.view(t) or plain_tensor(t)

        enc._tensor = tensor
        return enc

    def special(self, v, enc: wire.Encoder) -> dict | None:
        if isinstance(v, _Handle):
            return self.as_ref(v.obj)
        if id(v) in self.args and self.args[id(v)][1] is v:  # the test's own object, handed back
            return {"$": "arg", "tok": self.args[id(v)][0]}
        oid = self.mirror_ids.get(id(v))
        if oid is not None and self.mirrors[oid][0] is v:
            return {"$": "ref", "id": oid, "kind": "tensor", "mirror": True}
        return None

    def view(self, t) -> dict | None:
        """A view of a tensor the test passed in travels as that: the test gets a view of its own tensor."""
        torch = wire.torch
        for tok, arg in self.args.values():
            if (isinstance(arg, torch.Tensor) and arg.dtype == t.dtype and arg.is_contiguous()
                    and arg.storage_offset() == 0
                    and t.untyped_storage().data_ptr() == arg.untyped_storage().data_ptr()):
                return {"$": "view", "tok": tok, "shape": list(t.shape), "stride": list(t.stride()),
                        "offset": t.storage_offset()}
        return None

    # ------------------------------------------------------------------ shared parameters

    def new_mirror(self, v: dict, t) -> None:
        torch = wire.torch
        if v.get("param"):
            t = torch.nn.Parameter(t.detach(), requires_grad=True)
        oid = self.next_id
        self.next_id += 1
        self.objects[oid] = t
        self.mirrors[oid] = [t, None, None]
        self.mirror_ids[id(t)] = oid
        self.new_mirrors.append([int(v["mirror"]), oid])
        self.pending[int(v["mirror"])] = t
        if "grad" in v:
            t.grad = self._dec(v["grad"]).to(t.dtype)
        return t

    def apply_sync(self, entries: list, dec: wire.Decoder) -> None:
        torch = wire.torch
        with torch.no_grad():
            for e in entries:
                t = self.mirrors[int(e["id"])][0]
                if "value" in e:
                    t.data.copy_(dec(e["value"]))  # like gradcheck: graphs built on t stay usable
                if "grad" in e:
                    g = dec(e["grad"])
                    t.grad = None if g is None else g.to(t.dtype)
        self.snapshot()

    def snapshot(self) -> None:
        for m in self.mirrors.values():
            m[1], m[2] = _content(m[0]), _content(m[0].grad)

    def changed_mirrors(self, enc: wire.Encoder) -> list:
        out = []
        for oid, (t, before, grad_before) in self.mirrors.items():
            e = {"id": oid}
            if not _same(t, before):
                e["value"] = enc.raw_tensor(t)
            if not _same(t.grad, grad_before):
                e["grad"] = None if t.grad is None else enc.raw_tensor(t.grad)
            if len(e) > 1:
                out.append(e)
        return out

    # ------------------------------------------------------------------ requests

    def handle(self, msg: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        for oid in msg.get("release", []):
            obj = self.objects.pop(oid, None)
            if oid in self.mirrors:
                del self.mirrors[oid]
                self.mirror_ids.pop(id(obj), None)
        sent: list[tuple[int, object, object]] = []  # (token, value, its state before the call)
        outer = self.args, self.new_mirrors, self.pending  # a callback's nested request keeps these apart
        self.args, self.new_mirrors, self.pending = {}, [], {}

        def on_value(v: dict, value) -> None:
            if "mirror" in v:
                value = self.new_mirror(v, value)
            elif "tok" in v:
                sent.append((int(v["tok"]), value, _state(value)))
                self.args[id(value)] = (int(v["tok"]), value)
            return value

        dec = self._dec = wire.Decoder(blobs, self.from_ref, on_value)
        torch = wire.require_torch()  # every call syncs tensors and sets grad mode: say so if torch is missing
        try:
            self.apply_sync(msg.get("sync", []), dec)
            threads = int(msg.get("threads", 0))
            if threads > 0 and threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            with torch.set_grad_enabled(bool(msg.get("grad", True))):
                value = self.run(msg, dec)
            enc = self.encoder()
            out = {"ok": enc(value)}
            self.args = {}  # what changed travels as a value, not as "your own object"
            changed = [[tok, enc(v)] for tok, v, before in sent if _state(v) != before]
            if changed:
                out["writeback"] = changed
            out["mirrors"] = self.new_mirrors
            out["sync"] = self.changed_mirrors(enc)
            self.snapshot()
        finally:
            self.args, self.new_mirrors, self.pending = outer
        return out, enc.blobs

    def run(self, msg: dict, dec: wire.Decoder):  # noqa: C901 - one branch per request
        op = msg.get("op")
        if op == "import":
            return importlib.import_module(str(msg["name"]))
        if op == "modattr":  # an attribute of a module, or its submodule
            module = importlib.import_module(str(msg["module"]))
            name = str(msg["name"])
            try:
                return getattr(module, name)
            except AttributeError:
                if not hasattr(module, "__path__"):
                    raise
                return importlib.import_module(f"{module.__name__}.{name}")
        if op == "getattr":
            return getattr(dec(msg["obj"]), str(msg["name"]))
        if op == "setattr":
            setattr(dec(msg["obj"]), str(msg["name"]), dec(msg["value"]))
            return None
        if op == "delattr":
            delattr(dec(msg["obj"]), str(msg["name"]))
            return None
        if op == "call":
            fn = dec(msg["obj"])
            return fn(*dec(msg.get("args", [])), **dec(msg.get("kwargs", {"$": "dict", "items": []})))
        if op == "method":
            fn = getattr(dec(msg["obj"]), str(msg["name"]))
            return fn(*dec(msg.get("args", [])), **dec(msg.get("kwargs", {"$": "dict", "items": []})))
        if op == "repeat":  # many calls of one function in one request: statistical tests make thousands
            fn, args = dec(msg["obj"]), dec(msg.get("args", []))
            kwargs = dec(msg.get("kwargs", {"$": "dict", "items": []}))
            return [fn(*args, **kwargs) for _ in range(int(msg["n"]))]
        if op == "operator":
            return OPERATORS[str(msg["name"])](*dec(msg.get("args", [])))
        if op == "fetch":  # a tensor's value, detached from its graph
            obj = dec(msg["obj"])
            return obj.detach().clone() if wire.torch is not None and isinstance(obj, wire.torch.Tensor) else obj
        if op == "handle":  # a reference to the object itself, even a shared parameter
            return _Handle(dec(msg["obj"]))
        if op == "seed":
            return wire.torch.manual_seed(int(msg["value"])) and None
        if op == "ping":
            return os.getpid()
        raise wire.WireError(f"unknown request {op!r}")


_SAFE = {"ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError", "AttributeError", "AssertionError",
         "NotImplementedError", "ZeroDivisionError", "ArithmeticError", "LookupError", "StopIteration"}


class _Handle:
    def __init__(self, obj):
        self.obj = obj


def _methods(cls: type) -> list[str]:
    names = []
    for name in dir(cls):
        attr = getattr(cls, name, None)
        if isinstance(attr, types.FunctionType | types.BuiltinFunctionType | types.MethodDescriptorType
                      | types.WrapperDescriptorType | classmethod | staticmethod) or inspect.ismethod(attr):
            names.append(name)
    return [n for n in names if not (n.startswith("__") and n.endswith("__"))]


def _state(value):
    """What tells whether the learner's code changed a value the test gave it."""
    torch, np = wire.torch, wire.np
    if isinstance(value, torch.Tensor):
        return value._version
    if np is not None and isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, torch._C.Generator):
        return bytes(value.get_state().numpy())
    if isinstance(value, random.Random):
        return value.getstate()
    if isinstance(value, list | dict):
        return _Snapshot(value)
    return None


class _Snapshot:
    """A shallow copy of a list or dict, equal to the original while nothing in it was replaced."""

    def __init__(self, value):
        self.items = list(value.items()) if isinstance(value, dict) else list(value)
        self.is_dict = isinstance(value, dict)

    def __eq__(self, other) -> bool:
        if not isinstance(other, _Snapshot) or len(self.items) != len(other.items):
            return False
        pairs = zip(self.items, other.items, strict=True)
        if self.is_dict:
            return all(k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in pairs)
        return all(a is b for a, b in pairs)


def _content(t):
    """A copy of a shared tensor's values: changes made through `.data` do not move its version counter."""
    return None if t is None else t.detach().clone()


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and wire.torch.equal(a.detach(), b)


def main() -> None:
    lib, fd_in, fd_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shared")  # grading/testmodels.py
    # Only the installed packages and the learner's two packages: no editable installs of the course.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        and "__editable__" not in type(f).__module__]
    sys.path[:] = [p for p in sys.path if p and p != os.path.dirname(os.path.abspath(__file__))] + [shared, lib]
    # The learner's prints go to a log file, never into the channel.
    log = os.open(os.path.join(os.environ.get("HOME", "."), "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    Worker(fd_in, fd_out).serve()


if __name__ == "__main__":
    main()
